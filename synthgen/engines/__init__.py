"""Engines: ways to run a plan's shards, all plain functions `(plan, out_dir, options) ->
RunSummary`, chosen by name here and nowhere else.

- `local` (`local.generate_dataset`): one worker in this process, on one device;
- `processes` (`processes.generate_with_processes`): one worker process per GPU (or CPU
  worker) on this machine;
- `ray` (`ray_engine.generate_with_ray`): one Ray actor per GPU (or CPU) on a Ray cluster,
  local or remote.

Every engine builds the same shards with the same `ShardWorker`, so the bytes do not depend
on the engine; each takes `options.shards` (a slice for a job array or torchrun rank) and
writes the manifest only once every shard of the dataset is done.
"""

from __future__ import annotations

import importlib

from synthgen.errors import UserError
from synthgen.store import open_store

ENGINES = {
    "local": ("synthgen.engines.local", "generate_dataset"),
    "processes": ("synthgen.engines.processes", "generate_with_processes"),
    "ray": ("synthgen.engines.ray_engine", "generate_with_ray"),
}


def engine_name(engine: str, workers: int | None) -> str:
    """The engine for the CLI's `--engine` and `--workers`: `local` with several workers
    is the `processes` engine."""
    if engine == "local" and workers is not None and workers > 1:
        return "processes"
    return engine


def run_engine(name: str, plan, out_dir, options):
    """Run `plan` into `out_dir` (a path, a supported URL or a `DatasetStore`) with the engine
    called `name`; returns its `RunSummary`."""
    if name not in ENGINES:
        raise UserError(f"--engine {name!r} is not an engine; use one of {', '.join(ENGINES)}")
    from synthgen.write import releasing_unused_claim

    module, function = ENGINES[name]
    store = open_store(out_dir)
    with releasing_unused_claim(store, plan.recipe):
        return getattr(importlib.import_module(module), function)(plan, store, options)
