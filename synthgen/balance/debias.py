"""`debias`: prompts name no value; the model is edited (UCE debiasing, steered by CLIP
readings) until it draws the values in proportion (the edit itself: synthgen/generate/debias.py)."""

from __future__ import annotations

from typing import ClassVar, Literal

from pydantic import Field

from synthgen.balance.base import Balance
from synthgen.seeding import derive_seed


class DebiasBalance(Balance):
    """`balance: method: debias`: the model is edited until `detector`, a CLIP model, reads
    the values of `trials` images per class in these proportions (within `tolerance`, at most
    `iterations` edits), over `prompts` filled prompts per class; `preserve_weight` and
    `regularizer` are the edit's weights, as for erase."""

    method: Literal["debias"] = "debias"
    detector: str = "builtin:world-clip"
    prompts: int = Field(50, ge=1, le=10_000)
    trials: int = Field(16, ge=2, le=10_000)
    iterations: int = Field(3, ge=1, le=30)
    tolerance: float = Field(0.05, gt=0.0, lt=1.0)
    preserve_weight: float = Field(1.0, ge=0.0)
    regularizer: float = Field(0.5, gt=0.0)

    edits_weights: ClassVar[bool] = True
    unsupported_fix: ClassVar[str] = "use method: prompt"
    refused_keys: ClassVar[dict[str, str]] = {
        "slot": "method debias keeps the value out of the prompts, so it fills no slot; drop slot"}

    def check_models(self, where: str) -> None:
        from synthgen.builtin import CLIP, check_model_reference

        check_model_reference(self.detector, f"{where}.detector", CLIP)

    def edit_model(self, recipe, index, pipeline, device) -> dict:
        """Each edit's record: the shares read before, per iteration, and the weights' digest."""
        from synthgen.generate.debias import (ClipValueReader, debias, debias_targets,
                                              untouched_prompts)

        reader = ClipValueReader(self.detector, device, self.trials,
                                 derive_seed("debias-trials", recipe.seed, index),
                                 trial_drawer(recipe, pipeline))
        record = debias(pipeline, debias_targets(recipe, index), self.values, reader,
                        self.iterations, self.tolerance, preserve=untouched_prompts(recipe, index),
                        preserve_weight=self.preserve_weight, regularizer=self.regularizer)
        return {"attribute": self.attribute, **record}


def trial_drawer(recipe, pipeline):
    """`draw(prompts, seeds)` -> uint8 (N, H, W, 3): the recipe's sampling settings, one CPU
    generator per image, eight images per call."""
    import numpy as np
    import torch

    from synthgen.attributes import negative_prompt

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
