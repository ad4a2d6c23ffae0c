"""`slots`: each view re-draws the named slots and holds the template, class and other slots.

The values are drawn where the group's own are, in the plan (`plan._view_texts`, which fills
templates and balance quotas); `plan_views` gives each view its `ViewText`'s prompt, and this
strategy records the values the view re-drew.
"""

from __future__ import annotations

from pydantic import Field, field_validator

from synthgen.recipe_base import CLASS_SLOT, StrictModel, recipe_problem
from synthgen.views.base import ViewStrategy


class SlotViews(StrictModel):
    """`slots`: every view re-draws the slots in `vary` (by their weights); the template, the
    class and every other slot stay the group's. With `distinct`, a group's views take
    different values while the slot has values left (weighted draws without replacement)."""

    vary: list[str] = Field(min_length=1)
    distinct: bool = True

    @field_validator("vary")
    @classmethod
    def _slot_names_once_each(cls, vary: list[str]) -> list[str]:
        if CLASS_SLOT in vary:
            raise recipe_problem("slots", f"{{{CLASS_SLOT}}} is the group's class and every view "
                                 "keeps it; vary other slots (a view of another class would be "
                                 "a different group)")
        repeated = sorted({name for name in vary if vary.count(name) > 1})
        if repeated:
            raise recipe_problem("slots", f"{repeated} listed twice; list each slot once")
        return vary


class Slots(ViewStrategy):
    name = "slots"
    settings = SlotViews
    missing_block = ("strategy slots needs a slots block naming the slots each view re-draws, "
                     "e.g. slots: {vary: [colour]}")

    def describe(self, spec) -> str:
        how = "; distinct" if spec.slots.distinct else ""
        noise = "; one shared seed" if spec.noise == "shared" else ""
        return f"slots (vary {', '.join(spec.slots.vary)}{how}{noise})"

    def change_view(self, spec, recipe_seed, group_id, view, request) -> None:
        text = request["text"]
        request.update(slots=text.slots or None, balance=text.balance or None)
