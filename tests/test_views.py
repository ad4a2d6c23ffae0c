"""View strategies on a tiny random pipeline: latent neighbourhoods, prompt variation, img2img."""

from __future__ import annotations

import io
import json
import math

import numpy as np
import pytest
import torch
import webdataset
from PIL import Image

from synthgen.generate.load import load_pipeline
from synthgen.generate.sampler import Sampler
from synthgen.plan import make_plan, summarize
from synthgen.recipe import ModelSpec, ViewsSpec, load_recipe
from synthgen.views import plan_views

SPEC = ModelSpec(id="builtin:tiny-random", steps=2, width=32, height=32)


@pytest.fixture(scope="module")
def tiny_model():
    return load_pipeline(SPEC, torch.device("cpu"), torch.float32)


def latent_views(sigma: float, group: str, anchor_view: bool = True, count: int = 4):
    spec = ViewsSpec(count=count, strategy="latent", latent={"sigma": sigma, "anchor_view": anchor_view})
    return list(plan_views(spec, 3, group, "a red circle", ""))


def mean_pairwise_distance(images: torch.Tensor) -> float:
    flat = images.flatten(1).float()
    distances = torch.cdist(flat, flat)
    count = len(images)
    return float(distances.sum() / (count * (count - 1)))


def test_latent_noise_is_variance_preserving_and_sigma_zero_is_identical(tiny_model):
    sampler = Sampler(tiny_model, SPEC, batch_size=4)
    same = sampler._initial_noise(latent_views(0.0, "g"))
    assert all(torch.equal(same[0], same[i]) for i in range(1, 4))
    wide = sampler._initial_noise(latent_views(1.0, "g", anchor_view=False) * 64)
    assert abs(float(wide.std()) - 1.0) < 0.02, "mixed noise stays a unit Gaussian"
    anchored = sampler._initial_noise(latent_views(0.7, "g"))
    assert torch.equal(anchored[0], same[0]), "view 0 is the unperturbed anchor"


def test_sigma_zero_gives_identical_views_and_distance_grows_with_sigma(tiny_model):
    sampler = Sampler(tiny_model, SPEC, batch_size=4)
    identical = sampler.sample(latent_views(0.0, "g0")).images
    assert all(torch.equal(identical[0], identical[i]) for i in range(1, 4))
    spread = []
    for sigma in (0.1, 0.5, 3.0):
        distances = [mean_pairwise_distance(sampler.sample(latent_views(sigma, f"g{n}")).images)
                     for n in range(3)]
        spread.append(sum(distances) / len(distances))
    assert 0 < spread[0] < spread[1] < spread[2], spread


def test_sigma_zero_gives_identical_views_with_a_stochastic_scheduler():
    # Ancestral sampling draws new noise at every step; latent views share their anchor's.
    spec = SPEC.model_copy(update={"scheduler": "EulerAncestralDiscreteScheduler", "steps": 4})
    sampler = Sampler(load_pipeline(spec, torch.device("cpu"), torch.float32), spec, batch_size=4)
    identical = sampler.sample(latent_views(0.0, "g0")).images
    assert all(torch.equal(identical[0], identical[i]) for i in range(1, 4))
    seeds = list(plan_views(ViewsSpec(count=4, strategy="seeds"), 3, "g0", "a red circle", ""))
    apart = sampler.sample(seeds).images
    assert mean_pairwise_distance(apart) > mean_pairwise_distance(
        sampler.sample(latent_views(0.1, "g0")).images) > 0


def test_prompt_views_cycle_or_sample_modifiers():
    spec = ViewsSpec(count=3, strategy=["seeds", "prompt"],
                     prompt={"modifiers": ["at night", "from above"], "mode": "cycle"})
    views = plan_views(spec, 1, "g", "a dog", "")
    assert [v.prompt for v in views] == ["a dog, at night", "a dog, from above", "a dog, at night"]
    assert [v.modifier for v in views] == ["at night", "from above", "at night"]
    assert len({v.seed for v in views}) == 3
    shared = plan_views(ViewsSpec(count=3, strategy="prompt",
                                  prompt={"modifiers": ["a", "b", "c"], "mode": "sample"}),
                        1, "g", "x", "")
    assert len({v.seed for v in shared}) == 1, "prompt alone: one seed, varied text"
    assert shared == plan_views(ViewsSpec(count=3, strategy="prompt",
                                          prompt={"modifiers": ["a", "b", "c"], "mode": "sample"}),
                                1, "g", "x", "")


def read_samples(out_dir):
    urls = sorted(str(p) for p in out_dir.glob("shard-*.tar"))
    return list(webdataset.WebDataset(urls, shardshuffle=False, empty_check=False))


def test_strategies_record_their_parameters_end_to_end(write_recipe, tmp_path):
    from synthgen.engines.local import GenerateOptions, generate_dataset

    recipe = load_recipe(write_recipe({
        "views": {"count": 3, "strategy": ["latent", "prompt"], "latent": {"sigma": 0.4},
                  "prompt": {"modifiers": ["at dawn", "in fog"]}},
        "classes": [
            {"name": "circle", "templates": ["a {colour} circle"], "groups": 2},
            {"name": "square", "templates": ["a {colour} square"], "groups": 2,
             "views": {"count": 3, "strategy": "img2img", "img2img": {"strength": 0.6}}}],
        "corner_cases": []}))
    plan = make_plan(recipe)
    summary = summarize(plan)
    assert summary["classes"]["circle"]["views"] == \
        "3 views: latent (sigma 0.4, view 0 = anchor) + prompt (2 modifiers, cycle)"
    assert summary["classes"]["square"]["views"] == "3 views: img2img (strength 0.6)"
    for batch_size, name in ((1, "a"), (4, "b")):
        generate_dataset(plan, tmp_path / name,
                         GenerateOptions(progress=False, device="cpu", batch_size=batch_size))
    shards = sorted((tmp_path / "a").glob("shard-*.tar"))
    assert [p.read_bytes() for p in shards] == \
        [(tmp_path / "b" / p.name).read_bytes() for p in shards]
    for sample in read_samples(tmp_path / "a"):
        meta = json.loads(sample["json"])
        views = meta["views"]
        if meta["class_name"] == "circle":
            assert meta["view_strategy"] == ["latent", "prompt"]
            assert [v["sigma"] for v in views] == [0.0, 0.4, 0.4]
            assert len({v["anchor_seed"] for v in views}) == 1
            assert [v["modifier"] for v in views] == ["at dawn", "in fog", "at dawn"]
            assert views[1]["prompt"].endswith(", in fog")
        else:
            assert meta["view_strategy"] == ["img2img"]
            assert "source_view" not in views[0]
            assert [(v["source_view"], v["strength"]) for v in views[1:]] == [(0, 0.6), (0, 0.6)]
            pixels = [np.asarray(Image.open(io.BytesIO(sample[v["file"]]))) for v in views]
            assert not np.array_equal(pixels[1], pixels[2]), "each derived view re-noises anew"


def test_view_strategy_mistakes_are_clear(write_recipe):
    from synthgen.errors import UserError

    with pytest.raises(UserError, match="seeds and latent both"):
        load_recipe(write_recipe({"views": {"strategy": ["seeds", "latent"]}}))
    with pytest.raises(UserError, match="needs a prompt block"):
        load_recipe(write_recipe({"views": {"strategy": "prompt"}}, name="b.yaml"))
    with pytest.raises(UserError, match=r"views.strategy\[0\].*'warp'"):
        load_recipe(write_recipe({"views": {"strategy": "warp"}}, name="c.yaml"))
    assert math.isclose(load_recipe(write_recipe(name="d.yaml")).views.latent.sigma, 0.5)
