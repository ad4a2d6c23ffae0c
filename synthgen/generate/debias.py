"""Debias: edit the model so an attribute its prompts leave unnamed comes out in given proportions.

UCE's debiasing (Gandikota et al. 2024; reference trainscripts/uce_sd_debias.py), for a
`balance` entry with `method: debias`. A class's prompts ("a large star on a gray background")
name no value of the attribute, so the model's prior picks it (world-sd: mostly one colour per
shape). The text of those prompts is edited, by the closed form of generate/erase.py, to read
as a mix of the same prompts with each value named before the class word ("a large red
star ..."): for every linear map W that reads text, the wanted output for the prompt's tokens is

    v* = W c + sum_v s_v (W c_v - W c),

c the prompt's token embeddings, c_v those of its value-named version at the paired tokens;
the padding tokens instead take the versions' padding in turns (`_debias_mappings` says why).
The value-named prompts themselves are preserved (asked for red, still red). How a mix
of texts turns into a mix of images is the model's business, so the weights s are steered, as
the reference steers them: measure the ratios r on images the edited model draws, move
s_v += step * (wanted_v - r_v), edit again from the original weights, until every ratio is
within `tolerance` or the iterations are spent. The ratios are read by a CLIP model choosing,
for each image, among its prompt's value-named versions: what a user's run has (no oracle).

Two choices differ from the reference, which starts from s = 0 (the unedited model) and keeps
the last iterate: s starts at the wanted proportions (one iteration instead of several to
leave the prior), and the best-measured iterate is kept, since on a CPU there are only a few.
"""

from __future__ import annotations

import math
import re
from collections import Counter
from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np
import torch

from synthgen.attributes import balance_applies, largest_remainder_quotas
from synthgen.generate.erase import (PRESERVE_WEIGHT, REGULARIZER, Encoded, Mapping, encode_all,
                                     as_text, edit_text_paths, fill_templates, refuse_truncated, restore_text_weights, text_weights, token_pairs)
from synthgen.recipe import CLASS_SLOT, Recipe, template_slots
from synthgen.recipe_base import injected_template
from synthgen.seeding import derive_seed


@dataclass(frozen=True)
class DebiasTarget:
    """One class (or corner case) whose prompts get the edit."""

    name: str
    prompts: tuple[str, ...]         # prompts as the dataset will use them: no value named
    value_prompts: dict[str, tuple[str, ...]]  # value -> the same prompts naming it, in order


def value_prompt(prompt: str, class_name: str | None, value: str, inject: str) -> str:
    """`prompt` naming `value`: right before the class word where the prompt has it ("a large
    red star"), else through the balance entry's `inject` template ("{prompt}, {value}")."""
    if class_name:
        found = re.search(rf"\b{re.escape(class_name)}\b", prompt)
        if found:
            return " ".join(f"{prompt[:found.start()]}{value} {prompt[found.start():]}".split())
    return " ".join(inject.format(prompt=prompt, value=value).split())


def kl_divergence(ratios: dict[str, float], wanted: dict[str, float]) -> float:
    """KL(ratios || wanted) in nats; values with zero measured share add nothing."""
    total = sum(wanted.values())
    return sum(share * math.log(share / (wanted[value] / total))
               for value, share in ratios.items() if share > 0)


def _debias_mappings(prompt: Encoded, versions: dict[str, Encoded],
                     weights: dict[str, float]) -> list[Mapping]:
    """What `prompt` should read as, under the current weights.

    Its words and end token: itself plus sum_v weights[v] * (version_v - itself), token by
    token (the reference's v*). Its padding tokens, which the UNet attends to as well and
    which a causal text encoder fills with a summary of the prompt: each one read as the
    padding token of one version, the versions taking turns in proportion to the (positive)
    weights. A mix at every token is one point between the values, and world-sd drew mostly
    one colour from it (circles, 40 images: 33 purple, 7 in three other colours; KL to uniform
    1.66 nats); padding that says every value at once leaves more of the choice to each
    image's own attention, i.e. its noise (7 colours, KL 0.80; docs/WORLD.md).
    Tokens are paired as `token_pairs` pairs them, on the positions every version pairs.
    """
    pairings = {value: dict(token_pairs(prompt.ids, encoded.ids, len(prompt.tokens)))
                for value, encoded in versions.items()}
    positions = sorted(set.intersection(*(set(p) for p in pairings.values())))
    end = len(prompt.ids) - 1
    words = tuple(p for p in positions if p <= end)
    goals = [(prompt, words, 1.0 - sum(weights.values()))]
    goals += [(versions[v], tuple(pairings[v][p] for p in words), weights[v]) for v in versions]
    mappings = [Mapping(prompt, words, tuple(goals))]
    padding = [p for p in positions if p > end]
    turns = largest_remainder_quotas(len(padding), {v: max(w, 1e-6) for v, w in weights.items()})
    order = sorted(((k + 0.5) / count, index, value) for index, (value, count) in enumerate(turns.items())
                   for k in range(count))
    for value in versions:
        mine = tuple(p for p, (_, _, taker) in zip(padding, order) if taker == value)
        if mine:
            mappings.append(Mapping(prompt, mine, ((versions[value], tuple(pairings[value][p] for p in mine), 1.0),),
                                    summary=False))  # the words' mapping sets the summary rows
    return mappings


@torch.no_grad()
def debias(pipeline, targets: Sequence[DebiasTarget], wanted: dict[str, float],
           measure: Callable[[DebiasTarget], dict[str, float]], iterations: int, tolerance: float,
           step: float = 1.0, preserve: Sequence[str] = (), preserve_weight: float = PRESERVE_WEIGHT,
           regularizer: float = REGULARIZER, log: Callable[[str], None] = lambda message: None,
           nonnegative: bool = False) -> dict:
    """Edit `pipeline.unet` in place so each target's unnamed attribute follows `wanted`.

    `measure(target)` returns the share of each value among images the pipeline (as edited
    now) draws for the target's prompts. Returns the edit record: the ratios before, the
    weights and ratios of every iteration, and the kept (best) iterate's edit. `nonnegative`
    keeps the steered weights on the simplex (`on_simplex`) instead of letting them go negative
    as the reference does (a trial: docs/WORLD.md, "Debias").
    """
    total = sum(wanted.values())
    wanted = {value: share / total for value, share in wanted.items()}
    original = text_weights(pipeline)
    encoded = [(encode_all(pipeline, target.prompts),
                {value: encode_all(pipeline, prompts) for value, prompts in target.value_prompts.items()})
               for target in targets]
    kept = [version for _, versions in encoded for prompts in versions.values() for version in prompts]
    refuse_truncated([prompt for prompts, _ in encoded for prompt in prompts] + kept)
    kept += encode_all(pipeline, preserve)

    def error(ratios: dict[str, dict[str, float]]) -> float:
        return max(abs(ratios[t.name].get(v, 0.0) - wanted[v]) for t in targets for v in wanted)

    before = {target.name: measure(target) for target in targets}
    log(f"debias: before {_describe(before)}")
    weights = {target.name: dict(wanted) for target in targets}
    history, best = [], None
    for iteration in range(1, iterations + 1):
        restore_text_weights(pipeline, original)
        mappings = [mapping for target, (prompts, versions) in zip(targets, encoded)
                    for i, prompt in enumerate(prompts)
                    for mapping in _debias_mappings(prompt, {v: versions[v][i] for v in versions},
                                                    weights[target.name])]
        record = edit_text_paths(pipeline, mappings, kept, preserve_weight, regularizer)
        ratios = {target.name: measure(target) for target in targets}
        history.append({"iteration": iteration, "weights": weights, "ratios": ratios,
                        "max_error": round(error(ratios), 4)})
        log(f"debias: iteration {iteration} {_describe(ratios)} (max error {error(ratios):.3f})")
        if best is None or error(ratios) < best[0]:
            best = (error(ratios), iteration, record, text_weights(pipeline))
        if error(ratios) <= tolerance:
            break
        weights = {name: {v: w + step * (wanted[v] - ratios[name].get(v, 0.0)) for v, w in shares.items()}
                   for name, shares in weights.items()}
        if nonnegative:
            weights = {name: on_simplex(shares) for name, shares in weights.items()}
    _, kept_iteration, record, state = best
    restore_text_weights(pipeline, state)
    return {"method": "debias", "targets": [target.name for target in targets], "wanted": wanted,
            "before": before, "iterations": history, "kept_iteration": kept_iteration,
            "preserved_prompts": len(preserve), "preserve_weight": preserve_weight,
            "regularizer": regularizer, **record}


def on_simplex(weights: dict[str, float]) -> dict[str, float]:
    """The nearest weights (Euclidean) that are >= 0 and sum to 1 (the sort-based projection of
    Duchi et al. 2008): the prompt then reads as a mix of real value-named prompts, never as a
    point past them."""
    values = sorted(weights.values(), reverse=True)
    total, shift = 0.0, 0.0
    for k, value in enumerate(values, start=1):
        total += value
        if value - (total - 1.0) / k > 0:
            shift = (total - 1.0) / k
    return {name: max(weight - shift, 0.0) for name, weight in weights.items()}


def _describe(ratios: dict[str, dict[str, float]]) -> str:
    return "; ".join(f"{name}: " + ", ".join(f"{value} {share:.2f}" for value, share in shares.items())
                     for name, shares in ratios.items())


def _recipe_prompts(recipe: Recipe, index: int, spec) -> tuple[str | None, list[str]]:
    """(class word, `prompts` of the class's or corner case's own prompts): its templates, slots
    drawn uniformly, the values of prompt-balanced attributes too, in their slot or injected
    where a template has none (`injected_template`, as the plan fills them)."""
    entry = recipe.balance[index]
    applying = [other for other in recipe.prompt_balance if balance_applies(other, spec.name)]
    balanced = {other.slot_name: [as_text(value) for value in other.values] for other in applying}
    if spec in recipe.classes:
        word, templates, own_slots = spec.name, recipe.templates_for(spec), spec.slots
    else:
        word, templates, own_slots = spec.label or spec.own_label, [spec.prompt], {}
    filled_templates = []
    for template in templates:
        used = set(template_slots(template))
        for other in applying:
            if other.slot_name not in used:
                template = injected_template(template, other.inject, other.slot_name)
        filled_templates.append(template)
    prompts = fill_templates(filled_templates, entry.prompts,
                             derive_seed("debias", recipe.seed, index, spec.name),
                             {**recipe.slots, **own_slots, **balanced},
                             {CLASS_SLOT: word} if word else {})
    return word, prompts


def debias_targets(recipe: Recipe, index: int) -> list[DebiasTarget]:
    """The classes and corner cases `recipe.balance[index]` (method debias) applies to, each
    with its own prompts (`_recipe_prompts`) and their value-named versions."""
    entry = recipe.balance[index]
    targets = []
    for spec in [*recipe.classes, *recipe.corner_cases]:
        if balance_applies(entry, spec.name):
            word, prompts = _recipe_prompts(recipe, index, spec)
            targets.append(DebiasTarget(spec.name, tuple(prompts), {
                value: tuple(value_prompt(prompt, word, value, entry.inject) for prompt in prompts)
                for value in entry.values}))
    return targets


def untouched_prompts(recipe: Recipe, index: int) -> list[str]:
    """The prompts of the classes and corner cases the entry does not apply to, for `debias` to
    preserve: without them, debiasing stars' colours on world-sd moved circles' and squares'
    (80 prompts: colour 80 -> 74 right, shape 74 -> 61)."""
    entry = recipe.balance[index]
    return [prompt for spec in [*recipe.classes, *recipe.corner_cases]
            if not balance_applies(entry, spec.name)
            for prompt in _recipe_prompts(recipe, index, spec)[1]]


class ClipValueReader:
    """`measure` for `debias`: the share of each value among `trials` images drawn for a
    target (its prompts in turn, the same seeds at every call), each image's value being the
    one whose value-named prompt a CLIP model finds most similar to it.

    `draw(prompts, seeds)` returns uint8 (N, H, W, 3) images from the pipeline as edited now.
    """

    def __init__(self, detector: str, device: torch.device, trials: int, seed: int,
                 draw: Callable[[list[str], list[int]], np.ndarray]):
        from synthgen.audit.encoder import load_clip_encoder

        self.encoder = load_clip_encoder(detector, device)
        self.trials, self.seed, self.draw = trials, seed, draw
        self._texts: dict[tuple[str, int], np.ndarray] = {}

    def __call__(self, target: DebiasTarget) -> dict[str, float]:
        values = list(target.value_prompts)
        chosen = [i % len(target.prompts) for i in range(self.trials)]
        seeds = [derive_seed("debias-trial", self.seed, target.name, i) for i in range(self.trials)]
        images = self.draw([target.prompts[i] for i in chosen], seeds)
        embedded = self.encoder.encode_images([torch.from_numpy(image).permute(2, 0, 1) for image in images])
        counts = Counter()
        for image, index in zip(embedded, chosen):
            if (target.name, index) not in self._texts:
                self._texts[target.name, index] = self.encoder.encode_texts(
                    [target.value_prompts[value][index] for value in values])
            counts[values[int(np.argmax(self._texts[target.name, index] @ image))]] += 1
        return {value: counts[value] / self.trials for value in values}
