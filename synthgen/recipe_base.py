"""What every recipe block is built on: `StrictModel`, `recipe_problem` and template slots.

Kept apart from recipe.py so that the blocks a registry owns (a view strategy's settings in
synthgen/views/) can live beside their code: recipe.py imports them, and they import only this.
"""

from __future__ import annotations

import string
from typing import Any

from pydantic import BaseModel, ConfigDict, model_validator
from pydantic_core import PydanticCustomError

CLASS_SLOT = "class"  # filled with the class name (or a corner case's label) in every template


def recipe_problem(kind: str, message: str) -> PydanticCustomError:
    """A validation error whose message is final text (pydantic would read braces as fields)."""
    return PydanticCustomError(kind, "{message}", {"message": message})


def template_slots(template: str) -> list[str]:
    """The slot names a template uses, in order; raises ValueError for malformed braces."""
    names = []
    for _, field_name, format_spec, conversion in string.Formatter().parse(template):
        if field_name is None:
            continue
        if not field_name.isidentifier() or format_spec or conversion:
            raise ValueError(f"'{{{field_name}}}' is not a slot name")
        names.append(field_name)
    return names


class StrictModel(BaseModel):
    """Frozen, and rejects keys it does not know, naming the keys it does."""

    # No NaN or infinity: YAML reads `.nan` and `.inf` as floats, and no setting means them.
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    @model_validator(mode="before")
    @classmethod
    def _reject_unknown_keys(cls, data: Any) -> Any:
        if isinstance(data, dict):
            for key in data:
                if key not in cls.model_fields:
                    raise PydanticCustomError(
                        "unknown_key", "{message}",
                        {"key": str(key), "message": f"unknown key {str(key)!r}; the keys "
                         f"allowed here are: {', '.join(cls.model_fields)}"},
                    )
        return data
