"""Fault injection on the data-integrity paths (publishing, overwrite, resume, reruns): glob
characters in an object-store path, another budget's data in an experiment's work folder, a
rerun into a world dataset folder, a symlinked audit folder, flipped bits in stats files and
recipe.json, a long output file name. Each failed before its fix (2026-12-03 review).

No model is loaded: shards hold stand-in image bytes, as tests/engines/engine_helpers.py does.
"""

from __future__ import annotations

import json
import os
from dataclasses import replace
from pathlib import Path
from types import SimpleNamespace

import pytest
import yaml

from small_recipe import SMALL_RECIPE
from engine_helpers import finished_dataset, model_info, shard_samples
from synthgen.errors import UserError
from synthgen.plan import make_plan
from synthgen.recipe import load_recipe
from synthgen.write import (finalize_dataset, prepare_output_dir, publish_shard)


@pytest.fixture
def plan(tmp_path):
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(SMALL_RECIPE, sort_keys=False))
    return make_plan(load_recipe(path))


# FsspecStore.remove_folder used to pass the path to fsspec's `rm`, which expands glob
# characters: --overwrite of s3://bucket/ds[1] deleted s3://bucket/ds1/audit and kept its own.
def test_overwrite_in_an_object_store_removes_only_its_own_audit_folder(plan):
    import fsspec

    fs = fsspec.filesystem("memory")
    base = f"/review-glob-{os.getpid()}"
    fs.pipe_file(f"{base}/ds1/audit/report.json", b"another dataset's report")
    fs.pipe_file(f"{base}/ds[1]/audit/report.json", b"this dataset's report")
    fs.pipe_file(f"{base}/ds[1]/recipe.json", b'{"recipe_hash": "an older recipe"}')
    try:
        prepare_output_dir(f"memory://{base}/ds[1]", plan, overwrite=True)
        assert fs.exists(f"{base}/ds1/audit/report.json"), "deleted outside --out"
        assert not fs.exists(f"{base}/ds[1]/audit/report.json"), "its own audit was kept"
    finally:
        fs.rm(base, recursive=True)


# The experiment reused work/data/* whatever budget made it (`done.json` and a manifest were
# only checked to exist): a changed budget silently trained on the old budget's datasets.
@pytest.fixture
def budgets(monkeypatch):
    import synthgen.world.dataset as world_dataset
    from synthgen.train.experiment import BUDGETS

    monkeypatch.setattr(world_dataset, "SAMPLES_PER_SHARD", 4)
    small = replace(BUDGETS["smoke"], images=8, real_test=4)
    return small, replace(small, images=16)


def test_experiment_real_renders_of_another_budget_are_not_reused(tmp_path, budgets):
    from synthgen.data.sources import resolve_shards
    from synthgen.train.experiment import prepare_data

    small, larger = budgets
    prepare_data(small, tmp_path, "cpu", lambda message: None, needed=set())
    paths = prepare_data(larger, tmp_path, "cpu", lambda message: None, needed=set())
    assert resolve_shards(paths["real"]).samples == larger.images, "old real renders reused"


def test_experiment_synthetic_dataset_of_another_budget_is_not_reused(tmp_path, budgets,
                                                                       monkeypatch):
    import synthgen.engines.local as local
    from synthgen.train.experiment import prepare_data, synthetic_datasets

    def fake_generate(plan, out, options):  # a finished dataset of `plan`, without a model
        Path(out).mkdir(parents=True, exist_ok=True)
        (Path(out) / "manifest.json").write_text(
            json.dumps({"recipe_hash": plan.recipe.recipe_hash}))
        return SimpleNamespace(images_generated=0)

    monkeypatch.setattr(local, "generate_dataset", fake_generate)
    small, larger = budgets
    prepare_data(small, tmp_path, "cpu", lambda message: None, needed={"single"})
    paths = prepare_data(larger, tmp_path, "cpu", lambda message: None, needed={"single"})
    manifest = json.loads((paths["single"] / "manifest.json").read_text())
    assert manifest["recipe_hash"] == synthetic_datasets(larger)["single"].recipe_hash, \
        "the old budget's synthetic dataset is reused"


# write_real_dataset overwrote shards 0..n-1 but left a previous, larger run's other shards
# (with their stats files), which the loader then read as part of the split.
def test_world_dataset_rerun_into_the_same_folder_leaves_no_stale_shards(tmp_path, monkeypatch):
    import synthgen.world.dataset as world_dataset
    from synthgen.data.sources import resolve_shards

    monkeypatch.setattr(world_dataset, "SAMPLES_PER_SHARD", 4)
    world_dataset.write_real_dataset(tmp_path, train=12, test=4)
    world_dataset.write_real_dataset(tmp_path, train=4, test=4)
    source = resolve_shards(tmp_path / "train")
    assert source.samples == 4, f"reads {len(source.urls)} shards: {source.urls}"


# --overwrite with an `audit` symlink (reports kept on another disk): shutil.rmtree refuses a
# symlink, so the run failed with a raw OSError after deleting the dataset, every time.
def test_overwrite_with_a_symlinked_audit_folder(plan, tmp_path):
    out = tmp_path / "out"
    finished_dataset(out, plan)
    reports = tmp_path / "reports"
    reports.mkdir()
    (reports / "report.json").write_text("{}")
    (out / "audit").symlink_to(reports, target_is_directory=True)
    prepare_output_dir(out, plan, overwrite=True)
    assert sorted(p.name for p in out.iterdir()) == ["recipe.json"]
    assert (reports / "report.json").exists(), "only the link goes, not what it points to"


# "A damaged stats file: the shard is rebuilt like an unfinished one" held only for text that
# no longer parses; one flipped bit in a key (valid JSON) was a KeyError traceback in the
# resume, in finalize and in missing_shards.
def test_a_stats_file_with_a_flipped_key_is_rebuilt_not_a_traceback(plan, tmp_path):
    out = tmp_path / "out"
    finished_dataset(out, plan)
    stats = out / "shard-000001.stats.json"
    stats.write_bytes(stats.read_bytes().replace(b'"bytes"', b'"bytas"'))  # b ^ a: one bit
    with pytest.raises(UserError, match="shards 1"):
        finalize_dataset(out)
    assert prepare_output_dir(out, plan, overwrite=False) == {0, 2}
    assert not (out / "shard-000001.tar").exists()


# ... and a flipped byte in recipe.json was a UnicodeDecodeError traceback, not a UserError.
def test_a_damaged_recipe_json_is_a_user_error(plan, tmp_path):
    out = tmp_path / "out"
    finished_dataset(out, plan)
    record = out / "recipe.json"
    data = bytearray(record.read_bytes())
    data[0] ^= 0xFF
    record.write_bytes(bytes(data))
    with pytest.raises(UserError):
        prepare_output_dir(out, plan, overwrite=False)
    with pytest.raises(UserError):
        finalize_dataset(out)


# The temporary name added ~50 characters plus the host name to the target's name, so a valid
# file name of 200-255 bytes could not be written (ENAMETOOLONG) after the check passed.
def test_plan_jsonl_with_a_long_but_valid_file_name(tmp_path):
    from synthgen import api

    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(yaml.safe_dump(SMALL_RECIPE, sort_keys=False))
    target = tmp_path / ("p" * 240 + ".jsonl")  # 246 bytes: NAME_MAX is 255
    api.plan(recipe, jsonl=target)
    assert target.stat().st_size > 0


@pytest.mark.parametrize("damage", [b"[1, 2]", b'"text"', b"\xff\xfe", b'{"recipe_hash": '])
def test_a_recipe_record_damaged_while_a_run_builds_stops_the_publish_with_one_message(
        plan, tmp_path, damage):
    """recipe.json rewritten mid-run with valid JSON that is not an object made the claim
    check call .get on a list (a traceback from the writer thread), and other damage read as
    "another run replaced this dataset"; it is the same damaged-record message as at start."""
    out = tmp_path / "out"
    prepare_output_dir(out, plan, overwrite=False)
    (out / "recipe.json").write_bytes(damage)
    with pytest.raises(UserError, match=r"recipe\.json is damaged: .*shard-000000.tar was not "
                                        "published; pass --overwrite"):
        publish_shard(out, 0, shard_samples(plan, 0), model_info(plan))
    assert not (out / "shard-000000.tar").exists()
