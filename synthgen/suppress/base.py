"""What a suppression method is: one module per method subclasses `Suppression`, and
synthgen/suppress/__init__.py registers it."""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Any, Callable, ClassVar

from pydantic import Field, field_validator

from synthgen.recipe_base import StrictModel, recipe_problem

if TYPE_CHECKING:
    import torch

    from synthgen.generate.detector import ClipConceptScorer
    from synthgen.generate.sampler import Rejector
    from synthgen.recipe import Recipe


class Suppression(StrictModel):
    """One `suppress` entry: keep `concept` out of the images, the way its method does.

    A method's model adds `method: Literal[name]` and its own fields, and overrides the hooks
    it needs; the others do nothing. Plan time: `negative_prompt_text`, `asked_for`,
    `check_in_recipe`, `check_models`. Generation time (synthgen/generate/prepare.py calls
    them; they import the generation code they need when called): `edit_model` for a method
    that `edits_weights`, `rejector`.
    """

    concept: str = Field(min_length=1)

    @field_validator("concept")
    @classmethod
    def _has_words(cls, concept: str) -> str:
        # Phrases are split at commas; one without a word matched the empty string in every
        # prompt (every template "asked for" the concept) and was the whole negative prompt.
        if not any(re.search(r"\w", phrase) for phrase in concept.split(",")):
            raise recipe_problem("concept", f"concept {concept!r} holds no word; name what to "
                                 "keep out of the images, e.g. 'striped' or 'text, watermark'")
        return concept

    # What becomes of the views whose prompt asks for the concept (plan warns with it).
    asked_for: ClassVar[str]
    # Edits the model's weights (`edit_model`), which only some pipelines allow; where a
    # pipeline does not, the recipe is refused with the reason and `unsupported_fix`.
    edits_weights: ClassVar[bool] = False
    unsupported_fix: ClassVar[str] = ""
    # {key of another method: why this one refuses it}, where that says more than the default
    # "method X takes no 'key' (method Y does)".
    refused_keys: ClassVar[dict[str, str]] = {}

    def negative_prompt_text(self) -> str:
        """What the entry adds to every view's negative prompt ('' for nothing)."""
        return ""

    def check_in_recipe(self, where: str, recipe: Recipe) -> None:
        """Raise a recipe problem for a setting that does not fit the rest of the recipe;
        `where` is the entry's field path (`suppress[2]`)."""

    def check_models(self, where: str) -> None:
        """Raise `UserError` for a model the entry names that cannot load as what it needs
        (`builtin.check_model_reference`)."""

    def edit_model(self, recipe: Recipe, index: int, pipeline: Any,
                   device: torch.device | None) -> dict:
        """Edit `pipeline`'s weights in place (entry `index` of `recipe.suppress`); the
        record of the edit, for `LoadedModel.edits` and the manifest."""
        raise NotImplementedError(f"method {self.method} edits no weights")

    def rejector(self, recipe: Recipe,
                 scorer_for: Callable[[str], ClipConceptScorer]) -> Rejector | None:
        """The `Rejector` the sampler redraws flagged views with, or None; `scorer_for(model
        id)` gives the one loaded CLIP scorer of that model."""
        return None
