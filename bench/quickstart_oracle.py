"""What the world oracle reads in a finished dataset, and whether its negative prompt keeps a
nuisance off: the README's quickstart figures that `synthgen audit` (a CLIP) does not give.

    python bench/quickstart_oracle.py out/quickstart                # the README's figures
    python bench/quickstart_oracle.py out/quickstart --oracle DIR   # another oracle folder

1. Every view is read by the oracle (shape, colour, striped). Counted: views whose prompt
   names the shape / colour the oracle reads, and striped views among those whose prompt does
   not ask for stripes ("unasked").
2. Each unique unasked prompt is drawn once more, from a fresh seed (`--seed` + its index),
   with and without the recipe's negative prompt, with the dataset's own model, steps,
   guidance (at 32x32; loaded through `load_pipeline`, as `generate` does): how many come out
   striped each way. The seeds match, so the two halves differ only by the negative prompt.

Prints one JSON object. The oracle reads 32x32 renders of the procedural world; on other
models or sizes its readings mean little.
"""

from __future__ import annotations

import argparse
import io
import json
import sys
from pathlib import Path

import numpy as np
import torch
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from synthgen.inspection import iter_samples, load_manifest, shard_paths  # noqa: E402
from synthgen.recipe import Recipe  # noqa: E402
from synthgen.world.evaluate import generate  # noqa: E402
from synthgen.world.oracle import load_oracle  # noqa: E402
from synthgen.world.scene import COLOURS, SHAPES  # noqa: E402

NUISANCE = "striped"


def dataset_views(dataset_dir: Path) -> list[tuple[str, np.ndarray]]:
    """(prompt, uint8 32x32 RGB pixels) of every view, in shard order."""
    views = []
    for sample in iter_samples(shard_paths(dataset_dir, load_manifest(dataset_dir))):
        metadata = json.loads(sample["json"])
        for view in metadata["views"]:
            image = Image.open(io.BytesIO(sample[view["file"]])).convert("RGB").resize((32, 32))
            views.append((view["prompt"], np.asarray(image)))
    return views


def named(prompt: str, names) -> str | None:
    """The one name of `names` the prompt uses as a word, or None."""
    words = set(prompt.replace(",", " ").split())
    found = [name for name in names if name in words]
    return found[0] if len(found) == 1 else None


def read_dataset(views, oracle) -> dict:
    readings = oracle.read(np.stack([pixels for _, pixels in views]))
    counts = {"views": len(views), "shape_as_prompted": 0, "shape_prompted": 0,
              "colour_as_prompted": 0, "colour_prompted": 0, "unasked": 0, "unasked_striped": 0}
    for (prompt, _), reading in zip(views, readings):
        for attribute, names in (("shape", SHAPES), ("colour", tuple(COLOURS))):
            wanted = named(prompt, names)
            if wanted is not None:
                counts[f"{attribute}_prompted"] += 1
                counts[f"{attribute}_as_prompted"] += reading[attribute] == wanted
        if NUISANCE not in prompt.split():
            counts["unasked"] += 1
            counts["unasked_striped"] += reading["striped"]
    return counts


def resample_unasked(dataset_dir: Path, views, oracle, seed: int) -> dict:
    from synthgen.generate.load import choose_dtype, load_pipeline

    recipe = Recipe.model_validate(load_manifest(dataset_dir)["recipe"])
    if (recipe.model.width, recipe.model.height) != (32, 32):
        raise SystemExit(f"{dataset_dir}: made at {recipe.model.width}x{recipe.model.height}; "
                         "the world oracle reads 32x32 images")
    negative = ", ".join(entry.concept for entry in recipe.suppress if entry.method == "negative")
    prompts = sorted({prompt for prompt, _ in views if NUISANCE not in prompt.split()})
    device = torch.device("cpu")
    pipeline = load_pipeline(recipe.model, device, choose_dtype(recipe.model.dtype, device)).pipeline
    seeds = [seed + index for index in range(len(prompts))]
    result = {"prompts": len(prompts), "negative_prompt": negative, "seeds": [seeds[0], seeds[-1]]}
    for label, negative_prompt in (("without", None), ("with", negative or None)):
        images = generate(pipeline, prompts, seeds, negative_prompt=negative_prompt,
                          guidance_scale=recipe.model.guidance_scale, steps=recipe.model.steps)
        result[f"striped_{label}_negative"] = sum(r["striped"] for r in oracle.read(images))
    return result


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("dataset", type=Path)
    parser.add_argument("--oracle", type=Path, default=None, help="oracle folder (default: the shipped one)")
    parser.add_argument("--seed", type=int, default=10_000, help="first seed of the resampled views")
    args = parser.parse_args(argv)
    torch.manual_seed(0)
    oracle = load_oracle(args.oracle)
    views = dataset_views(args.dataset)
    result = {"dataset": read_dataset(views, oracle),
              "resampled": resample_unasked(args.dataset, views, oracle, args.seed)}
    print(json.dumps(result, indent=2, default=int))
    return result


if __name__ == "__main__":
    main()
