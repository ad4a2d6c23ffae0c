"""Loader throughput: groups/s and views/s through synthgen.data's group loader.

    python bench/loader_throughput.py                        # quickstart dataset, 2 workers
    python bench/loader_throughput.py --data out/quickstart --workers 2 --views 2 4
    python bench/loader_throughput.py --augment none         # decode + resize only

Without --data it generates recipes/quickstart.yaml (80 groups of 4 JPEG views, 64x64, tiny
random model, ~10-30 s on 2 cores) into a temporary directory with the engine API. It then
times a train-mode epoch of --groups groups (resampled shards, shuffle buffer, k views per
group decoded and augmented in the workers, collated into batches) after one warm-up batch:
what a training loop waits for when the model is infinitely fast. views/s counts decoded and
augmented views (groups x k).
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def generate_quickstart(out_dir: Path) -> Path:
    from synthgen.engines.local import GenerateOptions, generate_dataset
    from synthgen.plan import make_plan
    from synthgen.recipe import load_recipe

    generate_dataset(make_plan(load_recipe(ROOT / "recipes" / "quickstart.yaml")), out_dir,
                     GenerateOptions(device="cpu", progress=False))
    return out_dir


def measure(data: Path, views: int, workers: int, batch_size: int, resolution: int, groups: int,
            augment: str) -> dict:
    from synthgen.data import group_loader

    loader = group_loader(data, views=views, batch_size=batch_size, resolution=resolution,
                          augment=augment, num_workers=workers, epoch_groups=groups + batch_size)
    batches = iter(loader)
    next(batches)  # warm-up: worker start, first shard open
    started = time.perf_counter()
    seen = sum(len(batch.group_id) for batch in batches)
    seconds = time.perf_counter() - started
    return {"views": views, "workers": workers, "groups": seen, "seconds": seconds,
            "groups_per_second": seen / seconds, "views_per_second": seen * views / seconds}


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=None, help="dataset dir (default: quickstart)")
    parser.add_argument("--views", type=int, nargs="+", default=[2, 4], help="k views per group")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=32, help="groups per batch")
    parser.add_argument("--resolution", type=int, default=64)
    parser.add_argument("--groups", type=int, default=2000, help="groups timed per setting")
    parser.add_argument("--augment", default="simclr", choices=["simclr", "none"])
    args = parser.parse_args(argv)

    results = []
    with tempfile.TemporaryDirectory(prefix="loader-bench-") as scratch:
        data = args.data
        if data is None:
            started = time.perf_counter()
            data = generate_quickstart(Path(scratch) / "quickstart")
            print(f"generated recipes/quickstart.yaml in {time.perf_counter() - started:.0f} s")
        for views in args.views:
            result = measure(data, views, args.workers, args.batch_size, args.resolution,
                             args.groups, args.augment)
            results.append(result)
            print(f"k={views}, {args.workers} workers, {args.augment} at {args.resolution} px, "
                  f"batch {args.batch_size}: {result['groups']} groups in {result['seconds']:.1f} s "
                  f"= {result['groups_per_second']:.0f} groups/s, "
                  f"{result['views_per_second']:.0f} views/s", flush=True)
    return results


if __name__ == "__main__":
    main()
