"""The processes engine: one worker process per GPU (or per CPU worker) on this machine.

Each worker is a single-process `ProcessPoolExecutor` (spawn start method, so CUDA
initialises cleanly in the child) pinned to one device; it loads the pipeline on its first
shard and keeps it for all the others. The coordinator gives each worker one shard at a
time, so a worker that dies (killed, out of memory, a driver fault) costs only the shard it
was building: that worker is replaced by a fresh process on the same device and the shard
is started again, at most `options.max_attempts` times. Progress arrives per pipeline call
through one queue, into one progress bar. The queue lives in a manager process, so a worker
killed in the middle of a put cannot leave a lock held that would stall the others.

Workers and the manager end with the coordinator (`exit_with_parent`): killed (`kill -9`,
SIGTERM, out of memory), it can no longer collect their shards, and a worker left running
would publish them into whatever dataset the location holds next.
"""

from __future__ import annotations

import ctypes
import multiprocessing
import os
import queue
import signal
import sys
import threading
import time
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from multiprocessing.connection import wait as wait_for_ready
from multiprocessing.managers import SyncManager

from tqdm import tqdm

from synthgen.engines.local import (
    GenerateOptions,
    RunSummary,
    ShardsBuilt,
    ShardWorker,
    fault_from_environment,
    finish_run,
    shard_images,
    start_run,
)
from synthgen.engines.retry import WorkerLost, build_with_retries
from synthgen.errors import UserError
from synthgen.plan import Plan
from synthgen.store import DatasetStore


def visible_gpus() -> int:
    import torch

    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def resolve_gpus(gpus: str, workers: int | None, device: str,
                 engine: str = "local") -> int | None:
    """`--gpus all|N` -> the number of workers, one per GPU: the GPUs visible on this machine
    (local), or the cluster's (ray: None for all of them; they need not be visible here)."""
    if workers is not None:
        raise UserError(f"--gpus {gpus} with --workers {workers}: give one of them "
                        "(--gpus N is --workers N with one GPU each)")
    if device not in ("auto", "cuda"):
        raise UserError(f"--gpus {gpus} with --device {device}: --gpus puts one worker on each "
                        "GPU; drop --device, or use --workers N --device cpu for CPU workers")
    if gpus == "all":
        count = None
    else:
        try:
            count = int(gpus)
        except ValueError:
            raise UserError(f"--gpus {gpus!r}: use all or a number of GPUs, e.g. --gpus 4") from None
        if count < 1:
            raise UserError(f"--gpus {gpus}: use all or a number of GPUs from 1 up")
    if engine == "ray":
        return count
    visible = visible_gpus()
    if visible == 0:
        raise UserError(f"--gpus {gpus}: no CUDA GPU is visible here; use --workers N "
                        "--device cpu for N CPU worker processes, or --engine ray for a cluster")
    if count is None:
        return visible
    if count > visible:
        raise UserError(f"--gpus {gpus}: {visible} CUDA GPUs are visible here; pass a number "
                        f"from 1 to {visible} or all (CUDA_VISIBLE_DEVICES picks which)")
    return count


def worker_devices(device: str, workers: int) -> list[str]:
    """One device per worker: `cuda` (or `auto` on a GPU machine) spreads the workers over
    the visible GPUs, cuda:0, cuda:1, ...; `cpu` or an explicit `cuda:N` is used by all."""
    if device in ("auto", "cuda"):
        visible = visible_gpus()
        if visible:
            return [f"cuda:{index % visible}" for index in range(workers)]
        if device == "cuda":
            raise UserError("--device cuda: no CUDA GPU is visible here; use --device cpu")
        return ["cpu"] * workers
    return [device] * workers


# prctl(2): have the kernel send a signal to this process when its parent dies.
_PR_SET_PDEATHSIG = 1
# The status of a process that ended because its parent had died (nobody reads it).
_ORPHANED_EXIT_STATUS = 1


def exit_with_parent() -> None:
    """End this process (started by multiprocessing's spawn) as soon as its parent dies.

    Two ways, because each misses a case of the other: on Linux the kernel kills it at once
    (PR_SET_PDEATHSIG), even while a C call holds the GIL; everywhere, a daemon thread waits
    on the pipe multiprocessing keeps open from the parent (`parent_process().sentinel`),
    which closes when the parent dies, also before the prctl took effect.
    """
    parent = multiprocessing.parent_process()
    if sys.platform == "linux":
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    if parent is None:
        return

    def exit_when_parent_dies() -> None:
        wait_for_ready([parent.sentinel])
        os._exit(_ORPHANED_EXIT_STATUS)

    threading.Thread(target=exit_when_parent_dies, name="exit-with-parent", daemon=True).start()


# The worker process's state: set by `_start_worker`, the model loaded by the first shard.
_WORKER: dict = {}


def _start_worker(plan: Plan, out_dir: DatasetStore, options: GenerateOptions, device: str,
                  progress, fault: str | None) -> None:
    exit_with_parent()
    _WORKER.update(plan=plan, out_dir=out_dir, options=options, device=device,
                   progress=progress, fault=fault, shard_worker=None)


def _build_shard(shard: int) -> ShardsBuilt:
    # Loading here rather than in the initializer lets a load error (a UserError) come back
    # through the future like any other, instead of breaking the pool.
    if _WORKER["shard_worker"] is None:
        _WORKER["shard_worker"] = ShardWorker(_WORKER["plan"], _WORKER["out_dir"],
                                              _WORKER["options"], _WORKER["device"],
                                              _WORKER["fault"])
    progress = _WORKER["progress"]
    return _WORKER["shard_worker"].build([shard], on_batch=lambda s, n: progress.put((s, n)))


def generate_with_processes(plan: Plan, out_dir: DatasetStore, options: GenerateOptions) -> RunSummary:
    """Build the shards `out_dir` lacks with `options.workers` worker processes, one device
    each, then the manifest once every shard of the dataset is done."""
    from synthgen.builtin import resolve_model_source

    started = time.perf_counter()
    # 1. Check the output directory and find the shards left to build.
    summary, pending = start_run(plan, out_dir, options, engine="processes")
    devices = worker_devices(options.device, options.workers or 1)
    summary.workers = len(devices)
    if not pending:
        return finish_run(plan, out_dir, options, summary, started)
    resolve_model_source(plan.recipe.model.id)  # an unknown builtin name fails here, once
    # 2. One single-process pool per device; a dead one is replaced without touching the rest.
    context = multiprocessing.get_context("spawn")
    manager = SyncManager(ctx=context)
    manager.start(exit_with_parent)
    progress = manager.Queue()
    fault = fault_from_environment()

    def start_worker(device: str) -> ProcessPoolExecutor:
        return ProcessPoolExecutor(1, mp_context=context, initializer=_start_worker,
                                   initargs=(plan, out_dir, options, device, progress, fault))

    bar = tqdm(total=shard_images(plan, pending),
               unit="img", desc=f"generate {plan.recipe.name} ({len(devices)} workers)",
               disable=not options.progress, dynamic_ncols=True)
    pool = _ProcessPool(devices, start_worker, progress, bar)
    completed = False
    try:
        # 3. Hand out the shards one at a time; a dead worker's shard starts again.
        build_with_retries(pool, pending, out_dir, options.max_attempts, summary,
                           on_built=lambda shard, built: pool.counted.pop(shard, None),
                           # Undo the dead worker's progress so nothing is counted twice.
                           on_lost=lambda shard: bar.update(-pool.counted.pop(shard, 0)))
        completed = True
    finally:
        for worker in pool.workers:
            _stop(worker, wait=completed)
        if completed:
            _drain(progress, bar, pool.counted)
        bar.close()
        manager.shutdown()
    return finish_run(plan, out_dir, options, summary, started)


class _ProcessPool:
    """One single-process pool per device, for `build_with_retries`; the workers' progress
    goes into `bar` whenever it waits."""

    def __init__(self, devices: list[str], start_worker, progress, bar: tqdm):
        self.devices = devices
        self.start_worker = start_worker
        self.progress = progress
        self.bar = bar
        self.workers = [start_worker(device) for device in devices]
        self.size = len(devices)
        self.counted: dict[int, int] = {}  # images reported so far per running shard

    def submit(self, worker: int, shard: int) -> Future:
        try:
            return self.workers[worker].submit(_build_shard, shard)
        except BrokenProcessPool:
            # Its process died while idle (the OOM killer, a driver fault): a fresh one takes
            # the shard, as one that dies mid-shard is replaced (`WorkerLost`).
            self.replace(worker)
            return self.workers[worker].submit(_build_shard, shard)

    def finished(self, running: list[Future]) -> set[Future]:
        done, _ = wait(running, timeout=0.5, return_when=FIRST_COMPLETED)
        _drain(self.progress, self.bar, self.counted)
        return done

    def result(self, handle: Future) -> ShardsBuilt:
        try:
            return handle.result()
        except BrokenProcessPool:
            raise WorkerLost from None

    def replace(self, worker: int) -> None:
        self.workers[worker].shutdown(wait=False, cancel_futures=True)
        self.workers[worker] = self.start_worker(self.devices[worker])

    def describe(self, worker: int) -> str:
        return f"its worker on {self.devices[worker]}"


def _drain(progress, bar: tqdm, counted: dict[int, int]) -> None:
    while True:
        try:
            shard, images = progress.get_nowait()
        except queue.Empty:
            return
        counted[shard] = counted.get(shard, 0) + images
        bar.update(images)


def _stop(worker: ProcessPoolExecutor, wait: bool) -> None:
    """Shut a worker down; on an error or Ctrl-C (`wait` False), without waiting for its
    current shard."""
    if wait:
        worker.shutdown(wait=True)
        return
    worker.shutdown(wait=False, cancel_futures=True)
    terminate = getattr(worker, "terminate_workers", None)  # Python 3.14+
    if terminate is not None:
        terminate()
        return
    for process in list((getattr(worker, "_processes", None) or {}).values()):
        if process.is_alive():
            process.terminate()
        process.join(timeout=10)
