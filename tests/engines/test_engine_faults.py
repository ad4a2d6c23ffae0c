"""Engine faults found in review (2026-12-03), each test failing before its fix: a Slurm array
with a step, torchrun ranks of one node all on cuda:0, a worker process dying while idle."""

from __future__ import annotations

import multiprocessing
import os
import queue
import signal
import time
from concurrent.futures import ProcessPoolExecutor

from tqdm import tqdm

from synthgen.engines.local import RunSummary, ShardsBuilt
from synthgen.engines.slices import choose_slice
from synthgen.store import open_store


def test_slurm_array_with_a_step_gives_every_shard_to_exactly_one_task():
    # sbatch --array=0-6:2 runs tasks 0, 2, 4, 6: four tasks (COUNT=4), STEP=2.
    shard_count = 10
    built: list[int] = []
    for task in (0, 2, 4, 6):
        environ = {"SLURM_ARRAY_TASK_ID": str(task), "SLURM_ARRAY_TASK_MIN": "0",
                   "SLURM_ARRAY_TASK_MAX": "6", "SLURM_ARRAY_TASK_STEP": "2",
                   "SLURM_ARRAY_TASK_COUNT": "4"}
        # Today tasks 4 and 6 raise "the rank must be 0 to 3", and tasks 0 and 2 build
        # shards 0,4,8 and 2,6: shards 1,3,5,7,9 are built by nobody.
        built.extend(choose_slice(shard_count, environ=environ).shards)
    assert sorted(built) == list(range(shard_count))


def test_torchrun_ranks_on_one_node_each_get_their_own_gpu(write_recipe, tmp_path, monkeypatch):
    """torchrun --nproc-per-node 2: ranks 0 and 1 of one node must not both use cuda:0."""
    import torch

    import synthgen.api as api
    import synthgen.engines as engines
    from synthgen.engines.local import RunSummary

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("LOCAL_RANK", "1")
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "2")
    seen = {}

    def fake_run_engine(name, plan, out, options):
        seen["device"] = options.device
        return RunSummary(out_dir=str(out), shards_total=plan.shard_count, shards_skipped=0)

    monkeypatch.setattr(engines, "run_engine", fake_run_engine)
    api.generate(write_recipe(), tmp_path / "out", progress=False)
    # "auto" becomes torch.device("cuda"), which is cuda:0 in every rank of the node.
    assert seen["device"] == "cuda:1"


class _FakeShardWorker:
    def build(self, shards, on_batch=None):
        return ShardsBuilt(shards=tuple(shards), published=1, images=1)


def _fake_worker_initializer():
    from synthgen.engines import processes

    processes._WORKER.update(shard_worker=_FakeShardWorker(), progress=None)


def test_a_worker_process_that_dies_while_idle_is_replaced_not_fatal(tmp_path):
    """A worker killed between shards (OOM killer, driver fault) should cost nothing: the
    next shard goes to a fresh worker. Today `submit` on its broken pool raises
    BrokenProcessPool out of build_with_retries and the whole run stops."""
    from synthgen.engines.processes import _ProcessPool
    from synthgen.engines.retry import build_with_retries

    context = multiprocessing.get_context("fork")

    def start_worker(device):
        return ProcessPoolExecutor(1, mp_context=context, initializer=_fake_worker_initializer)

    bar = tqdm(disable=True)
    pool = _ProcessPool(["cpu"], start_worker, queue.Queue(), bar)
    try:
        pid = pool.workers[0].submit(os.getpid).result(timeout=60)
        os.kill(pid, signal.SIGKILL)
        deadline = time.monotonic() + 30
        while not getattr(pool.workers[0], "_broken", False) and time.monotonic() < deadline:
            time.sleep(0.05)
        summary = RunSummary(out_dir=str(tmp_path), shards_total=1, shards_skipped=0)
        build_with_retries(pool, [0], open_store(tmp_path), 3, summary)
        assert summary.shards_written == 1
    finally:
        for worker in pool.workers:
            worker.shutdown(wait=False, cancel_futures=True)
        bar.close()
