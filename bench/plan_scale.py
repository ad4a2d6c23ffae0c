"""How planning scales with the size of a recipe: the ImageNet-100 recipe's templates and model
with CLASSES classes of GROUPS groups of VIEWS views (no GPU, no model loaded).

    python bench/plan_scale.py --classes 1000 --groups 1250 --views 4 --groups-per-shard 250

Prints the seconds of reading the recipe, fixing the plan's group order (`make_plan`), drawing
one shard (all a worker or job-array task that builds one shard plans), and what `synthgen plan`
does: the summary's one pass over every group, with --jsonl also writing each group's line (to
a byte counter here, not a file); and the process's peak resident size after each. The
summary's pass is what `finalize` and the slice that writes the manifest pay too.
"""

from __future__ import annotations

import argparse
import resource
import sys
import time
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from synthgen.plan import jsonl_line, make_plan, summarize  # noqa: E402
from synthgen.recipe import parse_recipe  # noqa: E402

RECIPE = Path(__file__).resolve().parents[1] / "recipes" / "imagenet100-sd-turbo.yaml"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--classes", type=int, default=1000)
    parser.add_argument("--groups", type=int, default=1250)
    parser.add_argument("--views", type=int, default=4)
    parser.add_argument("--groups-per-shard", type=int, default=250)
    parser.add_argument("--jsonl", action="store_true", help="also time writing the plan as JSON lines, as plan --jsonl does")
    args = parser.parse_args(argv)
    recipe = yaml.safe_load(RECIPE.read_text())
    recipe["name"] = "plan-scale"
    recipe["classes"] = [{"name": f"class number {index}", "groups": args.groups}
                         for index in range(args.classes)]
    recipe["views"] = {"count": args.views, "strategy": "seeds"}
    recipe["output"]["groups_per_shard"] = args.groups_per_shard
    text = yaml.safe_dump(recipe, sort_keys=False)

    started = time.perf_counter()
    parsed = parse_recipe(text)
    read = time.perf_counter() - started
    started = time.perf_counter()
    plan = make_plan(parsed)
    ordered = time.perf_counter() - started
    print(f"{args.classes} classes x {args.groups} groups x {args.views} views = {plan.image_count:,} images, "
          f"{plan.shard_count:,} shards")
    print(f"read and validate: {read:.2f} s; group order: {ordered:.1f} s; "
          f"peak resident size {peak_mib():.0f} MiB")
    started = time.perf_counter()
    plan.shard_groups(plan.shard_count - 1)
    print(f"one shard ({args.groups_per_shard} groups): {time.perf_counter() - started:.2f} s; "
          f"peak resident size {peak_mib():.0f} MiB")
    written = 0

    def write(group) -> None:
        nonlocal written
        written += len(jsonl_line(group).encode())

    started = time.perf_counter()
    summarize(plan, each_group=write if args.jsonl else None)
    what = "summary and --jsonl" if args.jsonl else "summary"
    print(f"{what} (every group drawn once): {time.perf_counter() - started:.1f} s"
          + (f", {written / 2**20:.0f} MiB of JSON lines" if args.jsonl else "")
          + f"; peak resident size {peak_mib():.0f} MiB")

def peak_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**10  # Linux reports KiB


if __name__ == "__main__":
    main()
