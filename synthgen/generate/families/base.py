"""What a model family is: how synthgen drives one kind of diffusers text-to-image pipeline.

A family module implements a `ModelFamily`; `families/__init__.py` registers it and picks it
from the pipeline's class. The sampler, erase and the loader ask the family and never compare
pipeline classes or family names themselves.
"""

from __future__ import annotations

import inspect
from collections import OrderedDict
from functools import cached_property
from typing import TYPE_CHECKING, Any, Callable, ClassVar

import torch

if TYPE_CHECKING:
    from synthgen.recipe import ModelSpec
    from synthgen.views import ViewPlan
    from synthgen.views.base import ViewStrategy


def uses_guidance(spec: ModelSpec) -> bool:
    """Whether the pipeline runs classifier-free guidance, and so reads a negative prompt:
    diffusers does only for a guidance scale above 1."""
    return spec.guidance_scale > 1.0


# How much the prompt-encoding cache of one loaded model holds on its device, at most.
EMBEDDING_CACHE_BYTES = 1 << 30


def _tensor_bytes(value) -> int:
    """Bytes of the tensors in an encoding (a tensor, or tuples, lists and dicts of them)."""
    if isinstance(value, torch.Tensor):
        return value.numel() * value.element_size()
    if isinstance(value, (tuple, list)):
        return sum(_tensor_bytes(item) for item in value)
    if isinstance(value, dict):
        return sum(_tensor_bytes(item) for item in value.values())
    return 0


class ModelFamily:
    """One kind of pipeline, bound to one loaded pipeline (`family_of(pipeline, device)`).

    What the class says, known before a model loads: `name`, `gpu_dtype` (what `model.dtype:
    auto` means on a GPU) and `draws_own_latents` (whether synthgen draws the starting latents
    and passes them in, as latent and img2img views need; otherwise the pipeline draws them
    from one CPU generator per view). What an instance does: turn views' prompts into the
    pipeline call's keywords (`prompt_arguments`), encoding each unique text once on `device`
    and caching it for the life of the instance, and say which view strategies and model
    edits it cannot run, with the reason.
    """

    name: ClassVar[str]
    gpu_dtype: ClassVar[torch.dtype] = torch.float16
    draws_own_latents: ClassVar[bool] = False
    # Whether the pipeline hands its denoiser a pooled text embedding (SDXL's text_time), a
    # text path erase then edits too.
    supplies_pooled_text: ClassVar[bool] = False

    @classmethod
    def claims(cls, pipeline_class: type) -> bool:
        """Whether pipelines of `pipeline_class` belong to this family."""
        raise NotImplementedError

    def __init__(self, pipeline, device: torch.device | None = None):
        """`device`: where prompt embeddings are computed and kept (needed only to encode)."""
        self.pipeline = pipeline
        self.device = device
        self._embeddings: OrderedDict[str | tuple, Any] = OrderedDict()  # least recently used first
        self._embedding_bytes = 0

    @property
    def pipeline_name(self) -> str:
        return type(self.pipeline).__name__

    @cached_property
    def call_parameters(self) -> frozenset[str]:
        """The names the pipeline's ``__call__`` takes."""
        return frozenset(inspect.signature(self.pipeline.__call__).parameters)

    def accepts(self, argument: str) -> bool:
        """Whether the pipeline's ``__call__`` takes ``argument``."""
        return argument in self.call_parameters

    @property
    def denoiser_name(self) -> str:
        """The pipeline attribute holding the denoiser: a UNet (SD, SDXL) or a transformer
        (PixArt, SD3, FLUX)."""
        return "unet" if getattr(self.pipeline, "unet", None) is not None else "transformer"

    # Prompts.

    def prompt_arguments(self, views: list[ViewPlan], spec: ModelSpec) -> dict:
        """The pipeline-call keywords that carry the views' prompts (and negative prompts where
        the recipe's guidance uses them), one row per view in order. Each row depends only on
        its own view's texts, never on the batch."""
        raise NotImplementedError

    def _cached(self, key: str | tuple, encode: Callable[[], Any]) -> Any:
        """The encoding stored under `key`, computed by `encode()` the first time (one text
        at a time, so an encoding does not depend on which texts share a batch).

        The least recently used encodings are dropped past `EMBEDDING_CACHE_BYTES`: a recipe
        whose groups mostly have prompts of their own would otherwise fill the GPU (a FLUX
        prompt's T5 encoding is ~4 MB). One text encoded again gives the same bytes."""
        if key in self._embeddings:
            self._embeddings.move_to_end(key)
            return self._embeddings[key]
        value = encode()
        self._embeddings[key] = value
        self._embedding_bytes += _tensor_bytes(value)
        while self._embedding_bytes > EMBEDDING_CACHE_BYTES and len(self._embeddings) > 1:
            _, dropped = self._embeddings.popitem(last=False)
            self._embedding_bytes -= _tensor_bytes(dropped)
        return value

    def _rewrites_off(self, spec: ModelSpec) -> dict:
        """Switch off what would make the recipe say less than what happens, where the pipeline
        has it (PixArt): resolution binning generates at the nearest trained size and resizes
        to the recipe's (other compute, other pictures), and caption cleaning rewrites prompts
        only where bs4 and ftfy happen to be installed (other bytes on another machine). A
        pipeline that rescales any size to a `max_area` (FLUX.1 Kontext: 1024 x 1024 by
        default) is given the recipe's area, so it draws the recipe's size."""
        arguments = {switch: False for switch in ("use_resolution_binning", "clean_caption")
                     if self.accepts(switch)}
        if self.accepts("max_area"):
            arguments["max_area"] = spec.width * spec.height
        return arguments

    def size_multiple(self) -> int:
        """What the recipe's width and height must be a multiple of: the VAE's downsampling
        (the denoiser takes latents of any size)."""
        return int(getattr(self.pipeline, "vae_scale_factor", 8))

    # Starting latents, for a family that `draws_own_latents`.

    def latent_shape(self, spec: ModelSpec) -> tuple[int, ...]:
        """The shape of one view's starting latents, (1, C, h, w), at the recipe's size."""
        raise NotImplementedError(f"{self.pipeline_name} draws its own starting latents")

    # What it supports.

    def view_unsupported_reason(self, strategy: ViewStrategy) -> str | None:
        """Why views of `strategy` cannot be made with this pipeline, or None."""
        if strategy.needs_own_latents and not self.draws_own_latents:
            from synthgen.views import STRATEGIES

            runnable = [name for name, other in STRATEGIES.items() if not other.needs_own_latents]
            return (f"{strategy.name} views need starting latents that synthgen draws, and "
                    f"{self.pipeline_name} draws its own from each view's seed (synthgen draws "
                    f"them for Stable Diffusion and SDXL pipelines); it takes {', '.join(runnable)} "
                    "views")
        return None

    def layout_unsupported_reason(self) -> str | None:
        """Why views cannot hold their anchor's layout (`slots.hold_layout`,
        generate/attention_sharing.py) on this pipeline, or None: that reaches into a UNet's
        attention processors and first decoder block once per denoising step."""
        if self.denoiser_name != "unet":
            return (f"{self.pipeline_name} denoises with a transformer, and layout sharing "
                    "works on a UNet's attention layers and decoder blocks (Stable Diffusion, "
                    "SDXL and other UNet pipelines); drop hold_layout")
        unet = self.pipeline.unet
        if not hasattr(unet, "attn_processors") or not getattr(unet, "up_blocks", None):
            return (f"{self.pipeline_name}'s {type(unet).__name__} has no attention processors "
                    "and decoder blocks to share; drop hold_layout")
        scheduler = self.pipeline.scheduler
        calls_per_step = getattr(scheduler, "order", 1)
        if calls_per_step != 1:
            return (f"its scheduler {type(scheduler).__name__} calls the UNet {calls_per_step} "
                    "times per step, and layout sharing counts one call per step; use a "
                    "one-call scheduler (DPM-Solver++, DDIM, Euler, UniPC) or drop hold_layout")
        return None

    def aligned_noise_unsupported_reason(self) -> str | None:
        """Why views cannot start from view 0's noise turned towards their colour
        (`slots.align_noise`, generate/noise_turn.py), or None: synthgen must draw the starting
        latents, and a VAE must encode the colours."""
        if not self.draws_own_latents or getattr(self.pipeline, "vae", None) is None:
            return (f"{self.pipeline_name} draws its own starting latents from each view's seed, "
                    "and align_noise turns the latents synthgen draws (Stable Diffusion and SDXL "
                    "pipelines); drop align_noise")
        vae = self.pipeline.vae
        if type(vae).__name__ != "AutoencoderKL":
            return (f"its autoencoder is a {type(vae).__name__} (model.decoder swaps in a tiny "
                    "one), and align_noise encodes the colours with the model's own "
                    "AutoencoderKL, whose latents the denoiser works in; drop model.decoder or "
                    "align_noise")
        return None

    def splice_unsupported_reason(self) -> str | None:
        """Why views cannot splice their tokens into view 0's prompt embedding
        (`slots.splice_text`) on this pipeline, or None. It needs one token sequence per prompt
        that synthgen encodes itself (Stable Diffusion's one CLIP text encoder)."""
        return (f"{self.pipeline_name} reads its prompts through more than one text path "
                "(two encoders, a pooled embedding or a T5 encoder), and splice_text splices "
                "one token sequence (Stable Diffusion pipelines: builtin:world-sd, sd-turbo, SD "
                "1.x/2.x); drop splice_text")

    def edit_unsupported_reason(self) -> str | None:
        """Why erase and debias (generate/erase.py, generate/debias.py) cannot edit every path
        from text to this pipeline's denoiser, or None. By default erase inspects the pipeline
        (a transformer is refused; a UNet's paths are checked)."""
        from synthgen.generate.erase import text_paths_unsupported_reason

        return text_paths_unsupported_reason(self.pipeline, self.supplies_pooled_text)

    def text_embeddings(self, texts: str | list[str]) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(token embeddings (N, L, D), pooled embedding (N, P) or None) of `texts` as the
        denoiser's text paths read them, computed on `device`, uncached: what erase and debias
        edit for. Only families whose `edit_unsupported_reason` can be None implement it."""
        raise NotImplementedError(f"{self.pipeline_name}: synthgen does not edit its text paths")

    def pooled_text_size(self) -> int | None:
        """How many of the denoiser's added-embedding inputs are the pooled text embedding
        (the rest are other conditioning), for a family that `supplies_pooled_text`."""
        return None
