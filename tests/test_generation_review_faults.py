"""Model loading and generation faults found in review, each test failing on the code it was
written against: user mistakes that end in a traceback (or in a misleading message, or in
silently other pictures) instead of one `UserError`, and a non-finite view stored as a picture.

Everything runs on the CPU with builtin:tiny-random or the tiny PixArt/FLUX fixtures.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
import yaml

from small_recipe import SMALL_RECIPE, merge
from synthgen.builtin import resolve_model_source
from synthgen.errors import UserError

TINY = {"model": {"id": "builtin:tiny-random", "steps": 1, "width": 32, "height": 32},
        "classes": [{"name": "circle", "templates": ["a {colour} circle"], "groups": 1}],
        "corner_cases": [], "views": {"count": 2, "strategy": "seeds"}}


pytestmark = pytest.mark.usefixtures("one_thread")


def write(tmp_path: Path, overrides: dict, name: str = "recipe.yaml") -> Path:
    path = tmp_path / name
    path.write_text(yaml.safe_dump(merge(merge(SMALL_RECIPE, TINY), overrides), sort_keys=False))
    return path


def generate(recipe: Path, out: Path, **options):
    import synthgen

    return synthgen.generate(recipe, out, device="cpu", progress=False, cpu_threads=1, **options)


def tiny_copy(tmp_path: Path, name: str = "model") -> Path:
    """builtin:tiny-random copied into a folder of the test's own, to damage."""
    folder = tmp_path / name
    shutil.copytree(resolve_model_source("builtin:tiny-random"), folder)
    return folder


# 1. Model folders that are not (complete) diffusers models.

def test_a_component_class_this_diffusers_does_not_have_is_a_user_error(tmp_path):
    """load.py:load_pipeline catches OSError/ValueError/KeyError only. A model_index.json that
    names a component class this diffusers lacks (a folder saved by a newer diffusers, or
    hand-edited) makes diffusers raise AttributeError ("module diffusers has no attribute
    ..."), which escapes as a traceback. It should be one `UserError` naming model.id."""
    from synthgen.generate.load import load_pipeline
    from synthgen.recipe import ModelSpec

    folder = tiny_copy(tmp_path)
    index = json.loads((folder / "model_index.json").read_text())
    index["unet"] = ["diffusers", "UNet9000ConditionModel"]
    (folder / "model_index.json").write_text(json.dumps(index))
    spec = ModelSpec(id=str(folder), steps=1, width=32, height=32)
    with pytest.raises(UserError, match="model.id"):
        load_pipeline(spec, torch.device("cpu"), torch.float32)


def test_a_model_folder_missing_a_component_folder_is_a_user_error(tmp_path):
    """A folder whose model_index.json names a tokenizer it does not hold (a partial
    `huggingface-cli download`) passes check_model_reference and loads: transformers builds
    an empty CLIPTokenizer from the pipeline's root folder. Generation then dies inside the
    tokenizer with OverflowError and a traceback. It should be one `UserError` saying the
    folder lacks its tokenizer (builtin.py:check_model_reference can check that every
    component model_index.json names has its folder)."""
    folder = tiny_copy(tmp_path)
    shutil.rmtree(folder / "tokenizer")
    recipe = write(tmp_path, {"model": {"id": str(folder)}})
    with pytest.raises(UserError, match="tokenizer"):
        generate(recipe, tmp_path / "out")


# 2. Sampling settings the model cannot run.

def test_a_scheduler_the_pipeline_cannot_use_is_a_user_error(tmp_path):
    """load.py:_scheduler accepts any diffusers SchedulerMixin subclass and swaps it in with
    from_config. A flow-matching scheduler on a Stable Diffusion pipeline then fails at the
    first step with AttributeError ('FlowMatchEulerDiscreteScheduler' object has no attribute
    'init_noise_sigma') and a traceback. A scheduler outside the pipeline scheduler's
    `compatibles` should be refused with one `UserError` naming model.scheduler."""
    recipe = write(tmp_path, {"model": {"scheduler": "FlowMatchEulerDiscreteScheduler"}})
    with pytest.raises(UserError, match="model.scheduler"):
        generate(recipe, tmp_path / "out")


@pytest.mark.parametrize("batch_size", [0, -2, "8"])
def test_api_generate_refuses_a_batch_size_that_is_not_a_positive_number(tmp_path, batch_size):
    """README: an api mistake raises `synthgen.UserError` with the message the command line
    prints. api.generate passes batch_size through unchecked (api.audit checks its own):
    0 dies in shard_batches with ValueError (range() arg 3 must not be zero), "8" with
    TypeError, and -2 samples nothing, then reports that "shards 0 were published by another
    run writing here at the same time". Each should be a `UserError` about --batch-size."""
    recipe = write(tmp_path, {})
    with pytest.raises(UserError, match="batch"):
        generate(recipe, tmp_path / "out", batch_size=batch_size)


# 3. Sizes that are multiples of 8 but not of what the pipeline needs.

@pytest.fixture(scope="module")
def pixart_folder(tmp_path_factory) -> Path:
    from pixart_fixture import save_tiny_pixart

    return save_tiny_pixart(tmp_path_factory.mktemp("pixart") / "model")


def test_pixart_size_not_a_multiple_of_its_patches_is_a_user_error(tmp_path, pixart_folder):
    """recipe.py:ModelSpec only asks for multiples of 8. PixArt's VAE downsamples by 8 and its
    transformer packs 2x2 latent patches, so a 264 px side (33 latents) cannot run: the
    transformer fails with RuntimeError ("The size of tensor a (33) must match the size of
    tensor b (32)") and a traceback. The size should be checked against the loaded
    pipeline (VAE factor times patch size) and refused with one `UserError` naming
    model.width."""
    recipe = write(tmp_path, {"model": {"id": str(pixart_folder), "width": 264, "height": 256}})
    with pytest.raises(UserError, match="model.width"):
        generate(recipe, tmp_path / "out")


@pytest.fixture(scope="module")
def flux_vae8_folder(tmp_path_factory) -> Path:
    """The tiny FLUX fixture with a VAE that downsamples by 8, as FLUX.1's does."""
    from diffusers import AutoencoderKL, FluxPipeline

    from flux_fixture import build_tiny_flux

    pipeline = build_tiny_flux()
    torch.manual_seed(0)
    vae = AutoencoderKL(
        block_out_channels=(8, 8, 8, 16), in_channels=3, out_channels=3, latent_channels=4,
        down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
        layers_per_block=1, norm_num_groups=8, sample_size=32, use_quant_conv=False,
        use_post_quant_conv=False, shift_factor=0.06, scaling_factor=1.5)
    components = {**pipeline.components, "vae": vae}
    folder = tmp_path_factory.mktemp("flux8") / "model"
    FluxPipeline(**components).save_pretrained(folder, safe_serialization=True)
    return folder


def test_flux_draws_the_recipe_size_or_refuses_it(tmp_path, flux_vae8_folder):
    """FluxPipeline needs sides divisible by 16 with FLUX.1's 8x VAE; given 40 (a multiple of
    8, which the recipe accepts) it only warns and draws 32x32, and write.encode_image then
    quietly upsamples that to the stored 40x40, while the json says width 40. The size
    should be refused with a `UserError` (or drawn at 40x40), never silently changed."""
    from synthgen.generate.prepare import prepare_sampler
    from synthgen.plan import make_plan
    from synthgen.recipe import load_recipe

    recipe = load_recipe(write(tmp_path, {"model": {"id": str(flux_vae8_folder), "width": 40,
                                                    "height": 40}}))
    try:
        sampler = prepare_sampler(recipe, torch.device("cpu"), torch.float32, batch_size=1)
        images = sampler.sample(list(make_plan(recipe).groups[0].views[:1])).images
    except UserError:
        return
    assert tuple(images.shape[1:3]) == (40, 40), (
        f"recipe asks for 40x40, the pipeline drew {tuple(images.shape[1:3])}")


# 4. Non-finite output.

def test_a_view_whose_decoded_output_has_inf_is_stored_black_and_listed(monkeypatch):
    """README: "A view whose model output has NaN/inf (an fp16 overflow) is stored black,
    listed under nonfinite_views". Sampler._denoise checks finiteness on the pipeline's
    postprocessed output, after diffusers' denormalize has clamped to [0, 1]: +inf and -inf
    become 1 and 0, so a view whose VAE output overflowed to inf is stored as a picture
    (a white pixel) and not listed. Finiteness must be read before the clamp (e.g. on the
    VAE's decoded sample)."""
    from synthgen.generate.load import load_pipeline
    from synthgen.generate.sampler import Sampler
    from synthgen.recipe import ModelSpec, ViewsSpec
    from synthgen.views import plan_views

    spec = ModelSpec(id="builtin:tiny-random", steps=1, width=32, height=32)
    model = load_pipeline(spec, torch.device("cpu"), torch.float32)
    vae = model.pipeline.vae
    decode = vae.decode

    def overflowing(*args, **kwargs):
        output = decode(*args, **kwargs)
        sample = (output[0] if isinstance(output, tuple) else output.sample).clone()
        sample[0, :, 0, 0] = float("inf")  # the first view overflows at one pixel
        return (sample,)

    monkeypatch.setattr(vae, "decode", overflowing)
    sampler = Sampler(model, spec, batch_size=2)
    views = list(plan_views(ViewsSpec(count=2, strategy="seeds"), 7, "g", "a red circle", ""))
    result = sampler.sample(views)
    assert result.nonfinite == (0,), f"nonfinite views: {result.nonfinite}"
    assert int(result.images[0].max()) == 0, "a non-finite view must be stored all black"
