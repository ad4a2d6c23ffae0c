"""What a balance method is: one module per method subclasses `Balance`, and
synthgen/balance/__init__.py registers it."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, ClassVar

from pydantic import Field, field_validator

from synthgen.recipe_base import StrictModel, check_prompt_template, recipe_problem

if TYPE_CHECKING:
    import torch

    from synthgen.recipe import Recipe


# Proportions are relative weights; past this, sums and products of them overflow a float.
MAX_PROPORTION = 1e12

class Balance(StrictModel):
    """One `balance` entry: split `attribute` across `values` in these proportions, for the
    classes and corner cases in `applies_to` (None: all), the way its method does.

    `inject` is how a value enters a prompt that has no slot for it. A method's model adds
    `method: Literal[name]` and its own fields, and overrides the hooks it needs.
    """

    attribute: str = Field(min_length=1)
    values: dict[str, float] = Field(min_length=2)
    applies_to: list[str] | None = None  # class / corner-case names; default: all
    inject: str = "{prompt}, {value}"

    # Edits the model's weights (`edit_model`), which only some pipelines allow; where a
    # pipeline does not, the recipe is refused with the reason and `unsupported_fix`.
    edits_weights: ClassVar[bool] = False
    unsupported_fix: ClassVar[str] = ""
    # {key of another method: why this one refuses it} (see recipe_base.method_union).
    refused_keys: ClassVar[dict[str, str]] = {}

    @field_validator("values")
    @classmethod
    def _positive_proportions(cls, values: dict[str, float]) -> dict[str, float]:
        for value, proportion in values.items():
            if not 0 < proportion <= MAX_PROPORTION:  # also NaN
                raise recipe_problem("balance", f"proportion of {value!r} must be positive and "
                                     f"at most {MAX_PROPORTION:g} (proportions are relative: "
                                     f"1 and 3 mean 25% and 75%); got {proportion}")
        return values

    @field_validator("applies_to")
    @classmethod
    def _names_something(cls, applies_to: list[str] | None) -> list[str] | None:
        # An empty list would balance no class in the plan, while "no list" means every class;
        # readers that took [] for "every class" measured what the plan never set.
        if applies_to is not None and not applies_to:
            raise recipe_problem("balance", "applies_to is an empty list, which balances no "
                                 "class; name the classes or corner cases to balance, or leave "
                                 "applies_to out to balance all of them")
        return applies_to

    @field_validator("inject")
    @classmethod
    def _inject_uses_prompt_and_value(cls, inject: str) -> str:
        return check_prompt_template(inject, "value")

    @property
    def slot_name(self) -> str | None:
        """The template slot the plan fills with each group's value; None for a method whose
        prompts never name the values (the plan then assigns none)."""
        return None

    def check_models(self, where: str) -> None:
        """Raise `UserError` for a model the entry names that cannot load as what it needs
        (`builtin.check_model_reference`); `where` is its field path (`balance[1]`)."""

    def edit_model(self, recipe: Recipe, index: int, pipeline: Any,
                   device: torch.device | None) -> dict:
        """Edit `pipeline`'s weights in place (entry `index` of `recipe.balance`); the record
        of the edit, for `LoadedModel.edits` and the manifest."""
        raise NotImplementedError(f"method {self.method} edits no weights")
