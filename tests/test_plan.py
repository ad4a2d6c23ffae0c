"""The plan: deterministic, counts as the recipe says, seeds a pure function of identity."""

from __future__ import annotations

import hashlib
import io
import json
from collections import Counter

from synthgen.plan import make_plan, summarize
from synthgen.recipe import load_recipe
from synthgen.seeding import derive_seed, seed_for


def test_seed_for_is_a_pure_function_of_identity():
    assert seed_for(7, "class-dog-000001", 0) == seed_for(7, "class-dog-000001", 0)
    distinct = {seed_for(7, "class-dog-000001", v) for v in range(100)}
    distinct |= {seed_for(8, "class-dog-000001", 0), seed_for(7, "class-dog-000002", 0)}
    assert len(distinct) == 102
    assert all(0 <= s < 2**63 for s in distinct)
    # Pinned: a change here silently changes every dataset ever made from a recipe.
    reference = hashlib.sha256("view\x1f0\x1fg\x1f0".encode()).digest()
    expected = int.from_bytes(reference[:8], "big") & (2**63 - 1)
    assert seed_for(0, "g", 0) == derive_seed("view", 0, "g", 0) == expected == 9130017596438391598


def test_plan_is_deterministic_and_counts_match(write_recipe):
    recipe = load_recipe(write_recipe())
    plan, again = make_plan(recipe), make_plan(recipe)
    assert plan.groups == again.groups
    per_class = Counter(g.class_name for g in plan.groups if g.corner_case is None)
    assert per_class == {"circle": 4, "square": 3}
    corner = [g for g in plan.groups if g.corner_case is not None]
    assert len(corner) == 2 and all(g.class_name == "circle" and g.class_index == 0 for g in corner)
    assert all(g.tags == ("nested",) for g in corner)
    assert plan.image_count == 9 * 2
    assert plan.shard_count == 3  # 9 groups, 4 per shard
    assert [g.index for g in plan.groups] == list(range(9))
    assert [g.shard for g in plan.groups] == [0] * 4 + [1] * 4 + [2]
    assert len({g.group_id for g in plan.groups}) == 9
    assert all("." not in g.group_id for g in plan.groups)


def test_views_share_the_prompt_and_have_their_own_seeds(write_recipe):
    plan = make_plan(load_recipe(write_recipe()))
    for group in plan.groups:
        assert len({v.prompt for v in group.views}) == 1
        assert [v.seed for v in group.views] == [seed_for(7, group.group_id, v) for v in range(2)]
        assert group.template.format(**group.slots) == group.views[0].prompt


def test_adding_a_class_leaves_other_groups_unchanged(write_recipe):
    base = make_plan(load_recipe(write_recipe()))
    bigger = make_plan(load_recipe(write_recipe({"classes": [
        {"name": "circle", "templates": ["a {colour} circle"], "groups": 4},
        {"name": "square", "templates": ["a {colour} square", "a {size} {colour} square"],
         "slots": {"size": {"small": 1, "large": 3}}, "groups": 3},
        {"name": "star", "templates": ["a {colour} star"], "groups": 5}]}, name="bigger.yaml")))
    before = {g.group_id: g.views for g in base.groups}
    after = {g.group_id: g.views for g in bigger.groups}
    assert all(after[group_id] == views for group_id, views in before.items())


def test_weighted_slots_follow_their_weights(write_recipe):
    recipe = load_recipe(write_recipe({
        "slots": {"colour": {"red": 3, "blue": 1}},
        "classes": [{"name": "circle", "templates": ["a {colour} circle"], "groups": 4000}],
        "corner_cases": []}))
    counts = Counter(g.slots["colour"] for g in make_plan(recipe).groups)
    # Binomial(4000, 0.75): sd ~27, so a 5-sd window around 3000.
    assert abs(counts["red"] - 3000) < 140


def test_unshuffled_plan_keeps_recipe_order(write_recipe):
    plan = make_plan(load_recipe(write_recipe({"output": {"shuffle": False}})))
    assert [g.group_id for g in plan.groups][:5] == [
        "class-circle-000000", "class-circle-000001", "class-circle-000002",
        "class-circle-000003", "class-square-000000"]


def test_summary_and_jsonl(write_recipe):
    plan = make_plan(load_recipe(write_recipe()))
    summary = summarize(plan)
    assert summary["groups"] == 9 and summary["images"] == 18 and summary["shards"] == 3
    assert summary["classes"]["square"] == {"groups": 3, "images": 6, "views": "2 views: seeds"}
    assert summary["corner_cases"]["circle in square"]["groups"] == 2
    assert summary["stored_size"] == [32, 32] and summary["estimated_bytes"] > 0
    stream = io.StringIO()
    plan.write_jsonl(stream)
    lines = [json.loads(line) for line in stream.getvalue().splitlines()]
    assert [line["group_id"] for line in lines] == [g.group_id for g in plan.groups]
    assert lines[0]["views"][1]["seed"] == plan.groups[0].views[1].seed


def test_shared_templates_fill_the_class_slot(write_recipe):
    recipe = load_recipe(write_recipe({
        "templates": ["a photo of a {class}, {colour}"],
        "classes": [{"name": "tabby cat", "groups": 2},
                    {"name": "goose", "templates": ["a {class} on a lake"], "groups": 1}],
        "corner_cases": [{"name": "cat on a goose", "prompt": "a {class} riding a goose",
                          "label": "tabby cat", "groups": 1}]}))
    prompts = {g.group_id: g.views[0].prompt for g in make_plan(recipe).groups}
    assert prompts["class-tabby_cat-000000"].startswith("a photo of a tabby cat, ")
    assert prompts["class-goose-000000"] == "a goose on a lake"
    assert prompts["corner-cat_on_a_goose-000000"] == "a tabby cat riding a goose"
