"""Review of 391ca0d ("trainer faults") and 022a96a ("fixes from a README walkthrough and a
scale review"): what the fixes broke or missed. Every test here fails on the code it was
written against, for the reason its docstring gives, and says what the right behaviour is.

Tiny solid-colour datasets, tiny encoders, a step or two on the CPU; no GPU, no network.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
from cli_checks import assert_no_traceback, invoke

from synthgen.errors import UserError

sys.path.insert(0, str(Path(__file__).parent / "train"))

TINY_CLI = ("--batch-size", "4", "--steps", "2", "--resolution", "8", "--width", "4",
            "--blocks", "1", "--workers", "0")


def tiny_options(data: Path, **overrides):
    from synthgen.train.encoders import EncoderSpec
    from synthgen.train.trainer import TrainOptions

    settings = {"data": str(data), "method": "multipos", "views": 2, "batch_size": 4,
                "steps": 3, "resolution": 8, "num_workers": 0, "checkpoint_every": 1,
                "log_every": 1,
                "encoder": EncoderSpec(arch="resnet", width=4, blocks=(1,), resolution=8,
                                       projection_dim=8)}
    return TrainOptions(**{**settings, **overrides})


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    from synthgen.data.fixtures import write_solid_dataset

    directory = tmp_path_factory.mktemp("review4-data")
    write_solid_dataset(directory, shards=2, groups_per_shard=4, views=2, size=8)
    return directory


# --- devices.py ----------------------------------------------------------------------------------


def test_a_device_type_whose_torch_module_is_missing_is_a_user_error():
    """devices.py probes a non-cuda device with torch.empty and turns RuntimeError and
    AssertionError into the one-line error; for `--device hpu` torch.empty raises
    ModuleNotFoundError ("No module named 'torch.hpu'"), so `synthgen train --device hpu`
    ends in that traceback (exit 1). Correct: any Exception from the probe is the same
    "this torch cannot use it" UserError."""
    from synthgen.devices import choose_device

    with pytest.raises(UserError, match="--device hpu"):
        choose_device("hpu")


def test_the_meta_device_is_refused_not_a_traceback(data, tmp_path):
    """torch.empty(0, device="meta") succeeds (meta tensors hold no data), so choose_device
    accepts `--device meta`, and `synthgen train --device meta` then fails in torch.autocast
    ("unsupported autocast device_type 'meta'"), a traceback with exit status 1. Correct:
    refuse meta (no data, nothing can be trained or generated on it) in choose_device."""
    result = invoke("train", data, "--out", tmp_path / "run", "--device", "meta", *TINY_CLI)
    assert_no_traceback(result, allowed=(2,))
    assert "--device meta" in result.output


# --- trainer.py: log.jsonl -----------------------------------------------------------------------


def test_a_log_jsonl_that_is_not_this_trainers_is_not_emptied(data, tmp_path):
    """trainer.py _keep_log_until runs on every start, with or without a checkpoint, and
    rewrites log.jsonl keeping only lines that parse as {"step": int <= the checkpoint's}: with
    no checkpoint that is step 0, so a log.jsonl already in --out (another tool's, or the
    user's notes) loses every line. Before the fix the trainer appended to it. Correct: trim
    only when resuming from a checkpoint, and drop only this trainer's entries past its step
    (and an unparsable last line), keeping lines it did not write."""
    from synthgen.train.trainer import train

    out = tmp_path / "run"
    out.mkdir()
    mine = '{"event": "cluster notes", "owner": "me"}\n'
    (out / "log.jsonl").write_text(mine)
    train(tiny_options(data), out, device="cpu", quiet=True)
    assert (out / "log.jsonl").read_text().startswith(mine)


# --- trainer.py: the data compared by fingerprint --------------------------------------------------


def test_a_checkpoint_does_not_resume_on_another_folder_of_foreign_shards(tmp_path):
    """trainer.py now leaves the data path out of the config comparison whenever the
    checkpoint recorded a data fingerprint. For shards without a manifest or stats files
    (another tool's WebDataset folder, trained with epoch_groups) the fingerprint is only the
    shard names (shard_samples and sha256 are None) and batches_per_epoch, so a run trained on
    folder A resumes silently on folder B whose tars have the same names but other images
    (before the fix the differing path refused it). Correct: where the fingerprint holds no
    sha256, compare the resolved path too (os.path.realpath), or refuse the resume."""
    from synthgen.data.fixtures import write_solid_dataset
    from synthgen.train.trainer import train

    for name, classes in (("a", 4), ("b", 2)):
        write_solid_dataset(tmp_path / name, shards=2, groups_per_shard=4, views=2, size=8,
                            classes=classes, manifest=False)
        for stats in (tmp_path / name).glob("*.stats.json"):
            stats.unlink()
    train(tiny_options(tmp_path / "a", epoch_groups=8), tmp_path / "run", device="cpu",
          stop_after=1, quiet=True)
    with pytest.raises(UserError, match="checkpoint"):
        train(tiny_options(tmp_path / "b", epoch_groups=8), tmp_path / "run", device="cpu",
              quiet=True)


# --- checkpoint.py: the digest covers the tensors only ------------------------------------------


def test_a_flipped_bit_in_a_checkpoints_record_is_not_resumed_silently(data, tmp_path):
    """checkpoint.py's sha256 covers the tensors, not the JSON record beside them in the
    safetensors header, which safetensors only parses: a one-bit flip of the step ("1" is
    0x31, "3" is 0x33) leaves a valid file, and train() resumes a model trained 1 step as if
    it had trained 3 (here: reports the run finished). Correct: digest the record too (its
    canonical JSON without the digest field), and check it on read."""
    from synthgen.train.checkpoint import LAST
    from synthgen.train.trainer import train

    out = tmp_path / "run"
    train(tiny_options(data), out, device="cpu", stop_after=1, quiet=True)
    raw = (out / LAST).read_bytes()
    needle = b'\\"step\\": 1,'
    assert raw.count(needle) == 1
    (out / LAST).write_bytes(raw.replace(needle, b'\\"step\\": 3,'))
    with pytest.raises(UserError, match="checkpoint"):
        train(tiny_options(data), out, device="cpu", quiet=True)


# --- store.py: check_reachable names --out for finalize ---------------------------------------


def test_finalize_of_a_missing_bucket_names_its_argument_not_out(monkeypatch):
    """022a96a made finalize name DATASET_DIR in a location error ("finalize has no --out
    option"), and added store.check_reachable for finalize, but FsspecStore._check still says
    "--out s3://...: bucket ... does not exist" (and "--out ...: cannot be reached"), so
    `synthgen finalize s3://no-such-bucket/x` names an option finalize does not have.
    Correct: the store's messages name the location as the command takes it (pass the option
    name in, or leave it out of the store's message)."""
    from synthgen import store

    class NoBuckets:
        def exists(self, path):
            return False

    monkeypatch.setattr(store, "_filesystem", lambda url: (NoBuckets(), url.split("://", 1)[1]))
    result = invoke("finalize", "s3://synthgen-review-no-such-bucket/datasets/in100")
    assert_no_traceback(result, allowed=(2,))
    assert "no-such-bucket" in result.output
    assert "--out" not in result.output


# --- experiment.py: run folders named before run_folder -------------------------------------------


def test_experiment_reuses_runs_finished_before_run_folder_renamed_them(tmp_path, monkeypatch,
                                                                        experiment_without_training):
    """experiment.py run_folder now hashes the data path relative to --work; every run folder
    an earlier synthgen wrote was named by the hash of config.to_json() with the data path as
    built from --work, so after the upgrade no finished run is found and the whole experiment
    (an hour and more on the cpu budget) is trained again, the old folders left behind.
    Correct: when the new folder has no probe.json, look for the old name (and move or reuse
    it)."""
    from synthgen.data import stable_seed
    from synthgen.train import experiment

    budget = experiment.BUDGETS["smoke"]
    work = tmp_path / "work"
    real = work / "data" / "real"
    trained = experiment_without_training
    monkeypatch.setattr(experiment, "prepare_data", lambda budget, work, device, log, needed=None:
                        {"real": real / "train", "real-test": real / "test"})
    condition = next(c for c in experiment.conditions(budget) if c.name == "real-simclr")
    for seed in budget.seeds:  # what 2fcca38's run_experiment named and left finished
        config = experiment.train_config(budget, condition, real / "train", seed)
        old_hash = stable_seed(json.dumps(config.to_json(), sort_keys=True)) % 16 ** 8
        old = work / "runs" / f"{condition.name}-seed{seed}-{old_hash:08x}"
        old.mkdir(parents=True)
        (old / "probe.json").write_text(json.dumps({"test_top1": 0.5, "train_seconds": 1.0}))
    experiment.run_experiment(budget, work, device="cpu", log=lambda line: None,
                              only=("real-simclr",))
    assert trained == [], f"trained again: {trained}"


# --- shards.py / write.py: 6 digits or more --------------------------------------------------------


def test_overwrite_keeps_a_shard_name_synthgen_never_writes(tmp_path):
    """SHARD_FILE and write.py's _OWNED_FILE became shard-\\d{6,}: besides shard-1000000.tar
    they now match shard-0000001.tar, a name synthgen never writes (shard_name pads to 6
    digits, longer only past 999,999), so `generate --overwrite` deletes such a file of the
    user's from a dataset folder (2fcca38 kept it), and shard_order/read_manifest take it for
    shard 1. Correct: shard-(\\d{6}|[1-9]\\d{6,}) (six digits, or more without a leading 0)."""
    from small_recipe import parse_small

    from synthgen.plan import make_plan
    from synthgen.write import prepare_output_dir

    plan = make_plan(parse_small({}))
    prepare_output_dir(tmp_path, plan, overwrite=False)
    (tmp_path / "shard-0000001.tar").write_bytes(b"the user's own")
    prepare_output_dir(tmp_path, plan, overwrite=True)
    assert (tmp_path / "shard-0000001.tar").exists()
