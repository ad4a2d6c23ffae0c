"""`slots` views that hold view 0's layout (`views.slots.hold_layout`): the recipe option and
its refusals, the plan line and json, whole groups per pipeline call, and bytes equal to the
pipeline called by hand inside `attention_sharing.share_layout`."""

from __future__ import annotations


import numpy as np
import pytest
import torch

from flux_fixture import build_tiny_flux
from pixart_fixture import build_tiny_pixart
from sampling_checks import written_views
from synthgen.engines.local import GenerateOptions, generate_dataset, shard_batches
from synthgen.errors import UserError
from synthgen.generate import prepare
from synthgen.generate.attention_sharing import LAYOUT_SHARING, LayoutSharing, share_layout
from synthgen.generate.families import family_of
from synthgen.generate.load import LoadedModel, load_pipeline
from synthgen.generate.sampler import Rejector, Sampler
from synthgen.generate.tiny_random import build_tiny_pipeline
from synthgen.plan import make_plan, summarize
from synthgen.recipe import load_recipe
from synthgen.seeding import derive_seed
from synthgen.views import ViewsSpec

STEPS = 4  # int(0.85 * 4) = 3 shared steps, then one of each view's own
HELD = {"count": 3, "strategy": "slots", "slots": {"vary": ["colour"], "hold_layout": True}}
# Two classes of one template each (so every group's views differ in one colour word), a
# guidance scale so that each call is doubled for classifier-free guidance.
RECIPE = {
    "model": {"steps": STEPS, "guidance_scale": 3.0},
    "slots": {"colour": ["red", "green", "blue", "pink"]},
    "classes": [{"name": "circle", "templates": ["a {colour} circle"], "groups": 3},
                {"name": "square", "templates": ["a {colour} square"], "groups": 2}],
    "corner_cases": [],
    "views": HELD,
    "output": {"groups_per_shard": 2, "format": "png"},
}


def shard_bytes(folder) -> dict[str, bytes]:
    return {path.name: path.read_bytes() for path in sorted(folder.glob("shard-*.tar"))}


def test_true_is_the_measured_sharing_and_a_fraction_sets_the_steps():
    held = ViewsSpec(**HELD)
    assert held.holds_layout
    assert LayoutSharing(**held.slots.layout_sharing) == LAYOUT_SHARING
    fraction = ViewsSpec(**{**HELD, "slots": {"vary": ["colour"], "hold_layout": 0.7}})
    assert LayoutSharing(**fraction.slots.layout_sharing) == LayoutSharing(0.7, 0.7, 0.0, 0.7)
    off = ViewsSpec(**{**HELD, "slots": {"vary": ["colour"], "hold_layout": False}})
    assert not off.holds_layout and off.slots.layout_sharing is None


def test_recipes_without_hold_layout_keep_their_hash(write_recipe):
    plain = load_recipe(write_recipe({**RECIPE, "views": {
        "count": 3, "strategy": "slots", "slots": {"vary": ["colour"]}}}, name="plain.yaml"))
    off = load_recipe(write_recipe({**RECIPE, "views": {
        "count": 3, "strategy": "slots", "slots": {"vary": ["colour"], "hold_layout": False}}},
        name="off.yaml"))
    held = load_recipe(write_recipe(RECIPE, name="held.yaml"))
    assert "hold_layout" not in plain.model_dump(mode="json")["views"]["slots"]
    assert off.recipe_hash == plain.recipe_hash != held.recipe_hash


def test_hold_layout_mistakes_are_one_clear_recipe_error(write_recipe):
    def error(views: dict) -> str:
        with pytest.raises(UserError) as raised:
            load_recipe(write_recipe({**RECIPE, "views": views}))
        return str(raised.value)

    slots = {"vary": ["colour"], "hold_layout": True}
    for other, block in (("seeds", {}), ("latent", {"latent": {"sigma": 0.5}}),
                         ("img2img", {"img2img": {"strength": 0.6}})):
        message = error({"count": 3, "strategy": ["slots", other], "slots": slots, **block})
        assert "slots.hold_layout holds every view to view 0's layout" in message
        assert f"drop {other} from the strategy list, or set hold_layout: false" in message
    message = error({"count": 3, "strategy": "slots",
                     "slots": {"vary": ["colour"], "hold_layout": 1.5}})
    assert "views.slots.hold_layout" in message and "above 0 and at most 1" in message


def tiny_latent_consistency_pipeline():
    from test_families import tiny_latent_consistency_pipeline as build

    return build()


def test_only_unet_pipelines_with_one_call_a_step_can_hold_the_layout(write_recipe):
    from diffusers import HeunDiscreteScheduler

    recipe = load_recipe(write_recipe({**RECIPE, "model": {"steps": 2}}))
    views = list(make_plan(recipe).groups[0].views)
    assert family_of(tiny_latent_consistency_pipeline()).layout_unsupported_reason() is None
    for pipeline in (build_tiny_pipeline("sd"), build_tiny_pipeline("sdxl")):
        assert family_of(pipeline).layout_unsupported_reason() is None
        model = LoadedModel(pipeline=pipeline, device=torch.device("cpu"),
                            dtype=torch.float32, source="tiny")
        images = Sampler(model, recipe.model, batch_size=3).sample(views).images
        assert images.shape == (3, 32, 32, 3)
    for pipeline in (build_tiny_pixart(), build_tiny_flux()):
        assert "denoises with a transformer" in family_of(pipeline).layout_unsupported_reason()
    heun = build_tiny_pipeline("sd")
    heun.scheduler = HeunDiscreteScheduler.from_config(heun.scheduler.config)
    assert "calls the UNet 2 times per step" in family_of(heun).layout_unsupported_reason()


def test_a_family_that_cannot_is_refused_before_and_at_sampling(write_recipe):
    recipe = load_recipe(write_recipe({**RECIPE, "model": {"steps": 2, "width": 16,
                                                           "height": 16}}))
    model = LoadedModel(pipeline=build_tiny_flux(), device=torch.device("cpu"),
                        dtype=torch.float32, source="tiny")
    sampler = Sampler(model, recipe.model, batch_size=3)
    reason = sampler.family.layout_unsupported_reason()
    with pytest.raises(UserError) as refused:
        prepare.check_strategies(recipe, sampler)
    assert str(refused.value) == f"views.slots.hold_layout: builtin:tiny-random: {reason}"
    with pytest.raises(UserError) as refused:
        sampler.sample(list(make_plan(recipe).groups[0].views))
    assert str(refused.value) == f"views.slots.hold_layout: {reason}"


def test_a_held_layout_dataset_says_so_and_is_the_pipeline_called_in_share_layout(
        write_recipe, tmp_path):
    plan = make_plan(load_recipe(write_recipe(RECIPE)))
    assert summarize(plan)["classes"]["circle"]["views"] == (
        "3 views: slots (vary colour; distinct; one shared seed; layout held to view 0 for 85% "
        "of the steps)")
    options = GenerateOptions(progress=False, device="cpu", batch_size=6)
    for run in ("a", "b"):
        generate_dataset(plan, tmp_path / run, options)
    assert shard_bytes(tmp_path / "a") == shard_bytes(tmp_path / "b"), "deterministic"
    written = written_views(tmp_path / "a")
    assert len(written) == 3 * len(plan.groups)
    for entry, _ in written.values():
        assert entry["layout_anchor"] == 0 and "layout_anchor_used" not in entry
        assert entry["layout_sharing"] == {"self_maps": 0.85, "cross_maps": 0.85,
                                           "pooled_text": 0.0, "coarse_features": 0.85}

    # By hand: each shard is one call of its 2 groups (6 views, no padding), prompts encoded
    # one at a time, each view's noise drawn from its seed, view 0 of each group the anchor.
    pipeline = load_pipeline(plan.recipe.model, torch.device("cpu"), torch.float32).pipeline
    pipeline.set_progress_bar_config(disable=True)

    def embedding(text: str) -> torch.Tensor:
        return pipeline.encode_prompt(text, torch.device("cpu"), 1, False)[0]

    expected = {}
    threads = torch.get_num_threads()
    torch.set_num_threads(options.cpu_threads)  # bytes are fixed per CPU thread count
    try:
        for shard in range(plan.shard_count):
            groups = plan.shard_groups(shard)
            views = [view for group in groups for view in group.views]
            noise = [torch.randn(1, 4, 16, 16, generator=torch.Generator().manual_seed(v.seed))
                     for v in views]
            with share_layout(pipeline.unet, [0, 0, 0, 3, 3, 3], STEPS):
                images = pipeline(
                    prompt_embeds=torch.cat([embedding(v.prompt) for v in views]),
                    negative_prompt_embeds=torch.cat([embedding(v.negative_prompt)
                                                      for v in views]),
                    latents=torch.cat(noise), num_inference_steps=STEPS, guidance_scale=3.0,
                    generator=[torch.Generator().manual_seed(derive_seed("steps", v.seed))
                               for v in views],
                    height=32, width=32, output_type="pt").images
            pixels = (images * 255).round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1)
            for view, image in zip(views, pixels):
                expected[(view.group_id, view.view)] = image.numpy()
    finally:
        torch.set_num_threads(threads)
    assert written.keys() == expected.keys()
    for key, (_, pixels) in written.items():
        assert np.array_equal(pixels, expected[key]), key


def test_a_batch_size_that_is_not_a_multiple_of_the_views_keeps_groups_whole(write_recipe,
                                                                             tmp_path):
    plan = make_plan(load_recipe(write_recipe(RECIPE)))
    for shard in range(plan.shard_count):
        for batch in shard_batches(plan, shard, 4):
            assert len(batch) <= 4
            ids = [group.group_id for group, _ in batch]
            assert all(ids.count(i) == 3 for i in ids), "whole groups of 3"
    # 5 is rounded down to whole groups (3), 2 up to one group: the same calls, the same bytes.
    small = make_plan(load_recipe(write_recipe({**RECIPE, "model": {"steps": 2}, "classes": [
        {"name": "circle", "templates": ["a {colour} circle"], "groups": 1},
        {"name": "square", "templates": ["a {colour} square"], "groups": 1}]}, name="small.yaml")))
    for batch_size in (2, 5):
        generate_dataset(small, tmp_path / str(batch_size),
                         GenerateOptions(progress=False, device="cpu", batch_size=batch_size))
    assert shard_bytes(tmp_path / "2") == shard_bytes(tmp_path / "5")


def test_a_group_is_never_split_by_sample_and_a_redrawn_view_is_its_own_anchor(write_recipe):
    recipe = load_recipe(write_recipe(RECIPE))
    model = load_pipeline(recipe.model, torch.device("cpu"), torch.float32)
    views = list(make_plan(recipe).groups[0].views)
    with pytest.raises(ValueError, match="holds the layout of view 0, which is not in this"):
        Sampler(model, recipe.model, batch_size=3).sample(views[1:])

    flagged_once = {views[1].prompt}

    def score(images, prompts):
        hits = [prompt in flagged_once for prompt in prompts]
        flagged_once.clear()
        return torch.tensor(hits, dtype=torch.float32)

    plain = Sampler(model, recipe.model, batch_size=3).sample(views)
    rejecting = Sampler(model, recipe.model, batch_size=3,
                        rejectors=(Rejector("thing", 0.5, 2, score),))
    result = rejecting.sample(views)
    assert result.record(1)["layout_anchor_used"] == 1
    assert result.record(1)["rejections"] == {"thing": 1}
    assert result.record(0) == {} and result.record(2) == {}
    assert torch.equal(result.images[[0, 2]], plain.images[[0, 2]])
    assert not torch.equal(result.images[1], plain.images[1])
