"""Review of generate/ (families, sampler, load) for correctness: what synthgen draws or records
for a view against what a plain diffusers call of the same pipeline gives.

Each test here FAILS on the code as reviewed and shows one bug. Tiny random pipelines, 32 px,
2 steps, batch size 1 (so the reference call has the same shape and must match bit for bit).
"""

from __future__ import annotations

import functools

import numpy as np
import pytest
import torch

from flux_fixture import build_tiny_flux
from synthgen.generate.load import LoadedModel, load_pipeline
from synthgen.generate.sampler import Sampler
from synthgen.generate.tiny_random import build_tiny_pipeline
from synthgen.recipe import ModelSpec
from synthgen.seeding import derive_seed
from synthgen.views import ViewPlan

pytestmark = pytest.mark.usefixtures("one_thread")

SIZE = 32


def _evaluated(pipeline):
    """Components built directly start in training mode (T5 dropout): eval, as from_pretrained."""
    for component in pipeline.components.values():
        if isinstance(component, torch.nn.Module):
            component.eval()
    pipeline.set_progress_bar_config(disable=True)
    return pipeline


@pytest.mark.parametrize("family", ["sd", "flux"])
def test_bfloat16_pixels_equal_diffusers_own_uint8_conversion(family):
    """In a bfloat16 (or float16) pipeline, synthgen's uint8 pixels differ from diffusers'.

    What differs: `Sampler._denoise` (synthgen/generate/sampler.py, step 3) asks for
    output_type="pt" and computes `(output * 255).round()` in the pipeline's dtype. In bfloat16
    the product is already rounded to bfloat16's 8-bit mantissa (steps of 0.5 for values
    64-127), so `.round()` rounds twice: hundreds of channel values per 32x32 image come out
    one level off (e.g. 100.7 -> 100.5 -> 100 instead of 101). float16 (the GPU default of sd
    and sdxl) double-rounds the same way, less often; bfloat16 is FLUX's GPU default and is
    allowed on the CPU.

    Reference: the same pipeline call (same embeddings, noise, generator, batch of one) with
    output_type="pil": diffusers' `pt_to_numpy` casts to float32 *before*
    `(images * 255).round().astype("uint8")`.

    Right behaviour: convert in float32 (`output.float() * 255`), as diffusers does; the
    images then equal diffusers' PIL output exactly.
    """
    if family == "sd":
        pipeline = _evaluated(build_tiny_pipeline("sd").to(torch.bfloat16))
    else:
        pipeline = _evaluated(build_tiny_flux().to(torch.bfloat16))
    model = LoadedModel(pipeline, torch.device("cpu"), torch.bfloat16, "tiny")
    guidance = 0.0 if family == "sd" else 3.5
    spec = ModelSpec(id="tiny", steps=2, width=SIZE, height=SIZE, guidance_scale=guidance)
    view = ViewPlan("g", 0, "a red circle", "", 7)
    ours = Sampler(model, spec, batch_size=1).sample([view]).images[0].numpy()

    arguments = dict(prompt=view.prompt, guidance_scale=guidance, num_inference_steps=2,
                     height=SIZE, width=SIZE, output_type="pil")
    if family == "sd":
        # synthgen draws SD latents itself: float32 CPU noise from the view's seed, in the
        # model's dtype, and a step generator from derive_seed("steps", seed).
        shape = (1, pipeline.unet.config.in_channels, SIZE // pipeline.vae_scale_factor,
                 SIZE // pipeline.vae_scale_factor)
        noise = torch.randn(shape, generator=torch.Generator("cpu").manual_seed(view.seed))
        arguments.update(latents=noise.to(torch.bfloat16),
                         generator=torch.Generator("cpu").manual_seed(derive_seed("steps", view.seed)))
    else:
        arguments.update(generator=torch.Generator("cpu").manual_seed(view.seed))
    reference = np.asarray(pipeline(**arguments).images[0])

    differing = int((ours != reference).sum())
    assert differing == 0, (f"{differing} of {ours.size} channel values differ from diffusers' "
                            f"PIL output (max {np.abs(ours.astype(int) - reference).max()})")


@pytest.fixture(scope="module")
def kontext_model(tmp_path_factory):
    """A tiny FLUX.1 Kontext pipeline (FluxKontextPipeline: in diffusers'
    AutoPipelineForText2Image mapping, takes true_cfg_scale) saved and loaded by synthgen."""
    from diffusers import FluxKontextPipeline

    folder = tmp_path_factory.mktemp("kontext") / "model"
    FluxKontextPipeline(**build_tiny_flux().components).save_pretrained(folder, safe_serialization=True)
    spec = ModelSpec(id=str(folder), steps=2, width=SIZE, height=SIZE, guidance_scale=3.5,
                     true_cfg_scale=4.0, negative_prompt="blurry")
    return load_pipeline(spec, torch.device("cpu"), torch.float32), spec


class _Stop(Exception):
    pass


def _first_call_of(sampler: Sampler, view: ViewPlan, monkeypatch) -> dict:
    """The keywords synthgen's pipeline call passes, and the (height, width) the pipeline then
    draws latents at; stopped there (before any denoising)."""
    pipeline_class = type(sampler.pipeline)
    seen: dict = {}
    original = pipeline_class.__call__

    @functools.wraps(original)  # keeps the signature synthgen inspects
    def recording_call(self, *args, **kwargs):
        seen["kwargs"] = kwargs
        return original(self, *args, **kwargs)

    def stop_at_latents(self, image, batch_size, channels, height, width, *args, **kwargs):
        seen["latent_size"] = (height, width)
        raise _Stop

    monkeypatch.setattr(pipeline_class, "__call__", recording_call)
    monkeypatch.setattr(pipeline_class, "prepare_latents", stop_at_latents)
    with pytest.raises(_Stop):
        sampler.sample([view])
    return seen


def test_generic_family_passes_the_recipes_true_cfg_scale(kontext_model, monkeypatch):
    """A generic-family pipeline that takes `true_cfg_scale` never gets the recipe's.

    What differs: `check_negative_prompts` (generate/prepare.py) accepts `model.true_cfg_scale`
    for any pipeline whose __call__ takes it, and the sample json records it (4.0 here), but
    `GenericFamily.prompt_arguments` (generate/families/generic.py) passes only `prompt` and
    `negative_prompt`; `FluxFamily.claims` takes only the exact class name "FluxPipeline", so
    FLUX.1 Kontext (and QwenImagePipeline, whose default is 4.0) land in generic. The pipeline
    then runs at its own default (Kontext: true_cfg_scale=1.0, so no true CFG and the
    negative prompt is ignored; Qwen-Image: 4.0 whatever the recipe says).

    Reference: the plain call `pipeline(prompt, negative_prompt="blurry", true_cfg_scale=4.0,
    ...)`, which runs true CFG at 4.0.

    Right behaviour: pass `true_cfg_scale` wherever the recipe sets it and the pipeline takes
    it (or claim FLUX.1-family pipelines in the flux family).
    """
    model, spec = kontext_model
    sampler = Sampler(model, spec, batch_size=1)
    assert sampler.family.name == "generic" and sampler.accepts("true_cfg_scale")
    seen = _first_call_of(sampler, ViewPlan("g", 0, "a red circle", "blurry", 3), monkeypatch)
    assert seen["kwargs"].get("negative_prompt") == ["blurry"]
    assert seen["kwargs"].get("true_cfg_scale") == 4.0, (
        f"called without true_cfg_scale (pipeline default 1.0): {sorted(seen['kwargs'])}")


def test_generic_family_generates_at_the_recipes_size(kontext_model, monkeypatch):
    """FLUX.1 Kontext run as a generic text-to-image pipeline draws 1024x1024 images for a
    32x32 recipe, while every view's metadata says 32x32.

    What differs: FluxKontextPipeline rescales any requested size to `max_area` (default
    1024**2) keeping the aspect ratio (diffusers logs "height and width have been adjusted").
    `ModelFamily._rewrites_off` (generate/families/base.py), which exists to switch off such
    rewrites (PixArt's resolution binning), knows only `use_resolution_binning` and
    `clean_caption`, so generic calls never pass `max_area`; the pictures are drawn at another
    size (other compute, other pictures) than the recipe's width/height, which the json records.

    Reference: README's recipe reference says width/height are the generated size, "drawn
    exactly" (PixArt's binning is turned off for that reason); a plain diffusers call with the
    same height/width is rewritten the same way, but `pipeline(..., height=32, width=32,
    max_area=32 * 32)` draws 32x32 latents.

    Right behaviour: pass `max_area = width * height` where the pipeline takes it (like
    `use_resolution_binning=False`), or refuse the pipeline.
    """
    model, spec = kontext_model
    sampler = Sampler(model, spec, batch_size=1)
    seen = _first_call_of(sampler, ViewPlan("g", 0, "a red circle", "blurry", 3), monkeypatch)
    assert seen["kwargs"]["height"] == SIZE and seen["kwargs"]["width"] == SIZE
    assert seen["latent_size"] == (SIZE, SIZE), (
        f"the pipeline drew latents for {seen['latent_size']} px, the recipe asks {SIZE}x{SIZE}")
