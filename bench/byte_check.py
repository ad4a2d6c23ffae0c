"""Same bytes before and after a change: generate small recipes and print every shard's sha256.

A refactoring of generation must not move a single byte. Run this before the change and
after it, and compare the two listings (or pass the first with --expect):

    python bench/byte_check.py /tmp/before recipes/quickstart.yaml > before.txt
    ... change the code ...
    python bench/byte_check.py /tmp/after recipes/quickstart.yaml --expect before.txt

It runs its own cases (all, or those named; --list names them): tiny random SD and SDXL
pipelines with every view strategy, guidance with negative (and, for SDXL, empty) prompts,
erase edits, a debias edit, and tiny PixArt-alpha and FLUX pipelines (the test fixtures in
tests/), 3 groups of 2 or 3 views each, at batch size 4 (so calls are padded and shards span
several calls). The model folders are built from fixed seeds into --models, a fixed folder by
default: a sample's json holds the recipe, model.id included, so another folder gives other
bytes. Each recipe path given (for example recipes/quickstart.yaml) is generated too, as
`synthgen generate RECIPE --device cpu` would (its default batch size, 2 CPU threads), so its
shards equal that command's. About a minute on 2 CPU cores, the quickstart half of it.

Output: one line per shard, `sha256  case/shard-NNNNNN.tar`, in case order; then the seconds
each case took on stderr. Bytes are fixed per batch size and CPU thread count (see
ARCHITECTURE.md), so compare listings made with the same options.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import sys
import tempfile
import time
from pathlib import Path

# PyTorch's CPU threads otherwise spin while they wait for each other (scripts/quickstart.sh).
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tests"))  # the tiny PixArt and FLUX fixtures

CASE_BATCH_SIZE = 4
MODELS = Path(tempfile.gettempdir()) / "synthgen-byte-check" / "models"
CPU_THREADS = 2  # `synthgen generate`'s default, so a recipe's shards equal the command's

TINY = 32  # pixels: the tiny SD, SDXL and FLUX pipelines
PIXART = 256  # the tiny PixArt's resolution bin (tests/pixart_fixture.py)


def small_recipe(name: str, model: dict, views: dict, **extra) -> dict:
    """3 groups (2 classes, a colour slot), 2 steps, PNG, 2 groups per shard."""
    return {
        "name": name,
        "seed": 11,
        "model": {"steps": 2, "width": TINY, "height": TINY, **model},
        "slots": {"colour": ["red", "green", "blue"], "size": ["small", "large"]},
        "classes": [
            {"name": "circle", "templates": ["a {size} {colour} circle"], "groups": 2},
            {"name": "square", "templates": ["a photo of a {colour} square"], "groups": 1},
        ],
        "views": views,
        "output": {"groups_per_shard": 2, "format": "png"},
        **extra,
    }


SEEDS = {"count": 2, "strategy": "seeds"}
VIEWS = {
    "seeds": SEEDS,
    "latent": {"count": 3, "strategy": "latent", "latent": {"sigma": 0.5, "anchor_view": True}},
    "prompt": {"count": 2, "strategy": ["seeds", "prompt"],
               "prompt": {"modifiers": ["at night", "from above"]}},
    "img2img": {"count": 3, "strategy": "img2img", "img2img": {"strength": 0.6}},
    "slots": {"count": 2, "strategy": "slots", "slots": {"vary": ["colour"]}},
}
GUIDED = {"guidance_scale": 3.0}


def cases(models: dict[str, str]) -> dict[str, dict]:
    """The built-in cases: name -> recipe (as data). `models` maps sd/sdxl/pixart/flux to ids."""
    built = {}
    for family in ("sd", "sdxl"):
        model = {"id": models[family]}
        for strategy, views in VIEWS.items():
            built[f"{family}-{strategy}"] = small_recipe(f"{family}-{strategy}", model, views)
        built[f"{family}-guided-negative"] = small_recipe(
            f"{family}-guided-negative", {**model, **GUIDED, "negative_prompt": "blurry"}, SEEDS)
        # SDXL: an empty negative prompt is all zeros (force_zeros_for_empty_prompt).
        built[f"{family}-guided-empty-negative"] = small_recipe(
            f"{family}-guided-empty-negative", {**model, **GUIDED}, VIEWS["latent"])
        built[f"{family}-erase"] = small_recipe(
            f"{family}-erase", {**model, **GUIDED}, SEEDS,
            suppress=[{"concept": "red", "method": "erase", "target": "blue",
                       "preserve": ["circle"], "context_prompts": 4}])
    built["sd-debias"] = small_recipe(
        "sd-debias", {"id": models["sd"]}, SEEDS,
        balance=[{"attribute": "colour", "values": {"red": 1, "blue": 1}, "method": "debias",
                  "applies_to": ["square"], "trials": 2, "iterations": 1, "prompts": 2}])
    pixart = {"id": models["pixart"], "width": PIXART, "height": PIXART}
    built["pixart-seeds"] = small_recipe("pixart-seeds", pixart, SEEDS)
    built["pixart-guided-negative"] = small_recipe(
        "pixart-guided-negative", {**pixart, **GUIDED, "negative_prompt": "blurry"}, SEEDS)
    flux = {"id": models["flux"], "guidance_scale": 3.5}
    built["flux-seeds"] = small_recipe("flux-seeds", flux, SEEDS)
    built["flux-true-cfg-negative"] = small_recipe(
        "flux-true-cfg-negative", {**flux, "true_cfg_scale": 2.0, "negative_prompt": "blurry"},
        SEEDS)
    return built


def build_models(folder: Path) -> dict[str, str]:
    """Model ids of the tiny pipelines, each built from seed 0 into `folder` once."""
    from flux_fixture import save_tiny_flux
    from pixart_fixture import save_tiny_pixart

    from synthgen.generate.tiny_random import save_tiny_pipeline

    builders = {"sdxl": lambda path: save_tiny_pipeline(path, family="sdxl"),
                "pixart": save_tiny_pixart, "flux": save_tiny_flux}
    models = {"sd": "builtin:tiny-random"}
    for family, build in builders.items():
        path = folder / family
        if not (path / "model_index.json").exists():
            build(path)
        models[family] = str(path)
    return models


def shard_digests(folder: Path) -> list[tuple[str, str]]:
    """(sha256, file name) of every shard file in `folder`, by name."""
    return [(hashlib.sha256(path.read_bytes()).hexdigest(), path.name)
            for path in sorted(folder.glob("shard-*.tar"))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path, help="folder for the datasets, one per case")
    parser.add_argument("runs", nargs="*", metavar="RECIPE|CASE",
                        help="recipe files to generate too, and the cases to run (default: all)")
    parser.add_argument("--models", type=Path, default=MODELS,
                        help=f"folder of the tiny model folders (built once; default {MODELS})")
    parser.add_argument("--expect", type=Path,
                        help="a listing printed earlier: report every line that differs, exit 1 if any")
    parser.add_argument("--list", action="store_true", help="print the built-in case names and stop")
    args = parser.parse_args()

    import yaml

    import synthgen

    if args.list:
        print("\n".join(cases({family: family for family in ("sd", "sdxl", "pixart", "flux")})))
        return
    known = cases(build_models(args.models))
    recipes = [run for run in args.runs if run not in known]
    for run in recipes:
        if not Path(run).is_file():
            parser.error(f"{run!r} is neither a recipe file nor a case ({', '.join(known)})")
    chosen = [run for run in args.runs if run in known] or list(known)
    listing = []
    for run in recipes + chosen:
        started = time.perf_counter()
        if run in known:
            recipe = args.out / "recipes" / f"{run}.yaml"
            recipe.parent.mkdir(parents=True, exist_ok=True)
            recipe.write_text(yaml.safe_dump(known[run], sort_keys=False))
            name, batch_size = run, CASE_BATCH_SIZE
        else:
            recipe, name, batch_size = Path(run), Path(run).stem, None
        out = args.out / name
        synthgen.generate(recipe, out, device="cpu", batch_size=batch_size,
                          cpu_threads=CPU_THREADS, overwrite=True, progress=False)
        for digest, shard in shard_digests(out):
            line = f"{digest}  {name}/{shard}"
            listing.append(line)
            print(line, flush=True)
        print(f"# {name}: {time.perf_counter() - started:.1f} s", file=sys.stderr, flush=True)
    if args.expect is not None:
        # Only the cases run now are compared, so a listing of every case checks a few too.
        ran = {line.split("  ")[1].split("/")[0] for line in listing}
        expected = [line for line in args.expect.read_text().splitlines()
                    if line and not line.startswith("#") and line.split("  ")[1].split("/")[0] in ran]
        changed = sorted(set(expected) ^ set(listing))
        for line in changed:
            print(f"DIFFERS: {line} ({'expected' if line in expected else 'now'})", file=sys.stderr)
        print(f"# {len(listing)} shards, {len(changed)} lines differ from {args.expect}",
              file=sys.stderr)
        if changed:
            sys.exit(1)


if __name__ == "__main__":
    main()
