"""Shards on disk: samples, tar files, per-shard stats, the manifest, and output-dir state.

What holds for a dataset directory:
- a `shard-NNNNNN.tar` is complete: it is written under a temporary name and renamed;
- a shard is *done* only when its `.stats.json` exists, which is written after the rename;
- `manifest.json` exists only when every planned shard is done;
- `recipe.json` names the recipe the directory belongs to; another recipe is refused.
Tar members have fixed order, mtime, owner and mode, so equal inputs give equal bytes.

Several workers (processes, Ray actors, Slurm array tasks, on one machine or sharing a
filesystem) may write into one directory at once:
- a shard is *published* with `os.link(temporary, final)`, which fails when the final name
  exists, so of two workers racing on one shard exactly one publishes; the loser discards its
  temporary file and writes nothing else. Only the publisher writes the shard's stats file.
  (The filesystem must support hard links: local disks, NFS, Lustre, GPFS and CephFS do.)
- temporary names carry host and pid (`.NAME.HOST-PID-RANDOM.tmp`); `prepare_output_dir`
  removes only stale ones (a dead pid on this host and a minute old, or older than
  `STALE_TEMPORARY_SECONDS`), never another live worker's;
- `prepare_output_dir` removes unfinished tars only of the shards its own run will build.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import platform
import re
import secrets
import socket
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from synthgen import __version__
from synthgen.errors import UserError
from synthgen.plan import GroupPlan, Plan, shard_name, stored_size, summarize
from synthgen.recipe import Recipe, canonical_json

MANIFEST = "manifest.json"
RECIPE_FILE = "recipe.json"
DATASET_FORMAT = "synthgen-dataset/1"
_OWNED_FILE = re.compile(r"^(shard-\d{6}\.(tar|stats\.json)|manifest\.json|recipe\.json|\..*\.tmp)$")
# `.NAME.HOST-PID-RANDOM.tmp`: who wrote a temporary file, so only stale ones are removed.
_TEMPORARY_OWNER = re.compile(r"^\..+\.(?P<host>[A-Za-z0-9_-]+)-(?P<pid>\d+)-[0-9a-f]{16}\.tmp$")
# A temporary file lives for one write (seconds at most); one this old has no writer left.
STALE_TEMPORARY_SECONDS = 15 * 60
# A dead pid alone is not proof: a process in another PID namespace (a container) on the same
# host looks dead from here, so its file must also be this old.
DEAD_WRITER_GRACE_SECONDS = 60
_PIL_FORMATS = {"jpg": "JPEG", "png": "PNG", "webp": "WEBP"}


def stats_name(shard: int) -> str:
    return f"shard-{shard:06d}.stats.json"


def host_tag() -> str:
    return re.sub(r"[^A-Za-z0-9_-]", "_", socket.gethostname()) or "host"


def temporary_path(path: Path) -> Path:
    """A fresh temporary name beside `path` that says which host and process writes it."""
    # Not mkstemp, whose 0600 mode would survive the rename.
    return path.with_name(f".{path.name}.{host_tag()}-{os.getpid()}-{secrets.token_hex(8)}.tmp")


def _write_temporary(path: Path, data: bytes) -> Path:
    temporary = temporary_path(path)
    try:
        with open(temporary, "xb") as stream:
            stream.write(data)
            stream.flush()
            os.fsync(stream.fileno())
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise
    return temporary


def write_atomically(path: Path, data: bytes) -> None:
    """Write to a temporary file beside `path`, flush to disk, then rename over `path`.

    A reader sees either no file or the whole file; two writers racing on one path leave
    exactly one whole file (the last one's).
    """
    temporary = _write_temporary(path, data)
    try:
        os.replace(temporary, path)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise


def publish_once(path: Path, data: bytes) -> bool:
    """Create `path` holding `data` unless it exists; True if this call created it.

    The whole file appears at once (`os.link` of a flushed temporary file), and `os.link`
    fails when `path` exists, so of several writers racing on one path exactly one wins;
    the others' data is discarded and the existing file is left as it is.
    """
    temporary = _write_temporary(path, data)
    try:
        os.link(temporary, path)
        return True
    except FileExistsError:
        return False
    finally:
        temporary.unlink(missing_ok=True)


def encode_image(pixels: np.ndarray, recipe: Recipe) -> bytes:
    """uint8 (H, W, 3) -> image file bytes in the recipe's format and stored size."""
    image = Image.fromarray(pixels, "RGB")
    size = stored_size(recipe)
    if image.size != size:
        image = image.resize(size, Image.Resampling.LANCZOS)
    buffer = io.BytesIO()
    fmt = recipe.output.format
    if fmt == "jpg":
        image.save(buffer, "JPEG", quality=recipe.output.quality)
    elif fmt == "webp":
        image.save(buffer, "WEBP", quality=recipe.output.quality, method=4)
    else:
        image.save(buffer, "PNG", compress_level=6)
    return buffer.getvalue()


def sample_metadata(group: GroupPlan, recipe: Recipe, model_info: dict,
                    view_records: list[dict] | None = None) -> dict:
    """Everything needed to reproduce and audit one group, as stored in its `json` member.

    `view_records` (one dict per view) add what sampling did beyond the plan.
    """
    extension = recipe.output.format
    records = view_records or [{} for _ in group.views]
    views = [{**view.to_json(), **record, "file": f"view{view.view}.{extension}"}
             for view, record in zip(group.views, records, strict=True)]
    model = recipe.model.model_dump(mode="json", exclude={"negative_prompt", "trust_remote_code"})
    return {
        "group_id": group.group_id,
        "index": group.index,
        "shard": group.shard,
        "class_name": group.class_name,
        "class_index": group.class_index,
        "corner_case": group.corner_case,
        "tags": list(group.tags),
        "template": group.template,
        "slots": dict(group.slots),
        "balance": dict(group.balance),
        "view_strategy": list(group.view_strategy),
        "views": views,
        "model": {**model, **model_info},
        "image": {"format": extension, "size": list(stored_size(recipe)),
                  "quality": recipe.output.quality if extension != "png" else None},
        "recipe": {"name": recipe.name, "seed": recipe.seed, "hash": recipe.recipe_hash},
        "synthgen_version": __version__,
    }


def build_sample(group: GroupPlan, images: list[bytes], metadata: dict, extension: str) -> dict:
    """One webdataset sample: key, one file per view, json metadata and the class index."""
    sample = {"__key__": group.group_id, "json": canonical_json(metadata),
              "cls": str(group.class_index).encode()}
    for view, data in zip(group.views, images, strict=True):
        sample[f"view{view.view}.{extension}"] = data
    return sample


@dataclass(frozen=True)
class ShardStats:
    """What a finished shard holds; stored as `shard-NNNNNN.stats.json`."""

    shard: int
    samples: int
    images: int
    bytes: int
    sha256: str
    nonfinite_views: tuple[tuple[str, int], ...]
    model: dict
    rejections: dict[str, int]

    def to_json(self) -> dict:
        return {"shard": self.shard, "name": shard_name(self.shard), "samples": self.samples,
                "images": self.images, "bytes": self.bytes, "sha256": self.sha256,
                "nonfinite_views": [list(item) for item in self.nonfinite_views],
                "rejections": dict(sorted(self.rejections.items())), "model": self.model}


@dataclass(frozen=True)
class PublishResult:
    """What `publish_shard` did: `published` is False when another worker had published first."""

    stats: ShardStats
    published: bool


def write_shard(out_dir: Path, shard: int, samples: list[dict], model_info: dict,
                nonfinite_views: tuple[tuple[str, int], ...] = ()) -> ShardStats:
    """Write one shard (tar, then stats last), replacing any earlier one, and return its stats.

    For one writer; where several workers may build the same shard, use `publish_shard`.
    `nonfinite_views` lists (group id, view) whose model output had NaN/inf and was stored
    black: recorded per item so the run goes on and the audit can find them.
    """
    data, stats = shard_tar(shard, samples, model_info, nonfinite_views)
    write_atomically(out_dir / shard_name(shard), data)
    write_atomically(out_dir / stats_name(shard), canonical_json(stats.to_json()) + b"\n")
    return stats


def publish_shard(out_dir: Path, shard: int, samples: list[dict], model_info: dict,
                  nonfinite_views: tuple[tuple[str, int], ...] = ()) -> PublishResult:
    """Publish one shard unless another worker has: tar first (by `os.link`), then stats.

    Exactly one of several workers racing on a shard publishes it and writes its stats; the
    others get `published=False` and write nothing (their stats are what the shard would have
    had). A tar already there is never replaced: a rerun removes unfinished ones first
    (`prepare_output_dir`, `remove_unfinished_shard`).
    """
    data, stats = shard_tar(shard, samples, model_info, nonfinite_views)
    published = publish_once(out_dir / shard_name(shard), data)
    if published:
        # Stats last: a shard counts as done only once this file exists.
        write_atomically(out_dir / stats_name(shard), canonical_json(stats.to_json()) + b"\n")
    return PublishResult(stats=stats, published=published)


def shard_tar(shard: int, samples: list[dict], model_info: dict,
              nonfinite_views: tuple[tuple[str, int], ...] = ()) -> tuple[bytes, ShardStats]:
    """The shard's tar bytes and its stats."""
    import webdataset

    buffer = io.BytesIO()
    # mtime 0, fixed owner and mode, members sorted by name inside each sample: equal
    # samples give equal bytes whoever writes them.
    with webdataset.TarWriter(buffer, user="synthgen", group="synthgen", mode=0o444,
                              encoder=False, mtime=0) as writer:
        for sample in samples:
            writer.write(sample)
    data = buffer.getvalue()
    rejections: dict[str, int] = {}
    for sample in samples:
        for view in json.loads(sample["json"]).get("views", ()):
            for attribute, count in view.get("rejections", {}).items():
                rejections[attribute] = rejections.get(attribute, 0) + count
    stats = ShardStats(
        shard=shard, samples=len(samples),
        images=sum(1 for s in samples for k in s if k.startswith("view")),
        bytes=len(data), sha256=hashlib.sha256(data).hexdigest(),
        nonfinite_views=nonfinite_views, model=model_info, rejections=rejections,
    )
    return data, stats


def read_stats(out_dir: Path, shard: int) -> dict | None:
    path = out_dir / stats_name(shard)
    if not path.is_file():
        return None
    return json.loads(path.read_text())


def shard_done(out_dir: Path, shard: int) -> bool:
    """A shard is done when its stats file exists and its tar has the size the stats record."""
    stats = read_stats(out_dir, shard)
    tar_path = out_dir / shard_name(shard)
    return bool(stats) and tar_path.is_file() and tar_path.stat().st_size == stats["bytes"]


def missing_shards(out_dir: Path, plan: Plan) -> list[int]:
    """The planned shards that are not done in `out_dir`, in order."""
    return [shard for shard in range(plan.shard_count) if not shard_done(out_dir, shard)]


def format_shard_ranges(shards) -> str:
    """[0, 1, 2, 5, 7, 8] -> '0-2,5,7-8' (the syntax `--shards` reads)."""
    ordered = sorted(set(shards))
    parts = []
    start = previous = None
    for shard in ordered + [None]:
        if start is not None and (shard is None or shard != previous + 1):
            parts.append(str(start) if start == previous else f"{start}-{previous}")
            start = None
        if shard is not None and start is None:
            start = shard
        previous = shard
    return ",".join(parts)


def remove_unfinished_shard(out_dir: Path, shard: int) -> None:
    """Remove what a worker killed mid-publish left of `shard` (a tar without stats).

    Only the run that is about to build `shard`, with no other live worker on it, may call
    this: a tar without stats is also what a live publisher shows between its two writes.
    """
    if not shard_done(out_dir, shard):
        (out_dir / stats_name(shard)).unlink(missing_ok=True)
        (out_dir / shard_name(shard)).unlink(missing_ok=True)


def remove_stale_temporaries(out_dir: Path, now: float | None = None) -> list[str]:
    """Remove temporary files no live writer will rename; returns their names.

    Stale: the name carries no writer (older synthgen versions), the file is older than
    `STALE_TEMPORARY_SECONDS`, or its writer is a process of this host that no longer runs
    and the file is older than `DEAD_WRITER_GRACE_SECONDS`.
    A live worker's temporary file (on this host or another) is left alone.
    """
    now = time.time() if now is None else now
    host = host_tag()
    removed = []
    for entry in out_dir.iterdir():
        if not (entry.name.startswith(".") and entry.name.endswith(".tmp")):
            continue
        owner = _TEMPORARY_OWNER.match(entry.name)
        try:
            age = now - entry.stat().st_mtime
        except FileNotFoundError:  # its writer renamed it meanwhile
            continue
        stale = (owner is None or age > STALE_TEMPORARY_SECONDS
                 or (age > DEAD_WRITER_GRACE_SECONDS and owner["host"] == host
                     and not _process_alive(int(owner["pid"]))))
        if stale:
            entry.unlink(missing_ok=True)
            removed.append(entry.name)
    return removed


def _process_alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, but another user's
        return True
    return True


def prepare_output_dir(out_dir: Path, plan: Plan, overwrite: bool,
                       shards: tuple[int, ...] | None = None) -> set[int]:
    """Make `out_dir` ready for `plan` and return the shards already done there (all of them).

    Refuses a directory made from another recipe (unless `overwrite`), removes stale
    temporary files and the unfinished files of the shards this run will build (`shards`,
    default all), and records the recipe. Only files synthgen writes are ever removed.
    Safe when several workers prepare one directory at once, as long as none passes
    `overwrite` (which deletes the dataset) and no two runs build the same shards.
    """
    recipe = plan.recipe
    if out_dir.exists() and not out_dir.is_dir():
        raise UserError(f"--out {out_dir}: exists and is not a directory; choose another path")
    out_dir.mkdir(parents=True, exist_ok=True)
    recipe_path = out_dir / RECIPE_FILE
    if overwrite:
        for entry in out_dir.iterdir():
            if entry.is_file() and _OWNED_FILE.match(entry.name):
                entry.unlink(missing_ok=True)
    # 1. Claim the directory for this recipe; of workers starting at once, one writes it.
    if not publish_once(recipe_path, _recipe_record(recipe)):
        existing = json.loads(recipe_path.read_text()).get("recipe_hash")
        if existing != recipe.recipe_hash:
            raise UserError(
                f"--out {out_dir}: holds a dataset made from a different recipe (hash "
                f"{str(existing)[:12]}, this recipe {recipe.recipe_hash[:12]}); choose another "
                "--out, or pass --overwrite to delete that dataset and start over")
    # 2. Debris of killed writers: only temporaries no live process will rename.
    remove_stale_temporaries(out_dir)
    # 3. Unfinished shards of this run's own selection (a tar renamed before its stats).
    selected = range(plan.shard_count) if shards is None else shards
    done = {shard for shard in range(plan.shard_count) if shard_done(out_dir, shard)}
    for shard in selected:
        if shard not in done:
            remove_unfinished_shard(out_dir, shard)
    if len(done) < plan.shard_count:
        (out_dir / MANIFEST).unlink(missing_ok=True)
    return done


def finalize_dataset(out_dir: Path) -> dict:
    """Write `manifest.json` for the dataset in `out_dir` once every shard is done.

    The plan is rebuilt from the recipe recorded in `recipe.json`, so any worker (or a
    person, with `synthgen finalize DIR`) can finish a dataset built by slices.
    """
    from synthgen.plan import make_plan

    recipe_path = out_dir / RECIPE_FILE
    if not recipe_path.is_file():
        raise UserError(f"{out_dir}: has no {RECIPE_FILE}, so it is not a synthgen dataset "
                        "directory; pass the --out directory of a synthgen generate run")
    record = json.loads(recipe_path.read_text())
    recipe = Recipe.model_validate(record["recipe"])
    if recipe.recipe_hash != record.get("recipe_hash"):
        raise UserError(f"{recipe_path}: the recorded recipe hashes to {recipe.recipe_hash[:12]}, "
                        f"not the recorded {str(record.get('recipe_hash'))[:12]} (written by "
                        "another synthgen version?); finalize with the version that generated it")
    plan = make_plan(recipe)
    missing = missing_shards(out_dir, plan)
    if missing:
        raise UserError(
            f"{out_dir}: {len(missing)} of {plan.shard_count} shards are not finished "
            f"(shards {format_shard_ranges(missing)}); build them with synthgen generate RECIPE "
            f"--out {out_dir} --shards {format_shard_ranges(missing)}, then finalize again")
    return write_manifest(out_dir, plan)


def _recipe_record(recipe: Recipe) -> bytes:
    return json.dumps({"recipe_hash": recipe.recipe_hash, "recipe": recipe.model_dump(mode="json")},
                      indent=2, sort_keys=True).encode() + b"\n"


def library_versions() -> dict:
    import diffusers
    import torch
    import transformers
    import webdataset

    return {"synthgen": __version__, "torch": torch.__version__,
            "diffusers": diffusers.__version__, "transformers": transformers.__version__,
            "webdataset": getattr(webdataset, "__version__", "unknown"),
            "python": platform.python_version()}


def write_manifest(out_dir: Path, plan: Plan) -> dict:
    """Assemble `manifest.json` from the stats files alone; refuses while a shard is missing."""
    shards = []
    for shard in range(plan.shard_count):
        stats = read_stats(out_dir, shard)
        if stats is None:
            raise UserError(f"{out_dir}: shard {shard_name(shard)} is not finished; "
                            "rerun synthgen generate to complete the dataset")
        shards.append(stats)
    manifest = {
        "format": DATASET_FORMAT,
        "recipe_hash": plan.recipe.recipe_hash,
        "recipe": plan.recipe.model_dump(mode="json"),
        "plan": summarize(plan),
        "model": shards[0]["model"],
        "versions": library_versions(),
        "totals": {"shards": len(shards), "samples": sum(s["samples"] for s in shards),
                   "images": sum(s["images"] for s in shards),
                   "bytes": sum(s["bytes"] for s in shards),
                   "nonfinite_views": sum(len(s["nonfinite_views"]) for s in shards),
                   "rejections": _sum_counts(s.get("rejections", {}) for s in shards)},
        "shards": [{key: s[key] for key in ("name", "samples", "images", "bytes", "sha256")}
                   for s in shards],
    }
    write_atomically(out_dir / MANIFEST, json.dumps(manifest, indent=2, sort_keys=True).encode() + b"\n")
    return manifest


def _sum_counts(counts) -> dict[str, int]:
    total: dict[str, int] = {}
    for mapping in counts:
        for key, value in mapping.items():
            total[key] = total.get(key, 0) + value
    return dict(sorted(total.items()))
