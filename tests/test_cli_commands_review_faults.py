"""Review faults in `synthgen world ...`: user mistakes that end in a traceback, are refused
only after the work, or run silently. Each test fails on the
code as reviewed, for the reason its docstring gives."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from cli_checks import assert_no_traceback, invoke

pytestmark = pytest.mark.usefixtures("one_thread")


class WorkStarted(Exception):
    """Raised by a stand-in for the first long step: the mistake was not refused before it."""


def _refused(result, *named: str) -> None:
    """Exit 2, no traceback, one message naming each of `named`."""
    assert_no_traceback(result, allowed=(2,))
    for name in named:
        assert name in result.output, result.output


@pytest.fixture(autouse=True)
def _keep_torch_threads():
    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)


# --- synthgen world train / evaluate / dataset -------------------------------------------


def test_world_train_whose_training_scenes_reach_the_held_out_ones_is_refused(tmp_path, monkeypatch):
    """world/train.py: run seed s trains on scene seeds s*10**7 onward and evaluation uses
    10**9 onward; `--seed 99 --scale 200` renders 12,000,000 scenes, seeds 990,000,000 to
    1,001,999,999, so 2 million held-out scenes are trained on (and minutes of rendering
    start); --scale 1e9 ends in numpy's MemoryError traceback. Correct: refuse --scale before
    rendering (exit 2)."""
    from synthgen.world import train as world_train

    def started(*args, **kwargs):
        raise WorkStarted("rendering started")

    monkeypatch.setattr(world_train, "train_pool", started)
    for seed, scale in (("99", "200"), ("0", "1e9")):
        result = invoke("world", "train", "--out", tmp_path / "models", "--seed", seed, "--scale",
                        scale, "--models", "oracle", "--no-evaluate", "--device", "cpu")
        _refused(result, "scale")


def test_world_evaluate_huge_scale_is_one_line(monkeypatch):
    """world/evaluate.py: --scale 1e9 asks for 10**12 held-out renders; numpy's MemoryError
    (traceback, exit 1) after the models load. Correct: refuse --scale (exit 2)."""
    from synthgen.world import corpus

    def started(*args, **kwargs):
        raise WorkStarted("rendering started")

    monkeypatch.setattr(corpus, "held_out_pool", started)
    result = invoke("world", "evaluate", "--scale", "1e9", "--device", "cpu")
    _refused(result, "scale")


def test_world_dataset_train_split_reaching_the_held_out_seeds_is_refused(tmp_path, monkeypatch):
    """world/dataset.py: train scene i of run seed s has seed s*10**7 + i and the test split
    starts at 10**9, so `--seed 99 --train 10000001` writes the test split's first scene into
    the train split (the module promises 'the two splits never share a scene'); nothing checks
    --train, and rendering starts (10 million scenes). Correct: exit 2 naming --train."""
    from synthgen.world import dataset

    def started(*args, **kwargs):
        raise WorkStarted("rendering started")

    monkeypatch.setattr(dataset, "real_sample", started)
    result = invoke("world", "dataset", "--out", tmp_path / "d", "--seed", 99, "--train", 10_000_001,
                    "--test", 1)
    _refused(result, "--train")


def test_world_dataset_of_nothing_is_refused(tmp_path):
    """world/commands.py: --train 0 --test 0 prints 'wrote 0 train and 0 test samples' and exits
    0 with two empty split folders, which train/probe then refuse later. Correct: exit 2."""
    result = invoke("world", "dataset", "--out", tmp_path / "d", "--train", 0, "--test", 0)
    _refused(result, "--train")


def test_an_interrupted_world_dataset_rerun_leaves_no_mixed_dataset(tmp_path, monkeypatch):
    """world/dataset.py: a rerun replaces the train split's shards, then the test split's, each
    split's stale shards removed only when its turn comes. Ctrl-C after the train split's first
    shard leaves that new shard (64 px, with its stats file: a finished shard to the loader)
    beside the earlier run's whole test split (32 px): a finished-looking dataset whose splits
    disagree. Correct: nothing of the old run stays beside the new one (both splits' stale
    shards removed before rendering, or the dataset written whole)."""
    from synthgen.world import dataset

    monkeypatch.setattr(dataset, "SAMPLES_PER_SHARD", 2)
    out = tmp_path / "d"
    assert invoke("world", "dataset", "--out", out, "--train", 4, "--test", 2).exit_code == 0
    real_sample = dataset.real_sample

    def interrupted_in_the_second_train_shard(split, index, *args, **kwargs):
        if split == "train" and index >= 2:
            raise KeyboardInterrupt
        return real_sample(split, index, *args, **kwargs)

    monkeypatch.setattr(dataset, "real_sample", interrupted_in_the_second_train_shard)
    result = invoke("world", "dataset", "--out", out, "--train", 4, "--test", 2,
                    "--resolution", 64)
    assert result.exit_code == 130, result.output
    train, test = sorted((out / "train").glob("shard-*.tar")), sorted((out / "test").glob("shard-*.tar"))
    assert not (train and test), (f"new train shards {[p.name for p in train]} stand beside the "
                                  f"old run's test shards {[p.name for p in test]}")


# --- synthgen world edits ----------------------------------------------------------------


@pytest.fixture
def no_model(monkeypatch):
    """Loading world-sd (the first step of the measurement) stood in for by an exception."""
    from synthgen.generate import load

    def started(*args, **kwargs):
        raise WorkStarted("the model was loaded")

    monkeypatch.setattr(load, "load_pipeline", started)


def test_world_edits_huge_prompt_count_is_refused_before_the_model_loads(no_model):
    """world/commands.py: --prompts is IntRange(min=10) without a top; 10**9 builds 4*10**9
    prompt dicts and then draws 2*10**9 images per stage (the CLI ran on past a minute with
    nothing printed). Above 100,000 the erase images' seeds also run into the debias ones
    (EDITS_SEED_OFFSET + 100,000 + i). Correct: refuse (exit 2) naming --prompts."""
    result = invoke("world", "edits", "--prompts", 10 ** 9, "--device", "cpu")
    _refused(result, "--prompts")


def test_world_edits_out_that_is_the_recipe_is_refused_before_measuring(tmp_path, monkeypatch):
    """world/commands.py: `--out` equal to `--recipe` is written over with the figures after
    the measurement, the recipe lost (synthgen plan refuses --jsonl that is the recipe).
    Correct: refuse before measuring (exit 2), the recipe kept."""
    import synthgen.world.edits as edits

    recipe = tmp_path / "edits.yaml"
    shutil.copy(Path(__file__).resolve().parents[1] / "recipes" / "attribute-editing.yaml", recipe)
    before = recipe.read_bytes()
    monkeypatch.setattr(edits, "measure_edits", lambda *a, **k: {
        "debias": {"before": {"star": {"kl_to_wanted": 1.0, "shape_accuracy": 0.5}},
                   "after": {"star": {"kl_to_wanted": 0.4, "shape_accuracy": 0.5}}}})
    result = invoke("world", "edits", "--recipe", recipe, "--out", recipe, "--device", "cpu")
    assert recipe.read_bytes() == before, "the recipe was overwritten with the figures"
    _refused(result, "--out")


SIZE_DEBIAS = """\
name: size-debias
seed: 2027
model: {id: builtin:world-sd, steps: 1, guidance_scale: 4.0, width: 32, height: 32}
templates: ["a {size} {colour} {class} on a {background} background"]
slots:
  size: [small, medium, large]
  colour: [red, green, blue]
  background: [gray, beige]
classes:
  - {name: circle, groups: 2}
  - name: star
    groups: 2
    templates: ["a {colour} star on a {background} background"]
balance:
  - {attribute: size, values: {small: 1, large: 1}, applies_to: [star], method: debias,
     trials: 2, iterations: 1, prompts: 2}
"""


def test_world_edits_debias_of_size_is_not_judged_by_colour(tmp_path):
    """world/edits.py measure_edits: the debias figures count `r["colour"]` whatever the
    entry's attribute; a debias of size (values small, large) gets colour counts, KL inf
    before and after, and 'FAIL star: KL halved' (exit 0), a verdict on nothing it edited.
    Correct: judge the entry's attribute (the oracle reads size too), or refuse one it cannot
    judge before the model loads (exit 2, naming the attribute)."""
    recipe = tmp_path / "size.yaml"
    recipe.write_text(SIZE_DEBIAS)
    out = tmp_path / "edits.json"
    result = invoke("world", "edits", "--recipe", recipe, "--prompts", 10, "--device", "cpu",
                    "--out", out)
    assert_no_traceback(result)
    if result.exit_code == 2:
        assert "size" in result.output, result.output
        return
    measured = json.loads(out.read_text())["debias"]
    for stage in ("before", "after"):
        counted = [value for value in measured[stage]["star"].values()
                   if isinstance(value, dict) and value
                   and all(isinstance(n, int) for n in value.values())]
        assert counted and all(set(c) <= {"small", "medium", "large"} for c in counted), (
            f"{stage}: {measured[stage]['star']}")


def test_world_train_needs_an_out_folder(monkeypatch):
    """`world train` without --out trained into the package's own models folder, replacing the
    shipped models one by one (a smoke run or one stopped midway left them mixed). Correct:
    --out is required, and nothing is trained without it."""
    import synthgen.world.train

    def started(*args, **kwargs):
        raise WorkStarted("train_world_models ran")

    monkeypatch.setattr(synthgen.world.train, "train_world_models", started)
    result = invoke("world", "train", "--scale", "0.02")
    assert_no_traceback(result, allowed=(2,))
    assert "--out" in result.output
