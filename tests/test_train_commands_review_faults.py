"""Review faults in `synthgen train|probe|experiment|dev ...`: user mistakes that
end in a traceback, are refused only after the work, or run silently. Each test fails on the
code as reviewed, for the reason its docstring gives."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from cli_checks import assert_no_traceback, invoke
from synthgen.data.fixtures import write_solid_dataset

pytestmark = pytest.mark.usefixtures("one_thread")


class WorkStarted(Exception):
    """Raised by a stand-in for the first long step: the mistake was not refused before it."""


def _refused(result, *named: str) -> None:
    """Exit 2, no traceback, one message naming each of `named`."""
    assert_no_traceback(result, allowed=(2,))
    for name in named:
        assert name in result.output, result.output


@pytest.fixture(scope="module")
def real_data(tmp_path_factory) -> Path:
    from synthgen.world.dataset import write_real_dataset

    out = tmp_path_factory.mktemp("real")
    write_real_dataset(out, train=24, test=12, resolution=32)
    return out


@pytest.fixture
def solid(tmp_path) -> Path:
    directory = tmp_path / "solid"
    write_solid_dataset(directory, shards=3, groups_per_shard=4, views=2, size=8)
    return directory


@pytest.fixture(autouse=True)
def _keep_torch_threads():
    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)


# --- synthgen probe ----------------------------------------------------------------------


@pytest.mark.parametrize("decay", ["-1", "nan", "inf"])
def test_probe_weight_decay_that_is_negative_or_not_finite_is_one_line(real_data, decay):
    """train/commands.py: --weight-decay is any float and reaches L-BFGS after the features are
    extracted: -1 ends in IndexError inside torch's line search, nan/inf in RuntimeError
    ('value cannot be converted to type float without overflow'); exit 1, traceback.
    Correct: refuse it up front naming --weight-decay (exit 2)."""
    result = invoke("probe", "--train", real_data / "train", "--test", real_data / "test",
                    "--device", "cpu", f"--weight-decay={decay}")
    _refused(result, "--weight-decay")


def test_probe_seed_beyond_64_bits_is_one_line(real_data):
    """train/commands.py: --seed is any int; torch.manual_seed(10**23) raises ValueError
    'Overflow when unpacking long long' (traceback, exit 1). `synthgen train` refuses the same
    value with a message. Correct: exit 2 naming --seed."""
    result = invoke("probe", "--train", real_data / "train", "--test", real_data / "test",
                    "--device", "cpu", "--seed", 10 ** 23)
    _refused(result, "seed")


def test_probe_huge_resolution_is_one_line(real_data):
    """train/commands.py: --resolution is IntRange(min=1) without a top; 10**8 ends in PIL's
    MemoryError while resizing (traceback, exit 1). Correct: refuse it naming --resolution."""
    result = invoke("probe", "--train", real_data / "train", "--test", real_data / "test",
                    "--device", "cpu", "--resolution", 10 ** 8)
    _refused(result, "--resolution")


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
    _refused(result, "--json")


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
    _refused(result, "shard-000001.tar")


def test_train_on_a_shard_path_names_the_option_to_pass(solid, tmp_path):
    """trainer/loader: DATA given as one shard file (help: 'a dataset directory', the error for
    a missing path says 'or existing shard paths') is refused with 'pass epoch_groups': the
    Python field's name, not the command's --epoch-groups. Correct: name --epoch-groups."""
    result = invoke("train", solid / "shard-000000.tar", "--out", tmp_path / "run", "--steps", 1,
                    "--batch-size", 2, "--workers", 0, "--device", "cpu")
    _refused(result, "--epoch-groups")


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
    _refused(result, "--seeds")


def test_experiment_empty_model_is_refused_not_the_budgets_model(tmp_path, no_data):
    """train/commands.py `if model_id:`: --model "" (an unset $MODEL) silently runs the budget's
    own generator, the very case --seeds "" and --conditions "" are refused for. Correct:
    exit 2 naming --model."""
    result = invoke("experiment", "--budget", "smoke", "--work", tmp_path / "w", "--device", "cpu",
                    "--model", "", "--conditions", "synthetic-seeds-multipos")
    _refused(result, "--model")


# --- synthgen dev ------------------------------------------------------------------------


def test_dev_tiny_random_seed_beyond_64_bits_is_one_line(tmp_path):
    """dev.py: --seed is any int; torch.manual_seed(10**23) raises ValueError 'Overflow when
    unpacking long long' (traceback, exit 1). Correct: exit 2 naming --seed, no folder left."""
    result = invoke("dev", "tiny-random", tmp_path / "m", "--seed", 10 ** 23)
    _refused(result, "seed")
    assert not (tmp_path / "m").exists()


def test_train_out_inside_the_dataset_is_refused(solid):
    """`--out` the dataset folder (or a folder in it) wrote checkpoints and log among the
    shards. Correct: refused before training, naming --out."""
    for out in (solid, solid / "run"):
        result = invoke("train", solid, "--out", out, "--steps", 1, "--batch-size", 2,
                        "--workers", 0, "--device", "cpu")
        _refused(result, "--out")
    assert not (solid / "checkpoint-last.safetensors").exists()
    assert not (solid / "run").exists()


def test_train_huge_resolution_is_refused_before_training(solid, tmp_path):
    """`--resolution 100000` was still resizing after a minute. Correct: one line, at once."""
    result = invoke("train", solid, "--out", tmp_path / "run", "--steps", 1, "--batch-size", 2,
                    "--workers", 0, "--device", "cpu", "--resolution", 100000)
    _refused(result, "resolution")
