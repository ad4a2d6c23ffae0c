"""Planning faults found in review (2026-12-03), each test failing before its fix: values in
another order under one recipe hash, finalize rebuilding another plan, splice_into with the
prompt strategy, a slot cycle through a class's slots, enumerate with a slot used twice, a
corner case named like a class, literal braces in slot values.

Plan only (`parse_recipe` + `make_plan`, `summarize`), and fake shards; no model is loaded.
"""

from __future__ import annotations

import json
from collections import Counter

import pytest

from synthgen.errors import UserError
from synthgen.generate.identity import weights_digest
from synthgen.plan import make_plan, summarize
from synthgen.recipe import parse_recipe
from synthgen.write import (build_sample, finalize_dataset, prepare_output_dir, publish_shard,
                            sample_metadata)


def _recipe(**fields):
    base = {"name": "review", "seed": 1, "model": {"id": "builtin:tiny-random"}}
    return parse_recipe(json.dumps({**base, **fields}))


def _gendered(values):
    return _recipe(classes=[{"name": "dog", "templates": ["a {g} dog"], "groups": 11}],
                   balance=[{"attribute": "g", "values": values}])


def test_values_in_another_order_are_the_same_hash_but_not_the_same_dataset(tmp_path):
    # The recipe hash ignores the written order of values (canonical JSON), the plan does not
    # (the largest-remainder tie goes to the first value): a dataset made with one order must
    # not be resumed with the other.
    first, second = _gendered({"woman": 1, "man": 1}), _gendered({"man": 1, "woman": 1})
    assert first.recipe_hash == second.recipe_hash
    counts = [Counter(g.balance["g"] for g in make_plan(r).groups) for r in (first, second)]
    assert counts[0] != counts[1]
    prepare_output_dir(tmp_path / "out", make_plan(first), overwrite=False)
    with pytest.raises(UserError, match="another order"):
        prepare_output_dir(tmp_path / "out", make_plan(second), overwrite=False)


def test_finalize_rebuilds_the_plan_that_made_the_dataset(tmp_path):
    # recipe.json used to be written with sorted keys, so `finalize` rebuilt the plan from
    # the values in sorted order: another plan than the one that made the shards.
    recipe = _recipe(classes=[{"name": "dog", "templates": ["a {colour} dog"], "groups": 6}],
                     slots={"colour": ["red", "green", "blue"]},
                     balance=[{"attribute": "g", "values": {"woman": 1, "man": 1}}])
    plan = make_plan(recipe)
    out = tmp_path / "out"
    prepare_output_dir(out, plan, overwrite=False)
    info = {"device_type": "cpu", "weights": weights_digest(recipe.model)}
    for shard in range(plan.shard_count):
        samples = [build_sample(group, [b"x"] * len(group.views),
                                sample_metadata(group, recipe, info), "png")
                   for group in plan.shard_groups(shard)]
        publish_shard(out, shard, samples, info)
    manifest = finalize_dataset(out)
    assert manifest["plan"] == json.loads(json.dumps(summarize(plan)))


def test_splice_into_is_view_zeros_prompt_when_prompt_strategy_adds_modifiers():
    # views/slots.py records group_texts[0].prompt, view 0's prompt before the `prompt`
    # strategy appended its modifier: the embedding spliced into is of a prompt no view uses.
    recipe = _recipe(
        slots={"colour": ["red", "green", "blue"]},
        classes=[{"name": "dog", "templates": ["a {colour} dog"], "groups": 2}],
        views={"count": 3, "strategy": ["slots", "prompt"],
               "slots": {"vary": ["colour"], "splice_text": True},
               "prompt": {"modifiers": ["from the side", "at night"]}})
    for group in make_plan(recipe).groups:
        anchor = group.views[0]
        for view in group.views[1:]:
            assert view.splice_into == anchor.prompt


def test_slot_cycle_through_a_class_override_is_refused_or_expands_fully():
    # Class slot a -> shared slot b -> a (the class's override): _check_nested_slots only
    # follows the class's own slots, so the cycle loads and _expand stops at depth 8,
    # leaving a literal "{b}" in the prompt and the recorded slot value.
    from synthgen.errors import UserError

    try:
        recipe = _recipe(slots={"a": ["plain"], "b": ["x {a}"]},
                         classes=[{"name": "dog", "templates": ["a {a} dog"],
                                   "slots": {"a": ["y {b}"]}, "groups": 2}])
    except UserError:
        return  # refused at load time, as the README promises for cycles
    for group in make_plan(recipe).groups:
        for view in group.views:
            assert "{" not in view.prompt, view.prompt
        assert "{" not in group.slots["a"]


def test_enumerate_with_a_slot_used_twice_in_a_template_covers_each_combination_once():
    # _enumerate takes the product over template_slots(), which lists a repeated slot twice:
    # (red, red), (red, green), ... collapse to repeated dicts, so the first template is
    # repeated and the second is never reached within `groups` = the true combination count.
    recipe = _recipe(classes=[{
        "name": "dog", "templates": ["a {colour} dog with a {colour} ball", "a {colour} dog"],
        "slots": {"colour": ["red", "green"]}, "groups": 4, "prompt_mode": "enumerate"}])
    seen = Counter((g.template, g.slots["colour"]) for g in make_plan(recipe).groups)
    assert len(seen) == 4, seen
    assert not [w for w in summarize(make_plan(recipe))["warnings"] if "enumerate" in w]


def test_a_corner_case_named_like_a_class_is_refused():
    # summarize keyed counts by `corner_case or class_name`, so both reported the sum of their
    # groups; applies_to could not tell them apart either.
    with pytest.raises(UserError, match="also a class name"):
        _recipe(classes=[{"name": "dog", "templates": ["a {class}"], "groups": 3}],
                corner_cases=[{"name": "dog", "prompt": "a {class} in fog", "label": "dog",
                               "groups": 2}])


def test_literal_braces_in_slot_values_render_the_same_with_or_without_nested_slots():
    # _expand formats a value only when it names another slot, so "{{" becomes "{" in one
    # value and stays "{{" in its neighbour.
    recipe = _recipe(
        slots={"deco": ["with {{braces}}", "with {{braces}} {light}"], "light": ["day"]},
        classes=[{"name": "dog", "templates": ["a {deco} dog"], "groups": 8}])
    prompts = {g.views[0].prompt for g in make_plan(recipe).groups}
    assert prompts == {"a with {braces} dog", "a with {braces} day dog"}, prompts
