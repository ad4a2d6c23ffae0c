"""Loader and trainer faults found by fault injection (review of synthgen/data, synthgen/train,
synthgen/shards.py). Every test here fails on the code it was written against, for the reason
its docstring gives; each says what the correct behaviour is.

Tiny solid-colour datasets (synthgen.data.fixtures), tiny encoders, a step or two on the CPU.
"""

from __future__ import annotations

import io
import json
import subprocess
import sys
import tarfile
import textwrap
import warnings
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner
from safetensors.torch import save_file

from synthgen.data import group_loader
from synthgen.data.fixtures import solid_sample, write_solid_dataset
from synthgen.errors import UserError
from synthgen.shards import layout_named
from synthgen.train.encoders import EncoderSpec
from synthgen.train.trainer import TrainOptions, train

TINY = EncoderSpec(arch="resnet", width=4, blocks=(1,), resolution=8, projection_dim=8)


pytestmark = pytest.mark.usefixtures("one_thread")


def write_raw_tar(path: Path, samples: list[dict]) -> None:
    """Samples as tar members, bytes as given (write_shard parses the json, so it cannot write
    a sample whose json is odd)."""
    with tarfile.open(path, "w") as archive:
        for sample in samples:
            for key, value in sample.items():
                if key.startswith("__"):
                    continue
                info = tarfile.TarInfo(f"{sample['__key__']}.{key}")
                info.size = len(value)
                archive.addfile(info, io.BytesIO(value))


def quietly(function):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return function()


def cli_train(data: Path, out: Path, *extra: str):
    from synthgen.cli import main

    args = ["train", str(data), "--out", str(out), "--batch-size", "4", "--steps", "2",
            "--resolution", "8", "--width", "4", "--blocks", "1", "--device", "cpu", *extra]
    return CliRunner().invoke(main, args)


# --- reading damaged shards -------------------------------------------------------------------


def test_a_view_layout_shard_cut_between_two_views_skips_the_cut_group(tmp_path):
    """pipeline.py group_samples: in the `view` layout a shard cut short between two views of
    its last group leaves `regrouped` a group of fewer views, whose json (rebuilt from the
    views that were read) lists only those. The loader then raises UserError "3 views per group
    asked, but group ... has only 2; pass views <= 2" and the run stops, although the dataset's
    groups have 3 views (manifest.json says so) and the module promises that a truncated shard
    only ends its shard. Correct: the cut group is damage (skipped and counted, as the same cut
    in the `group` layout is), the groups before it are read."""
    directory = tmp_path / "ds"
    group_ids = write_solid_dataset(directory, shards=1, groups_per_shard=3, views=3, layout="view")
    tar = directory / "shard-000000.tar"
    with tarfile.open(tar) as archive:
        cut = next(m for m in archive.getmembers() if m.name == f"{group_ids[2]}-view2.cls")
    tar.write_bytes(tar.read_bytes()[: cut.offset_data])  # cut after view 1 of the last group

    loader = group_loader(directory, views=3, batch_size=1, resolution=8, augment="none",
                          mode="eval")
    seen = quietly(lambda: [g for batch in loader for g in batch.group_id])
    assert seen == group_ids[:2]
    assert loader.skipped["tar"] == 1 and sum(loader.skipped.values()) >= 2


def test_a_view_layout_group_whose_first_view_json_is_damaged_is_left_out_whole(tmp_path):
    """shards.py regrouped: in the `view` layout a view sample whose json does not parse (one
    flipped byte: '{' -> '[') is recognised as a damaged view of the group being collected only
    when that group's earlier views were read; when it is the group's FIRST view, the group's
    other views are collected as a group of fewer views. With views=V the loader then raises
    UserError "views: 2 views per group asked, but group ... has only 1; pass views <= 1"
    and the run stops (with views < V the damaged group is silently trained on). The same
    damage on a later view drops the group and the run goes on. Correct: the group is left
    out whole and counted, whichever of its views is damaged."""
    directory = tmp_path / "ds"
    group_ids = write_solid_dataset(directory, shards=1, groups_per_shard=3, views=2,
                                    layout="view")
    tar = directory / "shard-000000.tar"
    with tarfile.open(tar) as archive:
        member = next(m for m in archive.getmembers() if m.name == f"{group_ids[1]}-view0.json")
    data = bytearray(tar.read_bytes())
    data[member.offset_data] = ord("[")  # '{' -> '[': no longer parses
    tar.write_bytes(bytes(data))

    loader = group_loader(directory, views=2, batch_size=1, resolution=8, augment="none",
                          mode="eval")
    seen = quietly(lambda: [g for batch in loader for g in batch.group_id])
    assert seen == [group_ids[0], group_ids[2]]
    assert loader.skipped["json"] == 1


def _group_json(mutate):
    def apply(sample: dict) -> None:
        metadata = json.loads(sample["json"])
        mutate(metadata)
        sample["json"] = json.dumps(metadata).encode()
    return apply


ODD_GROUP_JSON = {
    "views is a number": lambda m: m.update(views=3),
    "views is a one-key object": lambda m: m.update(views={"view0.png": 1}, view=0),
    "a view's file is a list": lambda m: m["views"][0].update(file=["view0.png"]),
    "a view's file is an object": lambda m: m["views"][0].update(file={}),
}
ODD_VIEW_JSON = {
    "the view record has no file": lambda m: m["views"][0].pop("file"),
    "the view record is a string": lambda m: m.update(views=["view0.png"]),
}


@pytest.mark.parametrize("layout,case", [("group", c) for c in ODD_GROUP_JSON]
                         + [("view", c) for c in ODD_VIEW_JSON])
def test_a_sample_with_odd_json_values_is_skipped_not_a_crash(tmp_path, layout, case):
    """shards.py `_view_metadata` (len() of a non-list `views`), `_group_of` (`views[0]`,
    `record["file"]` of a record that is not an object with a file) and pipeline.py
    `checked_metadata` (a set of `file` values that may be unhashable) raise TypeError /
    KeyError on json that parses but holds odd values. These escape the handler, so one such
    sample kills a training run (and `synthgen inspect`, which promises to list damage rather
    than raise). Correct: the sample is damaged ("json" or "views"), skipped and counted; the
    other groups are read."""
    mutate = {**ODD_GROUP_JSON, **ODD_VIEW_JSON}[case]
    groups = [solid_sample(g, g % 4, views=2) for g in range(3)]
    if layout == "group":
        samples = groups
        _group_json(mutate)(samples[1])
    else:
        samples = [s for group in groups for s in layout_named("view").tar_samples(group)]
        _group_json(mutate)(samples[3])  # the second view of the second group
    write_raw_tar(tmp_path / "shard-000000.tar", samples)

    loader = group_loader([str(tmp_path / "shard-000000.tar")], views=2, batch_size=1,
                          resolution=8, augment="none", mode="eval")
    seen = quietly(lambda: [g for batch in loader for g in batch.group_id])
    assert seen == [groups[0]["__key__"], groups[2]["__key__"]]
    assert loader.skipped["json"] + loader.skipped["views"] == 1


def test_a_train_loader_over_shards_that_cannot_be_read_ends_instead_of_hanging(tmp_path):
    """pipeline.py train mode: shards are drawn with replacement for ever and unreadable tar
    data goes to warn_and_continue, so when no shard can be read (here the dataset's only
    shard is missing, as a deleted or never-copied file is) the loader loops for ever: the
    first batch never comes, training hangs without an error. Correct: give up with an error
    (e.g. a UserError naming the dataset) once the shards drawn yield no group at all."""
    directory = tmp_path / "ds"
    write_solid_dataset(directory, shards=1, groups_per_shard=4, views=2, size=8)
    (directory / "shard-000000.tar").unlink()
    code = textwrap.dedent(f"""
        import warnings
        warnings.simplefilter("ignore")
        from synthgen.data import group_loader
        loader = group_loader({str(directory)!r}, views=2, batch_size=2, resolution=8,
                              augment="none")
        next(iter(loader))
    """)
    try:
        subprocess.run([sys.executable, "-c", code], capture_output=True, timeout=30,
                       env={**__import__("os").environ, "OMP_NUM_THREADS": "1"})
    except subprocess.TimeoutExpired:
        pytest.fail("the train loader was still looking for a readable shard after 30 s (hang)")


# --- what the loader reads from a dataset directory --------------------------------------------


def _copy_with_manifest(source: Path, target: Path, manifest) -> Path:
    target.mkdir()
    for path in source.iterdir():
        if path.name != "manifest.json":
            (target / path.name).write_bytes(path.read_bytes())
    if manifest is not None:
        (target / "manifest.json").write_text(json.dumps(manifest))
    return target


@pytest.mark.parametrize("case", ["no shards key", "a json array", "shards named only",
                                  "totals null", "stats file without counts"])
def test_a_damaged_or_foreign_manifest_or_stats_file_is_a_user_error(tmp_path, case):
    """sources.py `_from_directory` only checks that manifest.json (or a stats file) parses;
    valid JSON of another shape (another tool's manifest.json, a hand-edited or damaged one)
    raises KeyError / TypeError / AttributeError from the loader, and so a traceback from
    `synthgen train`. `synthgen inspect` (inspection.load_manifest) already refuses such a
    manifest with a UserError. Correct: one UserError naming the file and how to fix it."""
    source = tmp_path / "ds"
    write_solid_dataset(source, shards=2, groups_per_shard=2, views=2, size=8)
    manifest = json.loads((source / "manifest.json").read_text())
    if case == "stats file without counts":
        directory = _copy_with_manifest(source, tmp_path / "damaged", None)
        (directory / "shard-000001.stats.json").write_text("{}")
    else:
        damaged = {"no shards key": {"format": "other-tool/1", "files": ["shard-000000.tar"]},
                   "a json array": ["shard-000000.tar", "shard-000001.tar"],
                   "shards named only": {**manifest, "shards": ["shard-000000.tar",
                                                                "shard-000001.tar"]},
                   "totals null": {**manifest, "totals": None}}[case]
        directory = _copy_with_manifest(source, tmp_path / "damaged", damaged)
    try:  # refusing it, or reading what can be read (e.g. totals: null), are both correct
        loader = quietly(lambda: group_loader(directory, views=2, batch_size=2, resolution=8,
                                              augment="none", mode="eval"))
        quietly(lambda: list(loader))
    except UserError as error:
        assert "manifest.json" in str(error) or "stats.json" in str(error), str(error)


def test_an_empty_dataset_is_a_user_error_for_the_train_loader(tmp_path):
    """pipeline.py group_loader: a dataset whose manifest lists no shards (no groups) builds a
    train loader with an epoch of max(1, 0) = 1 batch that can never be filled; iterating it
    raises webdataset's ValueError("empty_check=True, but no shards found in ResampledShards")
    (a traceback from `synthgen train`). Correct: group_loader refuses it at once with a
    UserError saying the dataset holds no groups."""
    source = tmp_path / "ds"
    write_solid_dataset(source, shards=1, groups_per_shard=2, views=2, size=8)
    manifest = json.loads((source / "manifest.json").read_text())
    empty = {**manifest, "shards": [], "totals": {"shards": 0, "samples": 0, "images": 0}}
    directory = _copy_with_manifest(source, tmp_path / "empty", empty)
    with pytest.raises(UserError):
        loader = group_loader(directory, views=2, batch_size=2, resolution=8, augment="none")
        next(iter(loader))


def test_manifest_shard_names_outside_the_dataset_directory_are_refused(tmp_path):
    """sources.py `_from_directory` joins each manifest shard name to the directory as given,
    so "../other/shard-000000.tar" (or an absolute path, which pathlib's `/` keeps whole) makes
    the loader train on files outside the dataset, silently. synthgen writes only
    `shard-NNNNNN.tar` names (shards.SHARD_FILE). Correct: a UserError naming the entry."""
    other = tmp_path / "other"
    write_solid_dataset(other, shards=1, groups_per_shard=2, views=2, size=8)
    source = tmp_path / "ds"
    write_solid_dataset(source, shards=1, groups_per_shard=2, views=2, size=8)
    manifest = json.loads((source / "manifest.json").read_text())
    manifest["shards"][0]["name"] = "../other/shard-000000.tar"
    (source / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(UserError, match=r"\.\./other/shard-000000\.tar"):
        group_loader(source, views=2, batch_size=2, resolution=8, mode="eval")


# --- the train command: a user's wrong arguments -----------------------------------------------


@pytest.fixture
def dataset(tmp_path: Path) -> Path:
    write_solid_dataset(tmp_path / "ds", shards=2, groups_per_shard=4, views=2, size=8)
    return tmp_path / "ds"


def test_views_refused_inside_a_loader_worker_is_one_line_without_a_traceback(tmp_path):
    """pipeline.py group_samples raises the UserError "views: 3 views per group asked ..." per
    sample when the dataset records no view count (a directory without manifest.json). With
    DataLoader workers (`--workers`, default 2) torch re-raises it in the main process as
    UserError("Caught UserError in DataLoader worker process 0.\\nOriginal Traceback ..."), so
    `synthgen train` prints the worker's whole traceback after "error:". Correct: one line (the
    original message), exit status 2 (e.g. check the view count before workers start, or
    re-raise the worker's original message)."""
    write_solid_dataset(tmp_path / "bare", shards=2, groups_per_shard=4, views=2, size=8,
                        manifest=False)
    result = cli_train(tmp_path / "bare", tmp_path / "run", "--views", "3", "--workers", "1")
    assert result.exit_code == 2, result.output
    assert "views: 3 views per group asked" in result.output
    assert "Traceback" not in result.output
    assert len(result.output.strip().splitlines()) == 1, result.output


@pytest.mark.parametrize("option,value,named", [
    ("--checkpoint-every", "0", r"checkpoint.every"),   # ZeroDivisionError in step % 0
    ("--threads", "0", r"threads"),                     # torch.set_num_threads RuntimeError
    ("--width", "0", r"width"),                         # conv RuntimeError at the first step
    ("--lr", "-1", r"\blr\b"),                          # AdamW ValueError
    ("--weight-decay", "-1", r"weight.decay"),          # AdamW ValueError
])
def test_train_argument_mistakes_are_one_line_user_errors(dataset, tmp_path, option, value, named):
    """trainer.py TrainOptions.check (and the train command) validate method, views and steps
    only; these values reach torch and end in a traceback (exit 1): --checkpoint-every 0 divides
    by zero, --threads 0 fails in torch.set_num_threads, --width 0 builds zero-channel convs,
    a negative --lr or --weight-decay fails in AdamW. Correct: a UserError naming the option
    and value and what to pass (one line, exit status 2)."""
    result = cli_train(dataset, tmp_path / "run", "--workers", "0", option, value)
    assert result.exit_code == 2, (result.output, repr(result.exception))
    assert "Traceback" not in result.output
    line = result.output.strip().splitlines()[-1]
    assert line.startswith("error:") and __import__("re").search(named, line), result.output


@pytest.mark.parametrize("option,value,named", [
    ("--temperature", "0", r"temperature"),     # similarities / 0: loss and weights NaN
    ("--temperature", "-0.5", r"temperature"),  # the objective pushes positives apart
    ("--epoch-groups", "0", r"epoch.groups"),   # an epoch of max(1, 0) = 1 batch
    ("--epoch-groups", "-3", r"epoch.groups"),
])
def test_train_refuses_values_that_silently_train_something_else(dataset, tmp_path, option, value,
                                                                  named):
    """trainer.py TrainOptions.check / pipeline.py group_loader accept these and train with exit
    status 0: --temperature 0 divides the similarities by zero (the run logs "final loss nan"
    and saves NaN weights), a negative temperature inverts the contrastive objective, and
    --epoch-groups <= 0 is silently an epoch of one batch (max(1, ...)). Correct: refuse them
    with a UserError naming the option (exit status 2)."""
    result = cli_train(dataset, tmp_path / "run", "--workers", "0", option, value)
    assert result.exit_code == 2, result.output
    assert __import__("re").search(named, result.output.strip().splitlines()[-1]), result.output


# --- resume --------------------------------------------------------------------------------------


@pytest.mark.parametrize("damage", ["cut short", "no synthgen record"])
def test_a_damaged_checkpoint_on_resume_is_a_user_error(dataset, tmp_path, damage):
    """trainer.py train reads `checkpoint-last.safetensors` with safetensors directly: a file
    cut short (a copy or sync that stopped, a full disk on another tool's copy) raises
    SafetensorError "invalid header length"; a safetensors file without synthgen's record
    (metadata None) raises TypeError. Both are tracebacks from `synthgen train`. Correct: a
    UserError naming the file and what to do (delete it to start over, or choose another
    --out)."""
    config = TrainOptions(data=str(dataset), method="multipos", views=2, batch_size=4, steps=2,
                          resolution=8, encoder=TINY, num_workers=0)
    out = tmp_path / "run"
    train(config, out, device="cpu", quiet=True, stop_after=1)
    checkpoint = out / "checkpoint-last.safetensors"
    if damage == "cut short":
        checkpoint.write_bytes(checkpoint.read_bytes()[:100])
    else:
        save_file({"weight": torch.zeros(2)}, str(checkpoint))
    with pytest.raises(UserError, match="checkpoint-last.safetensors"):
        train(config, out, device="cpu", quiet=True)


def test_the_experiment_redoes_a_run_whose_probe_json_is_damaged(tmp_path, monkeypatch,
                                                                  experiment_without_training):
    """experiment.py run_experiment: a run counts as done when its probe.json exists, and that
    file is written with Path.write_text (not atomically). An experiment killed while writing
    it leaves an empty or partial probe.json, and every later run of `synthgen experiment`
    stops at json.loads with a JSONDecodeError traceback that does not name the file, so the
    experiment can no longer continue, contrary to "an interrupted experiment continues".
    Correct: a missing or damaged probe.json means the run is not done (as `_json_or_none`
    already does for the data), and probe.json is written atomically."""
    import synthgen.train.experiment as experiment

    budget = experiment.BUDGETS["smoke"]
    condition = next(c for c in experiment.conditions(budget) if c.name == "real-simclr")
    data = tmp_path / "real"
    monkeypatch.setattr(experiment, "prepare_data",
                        lambda *args, **kwargs: {"real": data, "real-test": data})
    trained = experiment_without_training

    seed = budget.seeds[0]
    config = experiment.train_config(budget, condition, data, seed)
    run_dir = experiment.run_folder(tmp_path / "work", condition.name, seed, config)
    run_dir.mkdir(parents=True)
    (run_dir / "probe.json").write_text('{"test_top1": 0.43, "train_sec')  # cut short

    record = experiment.run_experiment(budget, tmp_path / "work", device="cpu",
                                       log=lambda line: None, only=("real-simclr",))
    assert trained == [run_dir]
    assert record["results"]["real-simclr"]["per_seed"] == [0.5]
