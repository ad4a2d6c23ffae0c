"""Measure a recipe's model edits on builtin:world-sd with the world oracle (docs/WORLD.md,
"Attribute editing": the figures and the command that reproduces them).

    synthgen world edits [--recipe recipes/attribute-editing.yaml] [--prompts 400]

The recipe's edits are made exactly as `synthgen generate` makes them (generate/prepare.py),
and images are drawn with its sampling settings. The oracle is the judge only: nothing it
reads reaches the edits.

* erase (its `suppress` entry for "striped"): on held-out prompts "a SIZE [striped] COLOUR
  SHAPE on a BACKGROUND background" (`evaluation_prompts` of a seed no other measurement uses,
  without any prompt the edit learnt from) and held-out seeds: the striped rate of prompts
  that ask for stripes and of prompts that do not, and prompted shape, colour and size
  accuracy, before and after the edit, on the same prompts and seeds; Wilson 95% intervals.
* debias (its `balance` entry of method debias): per class, the colour distribution the
  oracle reads on the class's own prompts (which name no colour) before and after, its KL
  divergence to the wanted proportions, and shape accuracy.
"""

from __future__ import annotations

import json
import math
from collections import Counter
from pathlib import Path

import numpy as np
import torch

from synthgen.errors import UserError
from synthgen.world.evaluate import GENERATION_SEED_OFFSET, _interval95, _rate, evaluation_prompts, generate

EDITS_PROMPT_SEED = 31
"""`evaluation_prompts` seed of the held-out erase prompts (the shipped evaluation uses 0)."""
EDITS_SEED_OFFSET = GENERATION_SEED_OFFSET + 300_000
"""Noise seeds of the erase prompts (prompt i: this + i); the debias ones follow at +100,000."""
MAX_PROMPTS = 100_000
"""The largest prompt count: more and the erase images' noise seeds run into the debias ones'."""
MEASURED_ATTRIBUTE = "colour"  # the one attribute the debias figures count
ERASED = "striped"  # the one concept the oracle reads


def _attribute_rates(readings: list[dict], prompts: list[dict]) -> dict:
    """Striped rate and prompted shape, colour, size accuracy, each with its 95% interval."""
    rates = {}
    for name, hits in (("striped", [r["striped"] for r in readings]),
                       *((attribute, [r[attribute] == p[attribute] for r, p in zip(readings, prompts)])
                         for attribute in ("shape", "colour", "size"))):
        rates[name] = {"rate": _rate(hits), "ci95": _interval95(sum(hits), len(hits))}
    return rates


def _erase_prompts(count: int, used: set[str]) -> list[dict]:
    """`count` held-out prompts: none of them, striped or plain, among the texts the edit used."""
    pool = evaluation_prompts(4 * count, seed=EDITS_PROMPT_SEED)
    fresh = [p for p in pool if p["prompt"] not in used and p["striped_prompt"] not in used]
    if len(fresh) < count:
        raise UserError(f"--prompts {count}: only {len(fresh)} world prompts are not among the "
                        "edit's contexts; lower --prompts or the recipe's context_prompts")
    return fresh[:count]


def kl_to_wanted(counts: Counter, wanted: dict[str, float]) -> float:
    """KL(read distribution || wanted) in nats; inf when a colour outside `wanted` was read."""
    total, norm = sum(counts.values()), sum(wanted.values())
    kl = 0.0
    for value, count in counts.items():
        if count == 0:
            continue
        if value not in wanted:
            return math.inf
        share = count / total
        kl += share * math.log(share / (wanted[value] / norm))
    return kl


def kl_interval95(counts: Counter, wanted: dict[str, float], resamples: int = 2000,
                  seed: int = 0) -> list[float]:
    """A 95% percentile bootstrap interval of `kl_to_wanted`: the images are independent draws
    (each its own prompt and seed), so resampling them is a multinomial draw from the counts.
    Deterministic in `seed`; [inf, inf] when a colour outside `wanted` was read."""
    total = sum(counts.values())
    if total == 0 or any(count and value not in wanted for value, count in counts.items()):
        return [math.inf, math.inf]
    values = list(wanted)
    shares = np.array([counts.get(value, 0) / total for value in values])
    target = np.array([wanted[value] for value in values]) / sum(wanted.values())
    drawn = np.random.default_rng(seed).multinomial(total, shares, size=resamples) / total
    with np.errstate(divide="ignore", invalid="ignore"):
        terms = np.where(drawn > 0, drawn * np.log(drawn / target), 0.0)
    low, high = np.percentile(terms.sum(axis=1), [2.5, 97.5])
    return [round(float(low), 4), round(float(high), 4)]


def measure_edits(recipe_path: Path, prompt_count: int = 400, device: str = "auto",
                  log=print, model_folder: Path | None = None) -> dict:
    """The erase and debias figures of the recipe's edits (see the module docstring). `model_folder`:
    a world-sd folder trained elsewhere (`synthgen world train --out OUT` writes OUT/world-sd)
    to edit and judge instead of the shipped one; the recipe still names builtin:world-sd."""
    from synthgen.balance import DebiasBalance
    from synthgen.devices import choose_device
    from synthgen.generate.debias import debias_targets
    from synthgen.generate.erase import (fill_templates, replace_concept, restore_text_weights,
                                         text_weights)
    from synthgen.generate.load import load_pipeline
    from synthgen.generate.prepare import apply_debiasing, apply_erasures
    from synthgen.plan import WORLD_SD
    from synthgen.recipe import load_recipe
    from synthgen.seeding import derive_seed
    from synthgen.suppress import EraseSuppression
    from synthgen.world.oracle import load_oracle

    if prompt_count > MAX_PROMPTS:
        raise UserError(f"--prompts {prompt_count}: above the largest, {MAX_PROMPTS:,}, beyond which the "
                        "erase images' noise seeds run into the debias images'; lower --prompts")
    recipe = load_recipe(recipe_path)
    if recipe.model.id != WORLD_SD:
        raise UserError(f"{recipe_path}: model.id is {recipe.model.id!r}; the oracle judges only "
                        f"{WORLD_SD}")
    debiasing = [(i, e) for i, e in enumerate(recipe.balance) if isinstance(e, DebiasBalance)]
    if debiasing and debiasing[0][1].attribute != MEASURED_ATTRIBUTE:
        # The figures count the colours the oracle reads: of another attribute's edit they
        # would give a verdict on nothing it changed.
        raise UserError(f"{recipe_path}: the debias entry's attribute is "
                        f"{debiasing[0][1].attribute!r}; synthgen world edits measures only a debias "
                        f"of {MEASURED_ATTRIBUTE!r}, so debias {MEASURED_ATTRIBUTE} or measure it otherwise")
    if model_folder is not None:
        if not (Path(model_folder) / "model_index.json").is_file():
            raise UserError(f"--model {model_folder}: no model_index.json there; give a world-sd folder, "
                            "e.g. OUT/world-sd of `synthgen world train --out OUT`")
        recipe = recipe.model_copy(update={"model": recipe.model.model_copy(
            update={"id": str(Path(model_folder).resolve())})})
    torch_device = choose_device(device)
    model = load_pipeline(recipe.model, torch_device, torch.float32)
    pipeline, oracle = model.pipeline, load_oracle(device=torch_device)
    original = text_weights(pipeline)

    def read(prompts: list[str], seeds: list[int]) -> list[dict]:
        return oracle.read(generate(pipeline, prompts, seeds, guidance_scale=recipe.model.guidance_scale,
                                    steps=recipe.model.steps))

    result = {"recipe": str(recipe_path), "steps": recipe.model.steps,
              "guidance_scale": recipe.model.guidance_scale, "device": str(torch_device)}
    # 1. erase: the same held-out prompts and seeds before and after.
    erasing = [(i, e) for i, e in enumerate(recipe.suppress)
               if isinstance(e, EraseSuppression) and e.concept == ERASED]
    if erasing:
        index, entry = erasing[0]
        contexts = entry.filled_contexts(recipe, index)
        used = set(contexts) | {replace_concept(c, entry.concept, entry.target) for c in contexts}
        prompts = _erase_prompts(prompt_count, used)
        seeds = [EDITS_SEED_OFFSET + i for i in range(prompt_count)]
        runs = {}
        for stage in ("before", "after"):
            if stage == "after":
                # The recipe's own entries at their own places: an entry's contexts are seeded
                # by its index, so a recipe cut to this entry alone would edit otherwise.
                edited = apply_erasures(recipe.model_copy(update={"balance": []}), model)
                result["erase_edit"] = edited.edits[-1]
            runs[stage] = {kind: _attribute_rates(read([p[key] for p in prompts], seeds), prompts)
                           for kind, key in (("asked", "striped_prompt"), ("plain", "prompt"))}
            log(f"erase {stage}: {json.dumps(runs[stage])}")
        restore_text_weights(pipeline, original)
        result["erase"] = {"prompts": prompt_count, "contexts": len(contexts), **runs}
    # 2. debias: per class, the colours read on its own prompts before and after.
    if debiasing:
        index, entry = debiasing[0]
        targets = debias_targets(recipe, index)
        per_class = {}
        for target in targets:
            spec = next(s for s in [*recipe.classes, *recipe.corner_cases] if s.name == target.name)
            class_prompts = fill_templates(recipe.templates_for(spec) if spec in recipe.classes else [spec.prompt],
                                           prompt_count, derive_seed("debias-measure", recipe.seed, target.name),
                                           {**recipe.slots, **getattr(spec, "slots", {})},
                                           {"class": getattr(spec, "label", None) or spec.name})
            per_class[target.name] = [class_prompts[i % len(class_prompts)] for i in range(prompt_count)]
        seeds = [EDITS_SEED_OFFSET + 100_000 + i for i in range(prompt_count)]
        runs = {}
        for stage in ("before", "after"):
            if stage == "after":
                edited = apply_debiasing(recipe.model_copy(update={"suppress": []}), model, torch_device)
                result["debias_edit"] = edited.edits[-1]
            runs[stage] = {}
            for name, prompts in per_class.items():
                readings = read(prompts, seeds)
                colours = Counter(r["colour"] for r in readings)
                shape_hits = [r["shape"] == name for r in readings]
                runs[stage][name] = {"colours": dict(colours.most_common()),
                                     "kl_to_wanted": round(kl_to_wanted(colours, entry.values), 4),
                                     "kl_ci95": kl_interval95(colours, entry.values),
                                     "shape_accuracy": _rate(shape_hits),
                                     "shape_ci95": _interval95(sum(shape_hits), len(shape_hits))}
            log(f"debias {stage}: {json.dumps(runs[stage])}")
        restore_text_weights(pipeline, original)
        result["debias"] = {"attribute": entry.attribute, "wanted": entry.values,
                            "images_per_class": prompt_count, **runs}
    if not erasing and not debiasing:
        raise UserError(f"{recipe_path}: no suppress entry erasing {ERASED!r} and no balance "
                        "entry of method debias; there is nothing for the oracle to judge")
    return result


def erase_gates(result: dict) -> dict[str, bool]:
    """The issue's gates on the erase figures: asked-for stripes <= 10%; unasked stripes at
    most 1 point above the unedited model; shape, colour, size within 2 points of it."""
    before, after = result["erase"]["before"], result["erase"]["after"]
    gates = {"asked striped <= 10%": after["asked"]["striped"]["rate"] <= 0.10,
             "unasked striped <= unedited + 1 point":
                 after["plain"]["striped"]["rate"] <= before["plain"]["striped"]["rate"] + 0.01}
    for kind in ("plain", "asked"):
        for attribute in ("shape", "colour", "size"):
            gates[f"{kind} {attribute} >= unedited - 2 points"] = (
                after[kind][attribute]["rate"] >= before[kind][attribute]["rate"] - 0.02)
    return gates


def debias_gates(result: dict) -> dict[str, bool]:
    """Per class: KL to the wanted proportions at least halved, shape within 2 points."""
    before, after = result["debias"]["before"], result["debias"]["after"]
    gates = {}
    for name in before:
        kl_after = after[name]["kl_to_wanted"]  # inf <= inf / 2 would pass with nothing improved
        gates[f"{name}: KL halved"] = (math.isfinite(kl_after)
                                       and kl_after <= before[name]["kl_to_wanted"] / 2)
        gates[f"{name}: shape >= unedited - 2 points"] = (
            after[name]["shape_accuracy"] >= before[name]["shape_accuracy"] - 0.02)
    return gates

