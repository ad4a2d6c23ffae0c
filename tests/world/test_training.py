"""The world training entry point at a tiny scale: which models a run trains, and that
continuing the CLIP's vision refinement leaves its text tower (world-sd's text encoder) alone."""

from __future__ import annotations

import json
import shutil
from importlib import resources
from pathlib import Path

import pytest
import torch

from synthgen.world.train import train_world_models


def test_clip_refine_changes_the_vision_tower_only(tmp_path):
    from transformers import CLIPModel

    shipped = Path(str(resources.files("synthgen") / "models" / "world-clip"))
    shutil.copytree(shipped, tmp_path / "world-clip")
    before = CLIPModel.from_pretrained(tmp_path / "world-clip", use_safetensors=True)
    earlier_runs = json.loads((shipped / "training.json").read_text()).get("vision_refinement_continued", [])
    threads_before = torch.get_num_threads()
    try:
        summary = train_world_models(tmp_path, device="cpu", scale=0.002, log=lambda message: None,
                                     evaluate=False, models=("clip-refine",), threads=2)
    finally:
        torch.set_num_threads(threads_before)
    assert summary["models"] == ["clip-refine"]
    after = CLIPModel.from_pretrained(tmp_path / "world-clip", use_safetensors=True)
    text_before, text_after = before.text_model.state_dict(), after.text_model.state_dict()
    assert all(torch.equal(text_before[k], text_after[k]) for k in text_before)
    vision_before, vision_after = before.vision_model.state_dict(), after.vision_model.state_dict()
    assert any(not torch.equal(vision_before[k], vision_after[k]) for k in vision_before)
    *kept, record = json.loads((tmp_path / "world-clip" / "training.json").read_text())[
        "vision_refinement_continued"]
    assert kept == earlier_runs
    assert record["text_tower_unchanged"] and record["steps"] == 6
    assert record["device"].endswith(", 2 threads)")
    assert not (tmp_path / "world-sd").exists() and not (tmp_path / "world-oracle").exists()


def test_unknown_model_names_are_refused(tmp_path):
    with pytest.raises(ValueError, match="choose from clip, sd, oracle"):
        train_world_models(tmp_path, device="cpu", models=("unet",), evaluate=False)


def test_evaluation_measures_every_model_and_writes_their_cards(tmp_path):
    from synthgen.world.evaluate import evaluate_world_models, write_model_cards

    shipped = Path(str(resources.files("synthgen") / "models"))
    for folder in ("world-clip", "world-sd", "world-oracle"):
        shutil.copytree(shipped / folder, tmp_path / folder)
    threads_before = torch.get_num_threads()
    try:
        metrics = evaluate_world_models(tmp_path, device="cpu", scale=0.01, log=lambda message: None)
    finally:
        torch.set_num_threads(threads_before)  # evaluation sets 2 threads on a CPU
    write_model_cards(tmp_path)
    round_trip = metrics["world-sd"]["vae_round_trip"]
    assert round_trip["images"] == 10 and set(round_trip["shape_accuracy_by_size"]) == {"small", "medium", "large"}
    assert 0 <= round_trip["shape_accuracy"] <= 1 and round_trip["mean_abs_error_255"] > 0
    for folder, values in metrics.items():
        assert json.loads((tmp_path / folder / "metrics.json").read_text()) == json.loads(json.dumps(values))
        assert values["command"] == "python -m synthgen.world.evaluate --scale 0.01"
    card = (tmp_path / "world-sd" / "README.md").read_text()
    assert "ceiling: shape read on VAE round trips of 10 held-out renders" in card
    low, high = metrics["world-sd"]["prompted_shape_ci95"]
    assert low <= metrics["world-sd"]["prompted_shape_accuracy"] <= high
    assert f"(95% CI {100 * low:.1f}-{100 * high:.1f}%)" in card
