"""Review of 1813659 (groups drawn a shard at a time, on demand: `Plan.shard_groups`).

Each test fails on 1813659. Checked and found right there (no test): every shard drawn alone,
in reverse or random order with LRU evictions, after pickling, and from six threads at once
equals the eager plan's shard (and `plan --jsonl` / summaries equal the previous commit's,
under plan revisions 1, 2 and 3) for recipes with balance over groups and over views (slots,
distinct and not), corner cases with labels, own labels and none, enumerate, nested slots,
slots.check with a prompt modifier, shuffle on and off, groups_per_shard 1 and larger than
the plan, classes with 0 groups.
"""

from __future__ import annotations

import importlib
from collections import Counter

import synthgen
from synthgen.engines.local import GenerateOptions, ShardAssembler, generate_dataset
from synthgen.plan import make_plan
from synthgen.recipe import load_recipe
from synthgen.store import open_store


def test_two_plans_of_one_recipe_compare_equal(write_recipe):
    """`make_plan`: "the same recipe always gives the same plan". Before 1813659 `Plan` was a
    frozen dataclass, so `make_plan(r) == make_plan(r)` and, in the Python API,
    `synthgen.plan(path) == synthgen.plan(path)` (a frozen `PlanResult` holding the plan) were
    True: how a caller checks that planning is deterministic, or that two recipe files plan
    the same dataset. Now `Plan` is a plain class compared by identity, so two plans of one
    recipe, equal group for group, compare unequal, and so do their `PlanResult`s. Correct:
    plans of the same recipe (and revision) are equal; a plan of another recipe is not."""
    path = write_recipe()
    recipe = load_recipe(path)
    first, second = make_plan(recipe), make_plan(recipe)
    assert first.groups == second.groups  # the same groups...
    assert first == second  # ...so the same plan
    assert synthgen.plan(path) == synthgen.plan(path)
    other = make_plan(load_recipe(write_recipe({"seed": 8}, name="other.yaml")))
    assert other != first


def test_a_local_generate_run_draws_each_group_once_and_once_for_its_manifest(write_recipe, tmp_path,
                                                                           monkeypatch):
    """A `synthgen generate` run on the local engine used to draw the plan once (in
    `make_plan`). Now its worker draws every group while building that group's shard, and
    the manifest's summary draws every group again (only the last 16 shards are kept: holding
    all of them is the memory the change removes). In `summarize`, `estimate_bytes`'s
    `head(1000)` first drew the shards of the first 1000 groups and the pass after it drew
    them once more (each evicted before it was asked for again): 3 draws a group here (20
    shards of one group). Correct: once to build, once for the summary, whatever the size."""
    plan_module = importlib.import_module("synthgen.plan")
    drawn = []
    real_draw = plan_module._draw_group
    monkeypatch.setattr(plan_module, "_draw_group",
                        lambda *args: drawn.append((args[1].target.name, args[2])) or real_draw(*args))
    plan = make_plan(load_recipe(write_recipe({
        "classes": [{"name": "circle", "templates": ["a {colour} circle"], "groups": 12},
                    {"name": "square", "templates": ["a {colour} square"], "groups": 6}],
        "output": {"groups_per_shard": 1}})))
    assert plan.shard_count == 20
    summary = generate_dataset(plan, tmp_path / "out", GenerateOptions(progress=False, device="cpu"))
    assert summary.manifest_written and summary.shards_written == 20
    assert len(drawn) == 2 * plan.group_count, f"{len(drawn)} group draws for {plan.group_count} groups"
    assert set(Counter(drawn).values()) == {2}


def test_collecting_a_shard_counts_its_size_once(write_recipe, tmp_path, monkeypatch):
    """`ShardAssembler.add_view` asks, for every finished group, whether its shard is complete:
    it used to compare with `len(plan.shard_groups(shard))` (a tuple's length), and then
    called `plan.shard_size(shard)`, which turned the shard's whole position range into a
    numpy index array and summed its views each time: O(groups_per_shard) per group, about
    5 s of the sampler's time per shard at the largest groups_per_shard (10,000). Correct:
    a shard's size is counted once, however many groups ask."""
    plan = make_plan(load_recipe(write_recipe({
        "classes": [{"name": "circle", "templates": ["a {colour} circle"], "groups": 2_000}],
        "corner_cases": [], "views": {"count": 1, "strategy": "seeds"},
        "output": {"groups_per_shard": 2_000}})))
    groups = plan.shard_groups(0)
    assert len(groups) == 2_000
    counted = []
    real_positions = plan._shard_positions
    monkeypatch.setattr(plan, "_shard_positions", lambda shard: counted.append(shard) or real_positions(shard))
    assembler = ShardAssembler(plan, open_store(tmp_path / "out"), {}, GenerateOptions(progress=False))
    assembler._encode_group = lambda group, views: None
    submitted = []
    assembler._submit_shard = submitted.append
    try:
        for group in groups:
            assembler.add_view(group, group.views[0], None, nonfinite=False)
    finally:
        assembler.shutdown()
    assert submitted == [0]
    assert len(counted) <= 1, f"the shard's size was counted {len(counted)} times"
