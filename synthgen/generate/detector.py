"""Zero-shot concept scoring with a CLIP model, for `suppress: method: reject`.

A view's score for a concept is CLIP's probability of the concept side against the contrast
side: softmax(logit_scale * cos(image, text)) over the two. By default the sides are the
concept's text and a fixed contrast text ("a photo"); a contrast naming `{prompt}` compares
each view with its own prompt instead (`attributes.detector_texts`, which the audit can share).
Any CLIP model transformers can load works (hub id, local folder, or `builtin:` name), from
safetensors.

What is scored is the view as its shard stores it: encoded in the recipe's format, quality and
stored size, and decoded again, as the audit and a trainer read it (`generate/stored.py`, which
the sampler calls before it hands views to a scorer).
"""

from __future__ import annotations

import numpy as np
import torch

from synthgen.attributes import detector_texts
from synthgen.builtin import resolve_model_source
from synthgen.errors import UserError


class ClipConceptScorer:
    """One CLIP model on one device, scoring uint8 (N, H, W, 3) images against text pairs."""

    def __init__(self, model_id: str, device: torch.device, field: str = "suppress[].detector"):
        from transformers import CLIPModel, CLIPProcessor

        source = resolve_model_source(model_id, field)
        try:
            self.model = CLIPModel.from_pretrained(source, use_safetensors=True).to(device).eval()
            self.processor = CLIPProcessor.from_pretrained(source)
        except (OSError, ValueError) as error:
            raise UserError(f"{field}: cannot load CLIP model {model_id!r} "
                            f"({str(error).strip().splitlines()[0]}); use a local folder with "
                            "a CLIP model and its processor, or a builtin: name") from None
        self.device = device
        self._text_features: dict[str, torch.Tensor] = {}

    @torch.inference_mode()
    def text_features(self, text: str) -> torch.Tensor:
        """The unit embedding of one text (embedded on its own, so independent of batching)."""
        if text not in self._text_features:
            tokens = self.processor.tokenizer([text], padding=True, truncation=True,
                                              return_tensors="pt")
            features = self.model.get_text_features(**tokens.to(self.device))
            features = getattr(features, "pooler_output", features)
            self._text_features[text] = torch.nn.functional.normalize(features, dim=-1)[0]
        return self._text_features[text]

    def read_tokens(self, text: str) -> tuple[int, ...]:
        """The token ids the model reads of `text` (cut at its maximum length)."""
        return tuple(self.processor.tokenizer(text, truncation=True)["input_ids"])

    def text_pair(self, concept: str, contrast: str, prompt: str) -> torch.Tensor:
        """(2, D): the unit embeddings of the concept side and the contrast side for one view."""
        concept_texts, contrast_text = detector_texts(concept, contrast, prompt)
        concept_side = torch.stack([self.text_features(text) for text in concept_texts]).mean(dim=0)
        return torch.stack([torch.nn.functional.normalize(concept_side, dim=-1),
                            self.text_features(contrast_text)])

    @torch.inference_mode()
    def image_features(self, images: torch.Tensor) -> torch.Tensor:
        """uint8 (N, H, W, 3) -> unit image embeddings (N, D) on the model's device.

        On the CPU each image is embedded on its own, so a view's embedding (and so whether
        it is rejected or redrawn) does not depend on which views share its batch.
        """
        chunks = images.split(1) if self.device.type == "cpu" else [images]
        features = []
        for chunk in chunks:
            pixels = self.processor.image_processor(
                images=[np.asarray(image) for image in chunk], return_tensors="pt")["pixel_values"]
            embedded = self.model.get_image_features(pixel_values=pixels.to(self.device))
            embedded = getattr(embedded, "pooler_output", embedded)
            features.append(torch.nn.functional.normalize(embedded, dim=-1))
        return torch.cat(features)

    @torch.inference_mode()
    def probabilities(self, images: torch.Tensor, concept: str, contrast: str,
                      prompts: list[str]) -> torch.Tensor:
        """P(concept) against contrast for each image (image i drawn from `prompts[i]`),
        float (N,) on the CPU."""
        pairs = torch.stack([self.text_pair(concept, contrast, prompt) for prompt in prompts])
        cosines = torch.einsum("nd,nkd->nk", self.image_features(images), pairs)
        logits = self.model.logit_scale.exp() * cosines
        return logits.softmax(dim=-1)[:, 0].float().cpu()

    @torch.inference_mode()
    def choose_by_features(self, features: torch.Tensor, candidates: list[list[str]]) -> list[int]:
        """For each image (its `image_features` row), the index of the text in its list of
        `candidates` it matches best."""
        chosen = []
        for image, texts in zip(features, candidates):
            embedded = torch.stack([self.text_features(text) for text in texts])
            chosen.append(int((embedded @ image).argmax()))
        return chosen
