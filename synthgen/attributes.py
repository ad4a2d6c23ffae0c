"""Attribute balance quotas and suppression settings, decided at plan time.

Balance: an attribute's values are split across a class's (or corner case's) groups by exact
quotas (largest remainder), and which group gets which value is a seeded shuffle of group ids,
so the split is exact and deterministic. An attribute the `slots` view strategy varies is split
the same way over all the views of a class (or corner case) instead of its groups.
Suppression: each `suppress` entry's method (synthgen/suppress/) says what it adds to the
negative prompt and what becomes of views whose prompt asks for its concept; this module
gathers those for the plan. Methods that act at generation time (`reject`, `erase`, balance
`debias`) are prepared in generate/prepare.py.
"""

from __future__ import annotations

import re
from contextvars import ContextVar
from fractions import Fraction

from synthgen.balance import Balance
from synthgen.recipe import CLASS_SLOT, Recipe, template_slots
from synthgen.suppress import Suppression
from synthgen.seeding import derive_seed


# How plans are drawn. 4 (2026-12-04): views varying several attributes are re-paired over all
# of them at once (`plan._arrange_distinct`), not one attribute at a time, which left repeated
# prompts a joint arrangement avoids. 3 (2026-12-03): a `slots.check` view's compared prompts carry its
# `prompt` strategy modifier, as its own prompt does (`views.slots.Slots.change_view`).
# 2 (2026-12-03): balance quotas from exact fractions of the weights, and views varying
# several attributes re-paired so that no two repeat a prompt (`plan._distinct_views`).
# 1: before. A dataset recorded without a revision was planned as 1, and is resumed or finalized
# only where its recipe plans the same under both (`write.check_plan_revision`).
PLAN_REVISION = 4
planning_revision: ContextVar[int] = ContextVar("synthgen_planning_revision", default=PLAN_REVISION)


def largest_remainder_quotas(total: int, proportions: dict[str, float]) -> dict[str, int]:
    """Integer counts summing to `total`, as close as possible to `total * proportion`.

    Each value first gets the floor of its exact share; the groups left over go to the largest
    fractional remainders, ties broken by the order of `proportions` (deterministic). Shares
    are exact fractions of the weights as written, so {a: 0.3, b: 0.1} and {a: 3, b: 1} give
    the same counts (in floats 0.3 / 0.4 * 34 is 25.499999999999996, and the tie went to b).
    """
    exact_shares = planning_revision.get() >= 2
    weights = {value: Fraction(str(weight)) if exact_shares else weight
               for value, weight in proportions.items()}
    weight_sum = sum(weights.values())
    exact = {value: total * weight / weight_sum for value, weight in weights.items()}
    counts = {value: int(share) for value, share in exact.items()}
    leftover = total - sum(counts.values())
    position = {value: index for index, value in enumerate(proportions)}
    order = sorted(proportions, key=lambda value: (-(exact[value] - counts[value]), position[value]))
    for value in order[:leftover]:
        counts[value] += 1
    return counts


def assign_balanced_values(recipe_seed: int, entry: Balance,
                           group_ids: list[str]) -> dict[str, str]:
    """{group id: value} with exact quotas over `group_ids`, spread by a seeded shuffle."""
    counts = largest_remainder_quotas(len(group_ids), entry.values)
    shuffled = sorted(group_ids,
                      key=lambda group_id: derive_seed("balance", recipe_seed, entry.attribute,
                                                       group_id))
    assignment, position = {}, 0
    for value, count in counts.items():
        for group_id in shuffled[position:position + count]:
            assignment[group_id] = value
        position += count
    return assignment


def assign_balanced_view_values(recipe_seed: int, entry: Balance, group_ids: list[str],
                                views: int, distinct: bool) -> dict[str, list[str]]:
    """{group id: one value per view} with exact quotas over all `views x len(group_ids)` views.

    With `distinct`, the quota multiset, in value order, is dealt to the groups (in a seeded
    order) with stride N = len(group_ids): group p gets items p, p + N, p + 2N, ... So a group
    repeats a value only when that value's quota exceeds N (then some group must), and its
    count of a value differs from another group's by at most one; which view gets which of
    its values is seeded. Without `distinct`, all views are placed by one seeded shuffle.
    """
    counts = largest_remainder_quotas(len(group_ids) * views, entry.values)
    items = [value for value, count in counts.items() for _ in range(count)]

    def seeded(*identity) -> int:
        return derive_seed("balance", recipe_seed, entry.attribute, *identity)

    if not distinct:
        places = sorted(((group_id, view) for group_id in group_ids for view in range(views)),
                        key=lambda place: seeded(*place))
        placed = dict(zip(places, items))
        return {group_id: [placed[group_id, view] for view in range(views)]
                for group_id in group_ids}
    order = sorted(group_ids, key=seeded)
    assignment = {}
    for position, group_id in enumerate(order):
        dealt = items[position::len(group_ids)]
        view_order = sorted(range(views), key=lambda view: seeded(group_id, view))
        values = [""] * views
        for view, value in zip(view_order, dealt, strict=True):
            values[view] = value
        assignment[group_id] = values
    return assignment


def balance_applies(entry: Balance, target_name: str) -> bool:
    return entry.applies_to is None or target_name in entry.applies_to


def negative_prompt(recipe: Recipe) -> str:
    """The model's negative prompt plus what each suppress entry adds to it (the concepts
    suppressed by the `negative` method)."""
    parts = [recipe.model.negative_prompt] if recipe.model.negative_prompt else []
    parts += suppressed_by_negative_prompt(recipe)
    return ", ".join(parts)


def suppressed_by_negative_prompt(recipe: Recipe) -> list[str]:
    """What the recipe's suppress entries add to the negative prompt, in recipe order."""
    return [text for entry in recipe.suppress if (text := entry.negative_prompt_text())]


def plan_warnings(recipe: Recipe) -> list[str]:
    """Settings that are valid but will not do what the recipe seems to want."""
    warnings = []
    negatives = suppressed_by_negative_prompt(recipe)
    if ((negatives or recipe.model.negative_prompt) and recipe.model.guidance_scale <= 1.0
            and recipe.model.true_cfg_scale is None):
        warnings.append(
            f"model.guidance_scale is {recipe.model.guidance_scale}: without classifier-free "
            "guidance (as for sd-turbo and SDXL-turbo at 0) the negative prompt has no effect, "
            f"so suppressing {negatives or 'model.negative_prompt'} this way does nothing; use "
            "method: reject or erase, or guidance_scale > 1")
    return warnings + prompts_naming_suppressed_concepts(recipe)


def prompts_naming_suppressed_concepts(recipe: Recipe) -> list[str]:
    """A warning for each template, class name, corner-case prompt, value of a slot the
    templates fill or value a `balance` entry puts into prompts that names a concept the
    recipe suppresses (a phrase of it, split at commas, as whole words), saying what the
    entry's method does to such views (its `asked_for`)."""
    # (where, text) of the fixed words of every prompt.
    sources = [(f"templates entry {t!r}", t) for t in recipe.templates]
    for spec in recipe.classes:
        if any(CLASS_SLOT in template_slots(t) for t in recipe.templates_for(spec)):
            sources.append((f"class {spec.name!r} (its name fills {{{CLASS_SLOT}}})", spec.name))
        sources += [(f"class {spec.name!r} template {t!r}", t) for t in spec.templates or ()]
    sources += [(f"corner case {case.name!r} prompt {case.prompt!r}", case.prompt)
                for case in recipe.corner_cases]
    # Values reach prompts too: a class's own slot's through its templates; a recipe slot's
    # through the templates of classes without their own values for it (own values replace
    # the recipe's) and the corner-case prompts; a prompt balance entry's into an exact share
    # of the groups.
    filled = {slot for case in recipe.corner_cases for slot in template_slots(case.prompt)}
    own_values = []
    for spec in recipe.classes:
        used = {slot for t in recipe.templates_for(spec) for slot in template_slots(t)}
        own = spec.slots or {}
        filled |= used - own.keys()
        own_values += [(f"class {spec.name!r} slot {slot!r} value {value!r}", value)
                       for slot, values in own.items() if slot in used for value in values]
    for slot, values in recipe.slots.items():
        if slot in filled:
            sources += [(f"slot {slot!r} value {value!r}", value) for value in values]
    sources += own_values
    sources += [(f"balance[{index}] ({entry.attribute}) value {value!r}", value)
                for index, entry in enumerate(recipe.balance) if entry.slot_name is not None
                for value in entry.values]
    warnings = []
    for index, entry in enumerate(recipe.suppress):
        for where, text in sources:
            if _names_concept(text, entry):
                warnings.append(
                    f"suppress[{index}] ({entry.method} {entry.concept!r}): {where} asks for what "
                    f"it suppresses: {entry.asked_for}; "
                    "take the words out of the prompt, or drop the suppress entry")
    return warnings


def _names_concept(text: str, entry: Suppression) -> bool:
    return concept_words(entry.concept).search(" ".join(text.split())) is not None


def concept_words(concept: str) -> re.Pattern:
    """Matches any phrase of `concept` (split at commas) as whole words, ignoring case."""
    phrases = [re.escape(" ".join(part.split())) for part in concept.split(",") if part.strip()]
    return re.compile(rf"(?<!\w)(?:{'|'.join(phrases)})(?!\w)", re.IGNORECASE)


# In `contrast`, stands for the prompt of the view being scored.
PROMPT_PLACEHOLDER = "{prompt}"


def detector_texts(concept: str, contrast: str, prompt: str) -> tuple[list[str], str]:
    """(concept texts, contrast text) that one view, drawn from `prompt`, is scored with.

    The concept side is the mean of its texts' unit embeddings. Without `{prompt}` in
    `contrast` these are the fixed texts ([concept], contrast). With it, the view is compared
    with its own prompt: the contrast is `contrast` filled with the prompt less the concept's
    words, and the concept side the same with the concept inserted at every word boundary of
    that prompt (which position reads naturally depends on the prompt's grammar; the mean
    needs none). So the detector asks "does this view show the concept more than its prompt,
    without the concept, would?", and a plain view whose colour or shape a fixed contrast
    misreads is not flagged again on every retry. Measured against the world oracle on
    world-sd views (bench/reject_oracle.py): see README, Suppression.
    """
    if PROMPT_PLACEHOLDER not in contrast:
        return [concept], contrast
    words = concept_words(concept).sub(" ", prompt).split()
    with_concept = [" ".join([*words[:i], concept, *words[i:]]) for i in range(len(words) + 1)]
    return ([contrast.replace(PROMPT_PLACEHOLDER, text) for text in with_concept],
            contrast.replace(PROMPT_PLACEHOLDER, " ".join(words)))
