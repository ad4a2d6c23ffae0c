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
from synthgen.views import ViewText, plan_views

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
    from sampling_checks import assert_same_pictures
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
    # Calls are padded to the batch size, on the CPU too: the same pictures up to rounding.
    assert_same_pictures(tmp_path / "a", tmp_path / "b")
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


# The `slots` strategy: views that re-draw named slots and hold the rest.

COUNTERFACTUAL = {
    "slots": {"colour": ["red", "green", "blue"], "background": {"gray": 3, "beige": 1}},
    "classes": [
        {"name": "circle", "templates": ["a {size} {colour} circle on a {background} background"],
         "slots": {"size": ["small", "large"]}, "groups": 6},
        {"name": "square", "templates": ["a {colour} square on a {background} background",
                                         "a {background} scene with a {colour} square"],
         "groups": 5}],
    "corner_cases": [],
    "views": {"count": 3, "strategy": "slots", "slots": {"vary": ["colour"]}},
}


def test_shared_noise_counterfactual_views_differ_only_in_the_varied_slot(write_recipe):
    plan = make_plan(load_recipe(write_recipe(COUNTERFACTUAL)))
    for group in plan.groups:
        assert len({view.seed for view in group.views}) == 1, "one noise for all views"
        assert all(view.anchor_seed is None for view in group.views)
        assert "colour" not in group.slots and set(group.slots) >= {"background"}
        for view in group.views:
            assert set(view.slots) == {"colour"}
            # The view's prompt is the group's template with the held values and its colour.
            expected = group.template.format(**group.slots, **view.slots)
            assert view.prompt == expected
        # Three colours, three views, distinct: each group shows every colour once.
        assert sorted(view.slots["colour"] for view in group.views) == ["blue", "green", "red"]


def test_held_slots_keep_the_values_of_the_same_recipe_without_slots(write_recipe):
    varied = make_plan(load_recipe(write_recipe(COUNTERFACTUAL)))
    plain = make_plan(load_recipe(write_recipe(
        {**COUNTERFACTUAL, "views": {"count": 3, "strategy": "seeds"}}, name="plain.yaml")))
    held = {g.group_id: (g.template, g.slots) for g in varied.groups}
    for group in plain.groups:
        template, slots = held[group.group_id]
        assert template == group.template
        assert slots == {k: v for k, v in group.slots.items() if k != "colour"}


def test_distinct_values_where_possible_and_repeats_without_distinct(write_recipe):
    def colours(views: dict, name: str) -> list[list[str]]:
        recipe = load_recipe(write_recipe({**COUNTERFACTUAL, "views": views}, name=name))
        return [[view.slots["colour"] for view in group.views]
                for group in make_plan(recipe).groups]

    five = colours({"count": 5, "strategy": ["slots", "seeds"], "slots": {"vary": ["colour"]}},
                   "five.yaml")
    for drawn in five:  # 3 values, 5 views: every value once, then two more distinct ones
        assert len(set(drawn[:3])) == 3 and len(set(drawn[3:])) == 2
    free = colours({"count": 3, "strategy": "slots", "slots": {"vary": ["colour"],
                                                               "distinct": False}}, "free.yaml")
    assert any(len(set(drawn)) < 3 for drawn in free), "independent draws repeat"


def test_views_varying_two_attributes_never_repeat_a_prompt_and_keep_their_quotas(write_recipe):
    """Gender (2 values) and age (3) balanced over 4 views, each dealt on its own, gave two
    views of a third of the groups the same pair, the same prompt (and with shared noise the
    same image); re-paired, no group repeats one and the quotas over views are as dealt."""
    recipe = load_recipe(write_recipe({
        "templates": ["a photo of a {age} {gender} {class}"],
        "classes": [{"name": "doctor", "groups": 60}, {"name": "farmer", "groups": 30}],
        "corner_cases": [],
        "balance": [{"attribute": "gender", "slot": "gender", "values": {"woman": 1, "man": 1}},
                    {"attribute": "age", "slot": "age",
                     "values": {"young": 1, "middle-aged": 1, "elderly": 1}}],
        "views": {"count": 4, "strategy": ["slots"], "slots": {"vary": ["gender", "age"]}}}))
    plan = make_plan(recipe)
    quotas = {}
    for group in plan.groups:
        prompts = [view.prompt for view in group.views]
        assert len(set(prompts)) == 4, prompts
        for view in group.views:
            for attribute, value in view.balance.items():
                key = (group.class_name, attribute, value)
                quotas[key] = quotas.get(key, 0) + 1
    assert quotas[("doctor", "gender", "woman")] == quotas[("doctor", "gender", "man")] == 120
    assert sorted(quotas[("farmer", "age", age)] for age in ("young", "middle-aged", "elderly")) == [40, 40, 40]


def test_slots_combine_with_own_noise_latent_and_modifiers():
    texts = [ViewText(prompt=f"a {c} dog", slots={"colour": c}, balance={})
             for c in ("red", "blue")]
    seeds = plan_views(ViewsSpec(count=2, strategy=["slots", "seeds"], slots={"vary": ["colour"]}),
                       1, "g", "a red dog", "", texts)
    assert [v.prompt for v in seeds] == ["a red dog", "a blue dog"]
    assert len({v.seed for v in seeds}) == 2
    latent = plan_views(ViewsSpec(count=2, strategy=["slots", "latent", "prompt"],
                                  slots={"vary": ["colour"]}, prompt={"modifiers": ["at night"]}),
                        1, "g", "a red dog", "", texts)
    assert [v.prompt for v in latent] == ["a red dog, at night", "a blue dog, at night"]
    assert len({v.anchor_seed for v in latent}) == 1 and latent[1].sigma == 0.5
    assert [v.to_json()["slots"] for v in latent] == [{"colour": "red"}, {"colour": "blue"}]
    assert "balance" not in latent[0].to_json(), "nothing varied by balance: not recorded"


def test_varied_values_nest_and_enumeration_covers_the_held_slots(write_recipe):
    recipe = load_recipe(write_recipe({
        "slots": {"colour": ["red", "{shade} blue"], "shade": ["dark", "pale"],
                  "background": ["gray", "beige"]},
        "classes": [{"name": "circle", "templates": ["a {colour} circle on {background}"],
                     "slots": {"size": ["small", "large"]}, "groups": 4,
                     "prompt_mode": "enumerate"}],
        "corner_cases": [],
        "views": {"count": 2, "strategy": "slots", "slots": {"vary": ["colour"]}}}))
    plan = make_plan(recipe)
    assert summarize(plan)["warnings"] == [], "2 backgrounds x (colour varied) fit 4 groups"
    assert sorted(g.slots["background"] for g in plan.groups) == ["beige", "beige", "gray", "gray"]
    for group in plan.groups:
        drawn = [view.slots["colour"] for view in group.views]
        assert drawn[0] != drawn[1] and "red" in drawn
        assert next(c for c in drawn if c != "red") in ("dark blue", "pale blue")


def test_per_view_slot_values_are_in_the_sample_json(write_recipe, tmp_path):
    from synthgen.engines.local import GenerateOptions, generate_dataset

    recipe = load_recipe(write_recipe({
        **COUNTERFACTUAL,
        "balance": [{"attribute": "light", "values": {"day": 1, "night": 1}},
                    {"attribute": "era", "values": {"old": 1, "new": 1}}],
        "views": {"count": 2, "strategy": "slots", "slots": {"vary": ["colour", "light"]}}}))
    plan = make_plan(recipe)
    generate_dataset(plan, tmp_path / "out", GenerateOptions(progress=False, device="cpu"))
    samples = read_samples(tmp_path / "out")
    assert len(samples) == len(plan.groups)
    planned = {group.group_id: group for group in plan.groups}
    for sample in samples:
        meta = json.loads(sample["json"])
        group = planned[meta["group_id"]]
        assert meta["view_strategy"] == ["slots"]
        assert "colour" not in meta["slots"] and set(meta["balance"]) == {"era"}
        for view, planned_view in zip(meta["views"], group.views, strict=True):
            assert view["slots"] == planned_view.slots and set(view["slots"]) == {"colour"}
            assert view["balance"] == planned_view.balance and set(view["balance"]) == {"light"}
            assert view["prompt"] == planned_view.prompt
            assert view["slots"]["colour"] in view["prompt"]
            injected = f", {view['balance']['light']}, {meta['balance']['era']}"
            assert view["prompt"].endswith(injected), "balance values injected in recipe order"


def test_slot_view_mistakes_name_the_field_and_fix(write_recipe):
    from synthgen.errors import UserError

    written = []

    def error(views: dict, extra: dict | None = None) -> str:
        path = write_recipe({**COUNTERFACTUAL, **(extra or {}), "views": views},
                            name=f"bad{len(written)}.yaml")
        written.append(path)
        with pytest.raises(UserError) as raised:
            load_recipe(path)
        assert str(raised.value).startswith(f"{path}: ")
        return str(raised.value)

    assert "needs a slots block" in error({"strategy": "slots"})
    assert "{class} is the group's class" in error({"strategy": "slots",
                                                    "slots": {"vary": ["class"]}})
    assert "listed twice" in error({"strategy": "slots", "slots": {"vary": ["colour", "colour"]}})
    message = error({"strategy": "slots", "slots": {"vary": ["size"]}})
    assert "views.slots.vary: 'size' is not a slot of classes[1] ('square')" in message
    assert "give classes[1] ('square') views of its own without slots" in message
    message = error({"strategy": "slots", "slots": {"vary": ["colour"]}},
                    {"classes": [{"name": "circle", "groups": 2,
                                  "templates": ["a {colour} circle", "a {background} circle"]}]})
    assert ("classes[0].templates[1] 'a {background} circle' does not use {colour}" in message
            and "add {colour} to it" in message)
    message = error({"strategy": "slots", "slots": {"vary": ["colour"]}},
                    {"slots": {"colour": ["red"], "background": ["gray"]}})
    assert "slot 'colour' has one value for classes[0] ('circle')" in message
    gender = {"attribute": "perceived gender", "slot": "gender", "values": {"woman": 1, "man": 1}}
    message = error({"strategy": "slots", "slots": {"vary": ["perceived gender"]}},
                    {"balance": [gender]})
    assert "vary gender instead" in message
    message = error({"strategy": "slots", "slots": {"vary": ["gender"]}},
                    {"balance": [{**gender, "applies_to": ["circle"]}]})
    assert "filled by balance[0] only for ['circle'], not for 'square'" in message


def test_counterfactual_bench_counts_edits_and_what_held():
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "bench" / "counterfactual_oracle.py"
    spec = importlib.util.spec_from_file_location("counterfactual_oracle", path)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)

    def reading(colour, shape="star", x=0.5, y=0.5):
        return {"shape": shape, "colour": colour, "size": "large", "striped": False, "x": x, "y": y}

    class ScriptedOracle:
        """Reads back the attributes listed for each image, in order."""

        def __init__(self, readings):
            self.readings = readings

        def read(self, images):
            assert len(images) == len(self.readings)
            return self.readings

    def group(*colours):
        views = [{"view": v, "slots": {"colour": c}} for v, c in enumerate(colours)]
        return {"views": views}, np.zeros((len(colours), 32, 32, 3), np.uint8)

    groups = [group("red", "blue"), group("red", "green"), group("pink", "cyan")]
    readings = [reading("red"), reading("blue", x=0.5 + 2 / 32),        # all held (2 px)
                reading("red"), reading("red", shape="cross"),          # colour missed, shape moved
                reading("pink", y=0.1), reading("cyan", y=0.2)]         # 3.2 px apart in y
    result = bench.judge(groups, ScriptedOracle(readings), tolerance_px=2.0)
    assert result["edit_success"]["colour"]["hits"] == 5 and result["views"] == 6
    assert set(result["edit_success"]) == {"colour"}, "size was not varied: no edit rate"
    held = {name: entry["hits"] for name, entry in result["held"].items()}
    assert held == {"shape": 2, "size": 3, "position": 2, "all held": 1}
    assert all(entry["total"] == 3 for entry in result["held"].values())
