"""Debias variants on one recipe and world-sd folder, judged by the world oracle (docs/WORLD.md,
"Debias"): how far each moves the prior, and what it costs the shape.

    python bench/debias_variants.py --recipe CIRCLE-RECIPE --model OUT/world-sd --prompts 120 --out OUT/variants.json

Each variant is `synthgen world edits` (synthgen/world/edits.py: the recipe's debias entry,
the oracle's colours and shapes on `--prompts` held-out images of each debiased class,
before and after) with the edit changed:

- `reference`: the shipped method (every linear map that reads text; steered weights may go
  negative, as in UCE's reference);
- `nonnegative`: the steered weights projected onto the simplex (`debias(nonnegative=True)`);
- `values`: only the value projections edited (cross-attention `to_v`, the pooled text's
  `v_proj`): keys and the pooled query, which decide where attention goes, kept;
- `cross-values`: only cross-attention's `to_v`;
- `padding`: the prompt's words and end token left as they are, only its padding tokens read
  as the value-named versions' padding in turns (weights on the simplex).

Prints and writes one JSON object: per variant, the per-class figures and the debias gates.
"""

from __future__ import annotations

import argparse
import json
import sys
from contextlib import contextmanager
from dataclasses import replace
from functools import partial
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from synthgen.generate import debias as debias_module  # noqa: E402
from synthgen.generate import erase  # noqa: E402
from synthgen.world.edits import debias_gates, measure_edits  # noqa: E402

VARIANTS = ("reference", "nonnegative", "values", "cross-values", "padding")


@contextmanager
def edited_maps(keep) -> None:
    """`erase.text_readers` (which the edit, its weight copies and restores all use) limited to
    the linear maps whose name `keep` accepts."""
    original = erase.text_readers

    def limited(pipeline):
        readers = []
        for reader in original(pipeline):
            linears = tuple((name, linear) for name, linear in reader.linears if keep(name))
            if linears:
                readers.append(replace(reader, linears=linears))
        return readers

    erase.text_readers = limited
    try:
        yield
    finally:
        erase.text_readers = original


@contextmanager
def variant(name: str):
    if name == "reference":
        yield
    elif name == "nonnegative":
        original = debias_module.debias
        debias_module.debias = partial(original, nonnegative=True)
        try:
            yield
        finally:
            debias_module.debias = original
    elif name == "padding":
        mappings, original = debias_module._debias_mappings, debias_module.debias
        debias_module._debias_mappings = lambda *args: mappings(*args)[1:]
        debias_module.debias = partial(original, nonnegative=True)
        try:
            yield
        finally:
            debias_module._debias_mappings, debias_module.debias = mappings, original
    elif name == "values":
        with edited_maps(lambda layer: layer.endswith(("to_v", "v_proj"))):
            yield
    elif name == "cross-values":
        with edited_maps(lambda layer: layer.endswith("to_v")):
            yield
    else:
        raise ValueError(name)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--recipe", type=Path, required=True, help="a recipe with a balance entry of method debias")
    parser.add_argument("--model", type=Path, default=None, help="a world-sd folder (default: the recipe's)")
    parser.add_argument("--prompts", type=int, default=120)
    parser.add_argument("--variants", nargs="*", choices=VARIANTS, default=list(VARIANTS))
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args(argv)
    result = {"recipe": str(args.recipe), "model": str(args.model), "prompts": args.prompts, "variants": {}}
    for name in args.variants:
        with variant(name):
            figures = measure_edits(args.recipe, args.prompts, device="cpu", model_folder=args.model,
                                    log=lambda message: print(f"[{name}] {message}", file=sys.stderr, flush=True))
        result["variants"][name] = {"debias": figures["debias"], "gates": debias_gates(figures),
                                    "edit": figures["debias_edit"]}
        args.out.write_text(json.dumps(result, indent=2) + "\n")
    summary = {name: {cls: {stage: {"kl": run["debias"][stage][cls]["kl_to_wanted"],
                                     "shape": run["debias"][stage][cls]["shape_accuracy"]}
                             for stage in ("before", "after")} for cls in run["debias"]["before"]}
               for name, run in result["variants"].items()}
    print(json.dumps(summary, indent=1))
    return result


if __name__ == "__main__":
    main()
