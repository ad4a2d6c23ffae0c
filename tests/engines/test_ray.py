"""The Ray engine on a local Ray (4 logical CPUs, started once for this module)."""

from __future__ import annotations

import pytest

from engine_helpers import dataset_bytes, run
from synthgen.engines.local import FAULT_ENV

ray = pytest.importorskip("ray", reason="the Ray engine needs pip install 'synthgen[ray]'")


@pytest.fixture(scope="module", autouse=True)
def local_ray():
    """One Ray session for the whole module: starting Ray takes seconds. A CPU actor asks for
    --cpu-threads CPUs (default 2), so 4 logical CPUs hold the two actors the tests start."""
    ray.init(num_cpus=4, include_dashboard=False, log_to_driver=False,
             configure_logging=False)
    yield
    ray.shutdown()


def test_two_ray_actors_give_the_same_bytes_and_rebuild_a_killed_actors_shard(
        reference, tmp_path, monkeypatch):
    recipe, expected = reference
    # The actor that samples shard 2 dies after its first batch (os._exit: the actor is lost).
    monkeypatch.setenv(FAULT_ENV, f"2:{tmp_path / 'died-once'}")
    _, summary = run("ray", recipe, tmp_path / "out", workers=2)
    assert (tmp_path / "died-once").exists(), "the fault was injected"
    assert summary.engine == "ray" and summary.workers == 2 and summary.shards_retried == 1
    assert summary.shards_written == 3 and summary.images_generated == 18, "nothing doubled"
    assert dataset_bytes(tmp_path / "out") == expected
    # A rerun finds everything done and builds nothing.
    _, again = run("ray", recipe, tmp_path / "out", workers=2)
    assert again.shards_written == 0 and again.shards_skipped == 3 and again.manifest_written
