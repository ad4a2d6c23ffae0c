"""The retry loop the multi-worker engines share (processes, ray).

An engine supplies a `WorkerPool` (how to start a shard on a worker, wait for finished ones,
read a result, replace a dead worker); `build_with_retries` gives each idle worker the next
shard, one at a time, and restarts the shard of a worker that died on a fresh worker, at
most `max_attempts` times. Because a worker holds one shard at a time, a death costs only
that shard, and nobody else builds it, so its debris can be removed before the restart.
"""

from __future__ import annotations

from typing import Callable, Hashable, Iterable, Protocol

from synthgen.engines.local import RunSummary, ShardsBuilt, add_built
from synthgen.store import DatasetStore
from synthgen.write import remove_stale_temporaries, remove_unfinished_shard, shard_name


class WorkerDied(RuntimeError):
    """A shard's worker died `max_attempts` times; the run stops and can be rerun."""


class WorkerLost(Exception):
    """Raised by `WorkerPool.result` when the worker building the shard died; any other
    error of the shard's own (a UserError, a bug) is raised as it is and not retried."""


class WorkerPool(Protocol):
    """The workers of one engine, numbered 0 .. size-1; a handle is what `submit` returns."""

    size: int

    def submit(self, worker: int, shard: int) -> Hashable:
        """Start building `shard` on `worker`."""

    def finished(self, running: list[Hashable]) -> Iterable[Hashable]:
        """Wait until at least one of `running` is done (or a short while); return those done."""

    def result(self, handle: Hashable) -> ShardsBuilt:
        """The finished shard's result; raises `WorkerLost` if its worker died."""

    def replace(self, worker: int) -> None:
        """Put a fresh worker in place of `worker`, which died."""

    def describe(self, worker: int) -> str:
        """`worker` for a message, e.g. "its worker on cuda:1"."""


def build_with_retries(pool: WorkerPool, pending: list[int], store: DatasetStore,
                       max_attempts: int, summary: RunSummary,
                       on_built: Callable[[int, ShardsBuilt], None] = lambda shard, built: None,
                       on_lost: Callable[[int], None] = lambda shard: None) -> None:
    """Build every shard of `pending` on `pool`, adding what each built to `summary`.

    A shard whose worker died is started again first, on a fresh worker, after `on_lost`
    (e.g. to take its progress back) and after its debris is removed; `summary.shards_retried`
    counts those restarts. Raises `WorkerDied`, naming the shard, once a shard has been
    started `max_attempts` times and its worker died each time.
    """
    waiting = list(pending)  # shards not yet handed to a worker, in order
    running: dict[Hashable, tuple[int, int]] = {}  # handle -> (worker, shard)
    attempts: dict[int, int] = {}
    while waiting or running:
        # 1. Give every idle worker the next shard.
        busy = {worker for worker, _ in running.values()}
        for worker in range(pool.size):
            if worker not in busy and waiting:
                shard = waiting.pop(0)
                attempts[shard] = attempts.get(shard, 0) + 1
                running[pool.submit(worker, shard)] = (worker, shard)
        # 2. Collect finished shards; restart the shard of a worker that died.
        for handle in pool.finished(list(running)):
            worker, shard = running.pop(handle)
            try:
                built = pool.result(handle)
            except WorkerLost:
                if attempts[shard] >= max_attempts:
                    raise WorkerDied(
                        f"{shard_name(shard)}: {pool.describe(worker)} died {attempts[shard]} "
                        "times; see the errors above, then rerun to build the shards that "
                        "are left") from None
                on_lost(shard)
                pool.replace(worker)
                # No other worker builds this shard, so its debris can go.
                remove_unfinished_shard(store, shard)
                remove_stale_temporaries(store)
                waiting.insert(0, shard)
                summary.shards_retried += 1
                continue
            on_built(shard, built)
            add_built(summary, built)
