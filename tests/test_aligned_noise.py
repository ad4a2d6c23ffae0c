"""`slots` views whose starting noise is view 0's turned towards their own colour
(`views.slots.align_noise`, generate/noise_turn.py): the recipe option and its refusals, the
plan line and json, the rotation, the bytes (the pipeline called by hand with turned noise),
and the refusal on a family that draws its own latents."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch
from sampling_checks import generated_and_by_hand, written_views

from pixart_fixture import build_tiny_pixart
from synthgen.engines.local import GenerateOptions, generate_dataset
from synthgen.errors import UserError
from synthgen.generate import prepare
from synthgen.generate.load import LoadedModel, load_pipeline
from synthgen.generate.noise_turn import ColourLatents, plane_rotation, turn_noise
from synthgen.generate.sampler import Rejector, Sampler
from synthgen.generate.tiny_random import build_tiny_decoder, build_tiny_pipeline
from synthgen.plan import make_plan, summarize
from synthgen.recipe import load_recipe
from synthgen.seeding import derive_seed
from synthgen.views.slots import colour_rgb

ALIGNED = {"count": 3, "strategy": "slots", "slots": {"vary": ["colour"], "align_noise": True}}
RECIPE = {
    "model": {"steps": 2, "guidance_scale": 3.0},
    "slots": {"colour": ["red", "green", "light blue", "pink"], "size": ["small", "large"]},
    "classes": [{"name": "circle", "templates": ["a {size} {colour} circle on a gray background"],
                 "groups": 2}],
    "corner_cases": [],
    "views": ALIGNED,
    "output": {"groups_per_shard": 2, "format": "png"},
}


def test_views_record_their_turn_and_recipes_without_keep_their_hash(write_recipe):
    recipe = load_recipe(write_recipe(RECIPE))
    plan = make_plan(recipe)
    assert summarize(plan)["classes"]["circle"]["views"] == (
        "3 views: slots (vary colour; distinct; one shared seed; noise turned to each view's colour)")
    for group in plan.groups:
        anchor, *others = group.views
        assert anchor.noise_turn is None and "noise_turn" not in anchor.to_json()
        for view in others:
            assert view.seed == anchor.seed
            assert view.noise_turn == (anchor.slots["colour"], view.slots["colour"])
            assert view.to_json()["noise_turn"] == [anchor.slots["colour"], view.slots["colour"]]
    plain = load_recipe(write_recipe({**RECIPE, "views": {**ALIGNED, "slots": {"vary": ["colour"]}}},
                                     name="plain.yaml"))
    off = load_recipe(write_recipe({**RECIPE, "views": {**ALIGNED, "slots": {
        "vary": ["colour"], "align_noise": False}}}, name="off.yaml"))
    assert "align_noise" not in plain.model_dump(mode="json")["views"]["slots"]
    assert off.recipe_hash == plain.recipe_hash != recipe.recipe_hash


def test_a_varied_balanced_colour_turns_the_noise_by_its_quota_values(write_recipe):
    recipe = load_recipe(write_recipe({
        **RECIPE, "templates": ["a {size} {hue} circle"], "classes": [{"name": "circle", "groups": 2}],
        "balance": [{"attribute": "hue", "values": {"red": 1, "blue": 1, "white": 1}}],
        "views": {**ALIGNED, "slots": {"vary": ["hue"], "align_noise": True}}}))
    for group in make_plan(recipe).groups:
        anchor, *others = group.views
        for view in others:
            assert view.noise_turn == (anchor.balance["hue"], view.balance["hue"])


@pytest.mark.parametrize(("views", "message"), [
    ({**ALIGNED, "slots": {"vary": ["size"], "align_noise": True}},
     "views.slots.align_noise: classes[0] ('circle') varies {size}, whose values in slots.size "
     "are not all colour names: ['large', 'small']"),
    ({**ALIGNED, "slots": {"vary": ["colour", "size"], "align_noise": True}},
     "slots.align_noise turns the noise by one slot's colours, and vary lists ['colour', 'size']"),
    ({**ALIGNED, "strategy": ["slots", "seeds"]},
     "and seeds gives views other starting noise or images; drop seeds from the strategy list"),
])
def test_recipes_it_cannot_turn_are_refused_with_the_field_and_fix(write_recipe, views, message):
    with pytest.raises(UserError) as refused:
        load_recipe(write_recipe({**RECIPE, "views": views}))
    assert message in str(refused.value)
    assert "align_noise: false" in str(refused.value)


def test_the_message_names_where_the_values_that_are_not_colours_come_from(write_recipe):
    own_slot = {**RECIPE, "classes": [*RECIPE["classes"], {
        "name": "square", "groups": 1, "templates": ["a {colour} square"], "slots": {"colour": ["bright", "dull"]}}]}
    with pytest.raises(UserError) as refused:
        load_recipe(write_recipe(own_slot))
    assert ("views.slots.align_noise: classes[1] ('square') varies {colour}, whose values in "
            "classes[1].slots.colour are not all colour names: ['bright', 'dull']") in str(refused.value)
    balanced = {**RECIPE, "templates": ["a {size} {mood} circle"], "classes": [{"name": "circle", "groups": 2}],
                "balance": [{"attribute": "mood", "values": {"calm": 1, "blue": 1}}],
                "views": {**ALIGNED, "slots": {"vary": ["mood"], "align_noise": True}}}
    with pytest.raises(UserError) as refused:
        load_recipe(write_recipe(balanced, name="balanced.yaml"))
    assert "whose values in balance[0].values are not all colour names: ['calm']" in str(refused.value)


def test_a_tiny_decoder_is_refused_because_the_colours_need_the_models_own_vae(write_recipe):
    with pytest.raises(UserError) as refused:
        load_recipe(write_recipe({**RECIPE, "model": {**RECIPE["model"], "decoder": "madebyollin/taesd"}}))
    assert "views.slots.align_noise: model.decoder swaps the model's VAE" in str(refused.value)
    assert "drop model.decoder or set align_noise: false" in str(refused.value)


def test_colour_names_are_css_names_in_any_spacing():
    assert colour_rgb("red") == (255, 0, 0)
    assert colour_rgb("Light Blue") == colour_rgb("light-blue") == (173, 216, 230)
    assert colour_rgb("#ff8800") == (255, 136, 0)
    assert colour_rgb("large") is None and colour_rgb("") is None


def test_the_rotation_turns_one_colour_onto_the_other_and_keeps_the_noise_gaussian():
    generator = torch.Generator().manual_seed(0)
    source, target = torch.randn(4, generator=generator), torch.randn(4, generator=generator)
    rotation = plane_rotation(source, target)
    assert torch.allclose(rotation @ rotation.T, torch.eye(4), atol=1e-6)
    assert torch.linalg.det(rotation) == pytest.approx(1.0, abs=1e-5)
    turned = rotation @ (source / source.norm())
    assert torch.allclose(turned, target / target.norm(), atol=1e-6)
    # Directions orthogonal to both colours are left alone.
    basis = torch.linalg.qr(torch.stack([source, target, torch.randn(4, generator=generator),
                                         torch.randn(4, generator=generator)], dim=1))[0]
    for k in (2, 3):
        assert torch.allclose(rotation @ basis[:, k], basis[:, k], atol=1e-5)
    assert torch.equal(plane_rotation(source, 2 * source), torch.eye(4))
    half_turn = plane_rotation(source, -source)
    assert torch.allclose(half_turn @ source, -source, atol=1e-5)
    assert torch.allclose(half_turn @ half_turn.T, torch.eye(4), atol=1e-6)
    with pytest.raises(ValueError, match="finite non-zero"):
        plane_rotation(source, torch.full((4,), float("nan")))
    # Rotated noise is a unit Gaussian still: same norm at every pixel, moments kept.
    noise = torch.randn(1, 4, 64, 64, generator=generator)
    rotated = turn_noise(noise, rotation)
    assert torch.allclose(rotated.norm(dim=1), noise.norm(dim=1), atol=1e-4)
    covariance = torch.cov(rotated.flatten(2)[0])
    assert torch.allclose(covariance, torch.eye(4), atol=0.06)


def test_an_aligned_dataset_is_the_pipeline_called_with_turned_noise(write_recipe, tmp_path):
    plan = make_plan(load_recipe(write_recipe(RECIPE)))

    def by_hand(pipeline, views, noise):
        def colour_latent(name: str) -> torch.Tensor:
            flat = torch.tensor(colour_rgb(name), dtype=torch.float32).view(1, 3, 1, 1) / 127.5 - 1
            with torch.no_grad():
                latent = pipeline.vae.encode(flat.expand(1, 3, 32, 32)).latent_dist.mean
            return (latent * pipeline.vae.config.scaling_factor).mean(dim=(0, 2, 3))

        turned = [drawn if v.noise_turn is None else torch.einsum(
                      "ij,njhw->nihw", plane_rotation(*(colour_latent(c) for c in v.noise_turn)), drawn)
                  for v, drawn in zip(views, noise)]
        return pipeline(
            prompt=[v.prompt for v in views], negative_prompt=[v.negative_prompt for v in views],
            latents=torch.cat(turned), num_inference_steps=2, guidance_scale=3.0,
            generator=[torch.Generator().manual_seed(derive_seed("steps", v.seed)) for v in views],
            height=32, width=32, output_type="pt").images

    checked = generated_and_by_hand(plan, tmp_path / "out", by_hand)
    turned = 0
    written = {}
    for view, entry, written_pixels, expected in checked:
        written[(view.group_id, view.view)] = (entry, written_pixels)
        assert entry.get("noise_turn") == (list(view.noise_turn) if view.noise_turn else None)
        assert (written_pixels == expected).all(), (view.group_id, view.view)
        turned += view.noise_turn is not None
    assert turned == 4
    # Without the turn the views differ: the option is not a no-op on this pipeline.
    plain = make_plan(load_recipe(write_recipe({**RECIPE, "views": {**ALIGNED, "slots": {
        "vary": ["colour"]}}}, name="plain.yaml")))
    generate_dataset(plain, tmp_path / "plain", GenerateOptions(progress=False, device="cpu", batch_size=6))
    unturned = written_views(tmp_path / "plain")
    assert any((unturned[key][1] != written[key][1]).any() for key in written if key[1] != 0)
    assert all((unturned[key][1] == written[key][1]).all() for key in written if key[1] == 0)


def test_families_that_draw_their_own_latents_refuse_align_noise(write_recipe):
    recipe = load_recipe(write_recipe({**RECIPE, "model": {"steps": 2, "width": 16, "height": 16}}))
    model = LoadedModel(pipeline=build_tiny_pixart(), device=torch.device("cpu"), dtype=torch.float32,
                        source="tiny")
    sampler = Sampler(model, recipe.model, batch_size=3)
    reason = sampler.family.aligned_noise_unsupported_reason()
    assert "drop align_noise" in reason
    with pytest.raises(UserError) as refused:
        prepare.check_strategies(recipe, sampler)
    assert str(refused.value) == f"views.slots.align_noise: builtin:tiny-random: {reason}"
    with pytest.raises(UserError, match="views.slots.align_noise"):
        sampler.sample([make_plan(recipe).groups[0].views[1]])


def test_a_redrawn_view_starts_from_its_new_seed_unturned(write_recipe):
    recipe = load_recipe(write_recipe(RECIPE))
    model = load_pipeline(recipe.model, torch.device("cpu"), torch.float32)
    views = list(make_plan(recipe).groups[0].views)
    flagged_once = {views[1].prompt}

    def score(images, prompts):
        hits = [prompt in flagged_once for prompt in prompts]
        flagged_once.clear()
        return torch.tensor(hits, dtype=torch.float32)

    rejecting = Sampler(model, recipe.model, batch_size=3, rejectors=(Rejector("thing", 0.5, 2, score),))
    result = rejecting.sample(views)
    record = result.record(1)
    assert record["noise_turn_used"] is None and record["rejections"] == {"thing": 1}
    assert result.record(0) == {} and result.record(2) == {}
    # The redraw is the pipeline's plain view on the retry seed: no turn.
    unturned = replace(views[1], seed=record["seed_used"], noise_turn=None)
    alone = Sampler(model, recipe.model, batch_size=3).sample([unturned])
    assert torch.equal(result.images[1], alone.images[0])


def test_colour_latents_come_from_a_float32_copy_whatever_the_models_dtype():
    pipeline = build_tiny_pipeline("sd")
    exact = ColourLatents(pipeline, 32)("red")
    pipeline.vae.to(torch.bfloat16)
    rounded = ColourLatents(pipeline, 32)("red")
    assert next(pipeline.vae.parameters()).dtype == torch.bfloat16, "the model's VAE is left alone"
    assert rounded.dtype == torch.float32
    assert torch.nn.functional.cosine_similarity(exact, rounded, dim=0) > 0.999


def test_a_swapped_in_tiny_decoder_is_refused_at_sampling_too(write_recipe):
    recipe = load_recipe(write_recipe(RECIPE))
    pipeline = build_tiny_pipeline("sd")
    pipeline.vae = build_tiny_decoder()
    model = LoadedModel(pipeline=pipeline, device=torch.device("cpu"), dtype=torch.float32, source="tiny")
    reason = Sampler(model, recipe.model, batch_size=3).family.aligned_noise_unsupported_reason()
    assert "AutoencoderTiny" in reason and "drop model.decoder or align_noise" in reason
