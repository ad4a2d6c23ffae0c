"""Review faults in `synthgen train|probe|experiment|world ...|dev ...`: user mistakes that
end in a traceback, are refused only after the work, or run silently. Each test fails on the
code as reviewed, for the reason its docstring gives."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from cli_checks import assert_no_traceback, assert_refused, invoke
from synthgen.data.fixtures import write_solid_dataset

pytestmark = pytest.mark.usefixtures("one_thread")


class WorkStarted(Exception):
    """Raised by a stand-in for the first long step: the mistake was not refused before it."""


@pytest.fixture
def solid(tmp_path) -> Path:
    directory = tmp_path / "solid"
    write_solid_dataset(directory, shards=3, groups_per_shard=4, views=2, size=8)
    return directory



# --- synthgen probe ----------------------------------------------------------------------


@pytest.mark.parametrize("decay", ["-1", "nan", "inf"])
def test_probe_weight_decay_that_is_negative_or_not_finite_is_one_line(real_data, decay):
    """train/commands.py: --weight-decay is any float and reaches L-BFGS after the features are
    extracted: -1 ends in IndexError inside torch's line search, nan/inf in RuntimeError
    ('value cannot be converted to type float without overflow'); exit 1, traceback.
    Correct: refuse it up front naming --weight-decay (exit 2)."""
    result = invoke("probe", "--train", real_data / "train", "--test", real_data / "test",
                    "--device", "cpu", f"--weight-decay={decay}")
    assert_refused(result, "--weight-decay")


def test_probe_seed_beyond_64_bits_is_one_line(real_data):
    """train/commands.py: --seed is any int; torch.manual_seed(10**23) raises ValueError
    'Overflow when unpacking long long' (traceback, exit 1). `synthgen train` refuses the same
    value with a message. Correct: exit 2 naming --seed."""
    result = invoke("probe", "--train", real_data / "train", "--test", real_data / "test",
                    "--device", "cpu", "--seed", 10 ** 23)
    assert_refused(result, "seed")


def test_probe_huge_resolution_is_one_line(real_data):
    """train/commands.py: --resolution is IntRange(min=1) without a top; 10**8 ends in PIL's
    MemoryError while resizing (traceback, exit 1). Correct: refuse it naming --resolution."""
    result = invoke("probe", "--train", real_data / "train", "--test", real_data / "test",
                    "--device", "cpu", "--resolution", 10 ** 8)
    assert_refused(result, "--resolution")


def test_probe_json_that_is_the_checkpoint_is_refused(solid, tmp_path):
    """train/commands.py: `--json` is checked only for being writable, so `--json
    RUN/checkpoint-last.safetensors` (the --checkpoint file) replaces the trained weights with
    the figures (the next probe or resume: 'not a readable synthgen checkpoint'). synthgen plan
    refuses a --jsonl that is its recipe. Correct: refuse before probing (exit 2), weights kept."""
    run = tmp_path / "run"
    trained = invoke("train", solid, "--out", run, "--steps", 1, "--batch-size", 2, "--workers", 0,
                     "--threads", 1, "--device", "cpu")
    assert trained.exit_code == 0, trained.output
    checkpoint = run / "checkpoint-last.safetensors"
    before = checkpoint.read_bytes()
    result = invoke("probe", "--checkpoint", run, "--train", solid, "--test", solid, "--device", "cpu",
                    "--json", checkpoint)
    assert checkpoint.read_bytes() == before, "the checkpoint was overwritten with the figures"
    assert_refused(result, "--json")


# --- synthgen train / probe on a half-written dataset -------------------------------------


@pytest.mark.parametrize("command", ["train", "probe"])
def test_a_manifest_whose_shards_are_missing_is_refused(solid, tmp_path, command):
    """data/sources.py `_from_directory`: the manifest's shard list is taken as it is, without
    checking the files exist (a path argument IS checked: '1 of 1 shards do not exist'). With 2
    of 3 listed shards deleted, `synthgen train` trains (exit 0, UnreadableShard warnings) on a
    third of the data while counting the epoch from the manifest; `synthgen probe` fits and
    reports top-1 on whatever was left. Correct: refuse, naming the missing shard (exit 2)."""
    (solid / "shard-000001.tar").unlink()
    (solid / "shard-000002.tar").unlink()
    if command == "train":
        result = invoke("train", solid, "--out", tmp_path / "run", "--steps", 1, "--batch-size", 2,
                        "--workers", 0, "--threads", 1, "--device", "cpu")
    else:
        result = invoke("probe", "--train", solid, "--test", solid, "--device", "cpu")
    assert_refused(result, "shard-000001.tar")


def test_train_on_a_shard_path_names_the_option_to_pass(solid, tmp_path):
    """trainer/loader: DATA given as one shard file (help: 'a dataset directory', the error for
    a missing path says 'or existing shard paths') is refused with 'pass epoch_groups': the
    Python field's name, not the command's --epoch-groups. Correct: name --epoch-groups."""
    result = invoke("train", solid / "shard-000000.tar", "--out", tmp_path / "run", "--steps", 1,
                    "--batch-size", 2, "--workers", 0, "--device", "cpu")
    assert_refused(result, "--epoch-groups")


# --- synthgen experiment -----------------------------------------------------------------


@pytest.fixture
def no_data(monkeypatch):
    """`prepare_data` (the real renders, then minutes of generation per dataset on the cpu
    budget) stood in for by an exception."""
    from synthgen.train import experiment

    def started(*args, **kwargs):
        raise WorkStarted("prepare_data ran")

    monkeypatch.setattr(experiment, "prepare_data", started)


@pytest.mark.parametrize("conditions", ["synthetic-seeds-multipos", "random-init"])
def test_experiment_seed_beyond_64_bits_is_refused_before_the_data(tmp_path, no_data, conditions):
    """train/commands.py checks --seeds are distinct integers, not that they fit torch's seed:
    the trainer refuses 2**64 only at its first run, after every dataset was generated (smoke:
    20 s; cpu budget: 4-9 min per dataset), and random-init alone ends in ValueError 'Overflow
    when unpacking long long' (traceback). Correct: exit 2 naming --seeds before any data."""
    result = invoke("experiment", "--budget", "smoke", "--work", tmp_path / "w", "--device", "cpu",
                    "--seeds", 2 ** 64, "--conditions", conditions)
    assert_refused(result, "--seeds")


def test_experiment_empty_model_is_refused_not_the_budgets_model(tmp_path, no_data):
    """train/commands.py `if model_id:`: --model "" (an unset $MODEL) silently runs the budget's
    own generator, the very case --seeds "" and --conditions "" are refused for. Correct:
    exit 2 naming --model."""
    result = invoke("experiment", "--budget", "smoke", "--work", tmp_path / "w", "--device", "cpu",
                    "--model", "", "--conditions", "synthetic-seeds-multipos")
    assert_refused(result, "--model")


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
        assert_refused(result, "scale")


def test_world_evaluate_huge_scale_is_one_line(monkeypatch):
    """world/evaluate.py: --scale 1e9 asks for 10**12 held-out renders; numpy's MemoryError
    (traceback, exit 1) after the models load. Correct: refuse --scale (exit 2)."""
    from synthgen.world import corpus

    def started(*args, **kwargs):
        raise WorkStarted("rendering started")

    monkeypatch.setattr(corpus, "held_out_pool", started)
    result = invoke("world", "evaluate", "--scale", "1e9", "--device", "cpu")
    assert_refused(result, "scale")


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
    assert_refused(result, "--train")


def test_world_dataset_of_nothing_is_refused(tmp_path):
    """world/commands.py: --train 0 --test 0 prints 'wrote 0 train and 0 test samples' and exits
    0 with two empty split folders, which train/probe then refuse later. Correct: exit 2."""
    result = invoke("world", "dataset", "--out", tmp_path / "d", "--train", 0, "--test", 0)
    assert_refused(result, "--train")


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
    assert_refused(result, "--prompts")


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
    assert_refused(result, "--out")


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


# --- synthgen dev ------------------------------------------------------------------------


def test_dev_tiny_random_seed_beyond_64_bits_is_one_line(tmp_path):
    """dev.py: --seed is any int; torch.manual_seed(10**23) raises ValueError 'Overflow when
    unpacking long long' (traceback, exit 1). Correct: exit 2 naming --seed, no folder left."""
    result = invoke("dev", "tiny-random", tmp_path / "m", "--seed", 10 ** 23)
    assert_refused(result, "seed")
    assert not (tmp_path / "m").exists()


def test_train_out_inside_the_dataset_is_refused(solid):
    """`--out` the dataset folder (or a folder in it) wrote checkpoints and log among the
    shards. Correct: refused before training, naming --out."""
    for out in (solid, solid / "run"):
        result = invoke("train", solid, "--out", out, "--steps", 1, "--batch-size", 2,
                        "--workers", 0, "--device", "cpu")
        assert_refused(result, "--out")
    assert not (solid / "checkpoint-last.safetensors").exists()
    assert not (solid / "run").exists()


def test_train_huge_resolution_is_refused_before_training(solid, tmp_path):
    """`--resolution 100000` was still resizing after a minute. Correct: one line, at once."""
    result = invoke("train", solid, "--out", tmp_path / "run", "--steps", 1, "--batch-size", 2,
                    "--workers", 0, "--device", "cpu", "--resolution", 100000)
    assert_refused(result, "resolution")
