"""Measure the shipped world models and write their model cards.

    synthgen world evaluate [--models synthgen/models] [--device auto] [--scale 1.0]

Numbers (all on seeds no training run uses):

* world-clip: zero-shot shape / colour accuracy on held-out renders.
* world-oracle: held-out accuracy per attribute and position error.
* world-sd, judged by the oracle: prompted shape / colour / size accuracy
  over prompts "a {size} {colour} {shape} on a {background} background";
  the striped rate with and without the negative prompt "striped" (prompts
  never mention stripes) and with "striped" in the prompt; and the spread of
  object positions across seeds for one fixed prompt. Model edits (erase,
  debias) are measured by `synthgen world edits` (world/edits.py).

Each folder gets ``metrics.json``; :func:`write_model_cards` turns
``training.json`` + ``metrics.json`` into ``README.md``.
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path

import numpy as np
import torch

from synthgen.errors import UserError
from synthgen.world.model_folders import CLIP_FOLDER, ORACLE_FOLDER, SD_FOLDER, load_world_sd
from synthgen.world.scene import BACKGROUNDS, COLOURS, SHAPES, SIZES

GUIDANCE_SCALE = 4.0
SAMPLING_STEPS = 20
HELD_OUT_RENDERS = 1000
GENERATED_PROMPTS = 2000
"""Prompts for the shape and colour gates: at 90% the 95% interval is about +-1.3 points (with
the 500 used up to world-sd v4 it was +-2.7, wide enough to straddle the 90% gate). The first
500 prompts and seeds are the earlier 500: `evaluation_prompts` draws them one after another."""
SUPPRESSION_PROMPTS = 100
DIVERSITY_SEEDS = 64
DIVERSITY_PROMPT = "a medium red star on a gray background"
GENERATION_SEED_OFFSET = 7_000_000
"""Noise seeds for evaluation images; prompt i uses seed GENERATION_SEED_OFFSET + i."""
DIVERSITY_SEED_OFFSET = GENERATION_SEED_OFFSET + 100_000
"""Noise seeds for the diversity images (seed i: this + i), after the prompts' seeds."""
MAX_SCALE = (DIVERSITY_SEED_OFFSET - GENERATION_SEED_OFFSET) / GENERATED_PROMPTS
"""The largest ``scale``: beyond it the prompts' noise seeds reach the diversity images' seeds."""
EVALUATE_COMMAND = "synthgen world evaluate"
"""What each metrics.json records as the command that measured it (with ``--scale`` when not 1)."""


def evaluation_prompts(count: int, seed: int = 0) -> list[dict]:
    """``count`` single-object prompts with their attributes, uniform over the vocabulary."""
    rng = np.random.default_rng(seed + 4242)
    prompts = []
    for _ in range(count):
        size, colour = str(rng.choice(SIZES)), str(rng.choice(tuple(COLOURS)))
        shape, background = str(rng.choice(SHAPES)), str(rng.choice(BACKGROUNDS))
        prompts.append({"size": size, "colour": colour, "shape": shape, "background": background,
                        "prompt": f"a {size} {colour} {shape} on a {background} background",
                        "striped_prompt": f"a {size} striped {colour} {shape} on a {background} background"})
    return prompts


@torch.no_grad()
def generate(pipeline, prompts: list[str], seeds: list[int], negative_prompt: str | None = None,
             guidance_scale: float = GUIDANCE_SCALE, steps: int = SAMPLING_STEPS,
             batch_size: int = 50) -> np.ndarray:
    """uint8 (N, 32, 32, 3) images, image i from ``prompts[i]`` and a CPU generator seeded ``seeds[i]``."""
    images = []
    for start in range(0, len(prompts), batch_size):
        chunk = prompts[start:start + batch_size]
        generators = [torch.Generator("cpu").manual_seed(s) for s in seeds[start:start + batch_size]]
        negatives = None if negative_prompt is None else [negative_prompt] * len(chunk)
        output = pipeline(prompt=chunk, negative_prompt=negatives,
                          num_inference_steps=steps, guidance_scale=guidance_scale, generator=generators,
                          height=32, width=32, output_type="np").images
        images.append((np.clip(output, 0, 1) * 255).round().astype(np.uint8))
    return np.concatenate(images)


def _interval95(hits: int, total: int) -> list[float]:
    from synthgen.audit.metrics import wilson_interval

    return [round(bound, 4) for bound in wilson_interval(hits, total)]


def _rate(values) -> float:
    values = list(values)
    return round(float(np.mean(values)), 4) if values else float("nan")


def evaluate_generator(pipeline, oracle, prompt_count: int = GENERATED_PROMPTS,
                       suppression_count: int = SUPPRESSION_PROMPTS, diversity_seeds: int = DIVERSITY_SEEDS,
                       log=print) -> dict:
    """Oracle-judged metrics of a world text-to-image pipeline (see the module docstring)."""
    prompts = evaluation_prompts(prompt_count)
    seeds = [GENERATION_SEED_OFFSET + i for i in range(prompt_count)]
    # 1. Prompted attributes.
    readings = oracle.read(generate(pipeline, [p["prompt"] for p in prompts], seeds))
    shape_hits = [r["shape"] == p["shape"] for r, p in zip(readings, prompts)]
    colour_hits = [r["colour"] == p["colour"] for r, p in zip(readings, prompts)]
    result = {
        "guidance_scale": GUIDANCE_SCALE, "sampling_steps": SAMPLING_STEPS,
        "scheduler": type(pipeline.scheduler).__name__, "prompts": prompt_count,
        "prompted_shape_accuracy": _rate(shape_hits),
        "prompted_colour_accuracy": _rate(colour_hits),
        "prompted_size_accuracy": _rate(r["size"] == p["size"] for r, p in zip(readings, prompts)),
        "prompted_shape_ci95": _interval95(sum(shape_hits), prompt_count),
        "prompted_colour_ci95": _interval95(sum(colour_hits), prompt_count),
        "per_shape_accuracy": {shape: _rate(r["shape"] == shape for r, p in zip(readings, prompts)
                                            if p["shape"] == shape) for shape in SHAPES},
    }
    log(f"prompted shape {result['prompted_shape_accuracy']}, colour {result['prompted_colour_accuracy']}")
    # 2. Suppression: same prompts (no stripes mentioned) and seeds, with and without a negative prompt.
    plain = [p["prompt"] for p in prompts[:suppression_count]]
    suppression_seeds = seeds[:suppression_count]
    without = oracle.read(generate(pipeline, plain, suppression_seeds))
    with_negative = oracle.read(generate(pipeline, plain, suppression_seeds, negative_prompt="striped"))
    striped_prompts = [p["striped_prompt"] for p in prompts[:suppression_count]]
    asked = oracle.read(generate(pipeline, striped_prompts, suppression_seeds))
    # 3. Suppression against a high base rate (unasked stripes are rare, so the lines above can
    #    show little): prompts that ask for stripes, with the negative prompt "striped". The
    #    model edits (`erase`, `debias`) are measured by `synthgen world edits` (world/edits.py).
    asked_with_negative = oracle.read(generate(pipeline, striped_prompts, suppression_seeds,
                                               negative_prompt="striped"))
    result["suppression"] = {
        "prompts": suppression_count,
        "striped_rate_no_negative_prompt": _rate(r["striped"] for r in without),
        "striped_rate_negative_prompt_striped": _rate(r["striped"] for r in with_negative),
        "striped_rate_when_prompted_striped": _rate(r["striped"] for r in asked),
        "striped_rate_prompted_striped_negative_prompt_striped": _rate(
            r["striped"] for r in asked_with_negative),
    }
    log(f"suppression {result['suppression']}")
    # 3. Diversity: one prompt, many seeds; where the oracle finds the object.
    diverse = oracle.read(generate(pipeline, [DIVERSITY_PROMPT] * diversity_seeds,
                                   [DIVERSITY_SEED_OFFSET + i for i in range(diversity_seeds)]))
    xs, ys = np.array([r["x"] for r in diverse]), np.array([r["y"] for r in diverse])
    # Real medium objects are uniform on [0.26, 0.74]: std 0.48 / sqrt(12) = 0.139.
    result["diversity"] = {"prompt": DIVERSITY_PROMPT, "seeds": diversity_seeds,
                           "x_std": round(float(xs.std()), 4), "y_std": round(float(ys.std()), 4),
                           "real_renders_std": round(0.48 / np.sqrt(12), 4),
                           "shape_accuracy": _rate(r["shape"] == "star" for r in diverse),
                           "colour_accuracy": _rate(r["colour"] == "red" for r in diverse)}
    log(f"diversity {result['diversity']}")
    return result


@torch.no_grad()
def reconstruction_readings(vae, oracle, pool) -> dict:
    """How well the oracle reads shape on VAE round trips of real renders: a ceiling for world-sd.

    Every generated image is a decoded latent, so a shape the decoder cannot
    draw (the first VAE lost the points of small stars and crosses: 84% here,
    65% for small objects) is one the generator cannot draw either.
    """
    from synthgen.world.diffusion import round_trips

    _, decoded = round_trips(vae, pool, vae.device)
    round_trip = ((decoded.permute(0, 2, 3, 1).numpy() + 1) * 127.5).round().astype(np.uint8)
    readings = oracle.read(round_trip)
    truths = [scene.objects[0] for scene in pool.scenes]
    return {
        "images": len(truths),
        "shape_accuracy": _rate(r["shape"] == t.shape for r, t in zip(readings, truths)),
        "colour_accuracy": _rate(r["colour"] == t.colour for r, t in zip(readings, truths)),
        "shape_accuracy_by_size": {size: _rate(r["shape"] == t.shape for r, t in zip(readings, truths)
                                               if t.size == size) for size in SIZES},
        "mean_abs_error_255": round(float(np.abs(round_trip.astype(np.float64)
                                                 - np.stack(pool.images)).mean()), 3),
    }


def check_evaluation_scale(scale: float) -> None:
    """A UserError unless `scale` is a number in (0, MAX_SCALE]."""
    if not (math.isfinite(scale) and scale > 0):
        raise UserError(f"scale: {scale} is not a number > 0; 1.0 gives the model cards' numbers, "
                        "0.01 is a smoke run")
    if scale > MAX_SCALE:
        # Held-out renders have no ceiling, but prompt i's noise seed is GENERATION_SEED_OFFSET + i.
        raise UserError(f"scale: {scale:g} is above the largest evaluation allows, {MAX_SCALE:g}: its "
                        f"{round(GENERATED_PROMPTS * scale):,} evaluation prompts' noise seeds would reach "
                        "the diversity images' seeds; 1.0 gives the model cards' numbers")


def evaluate_world_models(models_root: Path, device: str = "auto", scale: float = 1.0, log=print) -> dict:
    """Measure world-clip, world-oracle and world-sd under ``models_root``; writes each ``metrics.json``.

    ``scale`` < 1 shrinks the image counts (for smoke tests); reported
    numbers in the model cards use ``scale=1``. A ``models_root`` without the three folders,
    or a ``scale`` outside (0, `MAX_SCALE`], raises `UserError` before anything loads.
    """
    from transformers import CLIPModel, CLIPTokenizer

    from synthgen.devices import choose_device
    from synthgen.world.clip import zero_shot_attribute_accuracy
    from synthgen.world.corpus import held_out_pool
    from synthgen.world.oracle import load_oracle, oracle_accuracy

    models_root = Path(models_root)
    missing = [folder for folder in (CLIP_FOLDER, SD_FOLDER, ORACLE_FOLDER) if not (models_root / folder).is_dir()]
    if missing:
        raise UserError(f"models: {models_root} has no {', '.join(missing)}; give the folder that "
                        "`synthgen world train --out` wrote (it holds world-clip, world-sd and world-oracle)")
    check_evaluation_scale(scale)
    empty = [folder for folder, marker in ((CLIP_FOLDER, "config.json"), (SD_FOLDER, "model_index.json"),
                                           (ORACLE_FOLDER, "model.safetensors"))
             if not (models_root / folder / marker).is_file()]
    if empty:
        raise UserError(f"models: {', '.join(empty)} in {models_root} hold{'s' if len(empty) == 1 else ''} "
                        "no saved model (an interrupted training?); train them again with `synthgen "
                        "world train --out` that folder, or give the folder that holds them")
    torch_device = choose_device(device)
    if torch_device.type == "cpu":
        torch.set_num_threads(2)
    count = lambda n: max(8, round(n * scale))  # noqa: E731
    started = time.time()
    held_out = held_out_pool(count(HELD_OUT_RENDERS))

    clip = CLIPModel.from_pretrained(models_root / CLIP_FOLDER, use_safetensors=True).to(torch_device)
    tokenizer = CLIPTokenizer.from_pretrained(models_root / CLIP_FOLDER)
    clip_metrics = zero_shot_attribute_accuracy(clip, tokenizer, held_out, torch_device)
    log(f"clip {clip_metrics}")

    oracle = load_oracle(models_root / ORACLE_FOLDER, torch_device)
    oracle_metrics = oracle_accuracy(oracle, held_out)
    log(f"oracle {oracle_metrics}")

    pipeline = load_world_sd(models_root / SD_FOLDER)
    pipeline.set_progress_bar_config(disable=True)
    pipeline.to(torch_device)
    generator_metrics = evaluate_generator(pipeline, oracle, count(GENERATED_PROMPTS), count(SUPPRESSION_PROMPTS),
                                           count(DIVERSITY_SEEDS), log=log)
    generator_metrics["vae_round_trip"] = reconstruction_readings(pipeline.vae, oracle, held_out)
    log(f"vae round trip {generator_metrics['vae_round_trip']}")
    command = {"command": EVALUATE_COMMAND + (f" --scale {scale}" if scale != 1 else ""),
               "device": str(torch_device), "scale": scale}
    metrics = {CLIP_FOLDER: clip_metrics | command, ORACLE_FOLDER: oracle_metrics | command,
               SD_FOLDER: generator_metrics | command}
    for folder, values in metrics.items():
        (models_root / folder / "metrics.json").write_text(json.dumps(values, indent=2, sort_keys=True) + "\n")
    log(f"evaluation took {time.time() - started:.0f}s")
    return metrics


def _continued(clip_train: dict) -> str:
    """The model card's words for stage-2 continuations (the end of `--models clip`, or `clip-refine`)."""
    text = ""
    for run in clip_train.get("vision_refinement_continued", ()):
        text += (f"; then continued (seed {run['seed']}): {run['steps']} more "
                 f"steps at learning rate {run['settings']['learning_rate']:g}, {run['wall_seconds'] / 60:.1f} min, "
                 "text tower checked unchanged")
    return text


def _pooled_text(sd_dir: Path) -> str:
    config = json.loads((sd_dir / "unet" / "config.json").read_text())
    if config.get("addition_embed_type") != "text":
        return ""
    return ("  the prompt's token embeddings also pooled into the timestep embedding "
            "(`addition_embed_type=\"text\"`),\n")


def _min_snr(unet_train: dict) -> str:
    gamma = unet_train.get("min_snr_gamma")
    return f" weighted by min-SNR-gamma (gamma {gamma:g})" if gamma else ""


def _alignment(unet_train: dict) -> str:
    weight = unet_train.get("alignment_weight")
    if not weight:
        return ""
    return (f",\n  plus {weight:g} x representation alignment (REPA) of the 4x4 mid-block features with world-clip's"
            f" vision patch features\n  (final cosine {unet_train['final_alignment_cosine']:.2f})")


def _detail_phase(sd_train: dict) -> str:
    """The model card's bullet for the UNet's second phase (absent from world-sd v3 and before)."""
    phase = sd_train.get("detail_phase")
    if phase is None:
        return ""
    separately = " (run as `--models sd-detail` on the phase-1 UNet)" if phase.get("continued_separately") else ""
    return (f"- UNet detail phase{separately}: continued from the EMA weights for {phase['steps']} steps at learning\n"
            f"  rate {phase['settings']['learning_rate']:g}, every noise level weighted alike, small objects drawn "
            f"{phase['small_object_weight']:g}x as often;\n  {phase['wall_seconds'] / 60:.1f} min on {phase['device']}.\n")


def _interval(metrics: dict, key: str) -> str:
    """" (95% CI a-b)" where the metrics hold the interval (older metrics files do not)."""
    if key not in metrics:
        return ""
    low, high = metrics[key]
    return f" (95% CI {100 * low:.1f}-{100 * high:.1f}%)"


def _round_trip_row(sd_metrics: dict) -> str:
    """The model card's row for the VAE's ceiling on shape (absent from older metrics files)."""
    round_trip = sd_metrics.get("vae_round_trip")
    if round_trip is None:
        return ""
    by_size = ", ".join(f"{size} {_percent(value)}" for size, value in round_trip["shape_accuracy_by_size"].items())
    return (f"| ceiling: shape read on VAE round trips of {round_trip['images']} held-out renders | "
            f"{_percent(round_trip['shape_accuracy'])} ({by_size}) | |\n")


def _folder_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*.safetensors"))


def _percent(value: float) -> str:
    return f"{100 * value:.1f}%"


def write_model_cards(models_root: Path) -> None:
    """Write ``README.md`` in each world model folder from its ``training.json`` and ``metrics.json``."""
    models_root = Path(models_root)
    load = lambda folder, name: json.loads((models_root / folder / name).read_text())  # noqa: E731
    reproduce = ("Reproduce: `synthgen world train --out synthgen/models` (trains all three and "
                 f"evaluates); numbers only: `{EVALUATE_COMMAND}`.")

    clip_train, clip_metrics = load(CLIP_FOLDER, "training.json"), load(CLIP_FOLDER, "metrics.json")
    refinement = clip_train.get("vision_refinement", {})
    (models_root / CLIP_FOLDER / "README.md").write_text(f"""# world-clip

A small CLIP (transformers `CLIPModel`) for synthgen's procedural world: 32x32 renders of
coloured shapes and their captions. Text tower: 3 layers, hidden 128, a world tokenizer in which
every caption word is one token (byte-level fallback for other text), max 32 tokens. Vision
tower: ViT, 8x8 patches on 32x32, 4 layers, hidden 128. Projection 128. Pixels in [-1, 1]
(the saved `CLIPImageProcessor` resizes/crops to 32 and normalises with mean = std = 0.5).

- Parameters: {clip_train['parameters']:,} ({_folder_bytes(models_root / CLIP_FOLDER) / 1e6:.1f} MB fp32 safetensors)
- Data: {clip_train['train_scenes']:,} single-object training renders (seeds of run {clip_train['seed']}),
  ~30% striped, 20% with a logo, captions in the 4 templates of the world, wording re-drawn at every use
- Training stage 1: both towers, symmetric InfoNCE with a learned temperature, {clip_train['steps']} steps of
  batch {clip_train['batch_size']} made of hard-negative groups of 8 (same colour, size, background; 8 different
  shapes), AdamW with warm-up + cosine; {clip_train['wall_seconds'] / 60:.1f} min on {clip_train['device']}
- Training stage 2: vision tower only (text tower frozen: it is world-sd's text encoder),
  image-to-text InfoNCE against all {refinement.get('bank_captions', 7920):,} canonical single-object captions,
  {refinement.get('steps', 0)} steps of batch {refinement.get('batch_size', 0)}, {refinement.get('wall_seconds', 0) / 60:.1f} min{_continued(clip_train)}
- Zero-shot on {clip_metrics['held_out_images']} held-out renders (seeds disjoint from training): shape
  **{_percent(clip_metrics['zero_shot_shape_accuracy'])}**, colour **{_percent(clip_metrics['zero_shot_colour_accuracy'])}**
  (gate: 95% each). Prompt ensembling: class scores sum the probabilities of every canonical
  caption naming that class (all sizes, colours, stripings, backgrounds, with and without logo).

{reproduce}
""")

    sd_train, sd_metrics = load(SD_FOLDER, "training.json"), load(SD_FOLDER, "metrics.json")
    suppression, diversity = sd_metrics["suppression"], sd_metrics["diversity"]
    per_shape = ", ".join(f"{shape} {_percent(value)}" for shape, value in sd_metrics["per_shape_accuracy"].items())
    (models_root / SD_FOLDER / "README.md").write_text(f"""# world-sd

A small latent text-to-image model for the procedural world, saved as a diffusers
`StableDiffusionPipeline` (load it with `AutoPipelineForText2Image.from_pretrained`, or in a
recipe as `model.id: builtin:world-sd`, width = height = 32). 32x32 images, 4x16x16 latents.

- Text encoder: the frozen text tower of `world-clip` ({sd_train['text_encoder']['parameters']:,} parameters) and its tokenizer.
- VAE: `AutoencoderKL`, channels (32, 32), {sd_train['vae']['parameters']:,} parameters; {sd_train['vae']['steps']} steps of batch
  {sd_train['vae']['batch_size']} (MSE + 1e-6 KL), {sd_train['vae']['wall_seconds'] / 60:.1f} min; held-out reconstruction error
  {sd_train['vae']['reconstruction_mae_255']:.2f}/255 per channel; scaling_factor {sd_train['vae']['scaling_factor']:.4f} (1/std of latents).
- UNet: `UNet2DConditionModel`, channels (32, 64, 96), cross-attention at 8x8 and 4x4,
{_pooled_text(models_root / SD_FOLDER)}  {sd_train['unet']['parameters']:,} parameters; DDPM epsilon loss{_min_snr(sd_train['unet'])}{_alignment(sd_train['unet'])}, {sd_train['unet']['steps']} steps of batch
  {sd_train['unet']['batch_size']}, 10% caption dropout (for classifier-free guidance), EMA {sd_train['unet']['ema_decay']};
  {sd_train['unet']['wall_seconds'] / 60:.1f} min on {sd_train['device']}.
{_detail_phase(sd_train)}- Data: {sd_train['unet']['train_latents']:,} single-object renders, {sd_train['unet']['unique_captions']:,} unique captions
  (62.5% in the canonical wording "a SIZE [striped] COLOUR SHAPE on a BACKGROUND background").
- Scheduler: {sd_metrics['scheduler']} (shipped); measured at {sd_metrics['sampling_steps']} steps, guidance {sd_metrics['guidance_scale']}.
- Weights: {_folder_bytes(models_root / SD_FOLDER) / 1e6:.1f} MB fp32 safetensors.

## Measured (judged by `world-oracle`, seeds disjoint from training)

| metric | value | target |
|---|---|---|
| prompted shape accuracy ({sd_metrics['prompts']} prompts) | {_percent(sd_metrics['prompted_shape_accuracy'])}{_interval(sd_metrics, 'prompted_shape_ci95')} | >= 90% |
| prompted colour accuracy | {_percent(sd_metrics['prompted_colour_accuracy'])}{_interval(sd_metrics, 'prompted_colour_ci95')} | >= 90% |
| prompted size accuracy | {_percent(sd_metrics['prompted_size_accuracy'])} | |
{_round_trip_row(sd_metrics)}| striped rate, prompt without stripes, no negative prompt | {_percent(suppression['striped_rate_no_negative_prompt'])} | |
| striped rate, same prompts, negative prompt "striped" | {_percent(suppression['striped_rate_negative_prompt_striped'])} | lower |
| striped rate, prompt says "striped" | {_percent(suppression['striped_rate_when_prompted_striped'])} | high |
| striped rate, prompt says "striped", negative prompt "striped" | {_percent(suppression.get('striped_rate_prompted_striped_negative_prompt_striped', float('nan')))} | lower than the line above |
| position spread x / y std, "{diversity['prompt']}", {diversity['seeds']} seeds | {diversity['x_std']:.3f} / {diversity['y_std']:.3f} | real renders {diversity['real_renders_std']:.3f} |

Per-shape prompted accuracy: {per_shape}.

Limitations: single-object scenes only (no "inside"/"next to" training captions); 32x32 only.

{reproduce}
""")

    oracle_train, oracle_metrics = load(ORACLE_FOLDER, "training.json"), load(ORACLE_FOLDER, "metrics.json")
    (models_root / ORACLE_FOLDER / "README.md").write_text(f"""# world-oracle

A supervised CNN (`synthgen.world.oracle.WorldOracle`) that reads a 32x32 single-object world image:
shape (11), colour (10), size (3), striped, and the object's centre x, y. Load with
`synthgen.world.oracle.load_oracle(folder)`; `oracle.read(uint8 images)` returns one dict per image.
Used to judge `world-sd`'s images; trained only on real renders (with light blur/noise augmentation).

- Parameters: {oracle_train['parameters']:,} ({_folder_bytes(models_root / ORACLE_FOLDER) / 1e6:.1f} MB fp32 safetensors + config.json)
- Training: {oracle_train['steps']} steps of batch {oracle_train['batch_size']} on {oracle_train['train_scenes']:,} renders,
  {oracle_train['wall_seconds'] / 60:.1f} min on {oracle_train['device']}
- Held-out ({oracle_metrics['held_out_images']} renders): shape {_percent(oracle_metrics['shape_accuracy'])}, colour
  {_percent(oracle_metrics['colour_accuracy'])}, size {_percent(oracle_metrics['size_accuracy'])}, striped
  {_percent(oracle_metrics['striped_accuracy'])}, position mean abs error {oracle_metrics['position_mean_abs_error']:.4f} of the image side

{reproduce}
""")
