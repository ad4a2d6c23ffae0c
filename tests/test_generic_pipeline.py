"""The generic pipeline path (neither SD nor SDXL) end to end, on tiny random PixArt-alpha and
FLUX.1 pipelines.

The pipeline is saved to a folder and loaded by synthgen as any hub model is (model.id = the
folder, AutoPipelineForText2Image.from_pretrained with safetensors); prompts go in as text
and each view's noise as its own CPU generator.
"""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pytest
import torch
import webdataset
from PIL import Image

from flux_fixture import RESOLUTION as FLUX_RESOLUTION
from flux_fixture import save_tiny_flux
from pixart_fixture import RESOLUTION, save_tiny_pixart
from sampling_checks import (
    assert_same_pictures,
    check_padded_batches_do_not_mix_views,
    count_prompt_encodings,
    dataset_bytes,
    read_planned_samples,
    run_recipe,
    write_small_recipe,
)
from synthgen.errors import UserError
from synthgen.generate.load import load_pipeline
from synthgen.generate.sampler import Sampler
from synthgen.recipe import ModelSpec
from synthgen.views import ViewPlan


@pytest.fixture(scope="module")
def pixart_dir(tmp_path_factory) -> Path:
    return save_tiny_pixart(tmp_path_factory.mktemp("tiny-pixart") / "model")


def pixart_recipe(folder: Path, model_id: Path, views: dict | None = None, **model) -> Path:
    return write_small_recipe(folder, model_id, RESOLUTION, views, **model)


def refused_without_shards(recipe: Path, out_dir: Path, message: str) -> None:
    """Generating the recipe stops with a UserError matching ``message`` and writes no shard."""
    with pytest.raises(UserError, match=message):
        run_recipe(recipe, out_dir)
    assert not list(out_dir.glob("shard-*.tar"))


@pytest.fixture(scope="module")
def first_run(pixart_dir, tmp_path_factory):
    """(recipe path, plan, summary, output folder) of one seeds-strategy run, batch size 1."""
    folder = tmp_path_factory.mktemp("pixart-run")
    recipe = pixart_recipe(folder, pixart_dir)
    plan, summary = run_recipe(recipe, folder / "out")
    return recipe, plan, summary, folder / "out"


def test_pixart_shards_read_back_as_the_planned_groups(first_run):
    recipe, plan, summary, out = first_run
    assert summary.shards_written == 2 and summary.images_generated == 6
    read = read_planned_samples(out, plan)
    assert plan.shard_count == 2 and len(read) == 3
    for sample, group, metadata in read:
        assert metadata["model"]["pipeline"] == "PixArtAlphaPipeline"
        assert metadata["model"]["steps"] == 2 and metadata["model"]["dtype"] == "float32"
        assert sorted(k for k in sample if k.startswith("view")) == ["view0.png", "view1.png"]
        views = [np.asarray(Image.open(io.BytesIO(sample[f"view{i}.png"]))) for i in range(2)]
        assert views[0].shape == (RESOLUTION, RESOLUTION, 3)
        assert not np.array_equal(views[0], views[1]), "a group's seeds views must differ"
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["totals"]["images"] == 6 and manifest["totals"]["nonfinite_views"] == 0


def test_pixart_bytes_are_fixed_per_batch_size(first_run, tmp_path):
    recipe, _, _, out = first_run
    run_recipe(recipe, tmp_path / "again", batch_size=1)
    assert dataset_bytes(out) == dataset_bytes(tmp_path / "again")
    # Calls are padded to the batch size (on the CPU too): other kernels, the same pictures.
    run_recipe(recipe, tmp_path / "b3", batch_size=3)
    assert_same_pictures(out, tmp_path / "b3")


def test_pixart_guidance_with_a_negative_prompt(pixart_dir, tmp_path):
    recipe = pixart_recipe(tmp_path, pixart_dir, guidance_scale=3.0, negative_prompt="blurry")
    run_recipe(recipe, tmp_path / "out")
    sample = next(iter(webdataset.WebDataset(str(tmp_path / "out" / "shard-000000.tar"),
                                              shardshuffle=False, empty_check=False)))
    metadata = json.loads(sample["json"])
    assert metadata["views"][0]["negative_prompt"] == "blurry"
    assert metadata["model"]["guidance_scale"] == 3.0


def test_latent_views_are_refused_for_a_pipeline_synthgen_cannot_draw_latents_for(
        pixart_dir, tmp_path):
    recipe = pixart_recipe(tmp_path, pixart_dir,
                           views={"count": 2, "strategy": "latent", "latent": {"sigma": 0.3}})
    refused_without_shards(recipe, tmp_path / "out", r"views\.strategy \['latent'\]: .*latent views "
                           r"need starting latents that synthgen draws, and PixArtAlphaPipeline draws "
                           r"its own .*; it takes seeds, prompt, slots views")


def test_pixart_padded_batches_do_not_mix_views(pixart_dir):
    """The GPU path (padded batches of many prompts, a generator per view), run on the CPU."""
    spec = ModelSpec(id=str(pixart_dir), steps=2, width=RESOLUTION, height=RESOLUTION)
    model = load_pipeline(spec, torch.device("cpu"), torch.float32)
    batched = check_padded_batches_do_not_mix_views(model, spec)
    assert batched.family.name == "pixart" and not batched.draws_own_latents


def test_pixart_generates_at_the_recipe_size_not_at_its_nearest_trained_size(pixart_dir):
    """Resolution binning would draw a 64x64 request on the 256-pixel bin and resize it."""
    spec = ModelSpec(id=str(pixart_dir), steps=2, width=64, height=64)
    model = load_pipeline(spec, torch.device("cpu"), torch.float32)
    latent_sizes = []
    model.pipeline.transformer.register_forward_pre_hook(
        lambda module, args, kwargs: latent_sizes.append(tuple(args[0].shape[-2:])),
        with_kwargs=True)
    images = Sampler(model, spec, batch_size=1).sample([ViewPlan("g", 0, "a red circle", "", 5)]).images
    assert images.shape[1:3] == (64, 64)
    assert set(latent_sizes) == {(8, 8)}, "denoised at 64 / 8 = 8 latent pixels"


def test_pixart_prompt_embeddings_are_computed_once_per_unique_text(pixart_dir, tmp_path,
                                                                     monkeypatch):
    from diffusers import PixArtAlphaPipeline

    calls = count_prompt_encodings(monkeypatch, PixArtAlphaPipeline)
    recipe = pixart_recipe(tmp_path, pixart_dir, guidance_scale=3.0, negative_prompt="blurry")
    plan, _ = run_recipe(recipe, tmp_path / "out")
    prompts = {view.prompt for group in plan.groups for view in group.views}
    assert sorted(calls) == sorted(prompts | {"blurry"}), "one T5 encoding per unique text"


# FLUX.1: the generic path with its two text encoders' embeddings cached per unique text. Its
# guidance_scale is a distilled input, so a negative prompt needs model.true_cfg_scale; without
# it, asking for one is a user error.


@pytest.fixture(scope="module")
def flux_dir(tmp_path_factory) -> Path:
    return save_tiny_flux(tmp_path_factory.mktemp("tiny-flux") / "model")


def flux_recipe(folder: Path, model_id: Path, **model) -> Path:
    return write_small_recipe(folder, model_id, FLUX_RESOLUTION, **({"guidance_scale": 3.5} | model))


def test_flux_shards_read_back_and_are_the_same_pictures_at_any_batch_size(flux_dir, tmp_path):
    recipe = flux_recipe(tmp_path, flux_dir)
    plan, summary = run_recipe(recipe, tmp_path / "out")
    assert summary.shards_written == 2 and summary.images_generated == 6
    for _, _, metadata in read_planned_samples(tmp_path / "out", plan):
        assert metadata["model"]["pipeline"] == "FluxPipeline"
        assert metadata["model"]["guidance_scale"] == 3.5 and metadata["model"]["true_cfg_scale"] is None
    run_recipe(recipe, tmp_path / "again", batch_size=3)
    assert_same_pictures(tmp_path / "out", tmp_path / "again")


def flux_model(flux_dir: Path, **spec) -> tuple:
    spec = ModelSpec(id=str(flux_dir), steps=2, width=FLUX_RESOLUTION, height=FLUX_RESOLUTION, **spec)
    return load_pipeline(spec, torch.device("cpu"), torch.float32), spec


def as_uint8(output: torch.Tensor) -> torch.Tensor:
    return (output * 255).round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1)


@pytest.mark.parametrize("negative", [None, "red"])
def test_cached_embeddings_give_the_pictures_the_pipeline_gives_for_text(flux_dir, negative):
    true_cfg = None if negative is None else 4.0
    model, spec = flux_model(flux_dir, guidance_scale=3.5, true_cfg_scale=true_cfg)
    view = ViewPlan("g", 0, "a red circle", negative or "", 5)
    ours = Sampler(model, spec, batch_size=1).sample([view]).images
    direct = model.pipeline(
        prompt="a red circle", negative_prompt=negative, true_cfg_scale=true_cfg or 1.0,
        num_inference_steps=2, guidance_scale=3.5, height=FLUX_RESOLUTION, width=FLUX_RESOLUTION,
        generator=torch.Generator("cpu").manual_seed(5), output_type="pt").images
    assert torch.equal(ours, as_uint8(direct))


def test_true_cfg_applies_the_negative_prompt(flux_dir):
    model, spec = flux_model(flux_dir, true_cfg_scale=4.0)
    sampler = Sampler(model, spec, batch_size=2)
    plain, negated = sampler.sample([ViewPlan("g", 0, "a red circle", "", 5),
                                     ViewPlan("g", 1, "a red circle", "green", 5)]).images
    assert not torch.equal(plain, negated)


def test_flux_prompt_embeddings_are_computed_once_per_unique_text(flux_dir, tmp_path, monkeypatch):
    from diffusers import FluxPipeline

    calls = count_prompt_encodings(monkeypatch, FluxPipeline)
    recipe = flux_recipe(tmp_path, flux_dir, true_cfg_scale=2.0, negative_prompt="blurry")
    plan, _ = run_recipe(recipe, tmp_path / "out")
    prompts = {view.prompt for group in plan.groups for view in group.views}
    assert sorted(calls) == sorted(prompts | {"blurry"}), "one encoding per unique text"
    sample = next(iter(webdataset.WebDataset(str(tmp_path / "out" / "shard-000000.tar"),
                                              shardshuffle=False, empty_check=False)))
    assert json.loads(sample["json"])["model"]["true_cfg_scale"] == 2.0


def test_flux_padded_batches_do_not_mix_views(flux_dir):
    model, spec = flux_model(flux_dir)
    assert check_padded_batches_do_not_mix_views(model, spec).family.name == "flux"


def test_a_negative_prompt_flux_would_ignore_is_a_user_error(flux_dir, tmp_path):
    recipe = write_small_recipe(tmp_path, flux_dir, FLUX_RESOLUTION, guidance_scale=3.5)
    text = recipe.read_text() + "suppress:\n  - concept: text\n    method: negative\n"
    recipe.write_text(text)
    refused_without_shards(recipe, tmp_path / "out", r"suppress\[0\]\.method negative: FluxPipeline's "
                           r"guidance_scale is distilled and ignores negative prompts; set model\.true_cfg_scale")


def test_true_cfg_scale_is_refused_for_a_pipeline_without_it(tmp_path):
    recipe = write_small_recipe(tmp_path, "builtin:tiny-random", 64, true_cfg_scale=3.0)
    refused_without_shards(recipe, tmp_path / "out",
                           r"model\.true_cfg_scale 3\.0: StableDiffusionPipeline has no true_cfg_scale")


def test_auto_dtype_is_bfloat16_for_flux_on_a_gpu(flux_dir, tmp_path):
    from synthgen.generate.load import choose_dtype

    gpu, cpu = torch.device("cuda"), torch.device("cpu")
    flux = ModelSpec(id=str(flux_dir))
    assert choose_dtype("auto", gpu, flux) == torch.bfloat16
    assert choose_dtype("auto", cpu, flux) == torch.float32
    assert choose_dtype("float16", gpu, flux) == torch.float16, "an explicit choice stands"
    assert choose_dtype("auto", gpu, ModelSpec(id="builtin:tiny-random")) == torch.float16
    assert choose_dtype("auto", gpu, ModelSpec(id=str(tmp_path / "missing"))) == torch.float16
