"""A full disk, a read-only place and Ctrl-C: one line each, exit 2 (130 for Ctrl-C), checked
before any work where it can be, and nothing half-written that looks finished.

Tests run as root, for whom chmod does not stop writes. So the full disk and the read-only
places are real small tmpfs mounts, made inside a private user and mount namespace
(`unshare -rm`, gone with its process); where unshare is not allowed those tests skip, and
the in-process ones below fake the same errors by making os functions raise them.
"""

from __future__ import annotations

import errno
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from synthgen.cli import main

REPO = Path(__file__).resolve().parents[1]
CLI = f"{sys.executable} {REPO / 'cli.py'}"


def namespaces_allowed() -> bool:
    if shutil.which("unshare") is None:
        return False
    probe = subprocess.run(["unshare", "-rm", "sh", "-c", "mount -t tmpfs tmpfs /mnt"],
                           capture_output=True)
    return probe.returncode == 0


needs_namespaces = pytest.mark.skipif(not namespaces_allowed(),
                                      reason="unshare -rm (a private mount namespace) not allowed")


def in_namespace(script: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run(["unshare", "-rm", "bash", "-c", script], capture_output=True,
                          text=True, timeout=600, cwd=cwd)


def one_line_error(text: str) -> str:
    lines = [line for line in text.splitlines() if line.startswith("error: ")]
    assert len(lines) == 1 and "Traceback" not in text, text
    return lines[0]


@needs_namespaces
def test_a_disk_that_fills_up_mid_run_keeps_finished_shards_and_a_rerun_resumes(write_recipe,
                                                                                tmp_path):
    recipe = write_recipe()  # 3 shards of 40 KB; the disk holds one
    disk = tmp_path / "disk"
    disk.mkdir()
    result = in_namespace(f"""
        mount -t tmpfs -o size=64k tmpfs {disk}
        {CLI} generate {recipe} --out {disk}/out --device cpu --quiet 2> {tmp_path}/full.err
        echo "full rc=$?"
        ls -a {disk}/out > {tmp_path}/after-full.txt
        mount -o remount,size=1m {disk}
        {CLI} generate {recipe} --out {disk}/out --device cpu --quiet
        echo "rerun rc=$?"
        ls -a {disk}/out > {tmp_path}/after-rerun.txt
        """, tmp_path)
    assert "full rc=2" in result.stdout, result.stdout + result.stderr
    error = one_line_error((tmp_path / "full.err").read_text())
    assert "No space left on device" in error and f"{disk}/out" in error
    assert "rerunning the same command resumes" in error
    left = (tmp_path / "after-full.txt").read_text().split()
    assert "shard-000000.tar" in left and "shard-000000.stats.json" in left
    assert not [name for name in left if name.startswith(("shard-000001", "shard-000002", ".shard"))
                or name == "manifest.json"], left
    assert "rerun rc=0" in result.stdout, result.stdout + result.stderr
    assert "wrote 2 shards (10 images)" in result.stdout and "1 shard was already done" in result.stdout
    assert "manifest.json" in (tmp_path / "after-rerun.txt").read_text().split()


@needs_namespaces
def test_read_only_places_are_refused_before_any_work(write_recipe, tmp_path, finished_dataset):
    recipe = write_recipe()
    erase = write_recipe({"suppress": [{"concept": "red", "method": "erase", "target": "blue"}]},
                         name="erase.yaml")
    place = tmp_path / "read-only"
    place.mkdir()
    commands = {
        "generate": f"generate {recipe} --out {place}/existing --device cpu",
        "plan": f"plan {recipe} --jsonl {place}/plan.jsonl",
        "inspect": f"inspect {finished_dataset} --contact-sheet {place}/sheet.png",
        "audit": f"audit {finished_dataset} --report {place}/audit",
        "edit": f"edit {erase} --out {place}/model --device cpu",
    }
    script = f"mount -t tmpfs tmpfs {place}; mkdir {place}/existing; mount -o remount,ro {place}\n"
    for name, command in commands.items():
        script += f"{CLI} {command} > {tmp_path}/{name}.out 2>&1; echo {name} rc=$?\n"
    result = in_namespace(script, tmp_path)
    for name in commands:
        assert f"{name} rc=2" in result.stdout, (name, result.stdout, result.stderr)
        output = (tmp_path / f"{name}.out").read_text()
        assert "Read-only file system" in one_line_error(output), output
    # Refused before work: inspect printed no summary, generate built no plan or model.
    assert "groups" not in (tmp_path / "inspect.out").read_text()


@pytest.fixture
def finished_dataset(write_recipe, tmp_path) -> Path:
    out = tmp_path / "dataset"
    result = CliRunner().invoke(main, ["generate", str(write_recipe(name="dataset.yaml")),
                                       "--out", str(out), "--device", "cpu", "--quiet"])
    assert result.exit_code == 0, result.output
    return out


def test_a_full_disk_is_one_line_and_exit_2(write_recipe, tmp_path, monkeypatch):
    def full(fd):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(os, "fsync", full)  # every file synthgen writes is flushed first
    out = tmp_path / "out"
    result = CliRunner().invoke(main, ["generate", str(write_recipe()), "--out", str(out),
                                       "--device", "cpu", "--quiet"])
    assert result.exit_code == 2, result.output
    error = one_line_error(result.output)
    assert f"No space left on device ({out})" in error and "free some space" in error
    assert not [p.name for p in out.iterdir() if p.name.startswith(("shard-", "."))]


def test_paths_under_a_regular_file_are_refused_before_work(write_recipe, tmp_path,
                                                             finished_dataset):
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    erase = write_recipe({"suppress": [{"concept": "red", "method": "erase", "target": "blue"}]},
                         name="erase.yaml")
    for args in (["audit", finished_dataset, "--report", blocker / "audit"],
                 ["edit", erase, "--out", blocker / "model", "--device", "cpu"]):
        result = CliRunner().invoke(main, [str(a) for a in args])
        assert result.exit_code == 2, result.output
        assert "a-file is not a folder" in one_line_error(result.output)


def test_an_interrupted_edit_leaves_no_folder_that_looks_finished(write_recipe, tmp_path,
                                                                  monkeypatch):
    from synthgen.generate import prepare

    def interrupted(recipe, out_dir, device):
        (Path(out_dir) / "model_index.json").write_text("{}")  # half of a model folder
        raise KeyboardInterrupt

    monkeypatch.setattr(prepare, "write_edited_model", interrupted)
    erase = write_recipe({"suppress": [{"concept": "red", "method": "erase", "target": "blue"}]})
    result = CliRunner().invoke(main, ["edit", str(erase), "--out", str(tmp_path / "model"),
                                       "--device", "cpu"])
    assert result.exit_code == 130, result.output
    assert not (tmp_path / "model").exists()
    assert [p.name for p in tmp_path.iterdir()] == ["recipe.yaml"], "no temporary left behind"


def test_ctrl_c_exits_130_and_says_a_rerun_resumes(write_recipe, tmp_path, monkeypatch):
    import synthgen.engines as engines

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(engines, "run_engine", interrupted)
    result = CliRunner().invoke(main, ["generate", str(write_recipe()), "--out",
                                       str(tmp_path / "out"), "--device", "cpu", "--quiet"])
    assert result.exit_code == 130, result.output
    assert "Aborted!" not in result.output
    assert "interrupted; finished shards are kept" in result.output
    assert "rerunning the same command resumes" in result.output
