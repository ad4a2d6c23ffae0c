"""Stable Diffusion XL (`StableDiffusionXLPipeline`: SDXL, sdxl-turbo).

Two CLIP text encoders: their token embeddings go to cross-attention and the second's pooled
embedding, with six size and crop numbers, to the UNet's added embedding (`addition_embed_type:
"text_time"`). synthgen encodes both per text (cached) and draws the starting latents, so every
view strategy runs; erase and debias also edit the pooled-text columns of the added embedding.
"""

from __future__ import annotations

import torch

from synthgen.generate.families.base import ModelFamily, uses_guidance
from synthgen.generate.families.sd import unet_latent_shape


class StableDiffusionXLFamily(ModelFamily):
    name = "sdxl"
    draws_own_latents = True
    supplies_pooled_text = True

    @classmethod
    def claims(cls, pipeline_class: type) -> bool:
        from diffusers import StableDiffusionXLPipeline

        return issubclass(pipeline_class, StableDiffusionXLPipeline)

    def prompt_arguments(self, views, spec) -> dict:
        positive = [self.embedding(v.prompt, negative=False) for v in views]
        arguments = {"prompt_embeds": torch.cat([p[0] for p in positive]),
                     "pooled_prompt_embeds": torch.cat([p[1] for p in positive])}
        if uses_guidance(spec):
            negative = [self.embedding(v.negative_prompt, negative=True) for v in views]
            arguments["negative_prompt_embeds"] = torch.cat([n[0] for n in negative])
            arguments["negative_pooled_prompt_embeds"] = torch.cat([n[1] for n in negative])
        return arguments

    def embedding(self, text: str, negative: bool) -> tuple[torch.Tensor, torch.Tensor]:
        """(token embeddings (1, L, D), pooled embedding (1, P)) of one text, cached."""
        # SDXL-turbo's convention (force_zeros_for_empty_prompt): an empty negative prompt is
        # all zeros, not the encoding of "".
        zeros = negative and text == "" and self.pipeline.config.force_zeros_for_empty_prompt

        def encode():
            embeds, pooled = self.text_embeddings(text)
            if zeros:
                return torch.zeros_like(embeds), torch.zeros_like(pooled)
            return embeds, pooled

        return self._cached(("zeros:" if zeros else "text:") + text, encode)

    def text_embeddings(self, texts):
        embeds, _, pooled, _ = self.pipeline.encode_prompt(
            texts, device=self.device, num_images_per_prompt=1, do_classifier_free_guidance=False)
        return embeds, pooled

    def pooled_text_size(self) -> int:
        return self.pipeline.text_encoder_2.config.projection_dim

    def latent_shape(self, spec) -> tuple[int, ...]:
        return unet_latent_shape(self.pipeline, spec)
