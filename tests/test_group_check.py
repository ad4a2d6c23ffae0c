"""`views.slots.check`: groups whose views disagree on a held name or on the layout are drawn
again whole. The recipe option and its refusals, the texts the plan gives the detector, the
layout score, and the redraw loop through `generate` (seeds, records, counts, determinism)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from sampling_checks import written_views
from synthgen.api import generate
from synthgen.engines.local import GenerateOptions, generate_dataset, shard_batches
from synthgen.errors import UserError
from synthgen.generate import group_check
from synthgen.generate.group_check import layout_agreement, retry_group
from synthgen.plan import make_plan, summarize
from synthgen.recipe import load_recipe

CHECKED = {"count": 3, "strategy": "slots",
           "slots": {"vary": ["colour"], "check": {"hold": ["class", "size"], "layout": 0.5,
                                                   "max_retries": 2}}}
RECIPE = {
    "model": {"steps": 2},
    "slots": {"colour": ["red", "green", "blue", "pink"], "size": ["small", "large"]},
    "templates": ["a {size} {colour} {class}"],
    "classes": [{"name": "circle", "groups": 3}, {"name": "square", "groups": 2}],
    "corner_cases": [],
    "views": CHECKED,
    "output": {"groups_per_shard": 2, "format": "png"},
}


def recipe_error(write_recipe, views: dict, **changes) -> str:
    with pytest.raises(UserError) as raised:
        load_recipe(write_recipe({**RECIPE, **changes, "views": views}))
    return str(raised.value)


def test_recipes_without_a_check_keep_their_hash(write_recipe):
    plain_views = {"count": 3, "strategy": "slots", "slots": {"vary": ["colour"]}}
    plain = load_recipe(write_recipe({**RECIPE, "views": plain_views}, name="plain.yaml"))
    checked = load_recipe(write_recipe(RECIPE, name="checked.yaml"))
    assert "check" not in plain.model_dump(mode="json")["views"]["slots"]
    assert plain.recipe_hash != checked.recipe_hash


def test_check_mistakes_are_one_clear_recipe_error(write_recipe):
    def views(**check) -> dict:
        return {"count": 3, "strategy": "slots", "slots": {"vary": ["colour"], "check": check}}

    assert "check needs hold" in recipe_error(write_recipe, views())
    assert "which vary lists" in recipe_error(write_recipe, views(hold=["colour"]))
    assert "'shade' is not a slot" in recipe_error(write_recipe, views(hold=["shade"]))
    assert "layout" in recipe_error(write_recipe, views(layout=1.5))
    message = recipe_error(write_recipe, views(hold=["class"]), classes=[
        {"name": "circle", "groups": 2}])
    assert "has one class" in message
    message = recipe_error(write_recipe, views(hold=["class"]), classes=[
        {"name": "circle", "templates": ["a {colour} circle"], "groups": 2},
        {"name": "square", "groups": 1}])
    assert "does not use {class}" in message
    message = recipe_error(write_recipe, views(hold=["size"]), slots={
        "colour": ["red", "green"], "size": ["small", "{colour}-ish"]})
    assert "fill other slots" in message
    message = recipe_error(write_recipe, views(hold=["size"]), classes=[
        {"name": "circle", "templates": ["a {colour} circle", "a {size} {colour} circle"],
         "groups": 2},
        {"name": "square", "groups": 1}])
    assert "does not use {size}" in message
    img2img = {**views(hold=["class"]), "strategy": ["slots", "img2img"],
               "img2img": {"strength": 0.6}}
    assert "drop img2img or the check" in recipe_error(write_recipe, img2img)
    message = recipe_error(write_recipe, views(hold=["class"], detector="no/such/../clip"))
    assert "slots.check.detector" in message


def test_the_plan_gives_each_view_its_own_prompt_among_the_compared_ones(write_recipe):
    plan = make_plan(load_recipe(write_recipe(RECIPE)))
    assert "groups redrawn up to 2x unless class, size, layout >= 0.5 hold" in (
        summarize(plan)["classes"]["circle"]["views"])
    for group in plan.groups:
        for view in group.views:
            check = view.held_check
            assert check.layout == 0.5 and check.max_retries == 2
            readings = {name: (own, dict(compared)) for name, own, compared in check.readings}
            own_class, by_class = readings["class"]
            assert own_class == group.class_name and set(by_class) == {"circle", "square"}
            assert by_class[own_class] == view.prompt
            other = next(name for name in by_class if name != own_class)
            assert by_class[other] == view.prompt.replace(own_class, other)
            own_size, by_size = readings["size"]
            assert own_size == group.slots["size"] and by_size[own_size] == view.prompt
            assert set(by_size) == {"small", "large"}
        # What is checked is planning, not metadata: the sample json does not carry it.
        assert "held_check" not in json.dumps(group.to_json())
    # Checked groups come to the sampler whole, as held layouts do.
    for shard in range(plan.shard_count):
        for batch in shard_batches(plan, shard, 4):
            ids = [group.group_id for group, _ in batch]
            assert all(ids.count(i) == 3 for i in ids)


def test_layout_agreement_is_high_for_a_recoloured_object_and_low_for_a_moved_one():
    def picture(colour, left, top, size=10):
        image = np.full((32, 32, 3), 128, np.uint8)
        image[top:top + size, left:left + size] = colour
        return image

    views = torch.from_numpy(np.stack([
        picture((220, 30, 30), 8, 8), picture((30, 30, 220), 8, 8),     # recoloured
        picture((30, 200, 30), 18, 16), picture((220, 30, 30), 8, 8, size=5)]))  # moved, smaller
    agreement = layout_agreement(views)
    assert agreement[0] == pytest.approx(1.0, abs=1e-4)
    assert agreement[1] > 0.95
    assert agreement[2] < 0.2 and agreement[3] < 0.6
    # The same at 4x the size: the edge maps are compared at most 64 px wide.
    large = torch.from_numpy(np.stack([np.kron(v, np.ones((4, 4, 1), np.uint8))
                                       for v in views.numpy()]))
    assert torch.allclose(layout_agreement(large)[:2], agreement[:2], atol=0.05)
    assert layout_agreement(large)[2] < 0.3


def test_a_redrawn_group_keeps_one_shared_seed_and_its_turns(write_recipe):
    views = list(make_plan(load_recipe(write_recipe(RECIPE))).groups[0].views)
    first = retry_group(views, 1)
    assert len({view.seed for view in first}) == 1 and first[0].seed != views[0].seed
    assert [v.prompt for v in first] == [v.prompt for v in views]
    assert retry_group(views, 1) == first and retry_group(views, 2) != first
    assert retry_group(first, 2)[0].seed != first[0].seed


def fail_first_draws(monkeypatch, failing_draws: dict[str, int]):
    """Make the checker report `layout` on view 1 of a group for its first N draws (N from
    `failing_draws` by group id), and pass otherwise; returns the seeds it was shown."""
    shown: list[tuple[str, int]] = []

    def disagreements(self, views, images):
        group_id = views[0].group_id
        shown.append((group_id, views[0].seed))
        draws = sum(1 for seen, _ in shown if seen == group_id)
        failing = [[] for _ in views]
        if draws <= failing_draws.get(group_id, 0):
            failing[1].append("layout")
        return failing

    monkeypatch.setattr(group_check.GroupChecker, "disagreements", disagreements)
    return shown


def test_a_failing_group_is_redrawn_whole_and_recorded(write_recipe, tmp_path, monkeypatch):
    plan = make_plan(load_recipe(write_recipe({**RECIPE, "views": {
        **CHECKED, "slots": {"vary": ["colour"], "check": {"layout": 0.5, "max_retries": 2}}}})))
    first, second = plan.groups[0].group_id, plan.groups[1].group_id
    # The first group passes on its second draw; the second never does (2 retries, kept).
    shown = fail_first_draws(monkeypatch, {first: 1, second: 10})
    options = GenerateOptions(progress=False, device="cpu", batch_size=6)
    result = generate(plan.recipe, tmp_path / "a", batch_size=6, device="cpu", progress=False)
    assert result.group_checks == {"groups": 5, "redraws": 3, "failed": 1}
    written = written_views(tmp_path / "a")
    records = {key: entry["held_check"] for key, (entry, _) in written.items()}
    for view in range(3):
        assert records[(first, view)]["redraws"] == 1 and records[(first, view)]["passed"]
        assert records[(second, view)] == {
            "redraws": 2, "passed": False, "disagree": {"layout": view == 1},
            "seed_used": records[(second, 0)]["seed_used"]}
    # Each redraw is a new shared seed for the whole group; the planned seed was shown first.
    planned = {group.group_id: group.views[0].seed for group in plan.groups}
    seeds_of_first = [seed for group_id, seed in shown if group_id == first]
    assert seeds_of_first[0] == planned[first] != seeds_of_first[1]
    assert records[(first, 2)]["seed_used"] == seeds_of_first[1]
    assert len({records[(second, view)]["seed_used"] for view in range(3)}) == 1
    untouched = plan.groups[2].group_id
    assert records[(untouched, 0)] == {"redraws": 0, "passed": True,
                                       "disagree": {"layout": False},
                                       "seed_used": planned[untouched]}
    # The same recipe gives the same bytes, and a redrawn group's pixels are not its first draw.
    shown.clear()
    generate_dataset(plan, tmp_path / "b", options)
    tars = sorted(p.name for p in (tmp_path / "a").glob("shard-*.tar"))
    assert all((tmp_path / "a" / n).read_bytes() == (tmp_path / "b" / n).read_bytes() for n in tars)
    monkeypatch.setattr(group_check.GroupChecker, "disagreements",
                        lambda self, views, images: [[] for _ in views])
    generate_dataset(plan, tmp_path / "never", options)
    unchecked = written_views(tmp_path / "never")
    assert not np.array_equal(unchecked[(first, 0)][1], written[(first, 0)][1])
    assert np.array_equal(unchecked[(untouched, 0)][1], written[(untouched, 0)][1])


def test_generate_and_inspect_print_the_checks(write_recipe, tmp_path, monkeypatch):
    from click.testing import CliRunner

    from synthgen.cli import main

    recipe = write_recipe({**RECIPE, "classes": [{"name": "circle", "groups": 3},
                                                 {"name": "square", "groups": 1}]})
    plan = make_plan(load_recipe(recipe))
    fail_first_draws(monkeypatch, {plan.groups[0].group_id: 99})
    result = CliRunner().invoke(main, ["generate", str(recipe), "--out", str(tmp_path / "out"),
                                       "--device", "cpu", "--quiet"])
    assert result.exit_code == 0, result.output
    line = ("check: 4 groups checked, 2 redraws; 1 group stored although their views still "
            "disagree")
    assert line in result.output
    inspected = CliRunner().invoke(main, ["inspect", str(tmp_path / "out")])
    assert inspected.exit_code == 0 and line in inspected.output, inspected.output


def test_the_checker_names_what_each_view_fails(write_recipe):
    """A view fails a held name where the detector picks another value's prompt, and the
    layout where its edge map strays from view 0's; views are read as stored (PNG here)."""
    plan = make_plan(load_recipe(write_recipe(RECIPE)))
    views = list(next(group for group in plan.groups if group.class_name == "circle").views)
    calls: list[list[list[str]]] = []

    class Scorer:  # reads view 2 as a square, every other view as its own class and size
        def image_features(self, images):
            return images.flatten(1).float()

        def read_tokens(self, text):
            return tuple(text.split())

        def choose_by_features(self, features, candidates):
            calls.append(candidates)
            wanted = [view.prompt for view in views]
            if len(calls) == 1:  # the class, read first
                wanted[2] = views[2].prompt.replace("circle", "square")
            return [texts.index(text) for texts, text in zip(candidates, wanted)]

    square = np.full((32, 32, 3), 128, np.uint8)
    square[8:18, 8:18] = 200
    moved = np.full((32, 32, 3), 128, np.uint8)
    moved[18:28, 18:28] = 200
    images = torch.from_numpy(np.stack([square, square, moved]))
    checker = group_check.GroupChecker(plan.recipe, {"builtin:world-clip": Scorer()})
    assert checker.disagreements(views, images) == [[], [], ["class", "layout"]]
    assert len(calls) == 2 and all(len(texts) == 3 for texts in calls)  # class, then size
