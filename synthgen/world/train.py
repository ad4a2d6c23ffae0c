"""Train the three world models from seeds, with synthgen's own code, and save them.

    synthgen world train --out synthgen/models [--device auto] [--seed 0] [--scale 1.0]

writes ``world-clip/`` (CLIPModel + tokenizer + image processor),
``world-sd/`` (a StableDiffusionPipeline folder) and ``world-oracle/``
(a supervised attribute reader) under ``--out``, each with ``training.json``,
``metrics.json`` and a model card ``README.md``. ``--scale`` multiplies every
step count and pool size (0.02 is a smoke test that runs in a few minutes).
The command (world/commands.py) parses options and calls `train_world_models`.
"""

from __future__ import annotations

import json
import math
import platform
import time
from dataclasses import asdict, replace
from pathlib import Path

import numpy as np
import torch

from synthgen.errors import UserError
from synthgen.world.clip import (
    ClipTrainingOptions,
    VisionRefinementOptions,
    patch_features,
    refine_vision_tower,
    save_world_clip,
    train_world_clip,
)
from synthgen.world.corpus import (TRAIN_SEEDS_PER_RUN, check_run_seed, check_train_scene_count,
                                   images_to_tensor, train_pool)
from synthgen.world.captions import caption_phase_data
from synthgen.world.diffusion import (
    CAPTION_PHASE,
    DETAIL_PHASE,
    UnetTrainingOptions,
    VaeTrainingOptions,
    assemble_pipeline,
    encode_latents,
    latent_scaling_factor,
    parameter_count,
    prompt_embeddings,
    reconstruction_error,
    train_world_unet,
    train_world_vae,
)
from synthgen.world.model_folders import CLIP_FOLDER, ORACLE_FOLDER, SD_FOLDER, load_world_sd
from synthgen.world.oracle import OracleTrainingOptions, save_oracle, train_world_oracle
from synthgen.world.scene import caption
from synthgen.world.tokenizer import build_world_tokenizer

TRAIN_SCENES = 60_000
"""Single-object training renders shared by all three models (~1 ms each to render)."""

CPU_THREADS = 1
"""Default intra-op threads on a CPU. On the 2-core machine the models were trained on, another
process often held one core; every op then waited on the descheduled second thread (CLIP: 5.1
s/step with 2 threads against 1.1 s/step with 1; the VAE slowed ~10x), so one thread is the robust
default. On a quiet machine ``threads=2`` is 1.5-1.7x faster per step
(``bench/world_training_steps.py``; figures in docs/WORLD.md)."""

MODELS = ("clip", "sd", "oracle", "clip-refine", "sd-detail", "sd-captions")
"""What `train_world_models` can train; a model left out is loaded from ``out_root`` if needed.
"clip" ends with `CONTINUED_REFINEMENT` (more steps of stage 2, the vision tower only);
"clip-refine" runs those steps on an existing ``out_root/world-clip``, which leaves the text
tower, and so world-sd's text encoder, bit for bit as it was. "sd-detail" runs world-sd's second
UNet phase (`DETAIL_PHASE`) alone on an existing ``out_root/world-sd`` whose UNet had only the
first; "sd" runs both. "sd-captions" continues an existing world-sd with the optional third
phase (`CAPTION_PHASE`, a trial that the shipped world-sd did not get: docs/WORLD.md)."""

FROM_SCRATCH = ("clip", "sd", "oracle")

CONTINUED_REFINEMENT = VisionRefinementOptions(steps=3000, learning_rate=2.5e-4, warmup_steps=50)

CANONICAL_CAPTION_SHARE = 0.5
"""Share of diffusion captions *always* in the canonical wording that evaluation prompts use;
the rest draw one of the world's four templates, the canonical one among them, so 62.5% of
captions are canonical (`canonical_caption_fraction`) and each paraphrase 12.5%. Kept so: the
shipped world-sd was trained on this mix."""


def canonical_caption_fraction(share: float = CANONICAL_CAPTION_SHARE) -> float:
    """The fraction of training captions in the canonical wording under `share`."""
    from synthgen.world.scene import _SCENE_TEMPLATES

    return share + (1 - share) / len(_SCENE_TEMPLATES)


def _scene_count(scale: float) -> int:
    """How many training scenes a run of `scale` renders (and so the scene seeds it uses)."""
    return max(512, round(TRAIN_SCENES * scale))


def _scaled(settings, scale: float):
    steps = max(2, round(settings.steps * scale))
    return replace(settings, steps=steps, warmup_steps=min(settings.warmup_steps, max(1, steps // 10)))


def _device_description(device: torch.device, threads: int) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"CPU ({platform.processor() or platform.machine()}, {threads} thread{'s' if threads > 1 else ''})"


def _write_json(path: Path, value: dict) -> None:
    path.write_text(json.dumps(value, indent=2, sort_keys=True) + "\n")


def _continue_vision_refinement(clip, tokenizer, pool, seed: int, scale: float, device: torch.device,
                                common: dict, say) -> dict:
    """`CONTINUED_REFINEMENT` of ``clip``'s vision tower in place; its record for training.json."""
    text_before = {k: v.clone() for k, v in clip.text_model.state_dict().items()}
    settings = _scaled(CONTINUED_REFINEMENT, scale)
    stats = refine_vision_tower(clip, tokenizer, pool, settings, device, seed + 6, log=say)
    unchanged = all(torch.equal(text_before[k], v) for k, v in clip.text_model.state_dict().items())
    if not unchanged:
        raise RuntimeError("the continued refinement changed the text tower")
    return stats | {"settings": asdict(settings), "seed": seed + 6, "device": common["device"],
                    "text_tower_unchanged": unchanged}


def _diffusion_data(pipeline, pool, scaled_latents: torch.Tensor, seed: int, device: torch.device) -> dict:
    """The UNet's training data as keyword arguments of `train_world_unet`: scaled latents, each
    one's caption index, the embedding of every unique caption, and the empty prompt's embedding."""
    caption_rng = np.random.default_rng(seed + 2)
    captions = [caption(scene) if caption_rng.random() < CANONICAL_CAPTION_SHARE else caption(scene, caption_rng)
                for scene in pool.scenes]
    unique_captions = sorted(set(captions))
    position = {text: i for i, text in enumerate(unique_captions)}
    return {"latents": scaled_latents,
            "caption_index": torch.tensor([position[text] for text in captions]),
            "caption_embeddings": prompt_embeddings(pipeline, unique_captions, device),
            "empty_embedding": prompt_embeddings(pipeline, [""], device)}


def _run_detail_phase(data: dict, pool, initial_unet, seed: int, scale: float, device: torch.device,
                      common: dict, say):
    """`DETAIL_PHASE` from ``initial_unet`` on ``data`` (see `_diffusion_data`); (EMA UNet, its record)."""
    settings = _scaled(DETAIL_PHASE, scale)
    small_objects = torch.tensor([scene.objects[0].size == "small" for scene in pool.scenes])
    unet, stats = train_world_unet(**data, settings=settings, device=device, seed=seed + 7, log=say,
                                   small_objects=small_objects, initial_unet=initial_unet)
    return unet, stats | {"settings": asdict(settings), "seed": seed + 7, "device": common["device"]}


def _continue_with_detail_phase(sd_dir: Path, pool, seed: int, scale: float, device: torch.device,
                                common: dict, say) -> None:
    """Run `DETAIL_PHASE` on the UNet of ``sd_dir`` (its VAE latents and text encoder as they are)
    and save the UNet; a world-sd that already had its detail phase is refused."""
    record = json.loads((sd_dir / "training.json").read_text())
    if "detail_phase" in record:
        raise UserError(f"{sd_dir} already had its detail phase; train world-sd again instead (--models sd)")
    pipeline = load_world_sd(sd_dir).to(device)
    latents = encode_latents(pipeline.vae, pool, device)
    data = _diffusion_data(pipeline, pool, latents * pipeline.vae.config.scaling_factor, seed, device)
    unet, phase = _run_detail_phase(data, pool, pipeline.unet, seed, scale, device, common, say)
    unet.to("cpu").save_pretrained(sd_dir / "unet", safe_serialization=True)
    record["detail_phase"] = phase | {"continued_separately": True}
    _write_json(sd_dir / "training.json", record)
    say(f"continued {sd_dir} with the detail phase")


def _continue_with_caption_phase(sd_dir: Path, pool, seed: int, scale: float, device: torch.device,
                                 common: dict, say) -> None:
    """Run `CAPTION_PHASE` on the UNet of ``sd_dir`` and save the UNet; refused for a world-sd
    without its detail phase or with its caption phase already."""
    record = json.loads((sd_dir / "training.json").read_text())
    if "caption_phase" in record:
        raise UserError(f"{sd_dir} already had its caption phase; train world-sd again instead (--models sd)")
    if "detail_phase" not in record:
        raise UserError(f"{sd_dir} has not had its detail phase; run --models sd-detail first")
    pipeline = load_world_sd(sd_dir).to(device)
    data, captions = caption_phase_data(pipeline, pool, seed, device, CANONICAL_CAPTION_SHARE)
    say(f"caption phase data: {captions}")
    settings = _scaled(CAPTION_PHASE, scale)
    unet, stats = train_world_unet(**data, settings=settings, device=device, seed=seed + 8, log=say,
                                   initial_unet=pipeline.unet)
    unet.to("cpu").save_pretrained(sd_dir / "unet", safe_serialization=True)
    record["caption_phase"] = stats | {"settings": asdict(settings), "seed": seed + 8, "device": common["device"],
                                       "captions": captions, "continued_separately": True}
    _write_json(sd_dir / "training.json", record)
    say(f"continued {sd_dir} with the caption phase")


# What each model that loads an existing one needs under out_root (its folder and the file that
# marks it), and how to do without it.
_CONTINUES = {
    "sd": (CLIP_FOLDER, "config.json", "train one in this run (add clip to the models, without --reuse-clip)"),
    "clip-refine": (CLIP_FOLDER, "config.json", "train one with clip instead (it ends with the same refinement)"),
    "sd-detail": (SD_FOLDER, "model_index.json", "train one with sd instead (it runs the detail phase too)"),
    "sd-captions": (SD_FOLDER, "model_index.json", "train one with sd first"),
}


def _check_out_folder(out_root: Path) -> None:
    """Refuse an out folder that cannot be made before anything trains (under a file it
    failed at the save, the training lost)."""
    try:
        out_root.mkdir(parents=True, exist_ok=True)
    except (FileExistsError, NotADirectoryError):
        raise UserError(f"out: {out_root} cannot be a folder (it, or a folder above it, is a "
                        "file); choose another --out") from None


def _checked_models(out_root: Path, models: tuple[str, ...], reuse_clip: bool,
                    evaluate: bool) -> tuple[str, ...]:
    """``models`` less "clip" with ``reuse_clip``, once they are known, can run together, and
    the folders they continue or load (and, with ``evaluate``, the three that evaluation
    measures) exist under ``out_root`` or come from this run: checked before anything renders."""
    unknown = sorted(set(models) - set(MODELS))
    if unknown or not models:
        raise UserError(f"models: {unknown or 'none'}; choose from {', '.join(MODELS)}")
    if "clip" in models and "clip-refine" in models:
        raise UserError("models: clip already ends with the continued refinement; leave out clip-refine")
    if "sd" in models and "sd-detail" in models:
        raise UserError("models: sd already includes the detail phase; leave out sd-detail")
    if "sd-captions" in models and ({"sd", "sd-detail"} & set(models)):
        raise UserError("models: sd-captions continues a finished world-sd; run it after sd or sd-detail, "
                        "in a run of its own")
    if reuse_clip:
        models = tuple(model for model in models if model != "clip")
        if not models:
            raise UserError("models: with reuse_clip (--reuse-clip) clip is not trained, which leaves nothing "
                            "to train; name sd, oracle, clip-refine or sd-detail too")
    for model in models:
        if model in _CONTINUES and not (model == "sd" and "clip" in models):
            folder, marker, fix = _CONTINUES[model]
            # training.json is written last: a world-sd without it was never finished (a killed
            # run) or comes from elsewhere, and the phases that continue it read it.
            needed = (marker, "training.json") if model in ("sd-detail", "sd-captions") else (marker,)
            absent = [name for name in needed if not (out_root / folder / name).is_file()]
            if absent:
                raise UserError(f"models: {model} needs the {folder} in {out_root}, and there is none "
                                f"({out_root / folder / absent[0]} is missing); {fix}, or choose an out "
                                f"folder that holds {folder}")
    if evaluate:
        trained = {CLIP_FOLDER: "clip", SD_FOLDER: "sd", ORACLE_FOLDER: "oracle"}
        missing = [folder for folder, model in trained.items()
                   if model not in models and not (out_root / folder).is_dir()]
        if missing:
            them = "it" if len(missing) == 1 else "them"
            raise UserError(f"evaluation measures all three world models, and {out_root} has no "
                            f"{' or '.join(missing)}, nor does this run train {them}; train without "
                            f"evaluating (--no-evaluate, evaluate=False) or train {them} too")
    return models


def train_world_models(out_root: Path, device: str = "auto", seed: int = 0, scale: float = 1.0,
                       log=print, evaluate: bool = True, reuse_clip: bool = False,
                       models: tuple[str, ...] = FROM_SCRATCH, threads: int = CPU_THREADS) -> dict:
    """Train world-clip, world-sd and world-oracle under ``out_root``; returns the training stats.

    The result depends only on ``seed`` and ``scale`` (and the device's
    arithmetic). With ``evaluate`` the models are then measured with
    :func:`synthgen.world.evaluate.evaluate_world_models` and model cards written.
    ``models`` picks which of ``MODELS`` to train (the default: the three from scratch);
    each model's training depends only on the seed, the scale and the render
    pool, so training them in separate runs (even at the same time, one per
    core) gives what one run gives. world-sd needs a CLIP: when "clip" is not
    in ``models`` (or with ``reuse_clip``, the same as leaving it out) the
    existing ``out_root/world-clip`` is loaded, and world-sd's text encoder is
    its text tower. ``threads`` is the intra-op thread count on a CPU (see `CPU_THREADS`).
    A mistake in the arguments (an unknown model, a missing folder to continue) raises
    `UserError` before anything is rendered or trained.
    """
    from transformers import CLIPTextModel

    from synthgen.devices import choose_device

    out_root = Path(out_root)
    models = _checked_models(out_root, models, reuse_clip, evaluate)
    check_run_seed(seed)
    if not (math.isfinite(scale) and scale > 0):
        raise UserError(f"scale: {scale} is not a number > 0; 1.0 trains the shipped models, 0.02 is "
                        "a quick smoke run")
    check_train_scene_count(_scene_count(scale), f"scale: {scale:g}", f"{TRAIN_SEEDS_PER_RUN / TRAIN_SCENES:g}")
    if evaluate:
        from synthgen.world.evaluate import check_evaluation_scale

        check_evaluation_scale(scale)  # before hours of training, not after
    _check_out_folder(out_root)
    if threads < 1:
        raise UserError(f"threads: {threads} is not >= 1")
    torch_device = choose_device(device)
    on_cpu = torch_device.type == "cpu"
    started = time.time()
    common = {"seed": seed, "scale": scale, "device": _device_description(torch_device, threads),
              "torch": torch.__version__}
    stamp = lambda: f"[{time.time() - started:6.0f}s]"  # noqa: E731 - a one-line log prefix
    say = lambda message: log(f"{stamp()} {message}")  # noqa: E731

    # 1. One pool of single-object training renders for all three models.
    scene_count = _scene_count(scale)
    pool = train_pool(seed, scene_count)
    say(f"rendered {scene_count} training scenes")

    if on_cpu:
        torch.set_num_threads(threads)
    clip_dir = out_root / CLIP_FOLDER
    if "clip" not in models and "sd" in models:
        from transformers import CLIPModel, CLIPTokenizer

        clip = CLIPModel.from_pretrained(clip_dir, use_safetensors=True).to(torch_device).eval()
        tokenizer = CLIPTokenizer.from_pretrained(clip_dir)
        say(f"reusing {clip_dir}")
    elif "clip" in models:
        # 2. CLIP stage 1: both towers, InfoNCE over hard-negative batches of (render, caption).
        tokenizer = build_world_tokenizer()
        clip_settings = _scaled(ClipTrainingOptions(), scale)
        clip, clip_stats = train_world_clip(pool, tokenizer, clip_settings, torch_device, seed, log=say)
        # 2b. CLIP stage 2: the vision tower against the whole caption bank, text tower frozen.
        refinement_settings = _scaled(VisionRefinementOptions(), scale)
        refinement_stats = refine_vision_tower(clip, tokenizer, pool, refinement_settings, torch_device,
                                               seed + 5, log=say)
        # 2c. Stage 2 continued, as `clip-refine` does to a CLIP trained before this was part of a run.
        continued = _continue_vision_refinement(clip, tokenizer, pool, seed, scale, torch_device, common, say)
        save_world_clip(clip.to("cpu"), tokenizer, clip_dir)
        clip.to(torch_device)
        clip_stats |= common | {"parameters": parameter_count(clip), "settings": asdict(clip_settings),
                                "vision_refinement": refinement_stats | {"settings": asdict(refinement_settings)},
                                "vision_refinement_continued": [continued]}
        _write_json(clip_dir / "training.json", clip_stats)
        say(f"saved {clip_dir}")

    if "sd" in models:
        # 3. VAE for reconstruction; its latent std fixes the scaling factor.
        vae_settings = _scaled(VaeTrainingOptions(), scale)
        vae, vae_stats = train_world_vae(pool, vae_settings, torch_device, seed + 1, log=say)
        latents = encode_latents(vae, pool, torch_device)
        scaling_factor = latent_scaling_factor(latents)
        vae.register_to_config(scaling_factor=scaling_factor)
        vae_stats |= {"scaling_factor": scaling_factor, "settings": asdict(vae_settings),
                      "parameters": parameter_count(vae)}
        say(f"latents {tuple(latents.shape)}, scaling factor {scaling_factor:.4f}")

        # 4. The frozen text encoder is the CLIP's text tower, weights copied as they are.
        text_encoder = CLIPTextModel(clip.config.text_config)
        text_encoder.load_state_dict(clip.text_model.state_dict())
        text_encoder.to(torch_device).eval().requires_grad_(False)

        # 5. Captions (half canonical wording), embedded once per unique caption by the pipeline itself.
        data = _diffusion_data(assemble_pipeline(vae, None, text_encoder, tokenizer), pool, latents * scaling_factor,
                               seed, torch_device)
        say(f"embedded {len(data['caption_embeddings'])} unique captions")
        unet_settings = _scaled(UnetTrainingOptions(), scale)
        if unet_settings.alignment_weight:
            # 5b. What the world CLIP's vision tower sees in each clean render: phase 1's alignment targets.
            data["alignment_targets"] = patch_features(clip, images_to_tensor(pool.images).to(torch_device)).cpu()
            say(f"alignment targets {tuple(data['alignment_targets'].shape)}")

        # 6. UNet phase 1 on scaled latents with caption dropout, then the detail phase from its
        #    EMA weights; the detail phase's EMA weights are shipped.
        unet, unet_stats = train_world_unet(**data, settings=unet_settings, device=torch_device, seed=seed + 3,
                                            log=say)
        unet, detail_phase = _run_detail_phase(data, pool, unet, seed, scale, torch_device, common, say)
        pipeline = assemble_pipeline(vae.to("cpu"), unet.to("cpu"), text_encoder.to("cpu"), tokenizer)
        sd_dir = out_root / SD_FOLDER
        pipeline.save_pretrained(sd_dir, safe_serialization=True)
        held_out_mae = reconstruction_error(vae, train_pool(seed + 50, 512), torch.device("cpu"))
        _write_json(sd_dir / "training.json", common | {
            "vae": vae_stats | {"reconstruction_mae_255": round(held_out_mae, 3)},
            "unet": unet_stats | {"settings": asdict(unet_settings), "parameters": parameter_count(unet),
                                  "unique_captions": len(data["caption_embeddings"])},
            "detail_phase": detail_phase,
            "text_encoder": {"source": CLIP_FOLDER, "frozen": True, "parameters": parameter_count(text_encoder)},
        })
        say(f"saved {sd_dir}")

    if "sd-detail" in models:
        # 6b. The detail phase alone, on an existing world-sd trained before it existed.
        _continue_with_detail_phase(out_root / SD_FOLDER, pool, seed, scale, torch_device, common, say)

    if "sd-captions" in models:
        # 6c. The caption phase alone, on an existing world-sd trained before it existed.
        _continue_with_caption_phase(out_root / SD_FOLDER, pool, seed, scale, torch_device, common, say)

    if "clip-refine" in models:
        # 6b. Continue stage 2 of the shipped CLIP: vision tower only, text tower untouched.
        from transformers import CLIPModel, CLIPTokenizer

        refined = CLIPModel.from_pretrained(clip_dir, use_safetensors=True).to(torch_device)
        refine_tokenizer = CLIPTokenizer.from_pretrained(clip_dir)
        continued = _continue_vision_refinement(refined, refine_tokenizer, pool, seed, scale, torch_device,
                                                common, say)
        save_world_clip(refined.to("cpu"), refine_tokenizer, clip_dir)
        record = json.loads((clip_dir / "training.json").read_text())
        record.setdefault("vision_refinement_continued", []).append(continued)
        _write_json(clip_dir / "training.json", record)
        say(f"continued the vision refinement of {clip_dir}")

    if "oracle" in models:
        # 7. Oracle: supervised attribute reader trained on the same real renders.
        oracle_settings = _scaled(OracleTrainingOptions(), scale)
        oracle, oracle_stats = train_world_oracle(pool, oracle_settings, torch_device, seed + 4, log=say)
        oracle_dir = out_root / ORACLE_FOLDER
        save_oracle(oracle.to("cpu"), oracle_dir)
        _write_json(oracle_dir / "training.json", common | oracle_stats | {"parameters": parameter_count(oracle)})
        say(f"saved {oracle_dir}")

    training_seconds = round(time.time() - started, 1)
    summary = {"training_wall_seconds": training_seconds, "models": list(models), **common}
    if evaluate:
        from synthgen.world.evaluate import evaluate_world_models, write_model_cards

        metrics = evaluate_world_models(out_root, device=device, scale=scale, log=say)
        write_model_cards(out_root)
        summary["metrics"] = metrics
    summary["total_wall_seconds"] = round(time.time() - started, 1)
    say(f"done: training {training_seconds:.0f}s, total {summary['total_wall_seconds']:.0f}s")
    return summary
