"""Zero-shot concept scoring with a CLIP model, for `suppress: method: reject`.

A view's score for a concept is CLIP's probability of the concept's text against a neutral
contrast text ("a photo"): softmax(logit_scale * cos(image, text)) over the two. Any CLIP
model transformers can load works (hub id, local folder, or `builtin:` name), from safetensors.
"""

from __future__ import annotations

import numpy as np
import torch

from synthgen.errors import UserError
from synthgen.builtin import resolve_model_source


class ClipConceptScorer:
    """One CLIP model on one device, scoring uint8 (N, H, W, 3) images against text pairs."""

    def __init__(self, model_id: str, device: torch.device):
        from transformers import CLIPModel, CLIPProcessor

        source = resolve_model_source(model_id, "suppress[].detector")
        try:
            self.model = CLIPModel.from_pretrained(source, use_safetensors=True).to(device).eval()
            self.processor = CLIPProcessor.from_pretrained(source)
        except (OSError, ValueError) as error:
            raise UserError(f"suppress[].detector: cannot load CLIP model {model_id!r} "
                            f"({str(error).strip().splitlines()[0]}); use a local folder with "
                            "a CLIP model and its processor, or a builtin: name") from None
        self.device = device
        self._text_features: dict[str, torch.Tensor] = {}

    @torch.inference_mode()
    def text_features(self, text: str) -> torch.Tensor:
        if text not in self._text_features:
            tokens = self.processor.tokenizer([text], padding=True, return_tensors="pt")
            features = self.model.get_text_features(**tokens.to(self.device))
            features = getattr(features, "pooler_output", features)
            self._text_features[text] = torch.nn.functional.normalize(features, dim=-1)[0]
        return self._text_features[text]

    @torch.inference_mode()
    def probabilities(self, images: torch.Tensor, concept: str, contrast: str) -> torch.Tensor:
        """P(concept) against contrast for each image, float (N,) on the CPU.

        On the CPU each image is embedded on its own, so a view's score (and so whether it
        is rejected) does not depend on which views share its batch.
        """
        texts = torch.stack([self.text_features(concept), self.text_features(contrast)])
        chunks = images.split(1) if self.device.type == "cpu" else [images]
        scores = []
        for chunk in chunks:
            pixels = self.processor.image_processor(
                images=[np.asarray(image) for image in chunk], return_tensors="pt")["pixel_values"]
            features = self.model.get_image_features(pixel_values=pixels.to(self.device))
            features = getattr(features, "pooler_output", features)
            features = torch.nn.functional.normalize(features, dim=-1)
            logits = self.model.logit_scale.exp() * features @ texts.T
            scores.append(logits.softmax(dim=-1)[:, 0].float().cpu())
        return torch.cat(scores)
