"""Generation faults found in review (2026-12-03), each test failing before its fix: redrawn
views of a shared-noise group sharing one new seed, a concept rejected by two entries counted
twice, a view with some non-finite values stored as its picture instead of black.

All run on builtin:tiny-random on the CPU.
"""

from __future__ import annotations

import types

import pytest
import torch

from synthgen.errors import UserError
from synthgen.generate.load import load_pipeline
from synthgen.generate.sampler import Rejector, Sampler
from synthgen.plan import make_plan
from synthgen.recipe import ModelSpec, ViewsSpec, load_recipe
from synthgen.seeding import derive_seed
from synthgen.views import plan_views

SPEC = ModelSpec(id="builtin:tiny-random", steps=2, width=32, height=32)


@pytest.fixture(scope="module")
def model():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield load_pipeline(SPEC, torch.device("cpu"), torch.float32)
    finally:
        torch.set_num_threads(threads)


def flag_everything(images: torch.Tensor, prompts: list[str]) -> torch.Tensor:
    return torch.ones(len(images))


def test_redrawn_views_of_a_shared_noise_group_get_their_own_seeds(write_recipe, model):
    # README (Views, slots): "A view that `reject` suppression draws again gets a new seed,
    # off the shared noise." With shared noise every view of a group has one planned seed,
    # and retry_view derives the new seed from (seed, attempt) alone, so every redrawn view
    # of the group gets the *same* new seed: they land on one shared noise again. (The
    # latent strategy's retry anchor mixes in the group and view; the seed does not.)
    recipe = load_recipe(write_recipe({"views": {"count": 3, "strategy": "slots",
                                                 "slots": {"vary": ["colour"]}}}))
    views = list(make_plan(recipe).groups[0].views)
    assert len({view.seed for view in views}) == 1, "planned: one shared noise"
    sampler = Sampler(model, recipe.model, batch_size=3,
                      rejectors=(Rejector("thing", 0.5, 1, flag_everything),))
    records = sampler.sample(views).records
    used = [record["seed_used"] for record in records]
    assert len(set(used)) == len(views), f"redraw seeds collide across the group's views: {used}"


def test_two_reject_entries_for_one_concept_keep_their_retries(write_recipe, model):
    # Two `reject` entries naming one concept (e.g. two detectors) used to be accepted; a
    # recipe now keeps one per concept.
    with pytest.raises(UserError, match="rejects 'striped' again"):
        load_recipe(write_recipe({"suppress": [
            {"concept": "striped", "method": "reject", "max_retries": 2},
            {"concept": "striped", "method": "reject", "contrast": "{prompt}", "max_retries": 2}]}))
    # Rejectors built by hand still count a concept once per draw. The sampler appended the concept once per entry that flags it, so each redraw counts
    # twice against the concept's max_retries: a view gets one retry instead of two, records
    # two rejections for one redraw, and is listed as failed twice (counted twice by the
    # shard assembler's Counter).
    rejectors = tuple(Rejector("striped", 0.5, 2, flag_everything) for _ in range(2))
    sampler = Sampler(model, SPEC, batch_size=2, rejectors=rejectors)
    views = list(plan_views(ViewsSpec(count=2, strategy="seeds"), 7, "g", "a red circle", ""))
    records = sampler.sample(views).records
    for view, record in zip(views, records):
        twice = derive_seed("retry", derive_seed("retry", view.seed, 1), 2)
        assert record["seed_used"] == twice, "max_retries 2: the view is drawn again twice"
        assert record["rejections"] == {"striped": 2}
        assert record["suppression_failed"] == ["striped"]


def test_a_view_with_any_nonfinite_output_is_stored_black(model):
    # README: "A view whose model output has NaN/inf (an fp16 overflow) is stored black".
    # _denoise flags the view as non-finite but only zeroes the NaN elements
    # (nan_to_num), so a view with one NaN pixel is stored as the rest of its picture.
    sampler = Sampler(model, SPEC, batch_size=2)
    pipeline = sampler.pipeline

    def one_nan_pixel(**arguments):
        images = pipeline(**arguments).images.clone()
        images[0, :, 0, 0] = float("nan")
        return types.SimpleNamespace(images=images)

    sampler.pipeline = one_nan_pixel
    views = list(plan_views(ViewsSpec(count=2, strategy="seeds"), 7, "g", "a red circle", ""))
    result = sampler.sample(views)
    assert result.nonfinite == (0,)
    assert int(result.images[0].max()) == 0, "a non-finite view must be stored all black"
    assert int(result.images[1].max()) > 0
