"""`prompt`: each group's prompt names its value, assigned by exact quotas (the default)."""

from __future__ import annotations

from typing import Literal

from synthgen.balance.base import Balance
from synthgen.recipe_base import slugify


class PromptBalance(Balance):
    """`balance: method: prompt`: the plan assigns values by exact quotas (attributes.py) and
    fills them into `slot` (default: the attribute, slugified), or `inject`s them."""

    method: Literal["prompt"] = "prompt"
    slot: str | None = None

    @property
    def slot_name(self) -> str:
        return self.slot or slugify(self.attribute)
