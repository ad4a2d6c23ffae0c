"""The world training entry point at a tiny scale: which models a run trains, and that
continuing the CLIP's vision refinement leaves its text tower (world-sd's text encoder) alone;
`synthgen world train` / `evaluate` hand every option to it and refuse mistakes cleanly."""

from __future__ import annotations

import inspect
import json
import shutil
from importlib import resources
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

from synthgen.cli import main
from synthgen.errors import UserError
from synthgen.world.train import CPU_THREADS, FROM_SCRATCH, train_world_models


def _train_quietly(out: Path, models: tuple[str, ...]) -> dict:
    threads_before = torch.get_num_threads()
    try:
        return train_world_models(out, device="cpu", scale=0.002, log=lambda message: None, evaluate=False,
                                  models=models, threads=2)
    finally:
        torch.set_num_threads(threads_before)


def test_clip_refine_changes_the_vision_tower_only(tmp_path):
    from transformers import CLIPModel

    shipped = Path(str(resources.files("synthgen") / "models" / "world-clip"))
    shutil.copytree(shipped, tmp_path / "world-clip")
    before = CLIPModel.from_pretrained(tmp_path / "world-clip", use_safetensors=True)
    earlier_runs = json.loads((shipped / "training.json").read_text()).get("vision_refinement_continued", [])
    summary = _train_quietly(tmp_path, ("clip-refine",))
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
    with pytest.raises(UserError, match="choose from clip, sd, oracle"):
        train_world_models(tmp_path, device="cpu", models=("unet",), evaluate=False)


@pytest.mark.parametrize("arguments, message", [
    (["--models", "unet"], "models: ['unet']; choose from clip, sd, oracle, clip-refine, sd-detail"),
    (["--models", ""], "models: none; choose from"),
    (["--models", "sd,sd-detail"], "sd already includes the detail phase"),
    (["--models", "clip", "--reuse-clip"], "leaves nothing to train"),
    (["--models", "sd", "--no-evaluate"], "sd needs the world-clip in"),
    (["--models", "clip-refine", "--no-evaluate"], "train one with clip instead"),
    (["--models", "sd-detail", "--no-evaluate"], "train one with sd instead"),
    (["--models", "sd,sd-captions"], "sd-captions continues a finished world-sd"),
    (["--models", "sd-captions", "--no-evaluate"], "sd-captions needs the world-sd in"),
    (["--models", "oracle"], "evaluation measures all three world models"),
    (["--scale", "0"], "scale: 0.0 is not a number > 0"),
])
def test_world_train_refuses_mistakes_before_any_work(tmp_path, arguments, message):
    result = CliRunner().invoke(main, ["world", "train", "--out", str(tmp_path / "models"), *arguments])
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output and message in result.output
    assert not (tmp_path / "models").exists()


def test_world_train_hands_every_option_to_the_library_with_its_defaults(tmp_path, monkeypatch):
    import synthgen.world.train

    calls = []

    def record(out_root, **options):
        calls.append({"out_root": out_root, **options})
        return {"models": list(options["models"]), "training_wall_seconds": 1.0}

    monkeypatch.setattr(synthgen.world.train, "train_world_models", record)
    result = CliRunner().invoke(main, ["world", "train", "--out", str(tmp_path)])
    assert result.exit_code == 0, result.output
    defaults = {name: parameter.default for name, parameter
                in inspect.signature(train_world_models).parameters.items() if name not in ("out_root", "log")}
    assert {name: value for name, value in calls[0].items() if name not in ("out_root", "log")} == defaults
    assert defaults["models"] == FROM_SCRATCH and defaults["threads"] == CPU_THREADS
    result = CliRunner().invoke(main, ["world", "train", "--out", str(tmp_path), "--device", "cpu", "--seed", "3",
                                       "--scale", "0.5", "--models", "sd, oracle", "--reuse-clip",
                                       "--threads", "2", "--no-evaluate"])
    assert result.exit_code == 0, result.output
    assert {name: value for name, value in calls[1].items() if name != "log"} == {
        "out_root": tmp_path, "device": "cpu", "seed": 3, "scale": 0.5, "models": ("sd", "oracle"),
        "reuse_clip": True, "threads": 2, "evaluate": False}
    assert "trained sd, oracle in 1s" in result.output


def test_world_evaluate_refuses_a_folder_without_the_models(tmp_path):
    (tmp_path / "world-clip").mkdir()
    result = CliRunner().invoke(main, ["world", "evaluate", "--models", str(tmp_path)])
    assert result.exit_code == 2 and "Traceback" not in result.output
    assert f"models: {tmp_path} has no world-sd, world-oracle" in result.output


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
        assert values["command"] == "synthgen world evaluate --scale 0.01"
    card = (tmp_path / "world-sd" / "README.md").read_text()
    assert "ceiling: shape read on VAE round trips of 10 held-out renders" in card
    low, high = metrics["world-sd"]["prompted_shape_ci95"]
    assert low <= metrics["world-sd"]["prompted_shape_accuracy"] <= high
    assert f"(95% CI {100 * low:.1f}-{100 * high:.1f}%)" in card


def test_world_sd_from_scratch_runs_both_unet_phases_and_loads_as_a_pipeline(tmp_path):
    from diffusers import AutoPipelineForText2Image

    shutil.copytree(Path(str(resources.files("synthgen") / "models" / "world-clip")), tmp_path / "world-clip")
    _train_quietly(tmp_path, ("sd",))
    record = json.loads((tmp_path / "world-sd" / "training.json").read_text())
    assert record["unet"]["steps"] == 20 and record["unet"]["min_snr_gamma"] == 5.0
    assert record["unet"]["alignment_weight"] == 0.5 and "final_alignment_cosine" in record["unet"]
    assert record["detail_phase"]["alignment_weight"] == 0.0
    phase = record["detail_phase"]
    assert phase["steps"] == 8 and phase["min_snr_gamma"] is None and phase["small_object_weight"] == 2.0
    assert "continued_separately" not in phase
    assert "caption_phase" not in record  # an optional trial (sd-captions), not part of sd
    pipeline = AutoPipelineForText2Image.from_pretrained(tmp_path / "world-sd", use_safetensors=True)
    assert pipeline.scheduler.config.clip_sample is False


def _assert_continues_the_unet_only(out: Path, model: str) -> None:
    """Training `model` on out/world-sd changes its UNet and leaves its VAE and text encoder."""
    from diffusers import StableDiffusionPipeline

    before = StableDiffusionPipeline.from_pretrained(out / "world-sd", use_safetensors=True)
    _train_quietly(out, (model,))
    after = StableDiffusionPipeline.from_pretrained(out / "world-sd", use_safetensors=True)
    for part in ("vae", "text_encoder"):
        kept, now = getattr(before, part).state_dict(), getattr(after, part).state_dict()
        assert all(torch.equal(kept[k], now[k]) for k in kept), part
    unet_before, unet_after = before.unet.state_dict(), after.unet.state_dict()
    assert any(not torch.equal(unet_before[k], unet_after[k]) for k in unet_before)


def test_sd_detail_continues_only_the_unet_of_a_phase_one_world_sd_and_only_once(tmp_path):
    sd_dir = tmp_path / "world-sd"
    shutil.copytree(Path(str(resources.files("synthgen") / "models" / "world-sd")), sd_dir)
    record = json.loads((sd_dir / "training.json").read_text())
    record.pop("detail_phase", None)  # as world-sd v3 was: phase 1 only
    (sd_dir / "training.json").write_text(json.dumps(record))
    _assert_continues_the_unet_only(tmp_path, "sd-detail")
    assert "_name_or_path" not in json.loads((sd_dir / "unet" / "config.json").read_text())
    phase = json.loads((sd_dir / "training.json").read_text())["detail_phase"]
    assert phase["continued_separately"] and phase["steps"] == 8 and phase["seed"] == 7
    with pytest.raises(UserError, match="already had its detail phase"):
        _train_quietly(tmp_path, ("sd-detail",))


def test_sd_captions_continues_only_the_unet_of_a_detailed_world_sd_and_only_once(tmp_path):
    sd_dir = tmp_path / "world-sd"
    shutil.copytree(Path(str(resources.files("synthgen") / "models" / "world-sd")), sd_dir)
    record = json.loads((sd_dir / "training.json").read_text())
    record.pop("caption_phase", None)  # as world-sd v6 was: two phases
    without_detail = {k: v for k, v in record.items() if k != "detail_phase"}
    (sd_dir / "training.json").write_text(json.dumps(without_detail))
    with pytest.raises(UserError, match="has not had its detail phase; run --models sd-detail first"):
        _train_quietly(tmp_path, ("sd-captions",))
    (sd_dir / "training.json").write_text(json.dumps(record))
    _assert_continues_the_unet_only(tmp_path, "sd-captions")
    phase = json.loads((sd_dir / "training.json").read_text())["caption_phase"]
    assert phase["continued_separately"] and phase["steps"] == 6 and phase["colour_splice_share"] == 0.5
    assert phase["captions"]["typical_share"] == 0.4 and 0 < phase["captions"]["captions_without_colour"] < 1
    with pytest.raises(UserError, match="already had its caption phase"):
        _train_quietly(tmp_path, ("sd-captions",))


def test_sd_and_sd_detail_together_are_refused(tmp_path):
    with pytest.raises(UserError, match="sd already includes the detail phase"):
        train_world_models(tmp_path, device="cpu", models=("sd", "sd-detail"), evaluate=False)


def test_detail_phase_draws_small_objects_twice_as_often():
    from synthgen.world.diffusion import DETAIL_PHASE, UnetTrainingOptions, batch_draw_weights

    small = torch.tensor([True, False, True, False])
    assert batch_draw_weights(UnetTrainingOptions(), small) is None
    weights = batch_draw_weights(DETAIL_PHASE, small)
    assert weights.tolist() == [2.0, 1.0, 2.0, 1.0]
    drawn = torch.multinomial(weights, 90_000, replacement=True, generator=torch.Generator().manual_seed(0))
    shares = torch.bincount(drawn, minlength=4).double() / len(drawn)
    assert torch.allclose(shares, weights / weights.sum(), atol=0.01)


def _tiny_unet_data(count: int = 16) -> dict:
    generator = torch.Generator().manual_seed(0)
    return {"latents": torch.randn(count, 4, 16, 16, generator=generator),
            "caption_index": torch.randint(0, 3, (count,), generator=generator),
            "caption_embeddings": torch.randn(3, 32, 128, generator=generator),
            "empty_embedding": torch.zeros(1, 32, 128),
            "alignment_targets": torch.randn(count, 16, 128, generator=generator)}


def test_alignment_loss_reaches_the_unet_and_leaves_no_trace_in_it():
    from synthgen.world.diffusion import UnetTrainingOptions, build_world_unet, train_world_unet

    data, cpu = _tiny_unet_data(), torch.device("cpu")
    plain = UnetTrainingOptions(steps=3, batch_size=4, warmup_steps=1, alignment_weight=0.0)
    aligned = UnetTrainingOptions(steps=3, batch_size=4, warmup_steps=1, alignment_weight=0.5)
    unet_plain, stats_plain = train_world_unet(**data, settings=plain, device=cpu, seed=0, log=lambda m: None)
    unet_aligned, stats = train_world_unet(**data, settings=aligned, device=cpu, seed=0, log=lambda m: None)
    assert "final_alignment_cosine" not in stats_plain and -1 <= stats["final_alignment_cosine"] <= 1
    # Same seed and batches: the weights differ only through the alignment gradient.
    plain_weights, aligned_weights = unet_plain.state_dict(), unet_aligned.state_dict()
    assert any(not torch.equal(plain_weights[k], aligned_weights[k]) for k in plain_weights)
    # The head is not part of the shipped UNet, and no hook stays on it.
    assert set(aligned_weights) == set(build_world_unet(128).state_dict())
    assert not unet_aligned.mid_block._forward_hooks
    with pytest.raises(ValueError, match="alignment_weight needs alignment_targets"):
        train_world_unet(**{**data, "alignment_targets": None}, settings=aligned, device=cpu, seed=0,
                         log=lambda m: None)


def test_alignment_head_learns_patch_targets_and_refuses_a_grid_mismatch():
    from synthgen.world.diffusion import AlignmentHead

    torch.manual_seed(0)
    features = torch.randn(32, 96, 4, 4)
    targets = torch.einsum("bchw,cd->bhwd", features, torch.randn(96, 128)).flatten(1, 2)
    head = AlignmentHead(96, 128)
    optimizer = torch.optim.Adam(head.parameters(), lr=3e-3)
    first = head.alignment_loss(features, targets).item()
    for _ in range(150):
        loss = head.alignment_loss(features, targets)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    assert abs(first) < 0.2 and loss.item() < -0.9
    with pytest.raises(ValueError, match="16 positions, the alignment targets 64 patches"):
        head.alignment_loss(features, torch.randn(32, 64, 128))
