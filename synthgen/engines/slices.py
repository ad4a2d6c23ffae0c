"""Which shards one run builds: `--shards` ranges, or rank R of W (torchrun, Slurm arrays).

Rank slices are strided (round robin): rank r of W builds shards r, r+W, r+2W, ... so every
rank gets a share that differs by at most one shard, and the slices of all ranks together
are exactly the plan's shards, each once.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass

from synthgen.errors import UserError

_RANGE = re.compile(r"^(\d+)(?:-(\d+))?$")


@dataclass(frozen=True)
class Slice:
    """The shards of one run, and where that choice came from (for the user's log)."""

    shards: tuple[int, ...] | None  # None: every shard
    source: str = ""


def parse_shard_ranges(text: str, shard_count: int) -> tuple[int, ...]:
    """'0-99,120,130-139' -> the sorted shard indices, each checked against the plan."""
    shards: set[int] = set()
    for part in text.replace(" ", "").split(","):
        match = _RANGE.match(part)
        if not match:
            raise UserError(f"--shards {text!r}: {part!r} is not a shard or a range; write "
                            "shard indices and ranges separated by commas, e.g. --shards 0-99,120")
        digits = [match[1]] + ([match[2]] if match[2] is not None else [])
        if any(len(number.lstrip("0")) > len(str(shard_count)) for number in digits):
            # Longer than any shard number (and past int()'s digit limit it would not parse).
            raise UserError(f"--shards {text[:40]!r}{'...' if len(text) > 40 else ''}: {part[:20]!r} is "
                            f"not in the plan, which has shards 0-{shard_count - 1}; pick shards "
                            "in that range")
        first = int(match[1])
        last = int(match[2]) if match[2] is not None else first
        if last < first:
            raise UserError(f"--shards {text!r}: range {part!r} ends before it starts; "
                            f"write it as {last}-{first}")
        if last >= shard_count:
            raise UserError(f"--shards {text!r}: shard {last} is not in the plan, which has "
                            f"shards 0-{shard_count - 1}; pick shards in that range")
        shards.update(range(first, last + 1))
    return tuple(sorted(shards))


def rank_shards(shard_count: int, rank: int, world_size: int) -> tuple[int, ...]:
    """Rank `rank` of `world_size`: shards rank, rank + world_size, ... (strided)."""
    return tuple(range(rank, shard_count, world_size))


def rank_from_environment(environ: Mapping[str, str] | None = None) -> tuple[int, int, str] | None:
    """(rank, world size, where from) set by torchrun (RANK, WORLD_SIZE) or a Slurm job array
    (SLURM_ARRAY_TASK_ID, SLURM_ARRAY_TASK_COUNT, counted from SLURM_ARRAY_TASK_MIN), or None."""
    environ = os.environ if environ is None else environ
    torchrun = None
    if "RANK" in environ and "WORLD_SIZE" in environ:
        torchrun = _int(environ, "RANK"), _int(environ, "WORLD_SIZE"), "RANK/WORLD_SIZE"
    array = _array_task(environ)
    if torchrun is not None and array is not None:
        # torchrun inside each task of a job array: every task's ranks took the same shards.
        (rank, size, _), (task, tasks, _) = torchrun, array
        return task * size + rank, tasks * size, "SLURM_ARRAY_TASK_ID/COUNT x RANK/WORLD_SIZE"
    return torchrun or array


def _array_task(environ: Mapping[str, str]) -> tuple[int, int, str] | None:
    if "SLURM_ARRAY_TASK_ID" in environ and "SLURM_ARRAY_TASK_COUNT" in environ:
        first = _int(environ, "SLURM_ARRAY_TASK_MIN") if "SLURM_ARRAY_TASK_MIN" in environ else 0
        # --array=0-6:2 runs tasks 0, 2, 4, 6: ranks 0 to 3.
        step = _int(environ, "SLURM_ARRAY_TASK_STEP") if "SLURM_ARRAY_TASK_STEP" in environ else 1
        offset = _int(environ, "SLURM_ARRAY_TASK_ID") - first
        if step < 1 or offset % step:
            raise UserError(f"SLURM_ARRAY_TASK_ID {environ['SLURM_ARRAY_TASK_ID']} is not on the "
                            f"array's steps (from {first} by {step}); number the tasks "
                            "0-N or 0-N:STEP, or pass --rank and --world-size")
        return (offset // step, _int(environ, "SLURM_ARRAY_TASK_COUNT"), "SLURM_ARRAY_TASK_ID/COUNT")
    return None


def _int(environ: Mapping[str, str], name: str) -> int:
    try:
        return int(environ[name])
    except ValueError:
        raise UserError(f"environment variable {name}={environ[name]!r} is not a whole number; "
                        "unset it or pass --rank and --world-size") from None


def choose_slice(shard_count: int, shards: str | None = None, rank: int | None = None,
                 world_size: int | None = None,
                 environ: Mapping[str, str] | None = None) -> Slice:
    """The shards a run builds: `--shards`, else `--rank/--world-size`, else the environment's
    rank (torchrun, Slurm array), else all of them."""
    if shards is not None and (rank is not None or world_size is not None):
        raise UserError(f"--shards {shards} with --rank/--world-size: give one of them "
                        "(--shards picks shards by index, --rank R --world-size W every W-th)")
    if shards is not None:
        return Slice(parse_shard_ranges(shards, shard_count), f"--shards {shards}")
    if (rank is None) != (world_size is None):
        given = f"--rank {rank}" if rank is not None else f"--world-size {world_size}"
        raise UserError(f"{given}: --rank and --world-size go together; pass both, e.g. "
                        "--rank 0 --world-size 4")
    source = "--rank/--world-size"
    if rank is None:
        found = rank_from_environment(environ)
        if found is None:
            return Slice(None)
        rank, world_size, source = found
    if world_size < 1:
        raise UserError(f"world size {world_size} (from {source}): there must be at least one "
                        "rank; pass --world-size 1 or more")
    if not 0 <= rank < world_size:
        hint = ("; check the job array's task ids and count" if "SLURM" in source
                else f"; pass --rank 0 to {world_size - 1}" if source.startswith("--")
                else "; check the launcher's RANK and WORLD_SIZE")
        raise UserError(f"rank {rank} of world size {world_size} (from {source}): the rank must "
                        f"be 0 to {world_size - 1}{hint}")
    return Slice(rank_shards(shard_count, rank, world_size),
                 f"rank {rank} of {world_size} (from {source})")
