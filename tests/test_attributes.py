"""Balance quotas, corner-case sizing, prompt templating and negative-prompt suppression."""

from __future__ import annotations

from collections import Counter

import pytest

from synthgen.attributes import largest_remainder_quotas
from synthgen.errors import UserError
from synthgen.plan import make_plan, summarize
from synthgen.recipe import load_recipe


@pytest.mark.parametrize("total, proportions, expected", [
    (10, {"a": 1, "b": 1, "c": 1}, {"a": 4, "b": 3, "c": 3}),
    (7, {"woman": 0.5, "man": 0.5}, {"woman": 4, "man": 3}),
    (100, {"x": 0.62, "y": 0.3, "z": 0.08}, {"x": 62, "y": 30, "z": 8}),
    (5, {"x": 0.66, "y": 0.17, "z": 0.17}, {"x": 3, "y": 1, "z": 1}),
    (0, {"x": 1, "y": 2}, {"x": 0, "y": 0}),
])
def test_largest_remainder_quotas(total, proportions, expected):
    counts = largest_remainder_quotas(total, proportions)
    assert counts == expected and sum(counts.values()) == total


def people_recipe(write_recipe, **extra):
    return load_recipe(write_recipe({
        "classes": [{"name": "doctor", "templates": ["a photo of a {age} doctor"], "groups": 11},
                    {"name": "nurse", "templates": ["a photo of a nurse"], "groups": 6}],
        "corner_cases": [],
        "balance": [
            {"attribute": "perceived gender", "values": {"woman": 1, "man": 1}},
            {"attribute": "age", "values": {"young": 0.25, "middle-aged": 0.5, "old": 0.25},
             "applies_to": ["doctor"]}],
        **extra}))


def test_balance_quotas_are_exact_per_class_and_recorded(write_recipe):
    plan = make_plan(people_recipe(write_recipe))
    doctors = [g for g in plan.groups if g.class_name == "doctor"]
    nurses = [g for g in plan.groups if g.class_name == "nurse"]
    assert Counter(g.balance["perceived gender"] for g in doctors) == {"woman": 6, "man": 5}
    assert Counter(g.balance["perceived gender"] for g in nurses) == {"woman": 3, "man": 3}
    assert Counter(g.balance["age"] for g in doctors) == {"middle-aged": 5, "young": 3, "old": 3}
    assert all("age" not in g.balance for g in nurses)
    for group in doctors:
        prompt = group.views[0].prompt
        # {age} is a template slot; gender has none, so it is appended by `inject`.
        assert prompt == f"a photo of a {group.balance['age']} doctor, {group.balance['perceived gender']}"
    table = summarize(plan)["balance"]
    assert table["age"] == {"doctor": {"middle-aged": 5, "young": 3, "old": 3}}
    assert table["perceived gender"]["nurse"] == {"woman": 3, "man": 3}
    assert make_plan(people_recipe(write_recipe)).groups == plan.groups


def test_balance_mistakes(write_recipe):
    with pytest.raises(UserError, match="applies_to names 'surgeon'"):
        load_recipe(write_recipe({"balance": [{"attribute": "age", "values": {"a": 1, "b": 1},
                                               "applies_to": ["surgeon"]}]}))
    with pytest.raises(UserError, match=r"slot \{colour\}, which is already defined"):
        load_recipe(write_recipe({"balance": [{"attribute": "colour", "values": {"a": 1, "b": 1}}]},
                                 name="b.yaml"))
    # A shared template needs {age} for every class, but age is balanced only for doctors.
    with pytest.raises(UserError, match=r"templates\[0\] 'a photo of a \{age\} \{class\}' uses "
                       r"slot \{age\}, which balance\[0\] fills only for \['doctor'\], not for "
                       r"'nurse'; add 'nurse' to balance\[0\].applies_to"):
        load_recipe(write_recipe({
            "templates": ["a photo of a {age} {class}"],
            "classes": [{"name": "doctor", "groups": 2}, {"name": "nurse", "groups": 2}],
            "corner_cases": [],
            "balance": [{"attribute": "age", "values": {"young": 1, "old": 1},
                         "applies_to": ["doctor"]}]}, name="c.yaml"))


def test_corner_case_sizes_and_labels(write_recipe):
    recipe = load_recipe(write_recipe({
        "classes": [{"name": "dog", "templates": ["a dog"], "groups": 40},
                    {"name": "cat", "templates": ["a cat"], "groups": 60}],
        "corner_cases": [
            {"name": "dog in car", "prompt": "a {class} riding in a car", "label": "dog",
             "oversample": 0.25, "tags": ["vehicle"]},
            {"name": "odd", "prompt": "something odd", "weight": 0.05},
            {"name": "fox", "prompt": "a {class} in the snow", "own_label": "fox", "groups": 3}]}))
    plan = make_plan(recipe)
    counts = Counter(g.corner_case for g in plan.groups if g.corner_case)
    assert counts == {"dog in car": 10, "odd": 5, "fox": 3}
    fox = [g for g in plan.groups if g.corner_case == "fox"]
    assert all(g.class_index == 2 and g.class_name == "fox" for g in fox)
    assert fox[0].views[0].prompt == "a fox in the snow"
    odd = [g for g in plan.groups if g.corner_case == "odd"]
    assert all(g.class_index == -1 and g.class_name is None for g in odd)
    summary = summarize(plan)["corner_cases"]
    assert summary["dog in car"]["groups"] == 10 and summary["fox"]["class_index"] == 2
    with pytest.raises(UserError, match="exactly one of groups, weight or oversample"):
        load_recipe(write_recipe({"corner_cases": [{"name": "x", "prompt": "x", "groups": 1,
                                                    "weight": 0.1}]}, name="b.yaml"))


def test_enumerate_covers_every_combination(write_recipe):
    recipe = load_recipe(write_recipe({
        "slots": {"colour": ["red", "green", "blue"], "size": ["small", "big"]},
        "classes": [{"name": "ball", "templates": ["a {size} {colour} ball", "a {colour} ball"],
                     "groups": 9, "prompt_mode": "enumerate"}],
        "corner_cases": []}))
    prompts = sorted(g.views[0].prompt for g in make_plan(recipe).groups)
    expected = sorted([f"a {s} {c} ball" for s in ("small", "big") for c in ("red", "green", "blue")]
                      + [f"a {c} ball" for c in ("red", "green", "blue")])
    assert prompts == expected
    assert not [w for w in summarize(make_plan(recipe))["warnings"] if "enumerate" in w]
    short = load_recipe(write_recipe({
        "slots": {"colour": ["red", "green", "blue"], "size": ["small", "big"]},
        "classes": [{"name": "ball", "templates": ["a {size} {colour} ball", "a {colour} ball"],
                     "groups": 4, "prompt_mode": "enumerate"}],
        "corner_cases": []}, name="short.yaml"))
    assert ("'ball': prompt_mode enumerate has 9 template x slot combinations but only 4 groups, "
            "so the last 5 are never used") in " ".join(summarize(make_plan(short))["warnings"])


def test_nested_slots_expand_and_cycles_are_errors(write_recipe):
    recipe = load_recipe(write_recipe({
        "slots": {"outfit": ["a {colour} hat", "a {colour} scarf"], "colour": ["red", "blue"]},
        "classes": [{"name": "man", "templates": ["a man wearing {outfit}"], "groups": 20}],
        "corner_cases": []}))
    prompts = {g.views[0].prompt for g in make_plan(recipe).groups}
    assert prompts <= {f"a man wearing a {c} {o}" for c in ("red", "blue") for o in ("hat", "scarf")}
    assert len(prompts) >= 3
    with pytest.raises(UserError, match="cycle"):
        load_recipe(write_recipe({"slots": {"a": ["{b}"], "b": ["{a}"]},
                                  "classes": [{"name": "x", "templates": ["{a}"], "groups": 1}],
                                  "corner_cases": []}, name="cycle.yaml"))


def test_negative_suppression_joins_negative_prompt_and_warns_without_guidance(write_recipe):
    recipe = load_recipe(write_recipe({
        "model": {"negative_prompt": "blurry"},
        "suppress": [{"concept": "text", "method": "negative"},
                     {"concept": "watermark", "method": "negative"}]}))
    plan = make_plan(recipe)
    assert {v.negative_prompt for g in plan.groups for v in g.views} == {"blurry, text, watermark"}
    warnings = summarize(plan)["warnings"]
    assert len(warnings) == 1 and "no effect" in warnings[0] and "guidance_scale is 0.0" in warnings[0]
    guided = load_recipe(write_recipe({"model": {"guidance_scale": 5.0},
                                       "suppress": [{"concept": "text", "method": "negative"}]},
                                      name="guided.yaml"))
    assert summarize(make_plan(guided))["warnings"] == []
    # FLUX.1-schnell runs at guidance 0; its true CFG applies the negative prompt anyway.
    true_cfg = load_recipe(write_recipe({"model": {"guidance_scale": 0.0, "true_cfg_scale": 4.0},
                                         "suppress": [{"concept": "text", "method": "negative"}]},
                                        name="true-cfg.yaml"))
    assert summarize(make_plan(true_cfg))["warnings"] == []
