"""Debias judged on every shape of the world (docs/WORLD.md, "Debias on every shape"): for each
of the 11 shapes, the attribute-editing recipe with that shape's prompts naming no colour and
debiased (circles and squares, or stars in place of the debiased one, preserved as in the
recipe), measured by `bench/debias_variants.py` (the oracle on held-out images, before and after).

    python bench/debias_every_shape.py --out OUT --prompts 200 --variants reference padding

Writes OUT/SHAPE.yaml and OUT/SHAPE.json per shape (a finished shape is skipped when rerun) and
prints a markdown table. About 2 min a shape at 200 prompts and two variants on one CPU core.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import debias_variants  # noqa: E402

RECIPE = Path(__file__).resolve().parents[1] / "recipes" / "attribute-editing.yaml"
SHAPES = ("circle", "square", "triangle", "star", "ring", "cross", "heart", "diamond", "crescent",
          "arrow", "semicircle")


def shape_recipe(shape: str) -> dict:
    """The attribute-editing recipe without its suppress entries, `shape` debiased."""
    recipe = yaml.safe_load(RECIPE.read_text())
    recipe.pop("suppress")
    recipe["name"] = f"debias-{shape}"
    recipe["slots"].pop("shape")
    preserved = [other for other in ("circle", "square", "star") if other != shape][:2]
    recipe["classes"] = ([{"name": shape, "groups": 8,
                           "templates": [f"a {{size}} {shape} on a {{background}} background"]}]
                         + [{"name": other, "groups": 8} for other in preserved])
    recipe["balance"][0]["applies_to"] = [shape]
    return recipe


def table(out: Path, variants: list[str]) -> str:
    lines = ["| shape | variant | KL before | KL after (95% CI) | drawn as the shape, before -> after | gates |",
             "|---|---|---|---|---|---|"]
    for shape in SHAPES:
        if not (out / f"{shape}.json").is_file():
            continue
        runs = json.loads((out / f"{shape}.json").read_text())["variants"]
        for name in variants:
            before, after = runs[name]["debias"]["before"][shape], runs[name]["debias"]["after"][shape]
            met = all(runs[name]["gates"].values())
            lines.append(f"| {shape} | {name} | {before['kl_to_wanted']:.3f} | {after['kl_to_wanted']:.3f} "
                         f"({after['kl_ci95'][0]:.3f}-{after['kl_ci95'][1]:.3f}) | "
                         f"{100 * before['shape_accuracy']:.1f}% -> {100 * after['shape_accuracy']:.1f}% | "
                         f"{'met' if met else 'missed'} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--prompts", type=int, default=200)
    parser.add_argument("--variants", nargs="*", choices=debias_variants.VARIANTS, default=["reference"])
    parser.add_argument("--model", type=Path, default=None, help="a world-sd folder (default: the shipped one)")
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    for shape in SHAPES:
        if (args.out / f"{shape}.json").is_file():
            continue
        recipe = args.out / f"{shape}.yaml"
        recipe.write_text(yaml.safe_dump(shape_recipe(shape), sort_keys=False))
        partial = args.out / f"{shape}.part.json"
        model = ["--model", str(args.model)] if args.model else []
        debias_variants.main(["--recipe", str(recipe), "--prompts", str(args.prompts), "--out", str(partial),
                              "--variants", *args.variants, *model])
        partial.replace(args.out / f"{shape}.json")
    print(table(args.out, args.variants))


if __name__ == "__main__":
    main()
