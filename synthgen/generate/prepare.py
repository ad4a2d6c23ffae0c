"""Everything between a recipe and a ready `Sampler`: load, edit (erase, debias), attach rejectors.

Engines call `prepare_sampler` once per worker. The recipe's `suppress` and `balance` entries
prepare themselves (their method modules in synthgen/suppress/ and synthgen/balance/): an entry
that `edits_weights` edits the loaded model (`edit_model`), a `reject` entry gives a
`rejector`; this module calls them in order and checks the pipeline can take them.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace

import torch

from synthgen.attributes import negative_prompt
from synthgen.errors import UserError
from synthgen.generate.detector import ClipConceptScorer
from synthgen.generate.families import family_of
from synthgen.generate.group_check import GroupChecker
from synthgen.generate.identity import detectors_digest
from synthgen.generate.load import LoadedModel, load_pipeline
from synthgen.generate.sampler import Rejector, Sampler
from synthgen.generate.stored import StoredForm
from synthgen.recipe import Recipe
from synthgen.views import STRATEGIES


def apply_erasures(recipe: Recipe, model: LoadedModel) -> LoadedModel:
    """Edit the model for every `suppress` entry that edits weights (`erase`); the edits are
    recorded in `model.describe()`."""
    return _apply_weight_edits("suppress", recipe.suppress, recipe, model, device=None)


def apply_debiasing(recipe: Recipe, model: LoadedModel, device: torch.device) -> LoadedModel:
    """Edit the model for every `balance` entry that edits weights (`debias`,
    generate/debias.py); each edit's record (ratios before, per iteration, weights digest)
    goes into `model.describe()`."""
    return _apply_weight_edits("balance", recipe.balance, recipe, model, device)


def _apply_weight_edits(block: str, entries: Sequence, recipe: Recipe, model: LoadedModel,
                        device: torch.device | None) -> LoadedModel:
    """Each entry of `recipe.<block>` that edits weights, in order, once the pipeline is known
    to allow such edits (before any is made)."""
    editing = [index for index, entry in enumerate(entries) if entry.edits_weights]
    reason = family_of(model.pipeline).edit_unsupported_reason() if editing else None
    if reason is not None:
        entry = entries[editing[0]]
        raise UserError(f"{block}[{editing[0]}].method {entry.method}: {recipe.model.id}: "
                        f"{reason}; {entry.unsupported_fix} for this model")
    edits = [entries[index].edit_model(recipe, index, model.pipeline, device) for index in editing]
    return replace(model, edits=model.edits + tuple(edits))


def apply_edits(recipe: Recipe, model: LoadedModel, device: torch.device) -> LoadedModel:
    """The recipe's model edits, erase then debias."""
    return apply_debiasing(recipe, apply_erasures(recipe, model), device)


def build_rejectors(recipe: Recipe, device: torch.device) -> tuple[Rejector, ...]:
    """One `Rejector` per `suppress` entry that gives one (`reject`); each distinct detector
    model is loaded once."""
    scorers: dict[str, ClipConceptScorer] = {}

    def scorer_for(detector: str) -> ClipConceptScorer:
        if detector not in scorers:
            scorers[detector] = ClipConceptScorer(detector, device)
        return scorers[detector]

    rejectors = [entry.rejector(recipe, scorer_for) for entry in recipe.suppress]
    return tuple(rejector for rejector in rejectors if rejector is not None)


def build_group_checker(recipe: Recipe, device: torch.device) -> GroupChecker | None:
    """The checker of `slots.check` groups, with each detector its checks read with loaded
    once; None when no views are checked."""
    scorers: dict[str, ClipConceptScorer] = {}
    checks = [spec.slots.check for spec in (recipe.views_for(entry) for entry in
                                             [*recipe.classes, *recipe.corner_cases])
              if spec.checks_groups]
    if not checks:
        return None
    for check in checks:
        if check.hold and check.detector not in scorers:
            scorers[check.detector] = ClipConceptScorer(check.detector, device,
                                                        "views.slots.check.detector")
    return GroupChecker(recipe, scorers)


def check_strategies(recipe: Recipe, sampler: Sampler) -> None:
    """Every view strategy the recipe uses must be one the model's family can run; a refusal
    names the first views block that asks for it."""
    family = sampler.family
    for where, spec in recipe.views_blocks():
        for name in spec.strategy:
            reason = family.view_unsupported_reason(STRATEGIES[name])
            if reason is not None:
                raise UserError(f"{where}.strategy ['{name}']: {recipe.model.id}: {reason}")
        if "slots" not in spec.strategy:
            continue
        for option, wanted, unsupported in (
                ("hold_layout", spec.holds_layout, family.layout_unsupported_reason),
                ("align_noise", spec.slots.align_noise, family.aligned_noise_unsupported_reason),
                ("splice_text", spec.slots.splice_text, family.splice_unsupported_reason)):
            reason = unsupported() if wanted else None
            if reason is not None:
                raise UserError(f"{where}.slots.{option}: {recipe.model.id}: {reason}")


def prepare_sampler(recipe: Recipe, device: torch.device, dtype: torch.dtype, batch_size: int,
                    compile_model: bool = False, channels_last: bool = False,
                    encode_workers: int = 4) -> Sampler:
    """Load the recipe's model, apply its erasures and rejectors, check its view strategies.

    `compile_model` and `channels_last` are speed options for GPUs; a compiled graph may
    change the last float bits, so bytes are reproducible per setting, not across settings.
    `encode_workers`: threads that encode the views a detector judges as stored.
    """
    model = apply_edits(recipe, load_pipeline(recipe.model, device, dtype), device)
    rejectors, checker = build_rejectors(recipe, device), build_group_checker(recipe, device)
    # The shards record the detectors' weights too (they decide which draws are kept); read
    # once they are loaded, so a hub detector the run just downloaded is known.
    model = replace(model, detectors=detectors_digest(recipe))
    judged = bool(rejectors) or checker is not None
    sampler = Sampler(model, recipe.model, batch_size, rejectors=rejectors,
                      compile_model=compile_model, channels_last=channels_last,
                      group_checker=checker,
                      stored_form=StoredForm(recipe, encode_workers) if judged else None)
    check_strategies(recipe, sampler)
    check_negative_prompts(recipe, sampler)
    check_image_size(recipe, sampler)
    return sampler


def check_image_size(recipe: Recipe, sampler: Sampler) -> None:
    """The recipe's size fits what the pipeline draws (multiples of 8 are checked earlier;
    some transformers need 16)."""
    multiple = sampler.family.size_multiple()
    for field in ("width", "height"):
        size = getattr(recipe.model, field)
        if size % multiple:
            lower = size - size % multiple or multiple
            raise UserError(f"model.{field} {size}: {type(sampler.pipeline).__name__} draws sizes "
                            f"that are multiples of {multiple}; use {lower} or {lower + multiple}")


def check_has_edits(recipe: Recipe) -> None:
    """A UserError unless the recipe edits its model (what `synthgen edit` writes)."""
    if not any(entry.edits_weights for entry in [*recipe.suppress, *recipe.balance]):
        raise UserError("suppress, balance: the recipe edits no weights (no suppress entry "
                        "with method: erase, no balance entry with method: debias), so synthgen "
                        "edit has nothing to write; add one, or generate with the recipe's "
                        "model as it is")


def write_edited_model(recipe: Recipe, out_dir, device: torch.device) -> tuple[dict, ...]:
    """Apply the recipe's `erase` and `debias` edits to its model and save it as a new model folder.

    The folder loads like any diffusers model (safetensors weights) and carries
    `synthgen-edits.json`; a recipe can then use it as `model.id` without erasing again.
    """
    import json
    from pathlib import Path

    from synthgen.generate.load import EDITS_FILE, choose_dtype

    out_dir = Path(out_dir)
    check_has_edits(recipe)
    if out_dir.exists() and any(out_dir.iterdir()):
        raise UserError(f"--out {out_dir}: is not empty; choose a new folder for the edited model")
    dtype = choose_dtype(recipe.model.dtype, device, recipe.model)
    # Without model.decoder: the folder is the base model with the edit, its own VAE included
    # (a preview decoder swapped in would be saved as the folder's VAE).
    own_model = recipe.model.model_copy(update={"decoder": None})
    model = apply_edits(recipe, load_pipeline(own_model, device, dtype), device)
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
                        "(FLUX.1 and a few other pipelines take one); use model.guidance_scale for "
                        "classifier-free guidance")
    negative = negative_prompt(recipe)
    if not negative:
        return
    where = ("model.negative_prompt" if recipe.model.negative_prompt else
             next(f"suppress[{index}].method {entry.method}"
                  for index, entry in enumerate(recipe.suppress) if entry.negative_prompt_text()))
    if not sampler.accepts("negative_prompt"):
        raise UserError(f"{where}: {pipeline_name} takes no negative prompt; "
                        "use suppress method: reject instead")
    if sampler.accepts("true_cfg_scale") and true_cfg is None:
        raise UserError(
            f"{where}: {pipeline_name}'s guidance_scale is distilled and ignores negative prompts; "
            "set model.true_cfg_scale (for example 4.0; two transformer passes per step) to apply "
            f"{negative!r}, or use suppress method: reject")
