"""FLUX.1 (`FluxPipeline`): a flow-matching transformer reading CLIP (pooled) and T5 (per
token) text.

synthgen encodes each prompt itself through the pipeline's `encode_prompt` (cached per text).
Its guidance_scale is a distilled input of the transformer, not classifier-free guidance: a
negative prompt acts only through `true_cfg_scale` (a second transformer pass per step). The
pipeline draws its own starting latents from one CPU generator per view, so latent and img2img
views do not run; erase and debias edit only a UNet, so they do not either.
"""

from __future__ import annotations

import torch

from synthgen.generate.families.base import ModelFamily


class FluxFamily(ModelFamily):
    name = "flux"
    # Published in bfloat16; its activations overflow float16 (black, NaN images).
    gpu_dtype = torch.bfloat16

    @classmethod
    def claims(cls, pipeline_class: type) -> bool:
        return pipeline_class.__name__ == "FluxPipeline"

    def size_multiple(self) -> int:
        # FluxPipeline packs 2 x 2 latents into one token; other sizes it rounds down with a
        # log line, and the smaller picture was then scaled up to the recipe's size.
        return super().size_multiple() * 2

    def prompt_arguments(self, views, spec) -> dict:
        positive = [self.embedding(v.prompt) for v in views]
        arguments = {"prompt_embeds": torch.cat([p[0] for p in positive]),
                     "pooled_prompt_embeds": torch.cat([p[1] for p in positive])}
        if spec.true_cfg_scale is not None:
            negative = [self.embedding(v.negative_prompt) for v in views]
            arguments["true_cfg_scale"] = spec.true_cfg_scale
            arguments["negative_prompt_embeds"] = torch.cat([n[0] for n in negative])
            arguments["negative_pooled_prompt_embeds"] = torch.cat([n[1] for n in negative])
        return {**arguments, **self._rewrites_off(spec)}

    def embedding(self, text: str) -> tuple[torch.Tensor, torch.Tensor]:
        """(T5 embeddings (1, L, D), pooled CLIP embedding (1, P)) of one text, cached."""

        def encode():
            # The pipeline's own defaults otherwise (prompt_2 = prompt, max_sequence_length).
            embeds, pooled, _ = self.pipeline.encode_prompt(
                text, prompt_2=None, device=self.device, num_images_per_prompt=1)
            return embeds, pooled

        return self._cached(text, encode)
