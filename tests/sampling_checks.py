"""Checks shared by the tests of every pipeline family (SD on tiny-random, PixArt, ...)."""

from __future__ import annotations

import hashlib
import io
import json
from pathlib import Path

import numpy as np
import torch
import webdataset
import yaml
from PIL import Image

from synthgen.engines.local import GenerateOptions, generate_dataset
from synthgen.generate.sampler import Sampler
from synthgen.plan import make_plan
from synthgen.recipe import load_recipe
from synthgen.views import ViewPlan


def write_small_recipe(folder: Path, model_id: Path, resolution: int, views: dict | None = None,
                       **model) -> Path:
    """A 3-group recipe (2 classes, a colour slot, 2 seeds views, PNG) for a model folder."""
    recipe = {
        "name": "small",
        "seed": 11,
        "model": {"id": str(model_id), "steps": 2, "guidance_scale": 0.0,
                  "width": resolution, "height": resolution, **model},
        "slots": {"colour": ["red", "green", "blue"]},
        "classes": [
            {"name": "circle", "templates": ["a {colour} circle"], "groups": 2},
            {"name": "square", "templates": ["a photo of a {colour} square"], "groups": 1},
        ],
        "views": views or {"count": 2, "strategy": "seeds"},
        "output": {"groups_per_shard": 2, "format": "png"},
    }
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "recipe.yaml"
    path.write_text(yaml.safe_dump(recipe, sort_keys=False))
    return path


def run_recipe(recipe_path: Path, out_dir: Path, batch_size: int = 1):
    """(plan, summary) of generating the recipe on the CPU into ``out_dir``."""
    plan = make_plan(load_recipe(recipe_path))
    options = GenerateOptions(progress=False, device="cpu", batch_size=batch_size)
    return plan, generate_dataset(plan, out_dir, options)


def check_padded_batches_do_not_mix_views(model, spec) -> Sampler:
    """Padded batches of many prompts (every device): a view's pixels do not depend on its
    neighbours or position, and equal one-view calls (batch size 1) to float rounding."""
    views = [ViewPlan(f"g{seed}", 0, prompt, "", seed) for prompt, seed in
             [("a red circle", 1), ("a blue square", 2), ("a green star", 3)]]
    batched = Sampler(model, spec, batch_size=4)
    together = batched.sample(views).images
    # Same shape, other neighbours and position: the kernel is the same, so the bits are too.
    alone = batched.sample(views[2:]).images
    assert torch.equal(together[2], alone[0])
    # Against one view per call: other kernels, so equal up to float rounding only.
    one_per_call = Sampler(model, spec, batch_size=1)
    single = torch.cat([one_per_call.sample([view]).images for view in views])
    difference = (together.int() - single.int()).abs()
    assert difference.max() <= 2 and difference.float().mean() < 0.01
    assert not torch.equal(together[0], together[1])
    return batched


def count_prompt_encodings(monkeypatch, pipeline_class) -> list[str]:
    """The texts `pipeline_class.encode_prompt` encodes from now on (the pipelines' own calls
    that pass synthgen's precomputed embeddings through, with prompt None, are not counted)."""
    encoded: list[str] = []
    original = pipeline_class.encode_prompt

    def counting_encode(self, prompt, *args, **kwargs):
        if prompt is not None:
            encoded.append(prompt)
        return original(self, prompt, *args, **kwargs)

    monkeypatch.setattr(pipeline_class, "encode_prompt", counting_encode)
    return encoded


def dataset_bytes(out_dir: Path) -> dict[str, str]:
    """sha256 of every shard and of the manifest."""
    files = sorted(out_dir.glob("shard-*.tar")) + [out_dir / "manifest.json"]
    return {f.name: hashlib.sha256(f.read_bytes()).hexdigest() for f in files}


def dataset_pictures(out_dir: Path) -> dict[tuple[str, str], np.ndarray]:
    """Every image of a dataset's shards, decoded: (sample key, member name) -> uint8 (H, W, 3)."""
    pictures = {}
    urls = [str(path) for path in sorted(out_dir.glob("shard-*.tar"))]
    for sample in webdataset.WebDataset(urls, shardshuffle=False, empty_check=False):
        for name, data in sample.items():
            if name.endswith((".png", ".jpg", ".webp")):
                pictures[(sample["__key__"], name)] = np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))
    return pictures


def assert_same_pictures(out_a: Path, out_b: Path) -> None:
    """Two datasets of one recipe made at different batch sizes hold the same pictures up to
    float rounding: kernels are chosen by batch shape, which moves the last float bits, so
    bytes are fixed per batch size only (seeds and noise never depend on the batch)."""
    a, b = dataset_pictures(out_a), dataset_pictures(out_b)
    assert a.keys() == b.keys() and a
    difference = np.stack([np.abs(a[key].astype(int) - b[key].astype(int)) for key in sorted(a)])
    assert difference.max() <= 2 and difference.mean() < 0.01, (difference.max(), difference.mean())


def read_planned_samples(out_dir: Path, plan) -> list[tuple[dict, object, dict]]:
    """The dataset's samples read back with webdataset, checked against the plan (order, key,
    class, seeds and prompts of every view); (sample, planned group, metadata) for each."""
    urls = [str(out_dir / f"shard-{i:06d}.tar") for i in range(plan.shard_count)]
    samples = list(webdataset.WebDataset(urls, shardshuffle=False, empty_check=False))
    assert [s["__key__"] for s in samples] == [g.group_id for g in plan.groups]
    read = []
    for sample, group in zip(samples, plan.groups):
        metadata = json.loads(sample["json"])
        assert int(sample["cls"]) == group.class_index == metadata["class_index"]
        assert metadata["class_name"] == group.class_name
        assert [v["seed"] for v in metadata["views"]] == [v.seed for v in group.views]
        assert [v["prompt"] for v in metadata["views"]] == [v.prompt for v in group.views]
        read.append((sample, group, metadata))
    return read


def written_views(folder: Path) -> dict[tuple[str, int], tuple[dict, np.ndarray]]:
    """(group id, view) -> (the view's json entry, its pixels) of every sample in `folder`."""
    urls = sorted(str(path) for path in folder.glob("shard-*.tar"))
    views = {}
    for sample in webdataset.WebDataset(urls, shardshuffle=False, empty_check=False):
        meta = json.loads(sample["json"])
        for view in meta["views"]:
            pixels = np.asarray(Image.open(io.BytesIO(sample[view["file"]])).convert("RGB"))
            views[(meta["group_id"], view["view"])] = (view, pixels)
    return views


def generated_and_by_hand(plan, out_dir: Path, by_hand) -> list[tuple[ViewPlan, dict, np.ndarray, np.ndarray]]:
    """Generate `plan` into `out_dir` on the CPU (batches of 6), then make the same views by
    hand: `by_hand(pipeline, views, noise)` calls the recipe's pipeline (loaded afresh) and
    returns its float images; `noise` is each view's seed drawn as the sampler draws it, and
    `derive_seed("steps", seed)` generators are the caller's to pass. Runs on the generator's
    CPU threads, so float rounding matches. Per view: (view, its json entry, written pixels,
    pixels made by hand)."""
    from synthgen.generate.load import load_pipeline

    options = GenerateOptions(progress=False, device="cpu", batch_size=6)
    generate_dataset(plan, out_dir, options)
    written = written_views(out_dir)
    pipeline = load_pipeline(plan.recipe.model, torch.device("cpu"), torch.float32).pipeline
    pipeline.set_progress_bar_config(disable=True)
    views = [view for group in plan.groups for view in group.views]
    threads = torch.get_num_threads()
    torch.set_num_threads(options.cpu_threads)
    try:
        shape = (1, pipeline.unet.config.in_channels, plan.recipe.model.height // pipeline.vae_scale_factor,
                 plan.recipe.model.width // pipeline.vae_scale_factor)
        noise = [torch.randn(shape, generator=torch.Generator().manual_seed(v.seed)) for v in views]
        images = by_hand(pipeline, views, noise)
    finally:
        torch.set_num_threads(threads)
    pixels = (images * 255).round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).numpy()
    return [(view, *written[(view.group_id, view.view)], expected)
            for view, expected in zip(views, pixels)]
