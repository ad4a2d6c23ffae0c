"""PixArt-alpha and PixArt-sigma: a transformer reading T5 text.

synthgen encodes each prompt itself through the pipeline's `encode_prompt` (T5 embeddings
padded to max_sequence_length, with their attention mask; cached per text) and turns off
resolution binning and caption cleaning. The pipeline draws its own starting latents from one
CPU generator per view, so latent and img2img views do not run; erase and debias edit only a
UNet, so they do not either.
"""

from __future__ import annotations

import torch

from synthgen.generate.families.base import ModelFamily, uses_guidance

PIPELINES = ("PixArtAlphaPipeline", "PixArtSigmaPipeline")


class PixArtFamily(ModelFamily):
    name = "pixart"

    @classmethod
    def claims(cls, pipeline_class: type) -> bool:
        return pipeline_class.__name__ in PIPELINES

    def size_multiple(self) -> int:
        # The transformer reads the latents in patch x patch tiles: a 264 px side (33 latents)
        # failed in the scheduler with a size mismatch.
        patch = int(getattr(self.pipeline.transformer.config, "patch_size", 2) or 1)
        return super().size_multiple() * patch

    def prompt_arguments(self, views, spec) -> dict:
        positive = [self.embedding(v.prompt) for v in views]
        arguments = {"prompt_embeds": torch.cat([p[0] for p in positive]),
                     "prompt_attention_mask": torch.cat([p[1] for p in positive])}
        if uses_guidance(spec):
            # The pipeline pads a negative prompt to the prompt's length, as here.
            negative = [self.embedding(v.negative_prompt) for v in views]
            arguments["negative_prompt"] = None  # its default "" may not come with embeddings
            arguments["negative_prompt_embeds"] = torch.cat([n[0] for n in negative])
            arguments["negative_prompt_attention_mask"] = torch.cat([n[1] for n in negative])
        return {**arguments, **self._rewrites_off(spec)}

    def embedding(self, text: str) -> tuple[torch.Tensor, torch.Tensor]:
        """(T5 embeddings (1, L, D), attention mask (1, L)) of one text, cached."""

        def encode():
            embeds, mask, _, _ = self.pipeline.encode_prompt(
                text, do_classifier_free_guidance=False, num_images_per_prompt=1,
                device=self.device, clean_caption=False)
            return embeds, mask

        return self._cached(text, encode)
