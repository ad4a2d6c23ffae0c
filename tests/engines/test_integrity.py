"""Fault injection on what a run writes: flipped bytes, a replaced dataset, dead writers'
debris. Nothing damaged is kept by a resume or vouched for by a manifest, and nothing of a
replaced run is published into its successor."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner

from synthgen.cli import main
from engine_helpers import dataset_bytes, model_info, run, shard_samples
from synthgen.errors import UserError
from synthgen.plan import make_plan
from synthgen.recipe import load_recipe
from synthgen.store import LocalStore, host_tag, open_store
from synthgen.write import finalize_dataset, prepare_output_dir, publish_shard

RECIPE = {
    "name": "integrity", "seed": 3,
    "model": {"id": "builtin:tiny-random", "steps": 2, "width": 32, "height": 32},
    "classes": [{"name": "circle", "templates": ["a circle"], "groups": 3},
                {"name": "square", "templates": ["a square"], "groups": 3}],
    "views": {"count": 2, "strategy": "seeds"},
    "output": {"groups_per_shard": 2, "format": "jpg"},
}


@pytest.fixture(scope="module")
def finished(tmp_path_factory) -> tuple[Path, Path, dict[str, str]]:
    """A finished dataset of 3 shards built once for the module: (recipe, dataset, its bytes).
    Tests copy it before damaging it."""
    root = tmp_path_factory.mktemp("finished")
    recipe = root / "recipe.yaml"
    recipe.write_text(yaml.safe_dump(RECIPE, sort_keys=False))
    run("local", recipe, root / "out")
    return recipe, root / "out", dataset_bytes(root / "out")


@pytest.fixture
def dataset(finished, tmp_path) -> tuple[Path, Path, dict[str, str]]:
    recipe, out, expected = finished
    shutil.copytree(out, tmp_path / "out")
    return recipe, tmp_path / "out", expected


def flip_byte(tar_path: Path, member_suffix: str) -> None:
    """Invert one byte in the middle of the first member ending with `member_suffix`; the
    tar keeps its size and structure."""
    with tarfile.open(tar_path) as tar:
        member = next(m for m in tar.getmembers() if m.name.endswith(member_suffix))
    data = bytearray(tar_path.read_bytes())
    data[member.offset_data + member.size // 2] ^= 0xFF
    tar_path.write_bytes(bytes(data))


@pytest.mark.parametrize("member", [".view1.jpg", ".json"])
def test_a_resume_rebuilds_a_shard_whose_bytes_were_flipped(dataset, member):
    recipe, out, expected = dataset
    flip_byte(out / "shard-000001.tar", member)
    (out / "manifest.json").unlink()
    _, summary = run("local", recipe, out)
    assert summary.shards_skipped == 2 and summary.shards_written == 1, "shard 1 rebuilt"
    assert dataset_bytes(out) == expected


def test_finalize_refuses_a_shard_that_does_not_match_its_stats(dataset):
    recipe, out, expected = dataset
    flip_byte(out / "shard-000002.tar", ".view0.jpg")
    (out / "manifest.json").unlink()
    with pytest.raises(UserError, match=r"shards 2 do not match the sha256 their stats file "
                                        r"records.*--shards 2"):
        finalize_dataset(out)
    assert not (out / "manifest.json").exists()
    # What the message says to do: the slice's resume finds the damage and rebuilds it.
    _, summary = run("local", recipe, out, shards=(2,))
    assert summary.shards_written == 1 and summary.manifest_written
    assert dataset_bytes(out) == expected


def test_a_resume_reads_each_done_shard_once(dataset):
    recipe, out, _ = dataset
    reads: list[str] = []

    class CountingStore(LocalStore):
        def read(self, name):
            reads.append(name)
            return super().read(name)

        def sha256(self, name):
            reads.append(f"sha256 {name}")
            return super().sha256(name)

    plan = make_plan(load_recipe(recipe))
    assert prepare_output_dir(CountingStore(out), plan, overwrite=False) == {0, 1, 2}
    for shard in range(3):
        assert reads.count(f"shard-{shard:06d}.stats.json") == 1
        assert reads.count(f"sha256 shard-{shard:06d}.tar") == 1


def test_a_worker_of_a_replaced_run_publishes_nothing_into_its_successor(write_recipe, tmp_path):
    first = make_plan(load_recipe(write_recipe()))
    other = make_plan(load_recipe(write_recipe({"seed": 8}, name="other.yaml")))
    for location in (tmp_path / "out", f"memory://replaced-{os.getpid()}"):
        prepare_output_dir(location, first, overwrite=False)
        samples = shard_samples(first, 0)  # a worker of the first run, mid-shard
        prepare_output_dir(location, other, overwrite=True)
        with pytest.raises(UserError, match=r"shard-000000.tar of recipe .* was not published.*"
                                            r"another run replaced this dataset"):
            publish_shard(location, 0, samples, model_info(first))
        assert open_store(location).names() == ["recipe.json"]
        # Other weights of the same recipe, too (a folder retrained in place, say).
        with pytest.raises(UserError, match="made with weights sha256:retrained was not published"):
            publish_shard(location, 0, shard_samples(other, 0),
                          {**model_info(other), "weights": "sha256:retrained"})
        assert publish_shard(location, 0, shard_samples(other, 0), model_info(other)).published


def test_a_claim_replaced_during_the_publish_takes_the_shard_back(write_recipe, tmp_path):
    first = make_plan(load_recipe(write_recipe()))
    other = make_plan(load_recipe(write_recipe({"seed": 8}, name="other.yaml")))
    out = tmp_path / "out"
    prepare_output_dir(out, first, overwrite=False)

    class ReplacedMeanwhile(LocalStore):
        def publish_once(self, name, data):
            if name.startswith("shard-"):  # another run starts over just before the tar lands
                prepare_output_dir(out, other, overwrite=True)
            return super().publish_once(name, data)

    with pytest.raises(UserError, match="another run replaced this dataset"):
        publish_shard(ReplacedMeanwhile(out), 1, shard_samples(first, 1), model_info(first))
    assert sorted(path.name for path in out.iterdir()) == ["recipe.json"]


def test_a_finished_dataset_keeps_no_temporary_files_of_dead_writers(dataset):
    _, out, expected = dataset
    finished_pid = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                                  capture_output=True, text=True, check=True).stdout.strip()
    dead = out / f".shard-000001.tar.{host_tag()}-{finished_pid}-0123456789abcdef.tmp"
    dead.write_bytes(b"a worker killed a moment ago")  # fresh: killed just now
    (out / "manifest.json").unlink()
    finalize_dataset(out)
    assert not dead.exists()
    assert dataset_bytes(out) == expected


def test_overwrite_removes_the_previous_datasets_audit(dataset, write_recipe):
    _, out, _ = dataset
    (out / "audit").mkdir()
    (out / "audit" / "report.json").write_text("{}")
    prepare_output_dir(out, make_plan(load_recipe(write_recipe())), overwrite=True)
    assert sorted(path.name for path in out.iterdir()) == ["recipe.json"]


def test_recipe_json_records_the_weights_publishers_must_match(dataset):
    recipe, out, _ = dataset
    record = json.loads((out / "recipe.json").read_text())
    stats = json.loads((out / "shard-000000.stats.json").read_text())
    assert record.get("weights") is not None
    assert record["weights"] == stats["model"]["weights"]


def test_inspect_lists_damaged_shards_and_samples_without_a_traceback(dataset, tmp_path):
    _, out, _ = dataset

    def member(shard: int, suffix: str) -> tuple[Path, tarfile.TarInfo]:
        tar = out / f"shard-{shard:06d}.tar"
        with tarfile.open(tar) as archive:
            return tar, next(m for m in archive.getmembers() if m.name.endswith(suffix))

    flip_byte(out / "shard-000000.tar", ".view0.jpg")  # decodes: only the digest tells
    tar, first_json = member(1, ".json")
    data = bytearray(tar.read_bytes())
    data[first_json.offset_data] = ord("[")  # its json no longer parses
    tar.write_bytes(bytes(data))
    tar, first_view = member(2, ".view0.jpg")  # cut inside the first group's first view
    tar.write_bytes(tar.read_bytes()[: first_view.offset_data + first_view.size // 2])
    sheet = tmp_path / "sheet.png"
    result = CliRunner().invoke(main, ["inspect", str(out), "--shard", "1",
                                       "--contact-sheet", str(sheet)])
    assert result.exit_code == 1 and isinstance(result.exception, SystemExit), result.output
    # Shard 0's two groups are read (and flagged by digest), shard 1 keeps one, shard 2 none.
    assert "3 groups, 6 images" in result.output
    for fragment in ("shard-000000.tar: sha256", "shard-000001.tar: sha256",
                     "shard-000002.tar: sha256", "its json does not parse",
                     "lacks view0.jpg, view1.jpg", "shard-000002.tar: unreadable tar data",
                     "6 damaged shards or samples"):
        assert f"{fragment}" in result.output, fragment
    assert sheet.is_file()
