"""img2img faults found in review (2026-12-03), each test failing before its fix: a strength\nrounded by the step count without a word, a strength too small for the scheduler."""

from __future__ import annotations

import pytest
import torch

from synthgen.generate.load import load_pipeline
from synthgen.generate.sampler import Sampler
from synthgen.recipe import ModelSpec, ViewsSpec
from synthgen.views import plan_views

SPEC = ModelSpec(id="builtin:tiny-random", steps=2, width=32, height=32)


@pytest.fixture(scope="module")
def tiny_model():
    return load_pipeline(SPEC, torch.device("cpu"), torch.float32)


def img2img_views(strength: float):
    spec = ViewsSpec(count=2, strategy="img2img", img2img={"strength": strength})
    return list(plan_views(spec, 1, "g", "a red circle", ""))


def test_img2img_strength_rounded_by_the_step_count_is_warned(tiny_model, write_recipe):
    # diffusers' img2img runs int(steps * strength) steps: with steps=2, strength 0.9 re-noises
    # by 0.5, the same picture as strength 0.5, while the json says 0.9. `plan` says so now.
    sampler = Sampler(tiny_model, SPEC, batch_size=2)
    half, most = img2img_views(0.5), img2img_views(0.9)
    assert torch.equal(sampler.sample(half).images[1], sampler.sample(most).images[1])
    from synthgen.plan import recipe_warnings
    from synthgen.recipe import load_recipe

    recipe = load_recipe(write_recipe({"model": {"id": "builtin:tiny-random", "steps": 2,
                                                 "width": 32, "height": 32},
                                       "views": {"count": 2, "strategy": "img2img",
                                                 "img2img": {"strength": 0.9}}}))
    assert any("re-noises by 0.5" in warning for warning in recipe_warnings(recipe))
    recipe = load_recipe(write_recipe({"model": {"id": "builtin:tiny-random", "steps": 2,
                                                 "width": 32, "height": 32},
                                       "views": {"count": 2, "strategy": "img2img",
                                                 "img2img": {"strength": 0.5}}}))
    assert not any("re-noises" in warning for warning in recipe_warnings(recipe))


def test_a_strength_too_small_to_run_is_refused():
    # strength only needed to be > 0, but the sampler asks for ceil(1 / strength) steps, which
    # DDIM (and other schedulers) refuse above num_train_timesteps (1000): a crash mid-run.
    with pytest.raises(ValueError, match="greater than or equal to 0.01"):
        img2img_views(0.0005)
