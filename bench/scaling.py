"""Shards per minute with 1 and 2 workers (and optionally 2 Ray actors) on this machine.

    python bench/scaling.py [--shards 24] [--size 64] [--ray]

The tiny builtin model on the CPU (`--device cpu`, one PyTorch thread per worker): every run
builds the same recipe into a fresh directory, and the shards of all runs are checked to be
byte-identical. "wall" counts everything (process start, model load, writing); "steady"
counts from the first finished shard to the last, i.e. throughput once workers are loaded.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import yaml


def recipe(shards: int, groups_per_shard: int, size: int) -> dict:
    groups = shards * groups_per_shard
    return {
        "name": "scaling",
        "seed": 11,
        "model": {"id": "builtin:tiny-random", "steps": 2, "width": size, "height": size},
        "slots": {"colour": ["red", "green", "blue", "yellow"]},
        "classes": [{"name": "circle", "templates": ["a {colour} circle"], "groups": groups // 2},
                    {"name": "square", "templates": ["a {colour} square"],
                     "groups": groups - groups // 2}],
        "views": {"count": 2},
        "output": {"groups_per_shard": groups_per_shard, "format": "png"},
    }


def run(engine: str, workers: int, recipe_path: Path, out_dir: Path) -> dict:
    from synthgen.engines import run_engine
    from synthgen.engines.local import GenerateOptions
    from synthgen.plan import make_plan
    from synthgen.recipe import load_recipe

    plan = make_plan(load_recipe(recipe_path))
    # One thread per worker (the default is 2): workers, not threads, are what this compares.
    options = GenerateOptions(device="cpu", batch_size=8, progress=False, workers=workers,
                              cpu_threads=1)
    started = time.perf_counter()
    summary = run_engine(engine, plan, out_dir, options)
    wall = time.perf_counter() - started
    finished = sorted(p.stat().st_mtime for p in out_dir.glob("shard-*.stats.json"))
    steady = (len(finished) - 1) / (finished[-1] - finished[0]) * 60 if len(finished) > 1 else 0
    digest = hashlib.sha256()
    for shard in sorted(out_dir.glob("shard-*.tar")):
        digest.update(shard.read_bytes())
    return {"engine": engine, "workers": workers, "shards": summary.shards_written,
            "wall_s": wall, "per_min_wall": summary.shards_written / wall * 60,
            "per_min_steady": steady, "sha256": digest.hexdigest()}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shards", type=int, default=24)
    parser.add_argument("--groups-per-shard", type=int, default=8)
    parser.add_argument("--size", type=int, default=64, help="image width and height")
    parser.add_argument("--ray", action="store_true", help="also 2 actors on a local Ray")
    args = parser.parse_args()

    import diffusers
    import torch

    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, "
          f"load average {os.getloadavg()[0]:.2f}; python {platform.python_version()}, torch "
          f"{torch.__version__}, diffusers {diffusers.__version__}")
    print(f"recipe: {args.shards} shards x {args.groups_per_shard} groups x 2 views, "
          f"builtin:tiny-random {args.size}x{args.size}, 2 steps, --device cpu, batch size 8")
    runs = [("local", 1), ("processes", 2)] + ([("ray", 2)] if args.ray else [])
    results = []
    with tempfile.TemporaryDirectory() as scratch:
        recipe_path = Path(scratch) / "scaling.yaml"
        recipe_path.write_text(yaml.safe_dump(recipe(args.shards, args.groups_per_shard,
                                                     args.size)))
        for engine, workers in runs:
            results.append(run(engine, workers, recipe_path, Path(scratch) / f"{engine}-{workers}"))
            r = results[-1]
            print(f"{engine:>9} x{workers}: {r['shards']} shards in {r['wall_s']:6.1f} s = "
                  f"{r['per_min_wall']:6.1f} shards/min wall, {r['per_min_steady']:6.1f} "
                  "shards/min steady", flush=True)
    base = results[0]
    for r in results[1:]:
        print(f"speed-up {r['engine']} x{r['workers']} over 1 worker: "
              f"{r['per_min_wall'] / base['per_min_wall']:.2f}x wall, "
              f"{r['per_min_steady'] / base['per_min_steady']:.2f}x steady")
    identical = len({r["sha256"] for r in results}) == 1
    print(f"shards byte-identical across runs: {'yes' if identical else 'NO'}")
    print(f"load average after: {os.getloadavg()[0]:.2f}")
    return 0 if identical else 1


if __name__ == "__main__":
    sys.exit(main())
