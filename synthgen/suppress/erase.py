"""`erase`: a closed-form edit (UCE) of every linear map through which the prompt reaches the
denoiser, so the concept renders as `target` (the edit itself: synthgen/generate/erase.py)."""

from __future__ import annotations

from typing import ClassVar, Literal

from pydantic import Field, field_validator, model_validator

from synthgen.recipe_base import CLASS_SLOT, check_template, recipe_problem, well_formed_slots
from synthgen.seeding import derive_seed
from synthgen.suppress.base import Suppression


class EraseSuppression(Suppression):
    """`suppress: method: erase`: map the concept onto `target`, keeping `preserve`.

    `contexts` are prompt templates that use the concept ({concept}, {class}, recipe slots), of
    which `context_prompts` are filled and edited too. The weights default to the reference
    implementation's (UCE): preserve 1.0, lambda 0.5.
    """

    method: Literal["erase"] = "erase"
    target: str = ""
    preserve: list[str] = []
    contexts: list[str] = []
    context_prompts: int = Field(200, ge=1, le=10_000)
    preserve_weight: float = Field(1.0, ge=0.0)
    regularizer: float = Field(0.5, gt=0.0)

    asked_for: ClassVar[str] = "the edited model no longer draws what its prompts ask for"
    edits_weights: ClassVar[bool] = True
    unsupported_fix: ClassVar[str] = "use method: reject or negative"

    @model_validator(mode="after")
    def _concept_not_preserved(self):
        # Held in place and mapped away at once, the edit pulls against itself (on a tiny
        # pipeline the concept's cross-attention gap left grew from 0.28 to 0.51).
        kept = [text for text in self.preserve if text.strip().casefold() == self.concept.strip().casefold()]
        if kept:
            raise recipe_problem("suppress", f"preserve lists the concept {kept[0]!r} itself, which "
                                 "the edit maps away; preserve what should stay (other words)")
        return self

    @field_validator("contexts")
    @classmethod
    def _contexts_name_the_concept(cls, contexts: list[str]) -> list[str]:
        for template in contexts:
            if "concept" not in well_formed_slots(template, f"context {template!r}: ",
                                                  "{concept} or {class}"):
                raise recipe_problem("suppress", f"context {template!r} does not use {{concept}}; "
                                     "write where the concept goes, e.g. 'a {concept} {class}'")
        return contexts

    def check_in_recipe(self, where, recipe) -> None:
        known = set(recipe.slots) | {"concept"} | ({CLASS_SLOT} if recipe.classes else set())
        for index, template in enumerate(self.contexts):
            check_template(f"{where}.contexts[{index}]", template, known, "slots")

    def filled_contexts(self, recipe, index: int) -> list[str]:
        """The `context_prompts` prompts filled from `contexts` for entry `index` of
        `recipe.suppress` (seeded by the recipe seed and the index)."""
        from synthgen.generate.erase import context_prompts

        return context_prompts(self.contexts, self.concept, self.context_prompts,
                               derive_seed("erase-contexts", recipe.seed, index),
                               recipe.slots, [spec.name for spec in recipe.classes])

    def edit_model(self, recipe, index, pipeline, device) -> dict:
        from synthgen.generate.erase import erase_concept

        return erase_concept(pipeline, self.concept, self.target, self.preserve,
                             self.filled_contexts(recipe, index), self.preserve_weight,
                             self.regularizer)
