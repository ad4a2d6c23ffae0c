"""Helpers for the engine tests: run a recipe with an engine, compare datasets byte for byte.

(Not in conftest.py: two conftest modules cannot both be imported by that name.)
"""

from __future__ import annotations

import hashlib
import threading
from dataclasses import replace
from pathlib import Path

from synthgen.engines import run_engine
from synthgen.generate.identity import weights_digest
from synthgen.engines.local import GenerateOptions
from synthgen.plan import make_plan
from synthgen.recipe import load_recipe
from synthgen.write import (PublishResult, build_sample, finalize_dataset, prepare_output_dir,
                            publish_shard, sample_metadata)

QUIET = GenerateOptions(progress=False, device="cpu", batch_size=3)


def run(engine: str, recipe_path: Path, out_dir: Path, **options):
    plan = make_plan(load_recipe(recipe_path))
    return plan, run_engine(engine, plan, out_dir, replace(QUIET, **options))


def dataset_bytes(out_dir: Path, manifest: bool = True) -> dict[str, str]:
    """sha256 of every shard (and of the manifest)."""
    files = sorted(out_dir.glob("shard-*.tar"))
    if manifest:
        files.append(out_dir / "manifest.json")
    return {f.name: hashlib.sha256(f.read_bytes()).hexdigest() for f in files}


def model_info(plan) -> dict:
    """What a worker of `plan` records about its model: here only the device and the weights
    digest (which publishing checks against recipe.json)."""
    return {"device_type": "cpu", "weights": weights_digest(plan.recipe.model)}


def shard_samples(plan, shard: int) -> list[dict]:
    """The samples of one shard with stand-in image bytes (no model needed)."""
    return [build_sample(group, [f"{group.group_id}/{v.view}".encode() for v in group.views],
                         sample_metadata(group, plan.recipe, model_info(plan)), "png")
            for group in plan.shard_groups(shard)]


def finished_dataset(location, plan) -> None:
    """`plan`'s dataset at `location`, every shard of stand-in bytes, finalized."""
    prepare_output_dir(location, plan, overwrite=False)
    for shard in range(plan.shard_count):
        assert publish_shard(location, shard, shard_samples(plan, shard), model_info(plan)).published
    finalize_dataset(location)


def race_publishers(location, plan, shard: int, racers: int) -> list[PublishResult]:
    """`racers` threads publish the same shard at once (released together by a barrier)."""
    samples = shard_samples(plan, shard)
    start = threading.Barrier(racers)
    results = []

    def publish():
        start.wait()
        results.append(publish_shard(location, shard, samples, model_info(plan)))

    threads = [threading.Thread(target=publish) for _ in range(racers)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return results
