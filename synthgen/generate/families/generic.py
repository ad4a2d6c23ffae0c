"""Any other text-to-image pipeline: prompts go in as text.

The pipeline encodes the prompts and draws its own starting latents from one CPU generator
per view (diffusers draws those one sample at a time), so seeds, prompt and slots views run
and latent and img2img views do not. Erase and debias run only where erase can reach every
text path of a UNet (a pipeline built like Stable Diffusion under another class, such as LCM).
"""

from __future__ import annotations

from synthgen.generate.families.base import ModelFamily


class GenericFamily(ModelFamily):
    name = "generic"

    @classmethod
    def claims(cls, pipeline_class: type) -> bool:
        return True  # the last family asked: whatever no other family claims

    def prompt_arguments(self, views, spec) -> dict:
        arguments = {"prompt": [v.prompt for v in views]}
        if any(v.negative_prompt for v in views) and self.accepts("negative_prompt"):
            arguments["negative_prompt"] = [v.negative_prompt for v in views]
        # Pipelines with a second, negative-prompt pass (FLUX.1 Kontext, Qwen-Image) run it only
        # at the true_cfg_scale they are given (prepare.check_negative_prompts accepts it).
        if spec.true_cfg_scale is not None and self.accepts("true_cfg_scale"):
            arguments["true_cfg_scale"] = spec.true_cfg_scale
        return {**arguments, **self._rewrites_off(spec)}

    def text_embeddings(self, texts):
        # A UNet pipeline erase can edit takes Stable Diffusion's encode_prompt arguments.
        return self.pipeline.encode_prompt(texts, self.device, 1, False)[0], None
