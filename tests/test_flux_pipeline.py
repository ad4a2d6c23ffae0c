"""FLUX.1 through synthgen, on a tiny random FluxPipeline saved to a folder.

FLUX takes the generic path (noise from one CPU generator per view), with its two text
encoders' embeddings cached per unique text. Its guidance_scale is a distilled input, so a
negative prompt needs `model.true_cfg_scale`; without it, asking for one is a user error.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import webdataset

from flux_fixture import RESOLUTION, save_tiny_flux
from sampling_checks import (
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
def flux_dir(tmp_path_factory) -> Path:
    return save_tiny_flux(tmp_path_factory.mktemp("tiny-flux") / "model")


def flux_recipe(folder: Path, model_id: Path, **model) -> Path:
    return write_small_recipe(folder, model_id, RESOLUTION, **({"guidance_scale": 3.5} | model))


def test_flux_shards_read_back_and_do_not_depend_on_the_run_or_batch_size(flux_dir, tmp_path):
    recipe = flux_recipe(tmp_path, flux_dir)
    plan, summary = run_recipe(recipe, tmp_path / "out")
    assert summary.shards_written == 2 and summary.images_generated == 6
    for _, _, metadata in read_planned_samples(tmp_path / "out", plan):
        assert metadata["model"]["pipeline"] == "FluxPipeline"
        assert metadata["model"]["guidance_scale"] == 3.5 and metadata["model"]["true_cfg_scale"] is None
    run_recipe(recipe, tmp_path / "again", batch_size=3)
    assert dataset_bytes(tmp_path / "out") == dataset_bytes(tmp_path / "again")


def flux_model(flux_dir: Path, **spec) -> tuple:
    spec = ModelSpec(id=str(flux_dir), steps=2, width=RESOLUTION, height=RESOLUTION, **spec)
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
        num_inference_steps=2, guidance_scale=3.5, height=RESOLUTION, width=RESOLUTION,
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
    assert check_padded_batches_do_not_mix_views(model, spec).caches_flux_prompts


def test_a_negative_prompt_flux_would_ignore_is_a_user_error(flux_dir, tmp_path):
    recipe = write_small_recipe(tmp_path, flux_dir, RESOLUTION, guidance_scale=3.5)
    text = recipe.read_text() + "suppress:\n  - concept: text\n    method: negative\n"
    recipe.write_text(text)
    with pytest.raises(UserError, match=r"suppress\[0\]\.method negative: FluxPipeline's guidance_scale "
                                        r"is distilled and ignores negative prompts; set "
                                        r"model\.true_cfg_scale"):
        run_recipe(recipe, tmp_path / "out")
    assert not list(tmp_path.glob("out/shard-*.tar"))


def test_true_cfg_scale_is_refused_for_a_pipeline_without_it(tmp_path):
    recipe = write_small_recipe(tmp_path, "builtin:tiny-random", 64, true_cfg_scale=3.0)
    with pytest.raises(UserError, match=r"model\.true_cfg_scale 3\.0: StableDiffusionPipeline has no "
                                        r"true_cfg_scale"):
        run_recipe(recipe, tmp_path / "out")


def test_auto_dtype_is_bfloat16_for_flux_on_a_gpu(flux_dir, tmp_path):
    from synthgen.generate.load import choose_dtype

    gpu, cpu = torch.device("cuda"), torch.device("cpu")
    flux = ModelSpec(id=str(flux_dir))
    assert choose_dtype("auto", gpu, flux) == torch.bfloat16
    assert choose_dtype("auto", cpu, flux) == torch.float32
    assert choose_dtype("float16", gpu, flux) == torch.float16, "an explicit choice stands"
    assert choose_dtype("auto", gpu, ModelSpec(id="builtin:tiny-random")) == torch.float16
    assert choose_dtype("auto", gpu, ModelSpec(id=str(tmp_path / "missing"))) == torch.float16
