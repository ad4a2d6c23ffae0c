"""Stable Diffusion 1.x and 2.x, and every pipeline built on `StableDiffusionPipeline`
(builtin:world-sd, builtin:tiny-random, sd-turbo).

synthgen encodes each prompt itself with the CLIP text encoder (token embeddings, cached per
text) and draws the starting latents, so every view strategy runs. Erase and debias edit
the UNet's cross-attention (and world-sd's pooled-text path, `addition_embed_type: "text"`).
"""

from __future__ import annotations

import torch

from synthgen.generate.families.base import ModelFamily, uses_guidance


def unet_latent_shape(pipeline, spec) -> tuple[int, int, int, int]:
    """(1, C, h, w): one view's starting latents for a UNet pipeline at the recipe's size."""
    factor = pipeline.vae_scale_factor
    return (1, pipeline.unet.config.in_channels, spec.height // factor, spec.width // factor)


class StableDiffusionFamily(ModelFamily):
    name = "sd"
    draws_own_latents = True

    @classmethod
    def claims(cls, pipeline_class: type) -> bool:
        from diffusers import StableDiffusionPipeline

        return issubclass(pipeline_class, StableDiffusionPipeline)

    def prompt_arguments(self, views, spec) -> dict:
        arguments = {"prompt_embeds": torch.cat([
            self.embedding(v.prompt) if v.splice_into is None else self.spliced_embedding(v.prompt, v.splice_into)
            for v in views])}
        if uses_guidance(spec):
            arguments["negative_prompt_embeds"] = torch.cat(
                [self.embedding(v.negative_prompt) for v in views])
        return arguments

    def embedding(self, text: str) -> torch.Tensor:
        """Token embeddings (1, L, D) of one text, cached."""
        return self._cached(text, lambda: self.text_embeddings(text)[0])

    def spliced_embedding(self, text: str, anchor: str) -> torch.Tensor:
        """`anchor`'s token embeddings (1, L, D) with `text`'s at the positions where the two
        prompts' token ids differ (`slots.splice_text`), cached. Prompts that tokenize to
        different lengths have every later word shifted, so the splice then takes `text`'s
        embedding at (nearly) every position from the first changed token to the end token,
        and `anchor`'s padding."""
        def encode() -> torch.Tensor:
            tokenizer = self.pipeline.tokenizer
            ids = tokenizer([anchor, text], padding="max_length", max_length=tokenizer.model_max_length,
                            truncation=True, return_tensors="pt").input_ids
            changed = ids[0] != ids[1]
            spliced = self.embedding(anchor).clone()
            spliced[:, changed] = self.embedding(text)[:, changed]
            return spliced

        return self._cached(("spliced", text, anchor), encode)

    def splice_unsupported_reason(self) -> str | None:
        return None

    def text_embeddings(self, texts):
        return self.pipeline.encode_prompt(texts, self.device, 1, False)[0], None

    def latent_shape(self, spec) -> tuple[int, ...]:
        return unet_latent_shape(self.pipeline, spec)
