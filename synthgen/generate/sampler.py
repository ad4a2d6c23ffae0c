"""Batched sampling: many groups' views in one pipeline call, each view's noise from its seed.

A view's starting noise is drawn on a CPU generator seeded with the view's seed, so it does
not depend on the device, the batch it lands in or its position there. Prompt embeddings are
computed once per unique text (one text at a time, so they do not depend on batching either).
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass

import torch

from synthgen.generate.load import LoadedModel
from synthgen.recipe import ModelSpec
from synthgen.seeding import derive_seed
from synthgen.views import ViewPlan


@dataclass(frozen=True)
class SampledBatch:
    """Images as uint8 (N, H, W, 3) on the CPU, in the order of the views asked for."""

    images: torch.Tensor
    nonfinite: tuple[int, ...]  # positions whose model output had NaN/inf (stored as black)
    # Per view: what sampling did beyond the plan (e.g. rejections and the seed finally used),
    # merged into that view's entry in the sample's json. Empty dicts when nothing happened.
    records: tuple[dict, ...] = ()

    def record(self, position: int) -> dict:
        return self.records[position] if self.records else {}


class Sampler:
    """Turns lists of `ViewPlan`s into images with one loaded pipeline."""

    def __init__(self, model: LoadedModel, spec: ModelSpec, batch_size: int,
                 one_view_per_call: bool | None = None):
        from diffusers import StableDiffusionPipeline, StableDiffusionXLPipeline

        self.model = model
        self.spec = spec
        self.batch_size = batch_size
        # None: one view per call on the CPU, padded batches elsewhere (see `sample`).
        self.one_view_per_call = (model.device.type == "cpu" if one_view_per_call is None
                                  else one_view_per_call)
        self.pipeline = model.pipeline
        self._embeddings: dict[str, tuple[torch.Tensor, torch.Tensor | None]] = {}
        if isinstance(self.pipeline, StableDiffusionXLPipeline):
            self.family = "sdxl"
        elif isinstance(self.pipeline, StableDiffusionPipeline):
            self.family = "sd"
        else:
            # PixArt, FLUX and others: prompts go in as text and noise as per-view CPU
            # generators, which diffusers' randn_tensor draws one sample at a time.
            self.family = "generic"
        self._call_parameters = set(inspect.signature(self.pipeline.__call__).parameters)

    @property
    def uses_guidance(self) -> bool:
        return self.spec.guidance_scale > 1.0

    @torch.inference_mode()
    def sample(self, views: list[ViewPlan]) -> SampledBatch:
        """Generate one image per view (at most `batch_size` views); each depends only on its view.

        Kernels pick their algorithms by tensor shape, and the pick changes the last float
        bits. So every call has a fixed shape: on a GPU the batch is padded to `batch_size`
        (bytes then depend on the batch size, never on which views share a batch or on
        resume and worker layout); on the CPU each view is its own call, which makes CPU
        output independent of the batch size too at little cost (CPU batching gains little).
        """
        if not 0 < len(views) <= self.batch_size:
            raise ValueError(f"sample() takes 1 to {self.batch_size} views, got {len(views)}")
        if self.one_view_per_call:
            rows = [self._denoise([view]) for view in views]
            pixels = torch.cat([row[0] for row in rows])
            finite = torch.cat([row[1] for row in rows])
        else:
            padding = [views[-1]] * (self.batch_size - len(views))
            pixels, finite = self._denoise(views + padding)
            pixels, finite = pixels[:len(views)], finite[:len(views)]
        nonfinite = tuple(int(i) for i in torch.nonzero(~finite).flatten().tolist())
        return SampledBatch(images=pixels, nonfinite=nonfinite)

    def _denoise(self, views: list[ViewPlan]) -> tuple[torch.Tensor, torch.Tensor]:
        """One pipeline call: (uint8 (N, H, W, 3) on the CPU, bool (N,) all-finite)."""
        # 1. Conditioning and noise, per view, independent of the batch.
        arguments = self._conditioning(views)
        step_generators = [torch.Generator("cpu").manual_seed(derive_seed("steps", v.seed))
                           for v in views]
        if self.family == "generic":
            arguments["generator"] = [torch.Generator("cpu").manual_seed(v.seed) for v in views]
        else:
            arguments["latents"] = self._initial_noise(views)
            arguments["generator"] = step_generators
        # 2. Denoise and decode on the device.
        output = self.pipeline(
            num_inference_steps=self.spec.steps, guidance_scale=self.spec.guidance_scale,
            height=self.spec.height, width=self.spec.width, output_type="pt", **arguments,
        ).images
        # 3. uint8 on the device, so only a quarter of the bytes cross to the host.
        finite = torch.isfinite(output).flatten(1).all(dim=1)
        pixels = (torch.nan_to_num(output, nan=0.0, posinf=0.0, neginf=0.0) * 255).round()
        pixels = pixels.clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).contiguous()
        return pixels.cpu(), finite.cpu()

    def _initial_noise(self, views: list[ViewPlan]) -> torch.Tensor:
        unet_config = self.pipeline.unet.config
        factor = self.pipeline.vae_scale_factor
        shape = (1, unet_config.in_channels, self.spec.height // factor, self.spec.width // factor)
        noise = [torch.randn(shape, generator=torch.Generator("cpu").manual_seed(v.seed))
                 for v in views]
        # One host-to-device copy for the whole batch.
        return torch.cat(noise).to(self.model.device, self.model.dtype)

    def _conditioning(self, views: list[ViewPlan]) -> dict:
        if self.family == "generic":
            arguments = {"prompt": [v.prompt for v in views]}
            if any(v.negative_prompt for v in views) and "negative_prompt" in self._call_parameters:
                arguments["negative_prompt"] = [v.negative_prompt for v in views]
            return arguments
        positive = [self._embed(v.prompt, negative=False) for v in views]
        arguments = {"prompt_embeds": torch.cat([p[0] for p in positive])}
        if self.family == "sdxl":
            arguments["pooled_prompt_embeds"] = torch.cat([p[1] for p in positive])
        if self.uses_guidance:
            negative = [self._embed(v.negative_prompt, negative=True) for v in views]
            arguments["negative_prompt_embeds"] = torch.cat([n[0] for n in negative])
            if self.family == "sdxl":
                arguments["negative_pooled_prompt_embeds"] = torch.cat([n[1] for n in negative])
        return arguments

    def _embed(self, text: str, negative: bool) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(token embeddings, pooled embedding or None) of one text, cached."""
        zeros = (negative and text == "" and self.family == "sdxl"
                 and self.pipeline.config.force_zeros_for_empty_prompt)
        key = ("zeros:" if zeros else "text:") + text
        if key not in self._embeddings:
            device = self.model.device
            if self.family == "sd":
                embeds = self.pipeline.encode_prompt(text, device, 1, False)[0]
                self._embeddings[key] = (embeds, None)
            else:
                embeds, _, pooled, _ = self.pipeline.encode_prompt(
                    text, device=device, num_images_per_prompt=1, do_classifier_free_guidance=False)
                if zeros:
                    # SDXL-turbo's convention: an empty negative prompt is all zeros.
                    embeds, pooled = torch.zeros_like(embeds), torch.zeros_like(pooled)
                self._embeddings[key] = (embeds, pooled)
        return self._embeddings[key]
