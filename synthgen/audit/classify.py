"""Zero-shot classification of image embeddings: attributes (with "unsure") and concepts.

Contracts:
- `ZeroShotAttribute.classify(E)` for unit image embeddings E (N, D) returns value indices
  (N,), with UNSURE (-1) where the top-1 minus top-2 softmax probability is below the
  margin, and the probabilities (N, V); `decide` applies the same rule to any probability
  rows (a group's reading is `decide` of its views' mean probabilities). A value's text
  embedding is the normalised mean of its normalised template embeddings (prompt ensembling).
- `ConceptDetector.probability(E, prompts)` is P(concept) in a two-way softmax of concept vs.
  contrast text ensembles, built per view from its prompt as generation's `reject` builds them;
  a view is detected when it is above the concept's threshold.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from synthgen.attributes import detector_texts
from synthgen.audit.spec import AttributeSpec, ConceptSpec

UNSURE = -1


class TextEmbeddings:
    """Text embeddings through one encoder, each distinct text embedded once."""

    def __init__(self, encoder, batch_size: int = 256):
        self.encoder = encoder
        self.batch_size = batch_size
        self._cache: dict[str, np.ndarray] = {}

    def __call__(self, texts: list[str]) -> np.ndarray:
        missing = list(dict.fromkeys(t for t in texts if t not in self._cache))
        for start in range(0, len(missing), self.batch_size):
            chunk = missing[start:start + self.batch_size]
            self._cache.update(zip(chunk, self.encoder.encode_texts(chunk)))
        return np.stack([self._cache[t] for t in texts]).astype(np.float32)

    def ensemble(self, prompts: list[str]) -> np.ndarray:
        """The unit-length mean of the prompts' unit embeddings."""
        mean = self(prompts).mean(axis=0)
        return mean / max(float(np.linalg.norm(mean)), 1e-12)


def softmax(logits: np.ndarray) -> np.ndarray:
    shifted = logits - logits.max(axis=1, keepdims=True)
    exp = np.exp(shifted)
    return exp / exp.sum(axis=1, keepdims=True)


class ZeroShotAttribute:
    def __init__(self, spec: AttributeSpec, texts: TextEmbeddings, logit_scale: float, margin: float):
        self.spec = spec
        self.margin = margin
        self.logit_scale = logit_scale
        self.value_embeddings = np.stack([texts.ensemble(spec.prompts(v)) for v in spec.values])

    def classify(self, image_embeddings: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        probabilities = softmax(self.logit_scale * image_embeddings @ self.value_embeddings.T)
        return self.decide(probabilities), probabilities

    def decide(self, probabilities: np.ndarray) -> np.ndarray:
        """Value indices (N,) for probability rows (N, V): the top one, UNSURE within the margin."""
        top_two = np.sort(probabilities, axis=1)[:, -2:]
        choice = probabilities.argmax(axis=1)
        choice[(top_two[:, 1] - top_two[:, 0]) < self.margin] = UNSURE
        return choice


class ConceptDetector:
    """P(concept) per view, with the texts `suppress: method: reject` scores that view with
    (`attributes.detector_texts`): a fixed pair, or, where the contrast names `{prompt}`, a pair
    built from each view's own prompt, so that the audit's rate and the generation-time
    rejection count the same views."""

    def __init__(self, spec: ConceptSpec, texts: TextEmbeddings, logit_scale: float):
        self.spec = spec
        self.texts = texts
        self.logit_scale = logit_scale

    def pair(self, prompt: str) -> np.ndarray:
        """(2, D): the concept side and the contrast side for a view drawn from `prompt`."""
        concept_texts, contrast = detector_texts(self.spec.concept, self.spec.contrast, prompt)
        return np.stack([self.texts.ensemble(concept_texts), self.texts.ensemble([contrast])])

    def probability(self, image_embeddings: np.ndarray, prompts: Sequence[str]) -> np.ndarray:
        """P(concept) for unit image embeddings (N, D) of views drawn from `prompts` (N)."""
        probability = np.zeros(len(prompts), np.float32)
        rows_by_prompt: dict[str, list[int]] = {}
        for row, prompt in enumerate(prompts):
            rows_by_prompt.setdefault(prompt, []).append(row)
        for prompt, rows in rows_by_prompt.items():
            logits = self.logit_scale * image_embeddings[rows] @ self.pair(prompt).T
            probability[rows] = softmax(logits)[:, 0]
        return probability
