"""Model families: how synthgen drives each kind of diffusers text-to-image pipeline.

One module per family, each a `ModelFamily` (base.py): how it encodes and caches prompts and
calls the pipeline with them, whether synthgen draws its starting latents, which view
strategies and edits it runs (and why not), its dtype on a GPU.

- `sdxl`: Stable Diffusion XL: cached CLIP token and pooled embeddings, own latents;
- `sd`: Stable Diffusion and pipelines built on it: cached CLIP embeddings, own latents;
- `pixart`: PixArt-alpha/sigma: cached T5 embeddings and masks, per-view generators;
- `flux`: FLUX.1: cached CLIP pooled and T5 embeddings, per-view generators, bfloat16;
- `generic`: any other pipeline: prompts as text, per-view generators.

`FAMILIES` is asked in order, most specific first, and the first that claims a pipeline's class
is its family: the one place where a pipeline class becomes a family.
"""

from __future__ import annotations

import torch

from synthgen.generate.families.base import ModelFamily
from synthgen.generate.families.flux import FluxFamily
from synthgen.generate.families.generic import GenericFamily
from synthgen.generate.families.pixart import PixArtFamily
from synthgen.generate.families.sd import StableDiffusionFamily
from synthgen.generate.families.sdxl import StableDiffusionXLFamily

FAMILIES: tuple[type[ModelFamily], ...] = (
    StableDiffusionXLFamily, StableDiffusionFamily, PixArtFamily, FluxFamily, GenericFamily)


def family_class(pipeline_class: type) -> type[ModelFamily]:
    """The family of pipelines of `pipeline_class` (`GenericFamily` claims any)."""
    return next(family for family in FAMILIES if family.claims(pipeline_class))


def family_of(pipeline, device: torch.device | None = None) -> ModelFamily:
    """The family of a loaded `pipeline`, bound to it; `device` is where it encodes prompts."""
    return family_class(type(pipeline))(pipeline, device)


def family_named_in_index(class_name: str | None) -> type[ModelFamily]:
    """The family of the pipeline class a model_index.json names (before the model loads);
    `GenericFamily` for a name diffusers does not export, or None."""
    import diffusers

    try:
        pipeline_class = getattr(diffusers, class_name, None) if class_name else None
    except (ImportError, RuntimeError):  # diffusers names it but cannot import it here
        pipeline_class = None
    if not isinstance(pipeline_class, type):
        return GenericFamily
    return family_class(pipeline_class)


__all__ = ["FAMILIES", "ModelFamily", "family_class", "family_named_in_index", "family_of"]
