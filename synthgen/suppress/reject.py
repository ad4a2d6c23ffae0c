"""`reject`: a CLIP detector scores every view as stored; views above a threshold are redrawn."""

from __future__ import annotations

from typing import ClassVar, Literal

from pydantic import Field

from synthgen.builtin import CLIP, check_model_reference
from synthgen.suppress.base import Suppression


class RejectSuppression(Suppression):
    """`suppress: method: reject`: `detector` (a CLIP model) scores P(concept) against
    `contrast` ("{prompt}" stands for the view's own prompt: attributes.detector_texts); a
    view above `threshold` is drawn again from a derived seed, at most `max_retries` times."""

    method: Literal["reject"] = "reject"
    detector: str = "builtin:world-clip"
    contrast: str = "a photo"
    threshold: float = Field(0.5, gt=0.0, lt=1.0)
    max_retries: int = Field(3, ge=1, le=50)

    asked_for: ClassVar[str] = ("most of its views will be redrawn until their retries run out, "
                                "and stored marked suppression_failed")

    def check_models(self, where: str) -> None:
        check_model_reference(self.detector, f"{where}.detector", CLIP)

    def rejector(self, recipe, scorer_for):
        # The sampler hands `score` the views as their shard stores them (`generate/stored.py`),
        # so a view recorded as passing is a stored file that passes.
        from synthgen.generate.sampler import Rejector

        scorer = scorer_for(self.detector)
        return Rejector(
            concept=self.concept, threshold=self.threshold, max_retries=self.max_retries,
            score=lambda images, prompts: scorer.probabilities(
                images, self.concept, self.contrast, prompts))
