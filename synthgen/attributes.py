"""Attribute balance quotas and suppression settings, decided at plan time.

Balance: an attribute's values are split across a class's (or corner case's) groups by exact
quotas (largest remainder), and which group gets which value is a seeded shuffle of group ids,
so the split is exact and deterministic. Suppression by negative prompt is folded into each
view's negative prompt here; `reject` and `erase` act at generation time (generate/).
"""

from __future__ import annotations

from synthgen.recipe import BalanceSpec, Recipe
from synthgen.seeding import derive_seed


def largest_remainder_quotas(total: int, proportions: dict[str, float]) -> dict[str, int]:
    """Integer counts summing to `total`, as close as possible to `total * proportion`.

    Each value first gets the floor of its exact share; the groups left over go to the largest
    fractional remainders, ties broken by the order of `proportions` (deterministic).
    """
    weight_sum = sum(proportions.values())
    exact = {value: total * weight / weight_sum for value, weight in proportions.items()}
    counts = {value: int(share) for value, share in exact.items()}
    leftover = total - sum(counts.values())
    order = sorted(proportions, key=lambda value: (-(exact[value] - counts[value]),
                                                   list(proportions).index(value)))
    for value in order[:leftover]:
        counts[value] += 1
    return counts


def assign_balanced_values(recipe_seed: int, entry: BalanceSpec,
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


def balance_applies(entry: BalanceSpec, target_name: str) -> bool:
    return entry.applies_to is None or target_name in entry.applies_to


def negative_prompt(recipe: Recipe) -> str:
    """The model's negative prompt plus every concept suppressed by the `negative` method."""
    parts = [recipe.model.negative_prompt] if recipe.model.negative_prompt else []
    parts += [entry.concept for entry in recipe.suppress if entry.method == "negative"]
    return ", ".join(parts)


def plan_warnings(recipe: Recipe) -> list[str]:
    """Settings that are valid but will not do what the recipe seems to want."""
    warnings = []
    negatives = [entry.concept for entry in recipe.suppress if entry.method == "negative"]
    if ((negatives or recipe.model.negative_prompt) and recipe.model.guidance_scale <= 1.0
            and recipe.model.true_cfg_scale is None):
        warnings.append(
            f"model.guidance_scale is {recipe.model.guidance_scale}: without classifier-free "
            "guidance (as for sd-turbo and SDXL-turbo at 0) the negative prompt has no effect, "
            f"so suppressing {negatives or 'model.negative_prompt'} this way does nothing; use "
            "method: reject or erase, or guidance_scale > 1")
    return warnings
