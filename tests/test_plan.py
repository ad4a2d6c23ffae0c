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


def test_varied_balanced_attributes_keep_exact_quotas_over_views(write_recipe):
    from click.testing import CliRunner

    from synthgen.cli import main
    from synthgen.attributes import largest_remainder_quotas

    path = write_recipe({
        "classes": [{"name": "circle", "templates": ["a {age} {colour} circle, {gender}"],
                     "groups": 7},
                    {"name": "square", "templates": ["a {colour} square"], "groups": 5}],
        "corner_cases": [],
        "balance": [
            {"attribute": "perceived gender", "slot": "gender",
             "values": {"woman": 1, "man": 1, "nonbinary": 1}},
            {"attribute": "age", "values": {"young": 2, "old": 1}}],
        "views": {"count": 4, "strategy": ["slots", "seeds"], "slots": {"vary": ["gender"]}}})
    recipe = load_recipe(path)
    plan = make_plan(recipe)
    assert plan.groups == make_plan(recipe).groups
    assert [[v.to_json() for v in g.views] for g in plan.groups] == \
        [[v.to_json() for v in g.views] for g in make_plan(recipe).groups]
    summary = summarize(plan)
    for name, groups in (("circle", 7), ("square", 5)):
        of_class = [g for g in plan.groups if g.class_name == name]
        per_view = Counter(v.balance["perceived gender"] for g in of_class for v in g.views)
        # Quotas count views: 7 groups x 4 views = 28 = 10 + 9 + 9.
        assert per_view == largest_remainder_quotas(groups * 4, {"woman": 1, "man": 1,
                                                                 "nonbinary": 1})
        assert summary["balance"]["perceived gender"][name] == dict(per_view)
        assert summary["balance_counts"]["perceived gender"][name] == "views"
        # Not varied: one value per group, quotas over groups.
        per_group = Counter(g.balance["age"] for g in of_class)
        assert per_group == largest_remainder_quotas(groups, {"young": 2, "old": 1})
        assert summary["balance"]["age"][name] == dict(per_group)
        assert summary["balance_counts"]["age"][name] == "groups"
        for group in of_class:
            held = [v.prompt.split(", ")[0] for v in group.views]
            assert len(set(held)) == 1, "the held slots and age are the group's"
            drawn = [v.balance["perceived gender"] for v in group.views]
            # 4 views, 3 values: every value in every group, one twice.
            assert set(drawn) == {"woman", "man", "nonbinary"}
            assert all(f", {value}" in v.prompt for v, value in zip(group.views, drawn))
    printed = CliRunner().invoke(main, ["plan", str(path)]).output
    assert ("balance of 'perceived gender' (views: varied per view, quotas over all views):"
            in printed)
    assert "balance of 'age' (groups):" in printed


def test_varied_balance_is_distinct_when_quotas_allow_and_exact_without_distinct():
    from synthgen.attributes import assign_balanced_view_values
    from synthgen.balance import PromptBalance

    entry = PromptBalance(attribute="age", values={"young": 1, "middle": 1, "old": 1, "child": 1})
    group_ids = [f"g{n}" for n in range(9)]
    distinct = assign_balanced_view_values(5, entry, group_ids, 4, distinct=True)
    # 36 views, quotas of 9 each, 9 groups: no value exceeds N, so every group shows all four.
    assert all(sorted(values) == ["child", "middle", "old", "young"]
               for values in distinct.values())
    assert distinct == assign_balanced_view_values(5, entry, group_ids, 4, distinct=True)
    free = assign_balanced_view_values(5, entry, group_ids, 4, distinct=False)
    assert Counter(v for values in free.values() for v in values) == \
        {"young": 9, "middle": 9, "old": 9, "child": 9}
    assert any(len(set(values)) < 4 for values in free.values())


def _shard_by_shard_recipe(write_recipe, shuffle: bool, prompt_mode: str = "sample"):
    """Shuffled classes and corner cases, balance over groups and over views (slots strategy,
    distinct), nested slots: everything a group's draw can depend on besides its id."""
    return load_recipe(write_recipe({
        "slots": {"colour": ["red", "{shade} green", "blue"], "shade": ["light", "dark"]},
        "classes": [{"name": "circle", "templates": ["a {age} {colour} circle, {gender}"],
                     "groups": 7, "prompt_mode": prompt_mode,
                     "views": {"count": 3, "strategy": ["slots", "seeds"],
                               "slots": {"vary": ["gender"], "distinct": True}}},
                    {"name": "square", "templates": ["a {colour} square", "a {colour} box"],
                     "groups": 5}],
        "corner_cases": [{"name": "circle in square", "prompt": "a {colour} circle in a square",
                          "label": "circle", "groups": 3}],
        "balance": [
            {"attribute": "perceived gender", "slot": "gender",
             "values": {"woman": 1, "man": 1, "nonbinary": 1}, "applies_to": ["circle"]},
            {"attribute": "age", "values": {"young": 2, "old": 1}}],
        "views": {"count": 3, "strategy": "seeds"},
        "output": {"groups_per_shard": 2, "shuffle": shuffle}}))


def test_a_shard_drawn_alone_is_the_shard_of_the_whole_plan(write_recipe, monkeypatch):
    """Workers and job-array tasks plan only the shards they build: each shard drawn by a
    fresh plan, alone and in any order, equals that shard of the whole plan, and only its
    groups are drawn."""
    import importlib

    plan_module = importlib.import_module("synthgen.plan")  # synthgen.plan is also the API's function
    for shuffle, mode in ((True, "sample"), (False, "sample"), (True, "enumerate")):
        recipe = _shard_by_shard_recipe(write_recipe, shuffle, mode)
        whole = make_plan(recipe).groups
        assert len(whole) == 15
        drawn = []
        real_draw = plan_module._draw_group
        monkeypatch.setattr(plan_module, "_draw_group",
                            lambda *args: drawn.append(args[2]) or real_draw(*args))
        for shard in reversed(range(8)):
            drawn.clear()
            alone = make_plan(recipe)
            groups = alone.shard_groups(shard)
            assert groups == whole[shard * 2:shard * 2 + 2]
            assert [[v.to_json() for v in g.views] for g in groups] == \
                [[v.to_json() for v in g.views] for g in whole[shard * 2:shard * 2 + 2]]
            assert len(drawn) == len(groups)  # nothing else was drawn
            assert alone.shard_size(shard) == (len(groups), sum(len(g.views) for g in groups))
        monkeypatch.setattr(plan_module, "_draw_group", real_draw)
        again = make_plan(recipe)
        assert again.image_count == sum(len(g.views) for g in whole) == 45
        assert (again.group_count, again.shard_count) == (15, 8)
        assert again.head(3) == whole[:3]


def test_a_pickled_plan_carries_its_order_not_its_drawn_groups(write_recipe):
    """The processes and Ray engines send the plan to every worker: it travels as the recipe
    and the group order, whatever the sending process has drawn."""
    import pickle

    recipe = _shard_by_shard_recipe(write_recipe, True)
    plan = make_plan(recipe)
    before = len(pickle.dumps(plan))
    whole = plan.groups
    sent = pickle.dumps(plan)
    assert len(sent) == before
    received = pickle.loads(sent)
    assert received.shard_groups(3) == whole[6:8]
    assert received.groups == whole
