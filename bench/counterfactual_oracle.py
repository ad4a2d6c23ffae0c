"""Minimal counterfactuals on builtin:world-sd, judged by the world oracle (docs/WORLD.md's
"Counterfactual views" figures).

    python bench/counterfactual_oracle.py --out out/counterfactual-colours
    python bench/counterfactual_oracle.py --out out/counterfactual-colours --control

1. Generate the recipe (default recipes/counterfactual-colours.yaml: views share one noise and
   vary only the colour) into `--out` through the library's `generate_dataset`, on the CPU
   (a finished dataset there is read, not made again). `--control` also generates the same
   recipe with an own seed per view (strategy [slots, seeds]) into `--out`-own-noise: the
   same prompts, so it shows how much of what holds is the shared noise.
2. The oracle reads every view (shape, colour, size, centre x, y).
3. Edit success, per view, for each attribute a view's json says it varied (`views[i].slots`;
   the oracle reads colour and size): the oracle reads the value the view was given.
   Held, per group, for each attribute it does not vary: shape (the class), colour and size
   read the same in all the group's views; position: every view's centre within
   `--tolerance` pixels of every other's in x and in y (at 32 px; the oracle's mean position
   error is 0.2 px). "all held": every held attribute at once. `position_spread_px`: 10th,
   50th, 90th percentile over groups of the larger of the views' x and y ranges.

Prints one JSON object: counts, rates and 95% Wilson intervals. The oracle reads 32x32 renders
of the procedural world; on other models or sizes its readings mean little.
"""

from __future__ import annotations

import argparse
import io
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from synthgen.audit.metrics import wilson_interval  # noqa: E402
from synthgen.engines.local import GenerateOptions, generate_dataset  # noqa: E402
from synthgen.inspection import iter_samples, load_manifest, shard_paths  # noqa: E402
from synthgen.plan import make_plan  # noqa: E402
from synthgen.recipe import Recipe, load_recipe  # noqa: E402
from synthgen.world.oracle import load_oracle  # noqa: E402

DEFAULT_RECIPE = Path(__file__).resolve().parents[1] / "recipes" / "counterfactual-colours.yaml"
SIDE = 32  # pixels: the oracle's input size, and the unit of --tolerance
READ = ("colour", "size")  # attributes the oracle reads that a recipe slot can name


def own_noise(recipe: Recipe) -> Recipe:
    """The same recipe with an own seed per view: the control for what shared noise holds."""
    data = recipe.model_dump(mode="json")
    data["name"] = f"{recipe.name}-own-noise"
    data["views"]["strategy"] = [*recipe.views.strategy, "seeds"]
    return Recipe.model_validate(data)


def generate(recipe: Recipe, out: Path, threads: int) -> float:
    """Seconds spent generating (0 when `out` already holds the finished dataset)."""
    if (out / "manifest.json").is_file():
        return 0.0
    started = time.perf_counter()
    generate_dataset(make_plan(recipe), out,
                     GenerateOptions(progress=False, device="cpu", cpu_threads=threads))
    return time.perf_counter() - started


def dataset_groups(dataset_dir: Path) -> list[tuple[dict, np.ndarray]]:
    """(sample json, uint8 (views, 32, 32, 3) pixels) of every group, in shard order."""
    groups = []
    for sample in iter_samples(shard_paths(dataset_dir, load_manifest(dataset_dir))):
        metadata = json.loads(sample["json"])
        pixels = [np.asarray(Image.open(io.BytesIO(sample[view["file"]])).convert("RGB"))
                  for view in metadata["views"]]
        groups.append((metadata, np.stack(pixels)))
    return groups


def rate(hits: int, total: int) -> dict:
    low, high = wilson_interval(hits, total)
    return {"hits": hits, "total": total, "rate": round(hits / total, 4) if total else None,
            "ci95": [round(low, 4), round(high, 4)]}


def judge(groups: list[tuple[dict, np.ndarray]], oracle, tolerance_px: float) -> dict:
    readings = oracle.read(np.concatenate([pixels for _, pixels in groups]))
    edited: dict[str, list[bool]] = {}
    held: dict[str, list[bool]] = {}
    spreads = []  # per group: the larger of its views' x and y ranges, in pixels
    position = 0
    for metadata, pixels in groups:
        views = readings[position:position + len(pixels)]
        position += len(pixels)
        varied = set().union(*(view.get("slots") or {} for view in metadata["views"]))
        for attribute in READ:
            if attribute in varied:
                edited.setdefault(attribute, []).extend(
                    reading[attribute] == view["slots"][attribute]
                    for reading, view in zip(views, metadata["views"], strict=True))
        group_held = {"shape": len({r["shape"] for r in views}) == 1}
        group_held.update({attribute: len({r[attribute] for r in views}) == 1
                           for attribute in READ if attribute not in varied})
        spread = max((max(r[axis] for r in views) - min(r[axis] for r in views)) * SIDE
                     for axis in ("x", "y"))
        spreads.append(spread)
        group_held["position"] = spread <= tolerance_px
        group_held["all held"] = all(group_held.values())
        for attribute, kept in group_held.items():
            held.setdefault(attribute, []).append(kept)
    return {"groups": len(groups), "views": len(readings),
            "edit_success": {a: rate(sum(hits), len(hits)) for a, hits in edited.items()},
            "held": {a: rate(sum(kept), len(kept)) for a, kept in held.items()},
            "position_spread_px": {f"p{q}": round(float(np.percentile(spreads, q)), 2)
                                   for q in (10, 50, 90)}}


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--recipe", type=Path, default=DEFAULT_RECIPE)
    parser.add_argument("--out", type=Path, required=True, help="dataset directory")
    parser.add_argument("--control", action="store_true",
                        help="also the same recipe with an own seed per view")
    parser.add_argument("--tolerance", type=float, default=2.0,
                        help="pixels (at 32 px) two views' centres may differ by, in x and in y")
    parser.add_argument("--threads", type=int, default=1, help="CPU threads for generation")
    parser.add_argument("--oracle", type=Path, default=None,
                        help="oracle folder (default: the shipped one)")
    args = parser.parse_args(argv)
    torch.manual_seed(0)
    oracle = load_oracle(args.oracle)
    recipe = load_recipe(args.recipe)
    runs = [("shared noise", recipe, args.out)]
    if args.control:
        control_out = args.out.with_name(f"{args.out.name}-own-noise")
        runs.append(("own noise", own_noise(recipe), control_out))
    result = {"recipe": str(args.recipe), "tolerance_px": args.tolerance}
    for label, run_recipe, out in runs:
        seconds = generate(run_recipe, out, args.threads)
        result[label] = {"dataset": str(out), "generate_seconds": round(seconds, 1),
                         **judge(dataset_groups(out), oracle, args.tolerance)}
    print(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main()
