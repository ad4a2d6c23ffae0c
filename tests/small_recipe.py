"""The small recipe most tests build on (tiny random pipeline, 32 px, 2 steps), importable by
name: `from conftest import ...` would find whichever conftest.py pytest imported last."""

from __future__ import annotations

SMALL_RECIPE = {
    "name": "small",
    "seed": 7,
    "model": {"id": "builtin:tiny-random", "steps": 2, "width": 32, "height": 32},
    "slots": {"colour": ["red", "green", "blue"]},
    "classes": [
        {"name": "circle", "templates": ["a {colour} circle"], "groups": 4},
        {"name": "square", "templates": ["a {colour} square", "a {size} {colour} square"],
         "slots": {"size": {"small": 1, "large": 3}}, "groups": 3},
    ],
    "corner_cases": [
        {"name": "circle in square", "prompt": "a {colour} circle inside a square",
         "label": "circle", "groups": 2, "tags": ["nested"]},
    ],
    "views": {"count": 2, "strategy": "seeds"},
    "output": {"groups_per_shard": 4, "format": "png"},
}


def merge(base: dict, overrides: dict) -> dict:
    """`base` with `overrides` merged in, recursively for nested mappings."""
    merged = dict(base)
    for key, value in overrides.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def parse_small(overrides: dict):
    """`SMALL_RECIPE` with `overrides` merged in, read by recipe.py as a user's file would be."""
    import yaml

    from synthgen.recipe import parse_recipe

    return parse_recipe(yaml.safe_dump(merge(SMALL_RECIPE, overrides), sort_keys=False,
                                       allow_unicode=True))


def two_shard_reject_plan(detector: str):
    """The plan of a 2-shard dataset (2 circle groups, one a shard) that rejects "striped"
    views with `detector`: what the detector-recording tests resume and finalize."""
    from synthgen.plan import make_plan

    plan = make_plan(parse_small({
        "classes": [{"name": "circle", "templates": ["a {colour} circle"], "groups": 2}],
        "corner_cases": [], "output": {"groups_per_shard": 1},
        "suppress": [{"concept": "striped", "method": "reject", "max_retries": 1,
                      "detector": detector}]}))
    assert plan.shard_count == 2
    return plan
