"""Review faults in `synthgen world ...`, `synthgen probe` and `synthgen experiment`: each test
fails on the code as reviewed because of the bug its docstring names."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

from cli_checks import assert_refused
from synthgen.cli import main
from synthgen.errors import UserError


def _invoke(arguments: list[str]):
    return CliRunner().invoke(main, arguments)


@pytest.fixture(autouse=True)
def _keep_torch_threads():
    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)


# --- synthgen world dataset / train: seeds -----------------------------------------------


@pytest.mark.parametrize("seed", ["100", "-1"])
def test_world_dataset_seed_outside_the_training_seed_range_is_refused(tmp_path, seed):
    """world/dataset.py:63 (commands.py:63 `--seed` is any int): run seed s trains on scene seeds
    s*10^7..., and HELD_OUT_SEED_OFFSET is 10^9, so `--seed 100` writes a train split whose
    scenes ARE the test split's (the docstring promises "the two splits never share a scene");
    `--seed -1` gives negative numpy seeds and a ValueError traceback. Correct: refuse seeds
    outside 0..99 with one message naming --seed (exit 2)."""
    result = _invoke(["world", "dataset", "--out", str(tmp_path / "d"), "--train", "3", "--test", "3",
                      f"--seed={seed}"])
    assert_refused(result, "seed")


@pytest.mark.parametrize("seed", [100, -1])
def test_world_train_seed_outside_the_training_seed_range_is_refused(tmp_path, seed):
    """world/train.py:246 (`train_pool(seed, ...)`): seed 100 renders the held-out evaluation
    scenes (seed 10^9...) as training data, so the evaluation it then runs is on the training
    set; seed -1 crashes in numpy with a ValueError. `train_world_models` promises a UserError
    for argument mistakes before anything is rendered. Correct: refuse seeds outside 0..99."""
    with pytest.raises(UserError, match="seed"):
        train_world_models_quietly(tmp_path / "models", seed=seed, models=("oracle",), scale=0.001)


def train_world_models_quietly(out: Path, **options):
    from synthgen.world.train import train_world_models

    return train_world_models(out, device="cpu", log=lambda message: None, evaluate=False, **options)


# --- synthgen world train / evaluate: --scale, --out, --models -----------------------------


def test_world_train_infinite_scale_is_a_user_error(tmp_path):
    """world/train.py:237 checks `not scale > 0`, which lets inf through; `round(TRAIN_SCENES *
    inf)` then raises OverflowError (traceback, exit 1). Correct: refuse a non-finite scale like
    0 and nan (exit 2, message naming scale)."""
    result = _invoke(["world", "train", "--out", str(tmp_path / "m"), "--scale", "inf",
                      "--models", "oracle", "--no-evaluate", "--device", "cpu"])
    assert_refused(result, "scale")


def test_world_evaluate_infinite_scale_is_a_user_error(tmp_path):
    """world/evaluate.py:199 has the same `not scale > 0` check: `--scale inf` ends in an
    OverflowError traceback in `count`. Correct: one message naming scale, exit 2."""
    for folder in ("world-clip", "world-sd", "world-oracle"):
        (tmp_path / folder).mkdir()
    result = _invoke(["world", "evaluate", "--models", str(tmp_path), "--scale", "inf", "--device", "cpu"])
    assert_refused(result, "scale")


def test_world_evaluate_on_folders_that_hold_no_models_is_a_user_error(tmp_path):
    """world/evaluate.py:193 only checks that the three folders are directories; folders without
    the models (an interrupted train, a wrong --models) reach `CLIPModel.from_pretrained`, whose
    OSError (no errno) escapes as a traceback. Correct: check each folder's files (config.json,
    model_index.json, ...) and refuse with one message naming --models/models (exit 2)."""
    for folder in ("world-clip", "world-sd", "world-oracle"):
        (tmp_path / folder).mkdir()
    result = _invoke(["world", "evaluate", "--models", str(tmp_path), "--scale", "0.01", "--device", "cpu"])
    assert_refused(result, "models")


def test_world_train_out_below_a_file_is_a_user_error(tmp_path):
    """world/train.py (no check of out_root): `--out FILE/models` passes click (the path does not
    exist), trains, and only the save's mkdir fails, with a NotADirectoryError traceback after
    the training is lost. Correct: refuse before any work, one message naming --out, exit 2."""
    (tmp_path / "afile").write_text("x")
    result = _invoke(["world", "train", "--out", str(tmp_path / "afile" / "models"), "--scale", "0.001",
                      "--models", "oracle", "--no-evaluate", "--device", "cpu"])
    assert_refused(result, "out")


def test_sd_detail_on_a_world_sd_without_its_training_record_is_a_user_error(tmp_path):
    """world/train.py:184/123: `--models sd-detail` accepts any OUT/world-sd holding
    model_index.json (what an sd run killed before `training.json` was written leaves, or a
    world-sd from elsewhere), renders the pool, and then `_continue_with_detail_phase` reads
    training.json: FileNotFoundError traceback. Correct: check training.json with the marker
    in `_checked_models` and raise UserError before rendering."""
    sd = tmp_path / "world-sd"
    sd.mkdir()
    (sd / "model_index.json").write_text("{}")
    with pytest.raises(UserError):
        train_world_models_quietly(tmp_path, models=("sd-detail",), scale=0.001)


def test_clip_and_clip_refine_in_one_run_are_refused(tmp_path, monkeypatch):
    """world/train.py:176 refuses sd with sd-detail (sd already runs the detail phase) but not
    clip with clip-refine, although clip already ends with CONTINUED_REFINEMENT: the run trains
    a CLIP, then refines the just-saved one a second time, a model no documented run makes
    (and without an existing world-clip it is refused with the wrong advice, "train one with
    clip instead"). Correct: refuse the pair like sd,sd-detail, before rendering."""
    import synthgen.world.train as world_train

    clip = tmp_path / "world-clip"
    clip.mkdir()
    (clip / "config.json").write_text("{}")

    def rendered(*args, **kwargs):
        raise AssertionError("rendered the training pool: the pair was not refused")

    monkeypatch.setattr(world_train, "train_pool", rendered)
    with pytest.raises(UserError, match="clip"):
        train_world_models_quietly(tmp_path, models=("clip", "clip-refine"), scale=0.001)


# --- synthgen world edits -----------------------------------------------------------------


def test_debias_gate_does_not_pass_when_kl_stays_infinite():
    """world/edits.py:192: `after <= before / 2` holds for inf <= inf / 2, so when the oracle
    reads colours outside the wanted ones both before and after the edit (KL = inf each time,
    `kl_to_wanted`), the "KL halved" gate prints PASS although nothing improved. Correct: an
    infinite KL after the edit fails the gate."""
    from synthgen.world.edits import debias_gates

    result = {"debias": {"before": {"star": {"kl_to_wanted": math.inf, "shape_accuracy": 0.5}},
                         "after": {"star": {"kl_to_wanted": math.inf, "shape_accuracy": 0.5}}}}
    assert debias_gates(result)["star: KL halved"] is False


def test_edits_out_in_a_missing_folder_is_not_a_traceback_after_the_measurement(tmp_path, monkeypatch):
    """world/commands.py:114: `--out results/edits.json` whose folder does not exist is only
    written after the whole measurement (minutes), and `write_text` raises FileNotFoundError
    (ENOENT is not among the CLI's machine errors): traceback, figures lost. Correct: check
    --out before measuring (exit 2, message naming --out) or create its folder."""
    import synthgen.world.edits as edits

    calls = []

    def measured(*args, **kwargs):
        calls.append(1)
        return {"debias": {"before": {"star": {"kl_to_wanted": 1.0, "shape_accuracy": 0.5}},
                           "after": {"star": {"kl_to_wanted": 0.4, "shape_accuracy": 0.5}}}}

    monkeypatch.setattr(edits, "measure_edits", measured)
    out = tmp_path / "missing" / "edits.json"
    result = _invoke(["world", "edits", "--out", str(out), "--device", "cpu"])
    assert result.exception is None or isinstance(result.exception, SystemExit), (
        f"uncaught {type(result.exception).__name__}: {result.exception}")
    if result.exit_code == 0:
        assert json.loads(out.read_text())["gates"]
    else:
        assert_refused(result, "--out")
        assert not calls, "measured before refusing --out"


# --- synthgen probe -----------------------------------------------------------------------


@pytest.mark.parametrize("where", ["missing-folder", "directory"])
def test_probe_json_that_cannot_be_written_is_not_a_traceback(real_data, tmp_path, where):
    """train/commands.py:128: `--json` is written after the probes; a path in a missing folder
    (FileNotFoundError) or an existing directory (IsADirectoryError) escapes as a traceback,
    exit 1, results lost. Correct: check --json up front (exit 2, message naming --json), or
    create its folder."""
    target = tmp_path / "missing" / "probe.json" if where == "missing-folder" else tmp_path
    result = _invoke(["probe", "--train", str(real_data / "train"), "--test", str(real_data / "test"),
                      "--device", "cpu", "--json", str(target)])
    assert result.exception is None or isinstance(result.exception, SystemExit), (
        f"uncaught {type(result.exception).__name__}: {result.exception}")
    if result.exit_code == 0:
        assert "random-init" in json.loads(target.read_text())
    else:
        assert_refused(result, "--json")


def test_probe_resolution_zero_is_refused(real_data):
    """train/commands.py:112/120: `resolution or 32` turns `--resolution 0` into 32 silently (exit
    0), while `--resolution -4` is refused ("not a positive integer"). Correct: 0 is refused
    the same way (exit 2, message naming resolution)."""
    result = _invoke(["probe", "--train", str(real_data / "train"), "--test", str(real_data / "test"),
                      "--device", "cpu", "--resolution", "0"])
    assert_refused(result, "resolution")


def test_probe_refuses_shards_and_an_image_folder_that_number_classes_differently(real_data, tmp_path):
    """train/probe.py:98-103: with --train shards and --test an ImageFolder tree, train labels are
    the shards' `cls` (the world's SHAPES order: circle=0, square=1, ...) and test labels the
    tree's sorted folder names (arrow=0, circle=1, ...): the same images get different class
    numbers and the probe reports a meaningless top-1 with exit 0. Correct: refuse mixing the
    two layouts (or number both alike) with one message naming --train/--test."""
    from PIL import Image

    from synthgen.data import load_labelled
    from synthgen.world.scene import SHAPES

    images, labels = load_labelled(real_data / "test", 32)
    for i, (image, label) in enumerate(zip(images, labels)):
        folder = tmp_path / "tree" / SHAPES[int(label)]
        folder.mkdir(parents=True, exist_ok=True)
        pixels = (image.permute(1, 2, 0).numpy() * 255).round().astype("uint8")
        Image.fromarray(pixels).save(folder / f"{i:03d}.png")
    result = _invoke(["probe", "--train", str(real_data / "train"), "--test", str(tmp_path / "tree"),
                      "--device", "cpu"])
    assert_refused(result, "test")


# --- synthgen experiment ------------------------------------------------------------------


def test_experiment_work_that_is_a_file_is_a_user_error(tmp_path):
    """train/experiment.py:266 `work.mkdir(...)` on `--work FILE` raises FileExistsError (EEXIST is
    not among the CLI's machine errors): traceback, exit 1. Correct: click's
    `file_okay=False` on --work (or a UserError naming --work), exit 2."""
    work = tmp_path / "afile"
    work.write_text("x")
    result = _invoke(["experiment", "--budget", "smoke", "--work", str(work), "--device", "cpu",
                      "--conditions", "random-init"])
    assert_refused(result, "work")


@pytest.mark.parametrize("option, value", [("--conditions", ""), ("--seeds", ""), ("--seeds", "0,0")])
def test_experiment_conditions_or_seeds_naming_nothing_or_repeats_are_refused(tmp_path, monkeypatch,
                                                                              option, value):
    """train/commands.py:152-161: `--conditions ""` is falsy, so `only=None` runs EVERY condition
    (an hour on the cpu budget) instead of refusing; `--seeds ""` silently runs the budget's seeds; `--seeds 0,0` runs seed 0
    twice and reports it as 2 runs with std 0. Correct: exit 2 with a message naming the
    option, before anything runs."""
    import synthgen.train.experiment as experiment

    calls = []
    monkeypatch.setattr(experiment, "run_experiment",
                        lambda budget, work, device, log, only: calls.append((budget.seeds, only)))
    result = _invoke(["experiment", "--budget", "smoke", "--work", str(tmp_path / "w"), option, value])
    assert not calls, f"ran with seeds, conditions = {calls[0]}"
    assert_refused(result, option)


def test_experiment_with_another_model_does_not_reuse_runs_trained_on_the_old_models_data(
        tmp_path, monkeypatch, experiment_without_training):
    """train/experiment.py:288: a run's folder is keyed by the TrainOptions hash, which holds the
    dataset PATH, not the generator. `--model DIR` (docs/EXPERIMENTS.md: "another generator")
    regenerates work/data/<name> with the new model, but every synthetic run whose probe.json
    exists is reused: results.json reports the old model's accuracies under the new model id.
    Correct: key the run (or its probe.json) by the dataset's recipe hash / model id too."""
    import synthgen.train.experiment as experiment
    from synthgen.train.experiment import BUDGETS, run_experiment

    trained = experiment_without_training

    def fake_prepare(budget, work, device, log, needed=None):
        return {"real": work / "real", "real-test": work / "real-test",
                **{name: work / "data" / name for name in needed}}

    monkeypatch.setattr(experiment, "prepare_data", fake_prepare)
    from dataclasses import replace

    budget = BUDGETS["smoke"]
    run_experiment(budget, tmp_path, "cpu", log=lambda line: None, only=("synthetic-single-simclr",))
    assert len(trained) == 1
    other = replace(budget, model_id=str(tmp_path / "another-world-sd"))
    run_experiment(other, tmp_path, "cpu", log=lambda line: None, only=("synthetic-single-simclr",))
    assert len(trained) == 2, "the run trained on the first model's images was reused for the second model"
