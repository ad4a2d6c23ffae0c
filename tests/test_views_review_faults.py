"""Faults in the view strategies, the sampler and how views are recorded, found in review;
each test fails on the code it was written against, for the reason its docstring gives.

Plan-only where possible (`parse_recipe` + `make_plan`); the rest samples the tiny random
pipeline on the CPU (32 px, 1-2 steps) or runs `generate` through click's runner.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest
import torch
import yaml

from small_recipe import SMALL_RECIPE, merge
from synthgen.errors import UserError
from synthgen.plan import make_plan, recipe_warnings, summarize
from synthgen.recipe import parse_recipe
from cli_checks import assert_no_traceback, invoke  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_thread")

TINY = {"id": "builtin:tiny-random", "width": 32, "height": 32, "steps": 2}


def _recipe(**fields):
    base = {"name": "review", "seed": 1, "model": TINY}
    return parse_recipe(yaml.safe_dump({**base, **fields}, sort_keys=False))


def _write(folder: Path, overrides: dict, name: str = "recipe.yaml") -> Path:
    path = folder / name
    path.write_text(yaml.safe_dump(merge(SMALL_RECIPE, overrides), sort_keys=False))
    return path




# --- slots.check with other strategies ------------------------------------------------------

def test_a_checked_view_is_compared_with_its_own_prompt_when_prompt_modifiers_apply():
    """`slots.check` reads each held name by comparing the view with "its own prompt and with
    the same prompt filled with each other value" (README; `HeldCheckPlan.readings`: "the
    view's own prompt among them"), and `prompt` combines with `slots` and `check`. But
    `plan._view_texts` fills the compared prompts from the template before the `prompt`
    strategy appends the view's modifier, and `Slots.change_view` copies them as they are:
    a view drawn from 'a large red square, at night' is read against 'a large red square'
    and 'a large red circle'. The check then judges the view against a prompt it was not
    drawn from (and `_check_readable` never sees the real one). Each view's compared
    prompts should be its own prompt (modifier included) and that prompt with the other
    values, as splice_into was fixed to be view 0's prompt with its modifier."""
    recipe = _recipe(
        slots={"colour": ["red", "green", "blue"], "size": ["small", "large"]},
        templates=["a {size} {colour} {class}"],
        classes=[{"name": "circle", "groups": 2}, {"name": "square", "groups": 1}],
        views={"count": 2, "strategy": ["slots", "prompt"],
               "prompt": {"modifiers": ["at night", "from above"]},
               "slots": {"vary": ["colour"], "check": {"hold": ["class", "size"]}}})
    for group in make_plan(recipe).groups:
        for view in group.views:
            assert view.modifier and view.prompt.endswith(view.modifier), "setup: modifiers apply"
            for name, own, compared in view.held_check.readings:
                assert dict(compared)[own] == view.prompt, (
                    f"{group.group_id} view {view.view}: drawn from {view.prompt!r}, but its "
                    f"{name} is read with {dict(compared)}")


# --- slots.hold_layout ----------------------------------------------------------------------

def test_hold_layout_at_too_few_steps_to_share_any_is_not_silently_a_no_op():
    """`hold_layout: true` shares view 0's maps and features for the first
    int(0.85 x steps) steps (`LayoutSharing.shared_steps`), so at `steps: 1` (the recipe
    reference's default, sd-turbo's and SDXL-turbo's setting) no step is shared: the
    views are plain shared-noise views, pixel for pixel. Yet the recipe loads without a
    word, `plan` says "layout held to view 0 for 85% of the steps", and every view's json
    records `layout_anchor: 0` and `layout_sharing` 0.85; groups are also forced whole into
    calls for nothing. img2img's strength rounded by the step count is warned
    (`_img2img_warnings`); a layout sharing that rounds to no step at all should be refused
    or at least warned by validate and plan, naming hold_layout and the steps."""
    from synthgen.generate.load import load_pipeline
    from synthgen.generate.sampler import Sampler

    model = {**TINY, "steps": 1}
    recipe = _recipe(
        model=model, slots={"colour": ["red", "green", "blue"]},
        classes=[{"name": "circle", "templates": ["a {colour} circle"], "groups": 1}],
        views={"count": 2, "strategy": "slots", "slots": {"vary": ["colour"], "hold_layout": True}})
    plan = make_plan(recipe)
    assert "layout held to view 0 for 85% of the steps" in summarize(plan)["classes"]["circle"]["views"]
    views = list(plan.groups[0].views)
    loaded = load_pipeline(recipe.model, torch.device("cpu"), torch.float32)
    held = Sampler(loaded, recipe.model, batch_size=2).sample(views).images
    plain = Sampler(loaded, recipe.model, batch_size=2).sample(
        [replace(view, layout_anchor=None, layout_sharing=None) for view in views]).images
    assert torch.equal(held, plain), "setup: at 1 step nothing of view 0's layout is shared"
    assert any("hold_layout" in warning for warning in recipe_warnings(recipe)), (
        "hold_layout shares no step at steps: 1, and nothing says so: "
        f"{recipe_warnings(recipe)}")


# --- recipe validation of the views block ---------------------------------------------------

def test_a_strategy_listed_twice_is_refused():
    """`views.strategy: [seeds, seeds]` loads, plans as [seeds], describes itself as
    '2 views: seeds + seeds', records `view_strategy: [seeds, seeds]` in every sample and
    has another recipe hash than [seeds] (so the same dataset cannot be resumed with the
    corrected recipe). Everywhere else a list of names that must be distinct is refused
    with "listed twice; list each once" (`slots.vary`, `slots.check.hold`); a strategy named
    twice should be too."""
    with pytest.raises(UserError, match="twice|once"):
        _recipe(classes=[{"name": "x", "templates": ["a x"], "groups": 1}],
                views={"count": 2, "strategy": ["seeds", "seeds"]})


def test_a_strategy_a_family_cannot_run_names_the_views_block_it_is_in(tmp_path):
    """A view strategy the model cannot run is refused once the model loads
    (`prepare.check_strategies`), with a message that names the field as
    `views.slots.hold_layout` (or `views.strategy [...]`) whatever block asked for it. Here
    only `classes[1].views` holds the layout and the recipe's own `views` are plain seeds,
    so the message sends the user to a field that is fine. It should name
    `classes[1].views` (the first class or corner case whose views ask for it), as every
    recipe error does (`classes[1].views.slots.hold_layout: ...`)."""
    recipe = _write(tmp_path, {
        "model": {"scheduler": "HeunDiscreteScheduler"},
        "classes": [{"name": "circle", "templates": ["a {colour} circle"], "groups": 1},
                    {"name": "square", "templates": ["a {colour} square"], "groups": 1,
                     "views": {"count": 2, "strategy": "slots",
                               "slots": {"vary": ["colour"], "hold_layout": True}}}],
        "corner_cases": []})
    result = invoke("generate", recipe, "--out", tmp_path / "out", "--device", "cpu", "--quiet")
    assert_no_traceback(result, allowed=(2,))
    assert "calls the UNet 2 times per step" in result.output, "setup: Heun is refused"
    assert "classes[1].views" in result.output, result.output


def test_a_dataset_of_plan_revision_2_with_checked_prompt_views_is_not_resumed(tmp_path):
    """The fix above changes what such views' checks compare: a dataset planned before it
    (revision 2) would be resumed with groups checked two ways, so it is refused; a recipe
    without the `prompt` strategy plans the same at both revisions."""
    from synthgen.write import check_plan_revision

    fields = dict(slots={"colour": ["red", "green", "blue"], "size": ["small", "large"]},
                  templates=["a {size} {colour} {class}"],
                  classes=[{"name": "circle", "groups": 2}, {"name": "square", "groups": 1}])
    checked = {"count": 2, "strategy": ["slots", "prompt"],
               "prompt": {"modifiers": ["at night", "from above"]},
               "slots": {"vary": ["colour"], "check": {"hold": ["class", "size"]}}}

    class Store:
        location = tmp_path

        def names(self):
            return ["shard-000000.tar"]

    with pytest.raises(UserError, match="plan revision 2"):
        check_plan_revision(Store(), {"plan_revision": 2}, make_plan(_recipe(**fields, views=checked)))
    plain = {**checked, "strategy": ["slots"]}
    plain.pop("prompt")
    check_plan_revision(Store(), {"plan_revision": 2}, make_plan(_recipe(**fields, views=plain)))
