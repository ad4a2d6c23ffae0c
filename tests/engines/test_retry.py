"""The retry loop the multi-worker engines share, on an in-process pool whose workers die on
demand: a dead worker's shard is rebuilt on a fresh worker up to `max_attempts` times, its
debris removed first, and a shard that keeps killing its worker is named when the run stops."""

from __future__ import annotations

from collections import Counter

import pytest

from synthgen.engines.local import RunSummary, ShardsBuilt
from synthgen.engines.retry import WorkerDied, WorkerLost, build_with_retries
from synthgen.errors import UserError
from synthgen.store import open_store


class DyingPool:
    """Two workers; a shard in `deaths` kills the worker building it that many times."""

    def __init__(self, deaths: dict[int, int], error: Exception | None = None):
        self.size = 2
        self.deaths = Counter(deaths)
        self.error = error
        self.started: list[tuple[int, int]] = []  # (worker, shard) in the order handed out
        self.replaced: list[int] = []

    def submit(self, worker: int, shard: int):
        self.started.append((worker, shard))
        return (len(self.started), shard)

    def finished(self, running):
        return running[-1:]  # the shard started last finishes first

    def result(self, handle) -> ShardsBuilt:
        _, shard = handle
        if self.error is not None:
            raise self.error
        if self.deaths[shard] > 0:
            self.deaths[shard] -= 1
            raise WorkerLost
        return ShardsBuilt(shards=(shard,), published=1, images=10 + shard)

    def replace(self, worker: int) -> None:
        self.replaced.append(worker)

    def describe(self, worker: int) -> str:
        return f"its worker number {worker}"


def summary() -> RunSummary:
    return RunSummary(out_dir="out", shards_total=4, shards_skipped=0)


def test_a_dead_workers_shard_is_rebuilt_first_on_a_fresh_worker(tmp_path):
    store = open_store(tmp_path)
    store.write("shard-000001.tar", b"half a tar of the dead worker")  # no stats: unfinished
    pool, result, built, lost = DyingPool({1: 2}), summary(), [], []
    build_with_retries(pool, [0, 1, 2, 3], store, max_attempts=3, summary=result,
                       on_built=lambda shard, b: built.append(shard), on_lost=lost.append)
    assert Counter(shard for _, shard in pool.started) == {0: 1, 1: 3, 2: 1, 3: 1}
    # A restarted shard goes ahead of the shards never started.
    assert [shard for _, shard in pool.started[:4]] == [0, 1, 1, 1]
    assert pool.replaced == [1, 1] and lost == [1, 1]
    assert sorted(built) == [0, 1, 2, 3]
    assert result.shards_retried == 2 and result.shards_written == 4
    assert result.images_generated == 10 + 11 + 12 + 13, "each shard counted once"
    assert "shard-000001.tar" not in store.names(), "the dead worker's debris is removed"


def test_a_shard_whose_worker_dies_max_attempts_times_stops_the_run_naming_it(tmp_path):
    pool = DyingPool({2: 3})
    with pytest.raises(WorkerDied, match=r"^shard-000002.tar: its worker number \d died 3 times; "
                                         r"see the errors above, then rerun"):
        build_with_retries(pool, [0, 1, 2, 3], open_store(tmp_path), max_attempts=3,
                           summary=summary())
    assert Counter(shard for _, shard in pool.started)[2] == 3


def test_an_error_of_the_shard_itself_is_raised_as_it_is_without_a_retry(tmp_path):
    pool = DyingPool({}, error=UserError("model.id: no such model"))
    with pytest.raises(UserError, match="no such model"):
        build_with_retries(pool, [0, 1], open_store(tmp_path), max_attempts=3, summary=summary())
    assert pool.replaced == []
