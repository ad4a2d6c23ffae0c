"""Zero-shot classification of image embeddings: attributes (with "unsure") and concepts.

Contracts:
- `ZeroShotAttribute.classify(E)` for unit image embeddings E (N, D) returns value indices
  (N,), with UNSURE (-1) where the top-1 minus top-2 softmax probability is below the
  margin, and the probabilities (N, V); `decide` applies the same rule to any probability
  rows (a group's reading is `decide` of its views' mean probabilities). A value's text
  embedding is the normalised mean of its normalised template embeddings (prompt ensembling).
- `ConceptDetector.probability(E)` is P(concept) in a two-way softmax of concept vs. contrast
  prompt ensembles; a view is detected when it is above the concept's threshold.
"""

from __future__ import annotations

import numpy as np

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
    def __init__(self, spec: ConceptSpec, texts: TextEmbeddings, logit_scale: float):
        self.spec = spec
        self.logit_scale = logit_scale
        self.pair = np.stack([texts.ensemble(spec.concept_prompts()), texts.ensemble([spec.contrast])])

    def probability(self, image_embeddings: np.ndarray) -> np.ndarray:
        return softmax(self.logit_scale * image_embeddings @ self.pair.T)[:, 0]
