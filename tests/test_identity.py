"""The weights digest that ties a dataset's shards to one model (synthgen/generate/identity.py)."""

from __future__ import annotations

import shutil

import huggingface_hub.constants

from synthgen.generate.identity import folder_digest, weights_digest
from synthgen.generate.tiny_random import build_tiny_decoder, save_tiny_pipeline
from synthgen.recipe import ModelSpec


def test_a_folder_digest_follows_the_model_files_and_nothing_else(tmp_path):
    model = save_tiny_pipeline(tmp_path / "model", seed=0)
    before = folder_digest(model)
    (model / "README.md").write_text("a model card")
    (model / ".cache").mkdir()
    (model / ".cache" / "download.lock").write_text("hub metadata")
    assert folder_digest(model) == before
    shutil.copytree(model, tmp_path / "copy")
    assert folder_digest(tmp_path / "copy") == before, "names are relative to the folder"
    config = model / "scheduler" / "scheduler_config.json"
    config.write_text(config.read_text().replace("}", ', "note": 1}', 1))
    assert folder_digest(model) != before, "a component's config is part of the model"
    assert folder_digest(save_tiny_pipeline(tmp_path / "other", seed=1)) != before


def test_the_digest_covers_the_decoder_and_the_builtin_models(tmp_path):
    model = save_tiny_pipeline(tmp_path / "model")
    build_tiny_decoder().save_pretrained(tmp_path / "decoder", safe_serialization=True)
    plain = weights_digest(ModelSpec(id=str(model)))
    with_decoder = weights_digest(ModelSpec(id=str(model), decoder=str(tmp_path / "decoder")))
    assert with_decoder.startswith(plain + " + decoder sha256:")
    builtin = weights_digest(ModelSpec(id="builtin:tiny-random"))
    assert builtin.startswith("sha256:") and len(builtin) == len("sha256:") + 16


def test_a_hub_model_is_identified_by_its_cached_snapshot_commit(tmp_path, monkeypatch):
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path))
    assert weights_digest(ModelSpec(id="org/model")) is None, "not downloaded: unknown yet"
    commit = "0123456789abcdef0123456789abcdef01234567"
    repo = tmp_path / "models--org--model"
    (repo / "snapshots" / commit).mkdir(parents=True)
    (repo / "snapshots" / commit / "model_index.json").write_text("{}")
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    assert weights_digest(ModelSpec(id="org/model")) == f"hub:org/model@{commit}"
    assert weights_digest(ModelSpec(id="org/model", revision=commit)) == f"hub:org/model@{commit}"
