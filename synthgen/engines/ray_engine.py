"""The Ray engine: a pool of actors, one GPU each (one CPU each on the CPU), on a Ray cluster.

Each actor loads the pipeline on its first shard and builds many. The driver gives each
actor one shard at a time and collects results with `ray.wait`, so progress arrives per
shard in one progress bar, and an actor that dies (node lost, killed, out of memory) costs
only the shard it was building: the driver starts a fresh actor and hands that shard out
again, at most `options.max_attempts` times. Output goes to `out_dir`, which must be one
filesystem path every node sees (NFS, Lustre, a mounted bucket with hard links).

Ray is optional (`pip install 'synthgen[ray]'`) and imported only here, when this engine runs.
A Ray already initialised in this process is used as it is; otherwise `ray.init` joins
`options.address` or starts a local Ray, which is shut down again at the end.
"""

from __future__ import annotations

import os
import sys
import time

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


class RayShardWorker:
    """The actor: a `ShardWorker` made on the first call, so that a load error comes back as
    the call's error (a UserError stays one) instead of killing the actor."""

    def __init__(self, plan: Plan, store: DatasetStore, options: GenerateOptions, device: str,
                 fault: str | None):
        self.arguments = (plan, store, options, device, fault)
        self.worker: ShardWorker | None = None

    def build(self, shard: int) -> ShardsBuilt:
        if self.worker is None:
            self.worker = ShardWorker(*self.arguments)
        return self.worker.build([shard])


def _import_ray():
    try:
        import ray
    except ImportError:
        raise UserError("--engine ray: Ray is not installed; pip install 'synthgen[ray]' "
                        "(or pip install 'ray>=2.9'), or use the local engine") from None
    return ray


def generate_with_ray(plan: Plan, out_dir: DatasetStore, options: GenerateOptions) -> RunSummary:
    """Build the shards `out_dir` lacks on a Ray actor pool, then the manifest once every
    shard of the dataset is done."""
    from synthgen.builtin import resolve_model_source

    ray = _import_ray()
    started = time.perf_counter()
    # 1. Check the output directory (the driver's view of the shared path); list the work.
    summary, pending = start_run(plan, out_dir, options, engine="ray")
    if not pending:
        return finish_run(plan, out_dir, options, summary, started)
    resolve_model_source(plan.recipe.model.id)  # an unknown builtin name fails here, once
    # 2. Join or start Ray; size the pool from the cluster when --workers is not given.
    started_ray = not ray.is_initialized()
    if started_ray:
        local_cpus = None if options.address else max(os.cpu_count() or 1, options.workers or 1)
        try:
            ray.init(address=options.address, num_cpus=local_cpus, include_dashboard=False,
                     log_to_driver=True)
        except ConnectionError as error:
            raise UserError(f"--address {options.address}: no Ray cluster answers there ({error}); "
                            "start one (ray start --head) or fix the address, or drop --address "
                            "to start a local Ray for this run") from None
    try:
        resources = ray.cluster_resources()
        on_gpu = options.device.startswith("cuda") or (
            options.device == "auto" and resources.get("GPU", 0) >= 1)
        if options.device.startswith("cuda") and resources.get("GPU", 0) < 1:
            raise UserError(f"--device {options.device} with --engine ray: the Ray cluster has "
                            "no GPUs; use --device cpu, or join a cluster with GPUs (--address)")
        per_actor = {"num_gpus": 1, "num_cpus": 1} if on_gpu else {"num_cpus": options.cpu_threads}
        capacity = int(resources.get("GPU", 0) if on_gpu
                       else resources.get("CPU", 1) // options.cpu_threads)
        # An actor the cluster cannot place would hold its shard forever, so the pool is
        # never larger than the cluster is now.
        count = min(options.workers or capacity, max(capacity, 1), len(pending))
        if options.workers and options.workers > capacity:
            print(f"note: --workers {options.workers}: the Ray cluster has room for {capacity} "
                  f"{'GPU' if on_gpu else 'CPU'} actors now; starting {count}", file=sys.stderr)
        # Ray sets CUDA_VISIBLE_DEVICES to the actor's one GPU, which is then cuda (cuda:0).
        device = "cuda" if on_gpu else "cpu"
        summary.workers = count
        actor_class = ray.remote(**per_actor)(RayShardWorker)
        arguments = (ray.put(plan), out_dir, options, device, fault_from_environment())
        _run_pool(ray, actor_class, arguments, count, plan, out_dir, options, pending, summary)
    finally:
        if started_ray:
            ray.shutdown()
    return finish_run(plan, out_dir, options, summary, started)


def _run_pool(ray, actor_class, arguments, count: int, plan: Plan, out_dir: DatasetStore,
              options: GenerateOptions, pending: list[int], summary: RunSummary) -> None:
    pool = _ActorPool(ray, actor_class, arguments, count)
    bar = tqdm(total=shard_images(plan, pending),
               unit="img", desc=f"generate {plan.recipe.name} (ray, {count} actors)",
               disable=not options.progress, dynamic_ncols=True)
    try:
        # 3. Hand out the shards one at a time; a dead actor's shard starts again.
        build_with_retries(pool, pending, out_dir, options.max_attempts, summary,
                           on_built=lambda shard, built: bar.update(built.images))
    finally:
        bar.close()
        for actor in pool.actors:
            ray.kill(actor, no_restart=True)


class _ActorPool:
    """`count` actors of `actor_class`, for `build_with_retries`; a handle is an object ref."""

    def __init__(self, ray, actor_class, arguments, count: int):
        self.ray = ray
        self.actor_class = actor_class
        self.arguments = arguments
        self.actors = [actor_class.remote(*arguments) for _ in range(count)]
        self.size = count

    def submit(self, worker: int, shard: int):
        return self.actors[worker].build.remote(shard)

    def finished(self, running: list) -> list:
        ready, _ = self.ray.wait(running, num_returns=1)
        return ready

    def result(self, handle) -> ShardsBuilt:
        from ray.exceptions import RayActorError, RayTaskError

        try:
            return self.ray.get(handle)
        except RayActorError:
            raise WorkerLost from None
        except RayTaskError as error:
            cause = getattr(error, "cause", None)
            if isinstance(cause, UserError):
                raise cause from None
            raise

    def replace(self, worker: int) -> None:
        self.ray.kill(self.actors[worker], no_restart=True)
        self.actors[worker] = self.actor_class.remote(*self.arguments)

    def describe(self, worker: int) -> str:
        return "its Ray actor"
