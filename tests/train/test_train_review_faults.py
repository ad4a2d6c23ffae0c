"""Fault review of `synthgen train`, `synthgen probe` and `synthgen experiment` (kills, full
disks, damaged checkpoints, resumes with other options, hostile options). Every test here
fails on the code it was written against, for the reason its docstring gives, and says what
the right behaviour is.

Tiny solid-colour datasets (synthgen.data.fixtures), tiny encoders, a few steps on the CPU.
"""

from __future__ import annotations

import json
import struct
from pathlib import Path

import pytest
import torch
from cli_checks import assert_no_traceback, invoke
from safetensors import safe_open
from safetensors.torch import save_file

from synthgen.data.fixtures import write_solid_dataset
from synthgen.errors import UserError
from synthgen.train.checkpoint import LAST
from synthgen.train.encoders import EncoderSpec
from synthgen.train.trainer import TrainOptions, train

TINY = EncoderSpec(arch="resnet", width=4, blocks=(1,), resolution=8, projection_dim=8)
TINY_VIT = EncoderSpec(arch="vit", width=8, resolution=8, patch=4, depth=1, heads=2,
                       projection_dim=8)
# What `synthgen train` needs for a tiny run; the tests add --out and what they vary.
TINY_CLI = ("--batch-size", "4", "--steps", "2", "--resolution", "8", "--width", "4",
            "--blocks", "1", "--device", "cpu", "--workers", "0")


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    directory = tmp_path_factory.mktemp("faults-data")
    write_solid_dataset(directory, shards=2, groups_per_shard=4, views=2, size=8)
    return directory


def options(data: Path, **overrides) -> TrainOptions:
    settings = {"data": str(data), "method": "multipos", "views": 2, "batch_size": 4,
                "steps": 3, "resolution": 8, "encoder": TINY, "num_workers": 0,
                "checkpoint_every": 1, "log_every": 1}
    return TrainOptions(**{**settings, **overrides})


def rewrite_checkpoint(path: Path, record=None, tensors=None) -> None:
    """Rewrite a checkpoint with its record and tensors changed by the given functions."""
    with safe_open(str(path), framework="pt") as handle:
        record_now = json.loads(handle.metadata()["synthgen"])
        tensors_now = {key: handle.get_tensor(key) for key in handle.keys()}  # noqa: SIM118
    if record:
        record(record_now)
    if tensors:
        tensors(tensors_now)
    save_file(tensors_now, str(path), metadata={"synthgen": json.dumps(record_now)})


def one_line_error(result, *patterns: str) -> None:
    """A user mistake: exit status 2, one `error:` line naming what is wrong, no traceback."""
    assert_no_traceback(result, allowed=(2,))
    line = result.output.strip().splitlines()[-1]
    assert line.startswith("error:"), result.output
    for pattern in patterns:
        assert pattern in line, result.output


# --- saving --------------------------------------------------------------------------------------


def test_a_full_disk_while_saving_a_checkpoint_is_one_line_not_a_traceback(data, tmp_path,
                                                                            monkeypatch):
    """checkpoint.py save_checkpoint writes with safetensors' save_file, which reports a full
    disk as `SafetensorError("Error while serializing: I/O error: No space left on device (os
    error 28)")`, not as an OSError (reproduced on a 64 KiB tmpfs: `synthgen train ... --out
    /full-disk/run` ends in that traceback). The CLI turns only OSError ENOSPC into its
    "free some space" line, so a full disk is a traceback with exit status 1. Correct: the
    same one line as every other full disk (e.g. write the serialised bytes with
    synthgen.store.write_atomically, or re-raise as OSError(ENOSPC)), exit status 2, and no
    checkpoint or temporary left."""
    import errno

    from synthgen import store

    out = tmp_path / "run"
    calls = []

    def full_disk(path, data):
        calls.append(path)
        raise OSError(errno.ENOSPC, "No space left on device", str(path))

    # Where checkpoints are written now: the store's whole-file writer (the old code wrote
    # through safetensors' save_file, whose error for a full disk was not an OSError).
    monkeypatch.setattr(store, "_write_temporary", full_disk)
    result = invoke("train", data, "--out", out, *TINY_CLI, "--checkpoint-every", "1")
    assert calls, "the checkpoint was not written through synthgen.store"
    one_line_error(result, "No space left on device")
    assert not (out / LAST).exists()
    assert [path.name for path in out.iterdir() if path.name.endswith(".tmp")] == []


def test_a_run_killed_after_logging_and_resumed_logs_every_step_once(data, tmp_path, monkeypatch):
    """trainer.py train appends to log.jsonl every `log_every` steps but checkpoints every
    `checkpoint_every`; a run killed between the two (here: at the step-4 checkpoint of a
    run checkpointing every 2 steps) resumes from step 2 and appends steps 3 and 4 again, so
    log.jsonl reads 1, 2, 3, 4, 3, 4, 5, 6: two losses for one step, which a plot of the log
    draws as a jump back. Correct: on resume, drop the log entries after the checkpoint's
    step (and a line cut short by the kill) before appending, so the log equals an
    uninterrupted run's."""
    from synthgen.train import trainer

    config = options(data, steps=6, checkpoint_every=2)
    whole = tmp_path / "whole"
    train(config, whole, device="cpu", quiet=True)
    out = tmp_path / "killed"
    real_save = trainer.save_checkpoint
    saves = []

    def killed_at_the_second_checkpoint(*args, **kwargs):
        saves.append(1)
        if len(saves) == 2:
            raise KeyboardInterrupt  # kill -9 at this point leaves the same files
        real_save(*args, **kwargs)

    monkeypatch.setattr(trainer, "save_checkpoint", killed_at_the_second_checkpoint)
    with pytest.raises(KeyboardInterrupt):
        train(config, out, device="cpu", quiet=True)
    monkeypatch.setattr(trainer, "save_checkpoint", real_save)
    train(config, out, device="cpu", quiet=True)

    def steps(run):
        return [json.loads(line)["step"] for line in (run / "log.jsonl").read_text().splitlines()]

    assert steps(whole) == [1, 2, 3, 4, 5, 6]
    assert steps(out) == steps(whole)


def test_a_checkpoint_is_readable_by_whoever_can_read_the_log(data, tmp_path):
    """safetensors (0.8 here) writes through a NamedTempFile, created with mode 0600, and
    renames it into place, so checkpoint-last.safetensors is owner-only while log.jsonl
    beside it follows the umask (0644): a colleague (or a probe job under another user) that
    can read the run's folder cannot probe its checkpoint. store.temporary_path avoids mkstemp
    for this very reason. Correct: the checkpoint gets the umask's mode, like every other file
    synthgen writes (serialise with safetensors.torch.save and write the bytes whole)."""
    out = tmp_path / "run"
    train(options(data, steps=1), out, device="cpu", quiet=True)
    mode = (out / LAST).stat().st_mode & 0o777
    assert mode == (out / "log.jsonl").stat().st_mode & 0o777, oct(mode)


# --- damaged checkpoints -------------------------------------------------------------------------


DAMAGED_RECORDS = {
    # A flipped byte in a key of the record: `read_record(...)["config"]` raises KeyError.
    "config key damaged": {"record": lambda r: r.__setitem__("conf1g", r.pop("config"))},
    # A step that is no number: `step < last_stop` raises TypeError.
    "step not a number": {"record": lambda r: r.__setitem__("step", "2")},
    # Optimiser record gone: restore raises KeyError 'optimizer'.
    "optimizer record missing": {"record": lambda r: r.pop("optimizer")},
    # A tensor missing: load_state_dict raises RuntimeError.
    "model tensor missing": {"tensors": lambda t: t.pop("model.head.mlp.0.weight")},
    # The RNG state missing: restore raises KeyError 'rng.torch'.
    "rng state missing": {"tensors": lambda t: t.pop("rng.torch")},
}


@pytest.mark.parametrize("damage", sorted(DAMAGED_RECORDS))
def test_resuming_from_a_checkpoint_with_a_damaged_record_is_a_user_error(data, tmp_path, damage):
    """checkpoint.py read_checkpoint turns only a file safetensors cannot open (or without a
    JSON object as its record) into a UserError; a record that parses but lacks what
    trainer.train and checkpoint.restore index (config, step, optimizer, every model tensor,
    rng.torch) ends in KeyError / TypeError / RuntimeError tracebacks. Correct: check the
    record's shape (and the tensor keys against the model) when reading, and raise the same
    UserError naming the file as for a checkpoint cut short."""
    config = options(data)
    out = tmp_path / "run"
    train(config, out, device="cpu", quiet=True, stop_after=1)
    rewrite_checkpoint(out / LAST, **DAMAGED_RECORDS[damage])
    with pytest.raises(UserError, match=LAST):
        train(config, out, device="cpu", quiet=True)


def test_a_flipped_bit_in_a_checkpoints_tensors_is_not_resumed_silently(data, tmp_path):
    """A checkpoint records no digest of its tensors, and safetensors checks only the header,
    so one flipped bit in a weight's bytes (a bad disk, a broken copy) loads as a different
    weight: here the exponent bit of one head weight turns it into ~1e38, the resumed run
    trains on, ends with "final loss nan" and exit status 0, and the probe reads the damaged
    encoder the same way. Datasets record a sha256 per shard for exactly this. Correct:
    record a digest of the tensor bytes in the checkpoint's metadata when saving, check it
    when reading, and refuse a checkpoint that differs (a UserError naming the file)."""
    config = options(data)
    out = tmp_path / "run"
    train(config, out, device="cpu", quiet=True, stop_after=1)
    raw = bytearray((out / LAST).read_bytes())
    header_length = struct.unpack("<Q", raw[:8])[0]
    header = json.loads(raw[8:8 + header_length])
    start = 8 + header_length + header["model.head.mlp.0.weight"]["data_offsets"][0]
    raw[start + 3] ^= 0x40
    (out / LAST).write_bytes(bytes(raw))
    with pytest.raises(UserError, match=LAST):
        train(config, out, device="cpu", quiet=True)


@pytest.fixture(scope="module")
def vit_run(data, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("vit-run")
    train(options(data, steps=1, encoder=TINY_VIT), out, device="cpu", quiet=True)
    return out


ENCODER_DAMAGE = {
    # "width": 8 read as 10: load_state_dict RuntimeError (size mismatch).
    "width changed": lambda spec: spec.__setitem__("width", 10),
    # a key's name damaged: EncoderSpec(**...) TypeError (unexpected keyword argument).
    "key renamed": lambda spec: spec.__setitem__("patchh", spec.pop("patch")),
    # blocks not a list: TypeError 'int' object is not iterable.
    "blocks not a list": lambda spec: spec.update(arch="resnet", blocks=2),
    # the spec gone: KeyError 'encoder'.
    "spec missing": None,
}


@pytest.mark.parametrize("damage", sorted(ENCODER_DAMAGE))
def test_probe_of_a_checkpoint_with_a_damaged_encoder_spec_is_a_user_error(data, vit_run, tmp_path,
                                                                          damage):
    """probe.py load_encoder rebuilds the encoder from `record["config"]["encoder"]` with no
    check: a spec whose bytes changed gives KeyError, TypeError (EncoderSpec(**spec)) or
    load_state_dict's RuntimeError, each a traceback from `synthgen probe`. Correct: a
    UserError naming the checkpoint and the encoder field (exit status 2, one line)."""
    run = tmp_path / "run"
    run.mkdir()
    (run / LAST).write_bytes((vit_run / LAST).read_bytes())
    change = ENCODER_DAMAGE[damage]

    def damaged(record):
        if change is None:
            record["config"].pop("encoder")
        else:
            change(record["config"]["encoder"])

    rewrite_checkpoint(run / LAST, record=damaged)
    result = invoke("probe", "--checkpoint", run, "--train", data, "--test", data,
                    "--device", "cpu")
    one_line_error(result, LAST)


# --- probe options and data ----------------------------------------------------------------------


def test_probe_at_another_resolution_than_a_vit_checkpoints_is_a_user_error(data, vit_run):
    """`synthgen probe --resolution 16` on a ViT trained at 8 px: the ViT's position
    embeddings are fixed to its resolution (5 tokens), the 16 px images give 17, and the
    forward pass ends in a RuntimeError traceback ("The size of tensor a (17) must match the
    size of tensor b (5)"). Correct: refuse a --resolution other than a ViT checkpoint's own
    with a UserError naming --resolution, the checkpoint's value and how to fix (leave it out)."""
    result = invoke("probe", "--checkpoint", vit_run, "--train", data, "--test", data,
                    "--resolution", "16", "--device", "cpu")
    one_line_error(result, "--resolution")


def test_probe_with_one_train_sample_is_a_user_error(data, tmp_path):
    """probe.py fit_linear_probe standardises with `train_x.std(0)`: one train sample gives a
    NaN standard deviation (clamp_min keeps NaN), every feature becomes NaN and L-BFGS fails
    with "RuntimeError: value cannot be converted to type float without overflow", a
    traceback. Correct: a UserError that the train split needs at least 2 labelled samples."""
    one = tmp_path / "one"
    write_solid_dataset(one, shards=1, groups_per_shard=1, views=1, size=8)
    result = invoke("probe", "--train", one, "--test", data, "--device", "cpu")
    one_line_error(result, "train")


# --- train options -------------------------------------------------------------------------------


@pytest.mark.parametrize("extra,named", [
    # nn.MultiheadAttention: AssertionError "embed_dim must be divisible by num_heads" (4).
    (("--arch", "vit", "--width", "6"), "width"),
    # torch.manual_seed: ValueError "Overflow when unpacking long long".
    (("--seed", str(2 ** 70)), "seed"),
    # choose_device accepts any torch device type: RuntimeError "PyTorch is not linked with
    # support for mps devices" at model.to(device).
    pytest.param(("--device", "mps"), "mps", marks=pytest.mark.skipif(
        torch.backends.mps.is_available(), reason="this torch can use mps")),
])
def test_train_option_mistakes_that_reach_torch_are_one_line_errors(data, tmp_path, extra, named):
    """TrainOptions.check validates sizes and rates but not these, which reach torch and end
    in tracebacks (exit status 1): a ViT --width not divisible by its 4 heads, a --seed
    beyond 64 bits, and a --device of a type this torch cannot use (devices.choose_device
    only checks cuda). Correct: a UserError naming the option, the value and what to pass."""
    result = invoke("train", data, "--out", tmp_path / "run", *TINY_CLI, *extra)
    one_line_error(result, named)


@pytest.mark.parametrize("case", ["batch size 1", "a dataset of one group"])
def test_a_run_whose_batches_hold_one_group_is_refused(data, tmp_path, case):
    """A contrastive batch needs two or more groups: the others are the negatives. With
    --batch-size 1, or a dataset of one group (every batch holds copies of it, trained once),
    each step sees one group, the loss is exactly 0 (positives only), no gradient flows and
    `synthgen train` exits 0 with "final loss 0.0000" after training nothing but weight decay.
    TrainOptions.check accepts batch_size >= 1 and the loader any non-empty dataset. Correct:
    refuse batch_size < 2 and a dataset of fewer than 2 groups (a UserError naming
    --batch-size / the data)."""
    if case == "batch size 1":
        source, extra, named = data, ("--batch-size", "1"), "batch"
    else:
        source = tmp_path / "one"
        write_solid_dataset(source, shards=1, groups_per_shard=1, views=2, size=8)
        extra, named = (), "group"
    result = invoke("train", source, "--out", tmp_path / "run", *TINY_CLI, *extra)
    one_line_error(result, named)


# --- resume with other inputs --------------------------------------------------------------------


def test_a_refused_resume_names_the_option_that_differs(data, tmp_path):
    """trainer.py train compares the whole config with the checkpoint's and, on any
    difference, says only "holds a checkpoint of a different training config; choose another
    --out, or delete it to start over": a resume with --workers 1 instead of 0 (or any other
    single option) does not say which option, and the advice is to delete the checkpoint.
    Correct (the project's rule: field, bad value, how to fix): name the option(s) that
    differ with the checkpoint's value and the value given, e.g. "num_workers: 0 in the
    checkpoint, 1 now; pass --workers 0 to resume"."""
    out = tmp_path / "run"
    assert invoke("train", data, "--out", out, *TINY_CLI, "--steps", "3").exit_code == 0
    result = invoke("train", data, "--out", out, *TINY_CLI, "--steps", "3", "--workers", "1")
    one_line_error(result, "workers")
    assert "0" in result.output.strip().splitlines()[-1]


def test_the_same_dataset_by_another_spelling_of_its_path_resumes(data, tmp_path, monkeypatch):
    """TrainOptions stores `data` as the string given, and the resume check compares configs
    as strings: a run started as `synthgen train /abs/path/data` and resumed as `synthgen
    train data` from its parent (the same folder, the same shards and sha256, which
    `data_fingerprint` already checks) is refused as "a different training config", with
    the advice to delete the checkpoint. Correct: compare the data by what it is (the
    fingerprint, or the resolved path), so the same dataset resumes."""
    out = tmp_path / "run"
    first = invoke("train", data, "--out", out, *TINY_CLI, "--steps", "3")
    assert first.exit_code == 0, first.output
    monkeypatch.chdir(data.parent)
    result = invoke("train", data.name, "--out", out, *TINY_CLI, "--steps", "3")
    assert_no_traceback(result, allowed=(0,))


def test_rerunning_a_finished_training_reports_its_final_loss_not_nan(data, tmp_path):
    """Rerunning a finished `synthgen train` (the same command, e.g. a job script run again)
    resumes at the last step, runs no step, and reports `final loss nan`, which reads as a
    run that diverged; TrainResult.final_loss is NaN. Correct: the finished run's last loss
    (record it in the checkpoint, or read it from log.jsonl)."""
    config = options(data)
    first = train(config, tmp_path / "run", device="cpu", quiet=True)
    again = train(config, tmp_path / "run", device="cpu", quiet=True)
    assert again.steps == first.steps
    assert again.final_loss == first.final_loss


def test_rerunning_a_run_finished_before_checkpoints_kept_their_loss_reports_the_logged_one(data, tmp_path):
    """A run finished by an earlier synthgen has a checkpoint without `loss` (and without the
    record digests): rerun, it reported `final loss nan`. The log's entry at the checkpoint's
    step (a run logs its last step) says what the final loss was."""
    config = options(data)
    first = train(config, tmp_path / "run", device="cpu", quiet=True)

    def as_before(record: dict) -> None:
        for key in ("loss", "record_sha256", "tensors_sha256"):
            record.pop(key, None)

    rewrite_checkpoint(tmp_path / "run" / LAST, record=as_before)
    again = train(config, tmp_path / "run", device="cpu", quiet=True)
    assert again.steps == first.steps
    assert again.final_loss == pytest.approx(first.final_loss)


def test_experiment_reuses_its_finished_runs_when_work_is_given_another_way(tmp_path, monkeypatch,
                                                                           experiment_without_training):
    """experiment.py run_experiment names a run folder by a hash of its TrainOptions, which
    hold the dataset's path as a string built from --work: `--work runs/exp` and `--work
    /abs/runs/exp` (the same folder) give other hashes, so every finished run (an hour on the
    cpu budget) is trained again, against "rerunning it skips finished datasets and runs".
    Correct: leave the work folder's spelling out of the run key (hash the data path relative
    to --work, or resolve --work first)."""
    from synthgen.train import experiment

    budget = experiment.BUDGETS["smoke"]
    trained = experiment_without_training

    def fake_prepare(budget, work, device, log, needed=None):
        real = work / "data" / "real"
        return {"real": real / "train", "real-test": real / "test"}

    monkeypatch.setattr(experiment, "prepare_data", fake_prepare)
    monkeypatch.chdir(tmp_path)
    experiment.run_experiment(budget, Path("work"), device="cpu", log=lambda line: None,
                              only=("real-simclr",))
    assert len(trained) == 1
    experiment.run_experiment(budget, tmp_path / "work", device="cpu", log=lambda line: None,
                              only=("real-simclr",))
    assert len(trained) == 1, f"trained again: {trained}"


def test_a_resume_may_change_how_often_it_checkpoints_and_logs(data, tmp_path):
    """checkpoint_every and log_every decide when a run saves and logs, not what it computes,
    yet a resume with another --checkpoint-every was refused as another training config.
    Correct: resumed, and the weights equal an uninterrupted run's."""
    from synthgen.train.checkpoint import read_checkpoint

    whole = train(options(data, steps=4, checkpoint_every=2), tmp_path / "whole", device="cpu", quiet=True)
    out = tmp_path / "parts"
    train(options(data, steps=4, checkpoint_every=2), out, device="cpu", quiet=True, stop_after=2)
    train(options(data, steps=4, checkpoint_every=1, log_every=2), out, device="cpu", quiet=True)
    ours, theirs = read_checkpoint(out / LAST)[0], read_checkpoint(whole.checkpoint)[0]
    assert all(torch.equal(ours[key], theirs[key]) for key in theirs if key.startswith("model."))
