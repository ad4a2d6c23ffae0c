"""Generation end to end on tiny random pipelines: shards, metadata, determinism, resume."""

from __future__ import annotations

import hashlib
import io
import json
from pathlib import Path

import numpy as np
import pytest
import webdataset
from PIL import Image

from sampling_checks import (
    assert_same_pictures,
    check_padded_batches_do_not_mix_views,
    count_prompt_encodings,
    dataset_bytes,
    read_planned_samples,
)
from synthgen.engines.local import GenerateOptions, generate_dataset
from synthgen.errors import UserError
from synthgen.generate.sampler import Sampler
from synthgen.plan import make_plan
from synthgen.recipe import load_recipe

QUIET = GenerateOptions(progress=False, device="cpu")


def run(recipe_path: Path, out_dir: Path, **options):
    plan = make_plan(load_recipe(recipe_path))
    fields = {**QUIET.__dict__, **options}
    return plan, generate_dataset(plan, out_dir, GenerateOptions(**fields))


def test_shards_read_back_as_the_planned_groups(write_recipe, tmp_path):
    plan, summary = run(write_recipe(), tmp_path / "out")
    assert summary.shards_written == 3 and summary.images_generated == 18
    read = read_planned_samples(tmp_path / "out", plan)
    assert plan.shard_count == 3 and len(read) == 9
    samples = [sample for sample, _, _ in read]
    for sample, group, metadata in read:
        # The sample json spells "no corner case" as "" (a stable type for outside readers).
        assert metadata["corner_case"] == (group.corner_case or "")
        # Every tag of the recipe, true where the group has it (stable keys for outside readers).
        assert metadata["tags"] == {"nested": "nested" in group.tags}
        assert metadata["model"]["id"] == "builtin:tiny-random"
        assert metadata["model"]["steps"] == 2 and metadata["model"]["dtype"] == "float32"
        assert metadata["recipe"]["hash"] == plan.recipe.recipe_hash
        assert sorted(k for k in sample if k.startswith("view")) == ["view0.png", "view1.png"]
        image = Image.open(io.BytesIO(sample["view0.png"]))
        assert image.size == (32, 32) and image.mode == "RGB"
    views = [np.asarray(Image.open(io.BytesIO(s["view0.png"]))) for s in samples]
    assert not np.array_equal(views[0], views[1]), "different seeds give different images"
    manifest = json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert manifest["totals"] == {"shards": 3, "samples": 9, "images": 18,
                                  "bytes": manifest["totals"]["bytes"], "nonfinite_views": 0,
                                  "rejections": {}}
    for entry in manifest["shards"]:
        data = (tmp_path / "out" / entry["name"]).read_bytes()
        assert entry["sha256"] == hashlib.sha256(data).hexdigest() and entry["bytes"] == len(data)
    assert manifest["recipe"]["name"] == "small" and manifest["versions"]["diffusers"]


def test_bytes_are_fixed_per_batch_size_whichever_shards_a_run_builds(write_recipe, tmp_path):
    """On the CPU as on a GPU, every call is padded to the batch size: a shard's bytes depend on
    the recipe and the batch size only. (Before, the CPU made one view per call, so its bytes
    were the same for every batch size, at 3-4.5x the time of a batched call.)"""
    recipe = write_recipe()  # shards of 8, 8 and 2 views: batches of 5+3, 5+3 and 2, padded
    run(recipe, tmp_path / "b5", batch_size=5)
    run(recipe, tmp_path / "again", batch_size=5, encode_workers=1)
    run(recipe, tmp_path / "sliced", batch_size=5, shards=(2,))
    run(recipe, tmp_path / "sliced", batch_size=5, shards=(0, 1))
    assert dataset_bytes(tmp_path / "b5") == dataset_bytes(tmp_path / "again") \
        == dataset_bytes(tmp_path / "sliced")
    # Seeds and noise never depend on the batch: another batch size, the same pictures.
    run(recipe, tmp_path / "b1", batch_size=1)
    assert_same_pictures(tmp_path / "b1", tmp_path / "b5")


def test_cpu_views_are_made_in_padded_batches_on_every_thread_asked_for(write_recipe, tmp_path,
                                                                         monkeypatch):
    import torch
    from diffusers import StableDiffusionPipeline

    calls = []
    original = StableDiffusionPipeline.__call__

    def counting_call(self, *args, **kwargs):
        calls.append((len(kwargs["latents"]), torch.get_num_threads()))
        return original(self, *args, **kwargs)

    monkeypatch.setattr(StableDiffusionPipeline, "__call__", counting_call)
    threads_before = torch.get_num_threads()
    run(write_recipe(), tmp_path / "out", batch_size=5)
    # Shards of 8, 8 and 2 views: two calls, two calls and one, each padded to 5 views; by
    # default on two threads (both cores of the quickstart's machine).
    assert calls == [(5, 2)] * 5
    assert torch.get_num_threads() == threads_before, "the caller's thread setting is given back"
    calls.clear()
    # By default 16 views per call on the CPU: one call per shard here, padded.
    run(write_recipe(), tmp_path / "defaults", cpu_threads=1)
    assert calls == [(16, 1)] * 3


def test_two_runs_give_identical_bytes_and_files_are_not_private(write_recipe, tmp_path):
    recipe = write_recipe({"output": {"format": "jpg", "quality": 80, "resolution": 24}})
    run(recipe, tmp_path / "a")
    run(recipe, tmp_path / "b")
    assert dataset_bytes(tmp_path / "a") == dataset_bytes(tmp_path / "b")
    sample = next(iter(webdataset.WebDataset(str(tmp_path / "a" / "shard-000000.tar"),
                                              shardshuffle=False, empty_check=False)))
    assert Image.open(io.BytesIO(sample["view1.jpg"])).size == (24, 24)
    assert (tmp_path / "a" / "shard-000000.tar").stat().st_mode & 0o044, "readable by others"


class Interrupt(KeyboardInterrupt):
    pass


def test_interrupted_run_resumes_to_the_same_dataset(write_recipe, tmp_path, monkeypatch):
    recipe = write_recipe()
    run(recipe, tmp_path / "clean", batch_size=3)  # bytes are fixed per batch size
    original = Sampler.sample
    calls = []

    def failing_sample(self, views):
        calls.append(len(views))
        if len(calls) == 4:  # after shard 0 (8 views) is sampled, mid shard 1
            raise Interrupt()
        return original(self, views)

    monkeypatch.setattr(Sampler, "sample", failing_sample)
    with pytest.raises(Interrupt):
        run(recipe, tmp_path / "resumed", batch_size=3)
    out = tmp_path / "resumed"
    assert not (out / "manifest.json").exists(), "an interrupted dataset must not look finished"
    assert (out / "shard-000000.stats.json").exists()
    assert not (out / "shard-000001.tar").exists() and not (out / "shard-000002.tar").exists()
    # Debris a hard crash could leave: a temporary file and a tar renamed before its stats.
    (out / ".shard-000001.tar.abc.tmp").write_bytes(b"partial")
    (out / "shard-000002.tar").write_bytes(b"renamed but no stats")
    finished = (out / "shard-000000.tar").stat()
    monkeypatch.setattr(Sampler, "sample", original)
    _, summary = run(recipe, out, batch_size=3)
    assert summary.shards_skipped == 1 and summary.shards_written == 2
    assert (out / "shard-000000.tar").stat().st_mtime_ns == finished.st_mtime_ns, "not rebuilt"
    assert not list(out.glob("*.tmp"))
    assert dataset_bytes(out) == dataset_bytes(tmp_path / "clean")
    _, again = run(recipe, out)
    assert again.shards_written == 0 and again.shards_skipped == 3


def test_other_recipe_in_existing_output_is_refused(write_recipe, tmp_path):
    run(write_recipe(), tmp_path / "out")
    other = write_recipe({"seed": 8}, name="other.yaml")
    with pytest.raises(UserError, match="different recipe.*--overwrite"):
        run(other, tmp_path / "out")
    (tmp_path / "out" / "notes.txt").write_text("mine")
    _, summary = run(other, tmp_path / "out", overwrite=True)
    assert summary.shards_written == 3
    assert (tmp_path / "out" / "notes.txt").read_text() == "mine", "never deletes user files"
    manifest = json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert manifest["recipe"]["seed"] == 8


def test_a_run_that_fails_before_its_first_shard_does_not_lock_the_directory(write_recipe,
                                                                              tmp_path):
    from click.testing import CliRunner

    from synthgen.cli import main

    def generate(recipe):
        return CliRunner().invoke(main, ["generate", str(recipe), "--out", str(tmp_path / "out"),
                                         "--device", "cpu", "--quiet"])

    # A folder that passes validation (it has a model_index.json) but does not load.
    from synthgen.builtin import resolve_model_source

    unloadable = tmp_path / "unloadable-model"
    unloadable.mkdir()
    index = Path(resolve_model_source("builtin:tiny-random")) / "model_index.json"
    (unloadable / "model_index.json").write_bytes(index.read_bytes())
    for name, entry in json.loads(index.read_text()).items():  # its folders, empty
        if not name.startswith("_") and isinstance(entry, list) and entry[0] is not None:
            (unloadable / name).mkdir()
    broken = write_recipe({"model": {"id": str(unloadable)}}, name="broken.yaml")
    failed = generate(broken)
    assert failed.exit_code == 2 and f"{broken}: model.id: cannot load" in failed.output
    assert not (tmp_path / "out" / "recipe.json").exists(), "nothing was built: claim released"
    fixed = generate(write_recipe())
    assert fixed.exit_code == 0 and "wrote 3 shards" in fixed.output, fixed.output
    # Once shards exist, the claim stays: another recipe is still refused.
    refused = generate(broken)
    assert refused.exit_code == 2 and "different recipe" in refused.output
    assert (tmp_path / "out" / "recipe.json").exists()


def test_guidance_and_negative_prompt_path(write_recipe, tmp_path):
    recipe = write_recipe({"model": {"guidance_scale": 4.0, "negative_prompt": "blurry"},
                           "classes": [{"name": "circle", "templates": ["a {colour} circle"],
                                        "groups": 3}], "corner_cases": []})
    run(recipe, tmp_path / "a", batch_size=1)
    run(recipe, tmp_path / "b", batch_size=6)
    assert_same_pictures(tmp_path / "a", tmp_path / "b")
    sample = next(iter(webdataset.WebDataset(str(tmp_path / "a" / "shard-000000.tar"),
                                              shardshuffle=False, empty_check=False)))
    metadata = json.loads(sample["json"])
    assert metadata["views"][0]["negative_prompt"] == "blurry"
    assert metadata["model"]["guidance_scale"] == 4.0


def test_sdxl_pipeline_and_scheduler_override(write_recipe, tiny_sdxl_dir, tmp_path):
    recipe = write_recipe({"model": {"id": str(tiny_sdxl_dir),
                                     "scheduler": "EulerAncestralDiscreteScheduler"},
                           "corner_cases": []})
    run(recipe, tmp_path / "a", batch_size=1)
    run(recipe, tmp_path / "b", batch_size=4)
    assert_same_pictures(tmp_path / "a", tmp_path / "b")
    stats = json.loads((tmp_path / "a" / "shard-000000.stats.json").read_text())
    assert stats["model"]["pipeline"] == "StableDiffusionXLPipeline"


def test_model_errors_are_user_errors(write_recipe, tmp_path):
    with pytest.raises(UserError, match="unknown builtin model 'builtin:nope'.*builtin:tiny-random"):
        run(write_recipe({"model": {"id": "builtin:nope"}}), tmp_path / "a")
    with pytest.raises(UserError, match="cannot load .*local-dir"):
        run(write_recipe({"model": {"id": str(tmp_path / "missing-model")}}, name="b.yaml"),
            tmp_path / "b")
    with pytest.raises(UserError, match="not a diffusers scheduler"):
        run(write_recipe({"model": {"scheduler": "FancyScheduler"}}, name="c.yaml"), tmp_path / "c")


def test_padded_batches_do_not_mix_views():
    """Padded batches of many prompts, the path of every device."""
    import torch

    from synthgen.generate.load import load_pipeline
    from synthgen.recipe import ModelSpec

    spec = ModelSpec(id="builtin:tiny-random", steps=2, width=32, height=32)
    model = load_pipeline(spec, torch.device("cpu"), torch.float32)
    check_padded_batches_do_not_mix_views(model, spec)


def test_prompt_embeddings_are_computed_once_per_unique_text(write_recipe, tmp_path, monkeypatch):
    from diffusers import StableDiffusionPipeline

    encoded = count_prompt_encodings(monkeypatch, StableDiffusionPipeline)
    plan, _ = run(write_recipe(), tmp_path / "out", batch_size=4)
    unique = {view.prompt for group in plan.groups for view in group.views}
    assert sorted(encoded) == sorted(unique)


def test_tiny_decoder_replaces_the_vae(write_recipe, tmp_path):
    from synthgen.generate.tiny_random import build_tiny_decoder

    decoder_dir = tmp_path / "taesd-tiny"
    build_tiny_decoder().save_pretrained(decoder_dir, safe_serialization=True)
    plain, _ = run(write_recipe(), tmp_path / "plain")
    fast, _ = run(write_recipe({"model": {"decoder": str(decoder_dir)}}, name="fast.yaml"),
                  tmp_path / "fast")
    first = sorted((tmp_path / "plain").glob("shard-*.tar"))[0].read_bytes()
    assert first != sorted((tmp_path / "fast").glob("shard-*.tar"))[0].read_bytes()
    stats = json.loads((tmp_path / "fast" / "shard-000000.stats.json").read_text())
    assert stats["samples"] == 4
    sample = next(iter(webdataset.WebDataset(str(tmp_path / "fast" / "shard-000000.tar"),
                                              shardshuffle=False, empty_check=False)))
    assert json.loads(sample["json"])["model"]["decoder"] == str(decoder_dir)
    with pytest.raises(UserError, match="model.decoder: cannot load"):
        run(write_recipe({"model": {"decoder": str(tmp_path / "none")}}, name="bad.yaml"),
            tmp_path / "bad")


def test_a_dataset_resumed_with_other_options_lists_its_model_variants(write_recipe, tmp_path):
    recipe = write_recipe()
    out = tmp_path / "out"
    run(recipe, out, shards=(0,))
    _, summary = run(recipe, out, dtype="bfloat16")
    assert summary.manifest_written and summary.model_variants == 2
    manifest = json.loads((out / "manifest.json").read_text())
    by_dtype = {variant["model"]["dtype"]: variant["shards"] for variant in manifest["model_variants"]}
    assert by_dtype == {"float32": ["shard-000000.tar"],
                        "bfloat16": ["shard-000001.tar", "shard-000002.tar"]}
    _, plain = run(recipe, tmp_path / "plain")
    assert plain.model_variants == 1


def test_a_dataset_is_never_resumed_or_finished_with_other_weights(write_recipe, tmp_path):
    from synthgen.generate.tiny_random import save_tiny_pipeline
    from synthgen.write import finalize_dataset

    model_dir = save_tiny_pipeline(tmp_path / "model", seed=0)
    recipe = write_recipe({"model": {"id": str(model_dir)}})
    out = tmp_path / "out"
    run(recipe, out, shards=(0,))
    made_by = json.loads((out / "shard-000000.stats.json").read_text())["model"]["weights"]
    assert made_by.startswith("sha256:")
    # The folder is retrained in place: same id, same recipe hash, other weights.
    save_tiny_pipeline(model_dir, seed=1)
    with pytest.raises(UserError, match=r"shards 0 were made by other weights of model\.id.*--overwrite"):
        run(recipe, out)
    assert not (out / "shard-000001.tar").exists()
    _, summary = run(recipe, out, overwrite=True)
    assert summary.shards_written == 3
    stats_path = out / "shard-000002.stats.json"
    stats = json.loads(stats_path.read_text())
    assert stats["model"]["weights"] not in (made_by, None)
    # Shards that two runs wrote at once under different weights: no manifest.
    stats["model"]["weights"] = made_by
    stats_path.write_text(json.dumps(stats))
    with pytest.raises(UserError, match="shards 2 were made by other weights.*shard 0 has"):
        finalize_dataset(out)
    # A shard from before synthgen recorded weights cannot be shown to match.
    del stats["model"]["weights"]
    stats_path.write_text(json.dumps(stats))
    with pytest.raises(UserError, match=r"shards 2 were made by other weights .*\(not recorded;"):
        run(recipe, out)
