"""The experiment compares conditions at equal image counts and equal compute per step."""

from __future__ import annotations

from pathlib import Path

import pytest

from synthgen.errors import UserError
from synthgen.plan import make_plan
from synthgen.train.experiment import (BUDGETS, conditions, run_experiment, synthetic_datasets,
                                       train_config)
from synthgen.world.scene import SHAPES


@pytest.mark.parametrize("name", ["smoke", "cpu"])  # gpu: same code, 30k-image plans are slow
def test_conditions_see_equal_images_and_equal_crops_per_step(name):
    budget = BUDGETS[name]
    recipes = synthetic_datasets(budget)
    for dataset, recipe in recipes.items():
        plan = make_plan(recipe)
        assert sum(len(group.views) for group in plan.groups) == budget.images, dataset
        assert [c.name for c in recipe.classes] == list(SHAPES)  # cls = the real label
    crops = set()
    for condition in conditions(budget):
        config = train_config(budget, condition, Path("unused"), seed=0)
        config.check()
        crops.add(config.batch_size * config.views * config.crops_per_view)
        assert config.steps == budget.steps
    assert crops == {budget.batch_images}


def test_slot_conditions_vary_colour_background_and_size_and_hold_the_shape():
    budget = BUDGETS["cpu"]
    recipes = synthetic_datasets(budget)
    for dataset in ("slots-seeds", "slots-latent-s0p5"):
        for group in make_plan(recipes[dataset]).groups[:50]:
            shape = group.class_name
            for slot in budget.slots_vary:
                drawn = [view.slots[slot] for view in group.views]
                # distinct: different values while the slot has any left (3 sizes, 4 views)
                available = len(recipes[dataset].slots[slot])
                assert len(set(drawn)) == min(len(drawn), available), (dataset, slot)
            assert all(f" {shape} on a " in view.prompt for view in group.views)
            # every other slot (stripes) is the group's: the prompts differ only in varied words
            assert len({"striped" in view.prompt for view in group.views}) == 1
        sigmas = {view.sigma for group in make_plan(recipes[dataset]).groups
                  for view in group.views}
        assert sigmas == ({None} if dataset == "slots-seeds" else {0.0, budget.slots_sigma})
    by_name = {c.name: c for c in conditions(budget)}
    # the slots conditions and their controls (views that share the colour) run without the jitter
    for name in ("synthetic-slots-seeds-multipos", "synthetic-slots-latent-sigma0.5-multipos",
                 "real-simclr", "synthetic-single-simclr", "synthetic-seeds-multipos"):
        with_colour, without = by_name[name], by_name[f"{name}-nocolour"]
        assert (with_colour.data, with_colour.method, with_colour.augment) == (
            without.data, without.method, "simclr")
        assert train_config(budget, without, Path("unused"), 0).augment == "simclr-nocolour"


def test_unknown_condition_is_a_user_error(tmp_path):
    with pytest.raises(UserError, match="--conditions: unknown nonsense"):
        run_experiment(BUDGETS["smoke"], tmp_path, device="cpu", only=("nonsense",))


def test_the_command_offers_every_budget():
    from synthgen.train.commands import experiment

    budget_option = next(p for p in experiment.params if p.name == "budget_name")
    assert sorted(budget_option.type.choices) == sorted(BUDGETS)


def test_smoke_budget_runs_every_condition_end_to_end(tmp_path):
    """tiny-random generator (noise images): the accuracies mean nothing, the plumbing does."""
    import json

    record = run_experiment(BUDGETS["smoke"], tmp_path, device="cpu", log=lambda line: None)
    expected = [c.name for c in conditions(BUDGETS["smoke"])] + ["random-init"]
    assert list(record["results"]) == expected
    for row in record["results"].values():
        assert row["runs"] == 1 and 0.0 <= row["mean"] <= 1.0
    assert json.loads((tmp_path / "results.json").read_text())["results"] == record["results"]
    assert "| random-init |" in (tmp_path / "results.md").read_text()
    # A second call reuses every finished run and dataset.
    again = run_experiment(BUDGETS["smoke"], tmp_path, device="cpu", log=lambda line: None)
    assert again["results"] == record["results"]


def test_train_command_offers_every_augmentation():
    from synthgen.data.augment import AUGMENTATIONS
    from synthgen.train.commands import AUGMENT_CHOICES

    assert tuple(AUGMENT_CHOICES) == tuple(AUGMENTATIONS)


def test_gpu_budget_generates_in_large_batches(tmp_path, monkeypatch):
    """Review of the GPU paths: the gpu budget generated its 32 px world images at the GPU's
    default batch of 8 views per call, launch overhead rather than compute. It asks for 256;
    the cpu budget keeps the device default (its datasets' bytes unchanged)."""
    import synthgen.engines.local as local
    import synthgen.world.dataset as world_dataset
    from synthgen.train.experiment import prepare_data

    asked = []

    def generate(plan, out, options):
        asked.append(options.batch_size)
        return local.RunSummary(out_dir=str(out), shards_total=0, shards_skipped=0)

    monkeypatch.setattr(local, "generate_dataset", generate)
    def write_real(folder, **kwargs):
        folder.mkdir(parents=True)
        return {"train": 0}

    monkeypatch.setattr(world_dataset, "write_real_dataset", write_real)
    for name, expected in (("gpu", 256), ("cpu", None)):
        budget = BUDGETS[name]
        first = next(iter(synthetic_datasets(budget)))
        prepare_data(budget, tmp_path / name, "cpu", log=lambda message: None, needed={first})
        assert asked[-1] == expected, name
