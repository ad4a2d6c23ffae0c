"""Several workers, slices and failures give the bytes one process gives; nothing is lost or
doubled."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

from synthgen.cli import main
from engine_helpers import dataset_bytes, model_info, race_publishers, run, shard_samples
from synthgen.engines.local import FAULT_ENV, FAULT_EXIT_STATUS
from synthgen.engines.slices import choose_slice, parse_shard_ranges
from synthgen.errors import UserError
from synthgen.plan import make_plan
from synthgen.recipe import load_recipe
from synthgen.store import STALE_TEMPORARY_SECONDS, host_tag, temporary_path
from synthgen.write import finalize_dataset, prepare_output_dir, publish_shard


def invoke(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


def test_two_worker_processes_give_the_same_bytes_and_rebuild_a_killed_workers_shard(
        reference, tmp_path, monkeypatch):
    recipe, expected = reference
    # The worker that samples shard 1 dies after its first batch (once, whoever it is).
    monkeypatch.setenv(FAULT_ENV, f"1:{tmp_path / 'died-once'}")
    _, summary = run("processes", recipe, tmp_path / "out", workers=2)
    assert (tmp_path / "died-once").exists(), "the fault was injected"
    assert summary.workers == 2 and summary.shards_retried == 1
    assert summary.shards_written == 3 and summary.images_generated == 18, "nothing doubled"
    assert summary.manifest_written
    assert dataset_bytes(tmp_path / "out") == expected
    assert not list((tmp_path / "out").glob(".*.tmp"))


def test_slices_over_three_ranks_then_finalize_give_the_same_bytes(reference, tmp_path):
    recipe, expected = reference
    out = tmp_path / "out"
    for rank in (0, 2):
        shards = choose_slice(3, rank=rank, world_size=3).shards
        _, summary = run("local", recipe, out, shards=shards)
        assert summary.shards_written == 1 and not summary.manifest_written
        assert not (out / "manifest.json").exists(), "a slice run must not look finished"
    with pytest.raises(UserError, match=r"1 of 3 shards is not finished \(shards 1\).*--shards 1"):
        finalize_dataset(out)
    result = invoke("finalize", out)
    assert result.exit_code == 2 and "shards 1" in result.output
    assert "Traceback" not in result.output
    # The last rank to finish writes the manifest itself.
    result = invoke("generate", recipe, "--out", out, "--device", "cpu", "--quiet",
                    "--batch-size", 3, "--rank", 1, "--world-size", 3)
    assert result.exit_code == 0, result.output
    assert "rank 1 of 3 (from --rank/--world-size): building shards 1 (1 of 3)" in result.output
    assert dataset_bytes(out) == expected
    # finalize by hand rebuilds the same manifest from recipe.json and the stats files.
    (out / "manifest.json").unlink()
    result = invoke("finalize", out)
    assert result.exit_code == 0 and "3 shards, 9 groups, 18 images" in result.output
    assert dataset_bytes(out) == expected


def test_a_killed_run_is_finished_by_a_rerun_without_rebuilding_finished_shards(
        reference, tmp_path):
    recipe, expected = reference
    out = tmp_path / "out"
    command = [sys.executable, "-m", "cli", "generate", str(recipe), "--out", str(out),
               "--device", "cpu", "--quiet", "--batch-size", "3", "--shards", "0-1"]
    killed = subprocess.run(command, cwd=Path(__file__).parents[2], capture_output=True,
                            env={**os.environ, FAULT_ENV: f"1:{tmp_path / 'died-once'}"})
    assert killed.returncode == FAULT_EXIT_STATUS, killed.stderr.decode()[-2000:]
    assert (out / "shard-000000.stats.json").exists()
    assert not (out / "shard-000001.tar").exists() and not (out / "manifest.json").exists()
    finished = (out / "shard-000000.tar").stat().st_mtime_ns
    _, summary = run("local", recipe, out)
    assert summary.shards_skipped == 1 and summary.shards_written == 2
    assert (out / "shard-000000.tar").stat().st_mtime_ns == finished, "not rebuilt"
    assert dataset_bytes(out) == expected


def descendants(pid: int) -> set[int]:
    """The processes `pid` started, and theirs, from /proc."""
    parents = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                # The command name (field 2) may hold spaces; the parent pid follows it.
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
                parents[int(entry.name)] = int(fields[1])
            except (OSError, IndexError):
                continue
    found, frontier = set(), {pid}
    while frontier:
        frontier = {child for child, parent in parents.items() if parent in frontier} - found
        found |= frontier
    return found


def running(pid: int) -> bool:
    """Whether `pid` is a process that runs (not gone, not a zombie waiting to be reaped)."""
    try:
        return (Path("/proc") / str(pid) / "stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


@pytest.mark.skipif(not Path("/proc/self/stat").exists(),
                    reason="reads the process tree from /proc")
def test_workers_die_with_a_killed_coordinator_and_publish_nothing_after(write_recipe, tmp_path):
    # Two shards of 32 views, one view per call: each worker is still sampling for seconds
    # after it reports its first batch.
    recipe = write_recipe({"classes": [{"name": "circle", "templates": ["a {colour} circle"],
                                        "groups": 16}],
                           "corner_cases": [], "views": {"count": 4},
                           "output": {"groups_per_shard": 8}})
    out = tmp_path / "out"
    command = [sys.executable, "-m", "cli", "generate", str(recipe), "--out", str(out),
               "--device", "cpu", "--batch-size", "1", "--workers", "2"]
    coordinator = subprocess.Popen(command, cwd=Path(__file__).parents[2], stderr=subprocess.PIPE,
                                   stdout=subprocess.DEVNULL)
    children: set[int] = set()
    try:
        # 1. Wait until the progress bar counts a view: the workers are mid-shard.
        output = b""
        while not re.search(rb"\| *[1-9]\d*/\d+ \[", output):
            chunk = os.read(coordinator.stderr.fileno(), 4096)
            assert chunk, f"generate ended before sampling: {output.decode()[-2000:]}"
            output += chunk
        children = descendants(coordinator.pid)
        assert len(children) >= 3, "two workers and the progress queue's manager"
        # 2. Kill the coordinator; once it is gone, its workers must follow within seconds.
        coordinator.kill()
        coordinator.wait()
        published = sorted(path.name for path in out.glob("shard-*"))
        deadline = time.monotonic() + 10
        while any(running(pid) for pid in children) and time.monotonic() < deadline:
            time.sleep(0.1)
        left = sorted(pid for pid in children if running(pid))
        assert not left, f"processes of the killed run still running: {left}"
        # 3. Nothing was published after the kill (nobody is left who could).
        assert sorted(path.name for path in out.glob("shard-*")) == published
        assert not (out / "manifest.json").exists()
    finally:
        coordinator.kill()
        coordinator.stderr.close()
        for pid in children:  # only on failure: what the killed run left running
            if running(pid):
                os.kill(pid, signal.SIGKILL)


def test_racing_publishers_of_one_shard_leave_one_correct_shard(write_recipe, tmp_path):
    plan = make_plan(load_recipe(write_recipe()))
    out = tmp_path / "out"
    prepare_output_dir(out, plan, overwrite=False)
    results = race_publishers(out, plan, 1, racers=8)
    assert sum(result.published for result in results) == 1
    stats = json.loads((out / "shard-000001.stats.json").read_text())
    assert stats == results[0].stats.to_json() == results[-1].stats.to_json()
    assert (out / "shard-000001.tar").stat().st_size == stats["bytes"]
    assert not list(out.glob(".*.tmp")), "losers discard their temporary files"
    # A late loser with other bytes neither replaces the shard nor touches its stats.
    other = publish_shard(out, 1, shard_samples(plan, 1)[:1], model_info(plan))
    assert not other.published
    assert json.loads((out / "shard-000001.stats.json").read_text()) == stats


def test_workers_starting_at_once_keep_each_others_files(write_recipe, tmp_path):
    plan = make_plan(load_recipe(write_recipe()))
    out = tmp_path / "out"
    prepare_output_dir(out, plan, overwrite=False)
    live = temporary_path(out / "shard-000001.tar")  # this process: alive
    live.write_bytes(b"being written")
    dead = out / ".shard-000002.tar.otherhost-123-0123456789abcdef.tmp"  # another host's
    dead.write_bytes(b"killed long ago")
    old = time.time() - STALE_TEMPORARY_SECONDS - 60
    os.utime(dead, (old, old))
    fresh_remote = out / ".shard-000002.tar.otherhost-124-0123456789abcdef.tmp"
    fresh_remote.write_bytes(b"another machine writing now")
    here = host_tag()
    # Killed a moment ago (a rerun right after a kill): this host and PID namespace, no such pid.
    dead_here = out / f".shard-000002.tar.{here}-999999999-0123456789abcdef.tmp"
    dead_here.write_bytes(b"killed just now")
    # The same hostname in another PID namespace (a container): its pids mean nothing here.
    hostname = here.split("_pidns")[0]
    container = out / f".shard-000002.tar.{hostname}_pidns1-999999998-0123456789abcdef.tmp"
    container.write_bytes(b"a container's process writing now")
    unfinished = out / "shard-000002.tar"  # another slice's tar, its stats not yet written
    unfinished.write_bytes(b"published, stats next")
    prepare_output_dir(out, plan, overwrite=False, shards=(0, 1))
    assert live.exists() and fresh_remote.exists() and unfinished.exists() and container.exists()
    assert not dead.exists() and not dead_here.exists()
    # The run that builds shard 2 removes what a killed worker left of it.
    prepare_output_dir(out, plan, overwrite=False, shards=(2,))
    assert not unfinished.exists()
    with pytest.raises(UserError, match="--overwrite with a slice"):
        run("local", write_recipe(), out, shards=(0,), overwrite=True)


def test_shard_selection_from_options_and_environment():
    assert parse_shard_ranges("0-2, 5,7-8", 10) == (0, 1, 2, 5, 7, 8)
    assert choose_slice(10, rank=1, world_size=4).shards == (1, 5, 9)
    slices = [choose_slice(10, rank=r, world_size=3).shards for r in range(3)]
    assert sorted(s for part in slices for s in part) == list(range(10))
    assert choose_slice(10, environ={}).shards is None
    torchrun = choose_slice(10, environ={"RANK": "2", "WORLD_SIZE": "4"})
    assert torchrun.shards == (2, 6) and "RANK/WORLD_SIZE" in torchrun.source
    slurm = {"SLURM_ARRAY_TASK_ID": "11", "SLURM_ARRAY_TASK_MIN": "10",
             "SLURM_ARRAY_TASK_COUNT": "3"}
    assert choose_slice(10, environ=slurm).shards == (1, 4, 7)
    assert choose_slice(10, shards="3", environ=slurm).shards == (3,), "flags win"
    for kwargs, message in [
        ({"shards": "4-2"}, "ends before it starts"),
        ({"shards": "0-10"}, "shard 10 is not in the plan, which has shards 0-9"),
        ({"shards": "a"}, "not a shard or a range"),
        ({"rank": 1}, "--rank and --world-size go together"),
        ({"rank": 4, "world_size": 4}, "the rank must be 0 to 3"),
        ({"shards": "1", "rank": 0, "world_size": 2}, "give one of them"),
        ({"environ": {"RANK": "x", "WORLD_SIZE": "2"}}, "RANK='x' is not a whole number"),
    ]:
        with pytest.raises(UserError, match=message):
            choose_slice(10, **kwargs)


def test_cli_option_mistakes_exit_2(write_recipe, tmp_path):
    recipe = write_recipe()
    for args, fragment in [
        (("--gpus", "all", "--device", "cpu"), "--gpus all with --device cpu"),
        (("--gpus", "2", "--workers", "2"), "give one of them"),
        (("--address", "auto"), "--address auto: only the ray engine"),
        (("--shards", "0-3"), "shard 3 is not in the plan, which has shards 0-2"),
    ]:
        result = invoke("generate", recipe, "--out", tmp_path / "o", "--quiet", *args)
        assert result.exit_code == 2 and fragment in result.output, result.output
        assert "Traceback" not in result.output


def test_gpus_map_one_worker_to_each_visible_gpu(monkeypatch):
    from synthgen.engines import processes

    monkeypatch.setattr(processes, "visible_gpus", lambda: 4)
    assert processes.resolve_gpus("all", None, "auto") == 4
    assert processes.resolve_gpus("2", None, "cuda") == 2
    assert processes.worker_devices("cuda", 3) == ["cuda:0", "cuda:1", "cuda:2"]
    assert processes.worker_devices("cuda:3", 2) == ["cuda:3", "cuda:3"]
    assert processes.worker_devices("cpu", 2) == ["cpu", "cpu"]
    with pytest.raises(UserError, match="--gpus 5: 4 CUDA GPUs are visible here"):
        processes.resolve_gpus("5", None, "auto")
    with pytest.raises(UserError, match="--gpus 'two': use all or a number"):
        processes.resolve_gpus("two", None, "auto")
    with pytest.raises(UserError, match="--gpus 0: use all or a number of GPUs from 1 up"):
        processes.resolve_gpus("0", None, "auto")
    monkeypatch.setattr(processes, "visible_gpus", lambda: 0)
    # Ray counts the cluster's GPUs, not this machine's.
    assert processes.resolve_gpus("all", None, "auto", engine="ray") is None
    assert processes.resolve_gpus("16", None, "auto", engine="ray") == 16
    with pytest.raises(UserError, match="no CUDA GPU is visible here; use --workers N"):
        processes.resolve_gpus("all", None, "auto")


def test_ray_engine_without_ray_says_how_to_install_it(write_recipe, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)  # import ray raises ImportError
    with pytest.raises(UserError, match=r"Ray is not installed; pip install 'synthgen\[ray\]'"):
        run("ray", write_recipe(), tmp_path / "out")
    assert not (tmp_path / "out").exists(), "nothing written before the engine can run"
