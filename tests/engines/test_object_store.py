"""Datasets written to an object store URL: an in-process fake S3 (moto's server on loopback)
through s3fs, and fsspec's memory filesystem. The same bytes as a local directory, the same
first-publisher-wins rule, the same resume."""

from __future__ import annotations

import hashlib
import json
import logging
import os

import pytest
from click.testing import CliRunner

from synthgen.cli import main
from engine_helpers import model_info, race_publishers, run, shard_samples
from synthgen.engines.local import FAULT_ENV
from synthgen.errors import UserError
from synthgen.plan import make_plan
from synthgen.recipe import load_recipe
from synthgen.store import FsspecStore, open_store
from synthgen.write import prepare_output_dir, publish_shard, shard_done

moto_server = pytest.importorskip("moto.server", reason="the S3 tests need pip install 'moto[server]'")
pytest.importorskip("s3fs", reason="s3:// output needs pip install 'synthgen[s3]'")

BUCKET = "synthgen-test"


@pytest.fixture(scope="module")
def s3_endpoint():
    """A fake S3 on 127.0.0.1 for this module; worker processes reach it too."""
    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    server = moto_server.ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    yield f"http://{host}:{port}"
    server.stop()


@pytest.fixture
def s3(s3_endpoint, monkeypatch):
    """Credentials and endpoint in the environment (as a user sets them), and a fresh bucket;
    returns the s3fs filesystem to look at what was written."""
    import s3fs

    for name, value in {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
                        "AWS_DEFAULT_REGION": "us-east-1",
                        "AWS_ENDPOINT_URL_S3": s3_endpoint}.items():
        monkeypatch.setenv(name, value)
    fs = s3fs.S3FileSystem(skip_instance_cache=True)
    if fs.exists(BUCKET):
        fs.rm(BUCKET, recursive=True)
    fs.mkdir(BUCKET)
    fs.invalidate_cache()
    return fs


def store_bytes(fs, prefix: str) -> dict[str, str]:
    """sha256 of every shard and the manifest under `prefix` (as dataset_bytes does locally)."""
    fs.invalidate_cache()
    names = sorted(path.rsplit("/", 1)[-1] for path in fs.ls(prefix, detail=False))
    kept = [n for n in names if n.startswith("shard-") and n.endswith(".tar")] + ["manifest.json"]
    return {name: hashlib.sha256(fs.cat_file(f"{prefix}/{name}")).hexdigest() for name in kept}


def manifest_free(hashes: dict[str, str]) -> dict[str, str]:
    return {name: digest for name, digest in hashes.items() if name != "manifest.json"}


def test_local_engine_writes_the_same_shards_to_s3_and_a_rerun_builds_nothing(reference, s3):
    recipe, expected = reference
    _, summary = run("local", recipe, f"s3://{BUCKET}/data")
    assert summary.shards_written == 3 and summary.manifest_written
    assert summary.out_dir == f"s3://{BUCKET}/data"
    written = store_bytes(s3, f"{BUCKET}/data")
    # The shards are byte-identical; the manifest too, since it holds no location.
    assert written == expected
    manifest = json.loads(s3.cat_file(f"{BUCKET}/data/manifest.json"))
    assert [entry["sha256"] for entry in manifest["shards"]] == [
        hashlib.sha256(s3.cat_file(f"{BUCKET}/data/{entry['name']}")).hexdigest()
        for entry in manifest["shards"]]
    _, again = run("local", recipe, f"s3://{BUCKET}/data")
    assert again.shards_written == 0 and again.shards_skipped == 3 and again.manifest_written


def test_two_worker_processes_on_s3_rebuild_a_killed_workers_shard(reference, s3, tmp_path,
                                                                   monkeypatch):
    recipe, expected = reference
    monkeypatch.setenv(FAULT_ENV, f"1:{tmp_path / 'died-once'}")
    _, summary = run("processes", recipe, f"s3://{BUCKET}/multi", workers=2)
    assert (tmp_path / "died-once").exists(), "the fault was injected"
    assert summary.shards_retried == 1 and summary.shards_written == 3
    assert store_bytes(s3, f"{BUCKET}/multi") == expected


def test_a_rerun_on_s3_replaces_a_tar_left_without_stats(reference, s3):
    recipe, expected = reference
    # What a worker killed between its two writes leaves: a tar (here a wrong one), no stats.
    plan = make_plan(load_recipe(recipe))
    prepare_output_dir(f"s3://{BUCKET}/cut", plan, overwrite=False)
    s3.pipe_file(f"{BUCKET}/cut/shard-000002.tar", b"half a shard")
    assert not shard_done(f"s3://{BUCKET}/cut", 2)
    _, summary = run("local", recipe, f"s3://{BUCKET}/cut")
    assert summary.shards_written == 3
    assert store_bytes(s3, f"{BUCKET}/cut") == expected


@pytest.mark.parametrize("location", ["s3", "memory"])
def test_racing_publishers_in_an_object_store_leave_one_shard(write_recipe, location, request):
    if location == "s3":
        request.getfixturevalue("s3")
    url = f"s3://{BUCKET}/race" if location == "s3" else f"memory://race-{id(request)}"
    plan = make_plan(load_recipe(write_recipe()))
    store = open_store(url)
    prepare_output_dir(store, plan, overwrite=False)
    results = race_publishers(url, plan, 1, racers=6)
    assert sum(result.published for result in results) == 1
    stats = json.loads(store.read("shard-000001.stats.json"))
    assert stats == results[0].stats.to_json() == results[-1].stats.to_json()
    assert store.size("shard-000001.tar") == stats["bytes"]
    # A late loser with other bytes neither replaces the shard nor touches its stats.
    assert not publish_shard(url, 1, shard_samples(plan, 1)[:1], model_info(plan)).published
    assert json.loads(store.read("shard-000001.stats.json")) == stats
    assert store.names() == ["recipe.json", "shard-000001.stats.json", "shard-000001.tar"]


def test_cli_generates_and_finalizes_an_s3_dataset(write_recipe, s3):
    recipe = write_recipe()
    url = f"s3://{BUCKET}/cli"
    for rank in range(2):  # two slices, then finalize by hand
        result = CliRunner().invoke(main, ["generate", str(recipe), "--out", url, "--device", "cpu",
                                           "--quiet", "--rank", str(rank), "--world-size", "3"])
        assert result.exit_code == 0, result.output
    assert not s3.exists(f"{BUCKET}/cli/manifest.json")
    result = CliRunner().invoke(main, ["finalize", url])
    assert result.exit_code == 2 and "shards 2" in result.output and "--shards 2" in result.output
    result = CliRunner().invoke(main, ["generate", str(recipe), "--out", url, "--device", "cpu",
                                       "--quiet", "--shards", "2"])
    assert result.exit_code == 0 and "wrote 1 shard (" in result.output
    s3.invalidate_cache()
    assert s3.exists(f"{BUCKET}/cli/manifest.json")
    result = CliRunner().invoke(main, ["finalize", url])
    assert result.exit_code == 0 and "manifest.json written (3 shards" in result.output


def test_unsupported_or_unreachable_locations_give_one_clear_message(write_recipe, s3):
    recipe = write_recipe()
    result = CliRunner().invoke(main, ["generate", str(recipe), "--out", "ftp://host/data"])
    assert result.exit_code == 2 and "ftp:// is not a supported store" in result.output
    assert "Traceback" not in result.output
    result = CliRunner().invoke(main, ["generate", str(recipe), "--out", "s3://no-such-bucket/x",
                                       "--device", "cpu", "--quiet"])
    assert result.exit_code == 2, result.output
    assert "bucket 'no-such-bucket' does not exist" in result.output
    assert not s3.exists("no-such-bucket"), "synthgen never creates buckets"
    with pytest.raises(UserError, match="gs://"):
        FsspecStore("gs://bucket/data")


def test_ray_actors_write_the_same_shards_to_s3(reference, s3, s3_endpoint, tmp_path, monkeypatch):
    ray = pytest.importorskip("ray", reason="the Ray engine needs pip install 'synthgen[ray]'")
    recipe, expected = reference
    # On a cluster every node has its own AWS settings; here the actors get the test's.
    storage_env = {name: value for name, value in os.environ.items()
                   if name.startswith("AWS_")}
    # 4 logical CPUs: room for two actors of the default 2 CPU threads.
    ray.init(num_cpus=4, include_dashboard=False, log_to_driver=False, configure_logging=False,
             runtime_env={"env_vars": storage_env})
    try:
        monkeypatch.setenv(FAULT_ENV, f"0:{tmp_path / 'died-once'}")
        _, summary = run("ray", recipe, f"s3://{BUCKET}/ray", workers=2)
    finally:
        ray.shutdown()
    assert (tmp_path / "died-once").exists(), "the fault was injected"
    assert summary.shards_retried == 1 and summary.shards_written == 3
    assert store_bytes(s3, f"{BUCKET}/ray") == expected
