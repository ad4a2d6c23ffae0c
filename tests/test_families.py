"""Model families (synthgen/generate/families/): the registry picks each tiny pipeline's family
from its class, and what a family declares it runs (view strategies, erase) is what generation
runs, and what it refuses is refused with its reason."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from flux_fixture import RESOLUTION as FLUX_RESOLUTION
from flux_fixture import build_tiny_flux, save_tiny_flux
from pixart_fixture import build_tiny_pixart
from sampling_checks import run_recipe, write_small_recipe
from synthgen.errors import UserError
from synthgen.generate import prepare
from synthgen.generate.erase import unsupported_reason
from synthgen.generate.families import FAMILIES, GenericFamily, family_named_in_index, family_of
from synthgen.generate.load import LoadedModel
from synthgen.generate.sampler import Sampler
from synthgen.generate.tiny_random import build_tiny_pipeline
from synthgen.plan import make_plan
from synthgen.recipe import load_recipe
from synthgen.views import STRATEGIES


def tiny_latent_consistency_pipeline():
    """An LCM pipeline on the tiny SD components: a UNet pipeline of no family of its own."""
    from diffusers import LatentConsistencyModelPipeline, LCMScheduler

    sd = build_tiny_pipeline("sd")
    return LatentConsistencyModelPipeline(
        vae=sd.vae, text_encoder=sd.text_encoder, tokenizer=sd.tokenizer, unet=sd.unet,
        scheduler=LCMScheduler.from_config(sd.scheduler.config), safety_checker=None,
        feature_extractor=None, requires_safety_checker=False)


@pytest.fixture(scope="module")
def pipelines() -> dict:
    """One tiny pipeline of each family, and one (LCM) that only the generic family takes."""
    return {"sd": build_tiny_pipeline("sd"), "sdxl": build_tiny_pipeline("sdxl"),
            "pixart": build_tiny_pixart(), "flux": build_tiny_flux(),
            "generic": tiny_latent_consistency_pipeline()}


@pytest.mark.parametrize("name", ["sd", "sdxl", "pixart", "flux", "generic"])
def test_the_registry_picks_each_pipelines_family_from_its_class(pipelines, name):
    pipeline = pipelines[name]
    assert family_of(pipeline).name == name
    assert family_named_in_index(type(pipeline).__name__).name == name, "before it loads, by name"


def test_the_generic_family_comes_last_and_takes_anything():
    assert FAMILIES[-1] is GenericFamily
    assert family_of(SimpleNamespace(unet=None)).name == "generic"
    assert family_named_in_index("NoSuchPipeline") is GenericFamily
    assert family_named_in_index(None) is GenericFamily


def test_dtype_on_a_gpu_is_the_familys():
    assert family_named_in_index("FluxPipeline").gpu_dtype == torch.bfloat16
    assert family_named_in_index("StableDiffusionXLPipeline").gpu_dtype == torch.float16


@pytest.mark.parametrize("name", ["sd", "sdxl", "pixart", "flux", "generic"])
def test_who_draws_the_latents_decides_which_view_strategies_run(pipelines, name):
    family = family_of(pipelines[name])
    refused = {strategy for strategy, spec in STRATEGIES.items()
               if family.view_unsupported_reason(spec) is not None}
    if name in ("sd", "sdxl"):
        assert family.draws_own_latents and refused == set()
    else:
        assert not family.draws_own_latents
        assert refused == {s for s, spec in STRATEGIES.items() if spec.needs_own_latents}
        assert refused == {"latent", "img2img"}


@pytest.mark.parametrize("name", ["sd", "sdxl", "pixart", "flux", "generic"])
def test_the_familys_edit_support_is_what_erase_does(pipelines, name, write_recipe):
    pipeline = pipelines[name]
    reason = family_of(pipeline).edit_unsupported_reason()
    assert unsupported_reason(pipeline) == reason
    recipe = load_recipe(write_recipe({"suppress": [{"concept": "red", "method": "erase",
                                                     "target": "blue", "context_prompts": 2}]}))
    model = LoadedModel(pipeline=pipeline, device=torch.device("cpu"), dtype=torch.float32,
                        source="tiny")
    if name in ("pixart", "flux"):
        assert "transformer" in reason
        with pytest.raises(UserError, match=r"suppress\[0\]\.method erase: .*transformer"):
            prepare.apply_erasures(recipe, model)
    else:
        assert reason is None
        (edit,) = prepare.apply_erasures(recipe, model).edits
        pooled = {"pooled text embedding": 1} if name == "sdxl" else {}
        assert edit["paths"] == {"cross-attention": 8, **pooled}


# Generation against the declarations: prepare's check of the recipe's strategies, then the
# sampler itself, which refuses a view its family cannot draw with the family's reason.

VIEWS = {
    "seeds": {"count": 2, "strategy": "seeds"},
    "latent": {"count": 2, "strategy": "latent", "latent": {"sigma": 0.5}},
    "prompt": {"count": 2, "strategy": "prompt", "prompt": {"modifiers": ["at night"]}},
    "img2img": {"count": 2, "strategy": "img2img", "img2img": {"strength": 0.5}},
    "slots": {"count": 2, "strategy": "slots", "slots": {"vary": ["colour"]}},
}


def test_every_strategy_has_a_view_block_here():
    assert set(VIEWS) == set(STRATEGIES)


@pytest.mark.parametrize("strategy", list(VIEWS))
@pytest.mark.parametrize("name", ["sd", "flux"])
def test_generation_runs_exactly_the_strategies_the_family_declares(name, strategy, pipelines,
                                                                    tmp_path):
    resolution = 32 if name == "sd" else FLUX_RESOLUTION
    # The recipe's model is not loaded: the sampler gets the family's tiny pipeline.
    recipe = load_recipe(write_small_recipe(tmp_path, "builtin:tiny-random", resolution,
                                            VIEWS[strategy]))
    model = LoadedModel(pipeline=pipelines[name], device=torch.device("cpu"),
                        dtype=torch.float32, source="tiny")
    sampler = Sampler(model, recipe.model, batch_size=2)
    views = list(make_plan(recipe).groups[0].views)
    declared = sampler.family.view_unsupported_reason(STRATEGIES[strategy])
    if declared is None:
        prepare.check_strategies(recipe, sampler)
        assert sampler.sample(views).images.shape == (2, resolution, resolution, 3)
        return
    with pytest.raises(UserError, match=rf"views\.strategy \['{strategy}'\]"):
        prepare.check_strategies(recipe, sampler)
    with pytest.raises(UserError) as refused:
        sampler.sample(views)
    assert str(refused.value) == f"views.strategy {strategy}: {declared}"


def test_a_recipe_the_family_refuses_writes_no_shard(tmp_path):
    recipe = write_small_recipe(tmp_path, save_tiny_flux(tmp_path / "flux"), FLUX_RESOLUTION,
                                VIEWS["img2img"])
    with pytest.raises(UserError, match=r"views\.strategy \['img2img'\]"):
        run_recipe(recipe, tmp_path / "out")
    assert not list((tmp_path / "out").glob("shard-*.tar"))
