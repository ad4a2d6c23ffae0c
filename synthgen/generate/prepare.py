"""Everything between a recipe and a ready `Sampler`: load, edit (erase, debias), attach rejectors.

Engines call `prepare_sampler` once per worker; it is the only place that turns a recipe's
`suppress` entries of the `erase` and `reject` methods and `balance` entries of the `debias`
method into model edits and detectors.
"""

from __future__ import annotations

from dataclasses import replace

import torch

from synthgen.attributes import negative_prompt
from synthgen.errors import UserError
from synthgen.generate.detector import ClipConceptScorer, stored_pixels
from synthgen.generate.debias import ClipValueReader, debias, debias_targets, untouched_prompts
from synthgen.generate.erase import context_prompts, erase_concept, unsupported_reason
from synthgen.generate.load import LoadedModel, load_pipeline
from synthgen.generate.sampler import Rejector, Sampler
from synthgen.recipe import Recipe
from synthgen.seeding import derive_seed
from synthgen.views import STRATEGIES


def apply_erasures(recipe: Recipe, model: LoadedModel) -> LoadedModel:
    """Edit the model for every `erase` entry; the edits are recorded in `model.describe()`."""
    erasing = [index for index, entry in enumerate(recipe.suppress) if entry.method == "erase"]
    reason = unsupported_reason(model.pipeline) if erasing else None
    if reason is not None:
        raise UserError(f"suppress[{erasing[0]}].method erase: {recipe.model.id}: {reason}; "
                        "use method: reject or negative for this model")
    edits = []
    for index in erasing:
        entry = recipe.suppress[index]
        contexts = context_prompts(entry.contexts, entry.concept, entry.context_prompts,
                                   derive_seed("erase-contexts", recipe.seed, index),
                                   recipe.slots, [spec.name for spec in recipe.classes])
        edits.append(erase_concept(model.pipeline, entry.concept, entry.target, entry.preserve,
                                   contexts, entry.preserve_weight, entry.regularizer))
    return replace(model, edits=model.edits + tuple(edits))


def apply_debiasing(recipe: Recipe, model: LoadedModel, device: torch.device) -> LoadedModel:
    """Edit the model for every `balance` entry of method `debias` (generate/debias.py); each
    edit's record (ratios before, per iteration, weights digest) goes into `model.describe()`."""
    edits = []
    for index, entry in enumerate(recipe.balance):
        if entry.method != "debias":
            continue
        reason = unsupported_reason(model.pipeline)
        if reason is not None:
            raise UserError(f"balance[{index}].method debias: {recipe.model.id}: {reason}; use "
                            "method: prompt for this model")
        reader = ClipValueReader(entry.detector, device, entry.trials,
                                 derive_seed("debias-trials", recipe.seed, index),
                                 trial_drawer(recipe, model.pipeline))
        record = debias(model.pipeline, debias_targets(recipe, index), entry.values, reader,
                        entry.iterations, entry.tolerance, preserve=untouched_prompts(recipe, index),
                        preserve_weight=entry.preserve_weight, regularizer=entry.regularizer)
        edits.append({"attribute": entry.attribute, **record})
    return replace(model, edits=model.edits + tuple(edits))


def trial_drawer(recipe: Recipe, pipeline):
    """`draw(prompts, seeds)` -> uint8 (N, H, W, 3): the recipe's sampling settings, one CPU
    generator per image, eight images per call."""
    import numpy as np

    negative = negative_prompt(recipe) or None

    def draw(prompts: list[str], seeds: list[int]) -> np.ndarray:
        images = []
        for start in range(0, len(prompts), 8):
            chunk = prompts[start:start + 8]
            output = pipeline(
                prompt=chunk, negative_prompt=[negative] * len(chunk) if negative else None,
                num_inference_steps=recipe.model.steps, guidance_scale=recipe.model.guidance_scale,
                width=recipe.model.width, height=recipe.model.height, output_type="np",
                generator=[torch.Generator("cpu").manual_seed(s) for s in seeds[start:start + 8]])
            images.append((np.clip(output.images, 0, 1) * 255).round().astype(np.uint8))
        return np.concatenate(images)

    return draw


def apply_edits(recipe: Recipe, model: LoadedModel, device: torch.device) -> LoadedModel:
    """The recipe's model edits, erase then debias."""
    return apply_debiasing(recipe, apply_erasures(recipe, model), device)


def build_rejectors(recipe: Recipe, device: torch.device) -> tuple[Rejector, ...]:
    """One `Rejector` per `reject` entry; each distinct detector model is loaded once.

    A rejector scores each view as its shard will store it (`stored_pixels`), so a view
    recorded as passing is a stored file that passes.
    """
    scorers: dict[str, ClipConceptScorer] = {}
    rejectors = []
    for entry in recipe.suppress:
        if entry.method != "reject":
            continue
        if entry.detector not in scorers:
            scorers[entry.detector] = ClipConceptScorer(entry.detector, device)
        scorer = scorers[entry.detector]
        rejectors.append(Rejector(
            concept=entry.concept, threshold=entry.threshold, max_retries=entry.max_retries,
            score=lambda images, prompts, s=scorer, c=entry.concept, n=entry.contrast:
                s.probabilities(stored_pixels(images, recipe), c, n, prompts)))
    return tuple(rejectors)


def check_strategies(recipe: Recipe, sampler: Sampler) -> None:
    """Latent and img2img views need a pipeline whose starting latents synthgen draws."""
    specs = [recipe.views_for(spec) for spec in [*recipe.classes, *recipe.corner_cases]]
    needs_latents = sorted({s for spec in specs for s in spec.strategy
                            if STRATEGIES[s].needs_own_latents})
    if needs_latents and not sampler.draws_own_latents:
        raise UserError(f"views.strategy {needs_latents} needs a Stable Diffusion or SDXL "
                        f"pipeline; {type(sampler.pipeline).__name__} takes only seeds and prompt "
                        "views in synthgen so far")


def prepare_sampler(recipe: Recipe, device: torch.device, dtype: torch.dtype, batch_size: int,
                    compile_model: bool = False, channels_last: bool = False) -> Sampler:
    """Load the recipe's model, apply its erasures and rejectors, check its view strategies.

    `compile_model` and `channels_last` are speed options for GPUs; a compiled graph may
    change the last float bits, so bytes are reproducible per setting, not across settings.
    """
    model = apply_edits(recipe, load_pipeline(recipe.model, device, dtype), device)
    sampler = Sampler(model, recipe.model, batch_size, rejectors=build_rejectors(recipe, device),
                      compile_model=compile_model, channels_last=channels_last)
    check_strategies(recipe, sampler)
    check_negative_prompts(recipe, sampler)
    return sampler


def write_edited_model(recipe: Recipe, out_dir, device: torch.device) -> tuple[dict, ...]:
    """Apply the recipe's `erase` and `debias` edits to its model and save it as a new model folder.

    The folder loads like any diffusers model (safetensors weights) and carries
    `synthgen-edits.json`; a recipe can then use it as `model.id` without erasing again.
    """
    import json
    from pathlib import Path

    from synthgen.generate.load import EDITS_FILE, choose_dtype

    out_dir = Path(out_dir)
    if not (any(entry.method == "erase" for entry in recipe.suppress)
            or any(entry.method == "debias" for entry in recipe.balance)):
        raise UserError("synthgen edit: the recipe has no suppress entry with method: erase "
                        "and no balance entry with method: debias")
    if out_dir.exists() and any(out_dir.iterdir()):
        raise UserError(f"--out {out_dir}: is not empty; choose a new folder for the edited model")
    dtype = choose_dtype(recipe.model.dtype, device, recipe.model)
    model = apply_edits(recipe, load_pipeline(recipe.model, device, dtype), device)
    model.pipeline.save_pretrained(out_dir, safe_serialization=True)
    record = {"base_model": recipe.model.id, "revision": recipe.model.revision,
              "edits": list(model.edits)}
    (out_dir / EDITS_FILE).write_text(json.dumps(record, indent=2) + "\n")
    return model.edits


def check_negative_prompts(recipe: Recipe, sampler: Sampler) -> None:
    """A negative prompt the pipeline would ignore is a user error, not a silent no-op."""
    pipeline_name = type(sampler.pipeline).__name__
    true_cfg = recipe.model.true_cfg_scale
    if true_cfg is not None and not sampler.accepts("true_cfg_scale"):
        raise UserError(f"model.true_cfg_scale {true_cfg}: {pipeline_name} has no true_cfg_scale "
                        "(it is FLUX's); use model.guidance_scale for classifier-free guidance")
    negative = negative_prompt(recipe)
    if not negative:
        return
    where = ("model.negative_prompt" if recipe.model.negative_prompt else
             f"suppress[{next(i for i, e in enumerate(recipe.suppress) if e.method == 'negative')}]"
             ".method negative")
    if not sampler.accepts("negative_prompt"):
        raise UserError(f"{where}: {pipeline_name} takes no negative prompt; "
                        "use suppress method: reject instead")
    if sampler.accepts("true_cfg_scale") and true_cfg is None:
        raise UserError(
            f"{where}: {pipeline_name}'s guidance_scale is distilled and ignores negative prompts; "
            "set model.true_cfg_scale (for example 4.0; two transformer passes per step) to apply "
            f"{negative!r}, or use suppress method: reject")
