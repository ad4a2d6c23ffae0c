"""The generic pipeline path (neither SD nor SDXL) end to end, on a tiny random PixArt-alpha.

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
import webdataset
from PIL import Image

from pixart_fixture import RESOLUTION, save_tiny_pixart
from sampling_checks import (
    check_padded_batches_do_not_mix_views,
    count_prompt_encodings,
    dataset_bytes,
    read_planned_samples,
    run_recipe,
    write_small_recipe,
)
from synthgen.errors import UserError


@pytest.fixture(scope="module")
def pixart_dir(tmp_path_factory) -> Path:
    return save_tiny_pixart(tmp_path_factory.mktemp("tiny-pixart") / "model")


def pixart_recipe(folder: Path, model_id: Path, views: dict | None = None, **model) -> Path:
    return write_small_recipe(folder, model_id, RESOLUTION, views, **model)


run = run_recipe


@pytest.fixture(scope="module")
def first_run(pixart_dir, tmp_path_factory):
    """(recipe path, plan, summary, output folder) of one seeds-strategy run, batch size 1."""
    folder = tmp_path_factory.mktemp("pixart-run")
    recipe = pixart_recipe(folder, pixart_dir)
    plan, summary = run(recipe, folder / "out")
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


def test_pixart_bytes_do_not_depend_on_the_run_or_the_batch_size(first_run, tmp_path):
    recipe, _, _, out = first_run
    run(recipe, tmp_path / "again", batch_size=1)
    run(recipe, tmp_path / "b3", batch_size=3)
    assert dataset_bytes(out) == dataset_bytes(tmp_path / "again") == dataset_bytes(tmp_path / "b3")


def test_pixart_guidance_with_a_negative_prompt(pixart_dir, tmp_path):
    recipe = pixart_recipe(tmp_path, pixart_dir, guidance_scale=3.0, negative_prompt="blurry")
    run(recipe, tmp_path / "out")
    sample = next(iter(webdataset.WebDataset(str(tmp_path / "out" / "shard-000000.tar"),
                                              shardshuffle=False, empty_check=False)))
    metadata = json.loads(sample["json"])
    assert metadata["views"][0]["negative_prompt"] == "blurry"
    assert metadata["model"]["guidance_scale"] == 3.0


def test_latent_views_are_refused_for_a_pipeline_synthgen_cannot_draw_latents_for(
        pixart_dir, tmp_path):
    recipe = pixart_recipe(tmp_path, pixart_dir,
                           views={"count": 2, "strategy": "latent", "latent": {"sigma": 0.3}})
    with pytest.raises(UserError, match=r"views\.strategy \['latent'\] needs a Stable Diffusion "
                                        r"or SDXL pipeline; PixArtAlphaPipeline takes only seeds "
                                        r"and prompt views"):
        run(recipe, tmp_path / "out")
    assert not list(tmp_path.glob("out/shard-*.tar"))


def test_pixart_padded_batches_do_not_mix_views(pixart_dir):
    """The GPU path (padded batches of many prompts, a generator per view), run on the CPU."""
    import torch

    from synthgen.generate.load import load_pipeline
    from synthgen.recipe import ModelSpec

    spec = ModelSpec(id=str(pixart_dir), steps=2, width=RESOLUTION, height=RESOLUTION)
    model = load_pipeline(spec, torch.device("cpu"), torch.float32)
    batched = check_padded_batches_do_not_mix_views(model, spec)
    assert batched.family == "generic" and not batched.draws_own_latents


def test_pixart_generates_at_the_recipe_size_not_at_its_nearest_trained_size(pixart_dir):
    """Resolution binning would draw a 64x64 request on the 256-pixel bin and resize it."""
    import torch

    from synthgen.generate.load import load_pipeline
    from synthgen.generate.sampler import Sampler
    from synthgen.recipe import ModelSpec
    from synthgen.views import ViewPlan

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
    plan, _ = run(recipe, tmp_path / "out")
    prompts = {view.prompt for group in plan.groups for view in group.views}
    assert sorted(calls) == sorted(prompts | {"blurry"}), "one T5 encoding per unique text"
