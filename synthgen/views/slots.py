"""`slots`: each view re-draws the named slots and holds the template, class and other slots.

The values are drawn where the group's own are, in the plan (`plan._view_texts`, which fills
templates and balance quotas); `plan_views` gives each view its `ViewText`'s prompt, and this
strategy records the values the view re-drew.

With `hold_layout`, every view also denoises with parts of view 0's computation for the first
steps (generate/attention_sharing.py): view 0 is the group's layout anchor, recorded in each
view's `layout_anchor` and `layout_sharing`, which the sampler reads.

With `splice_text`, each view's prompt embedding is view 0's with the view's own embedding put
in only at the token positions where the two prompts' tokens differ (the varied slot's words),
recorded in each view's `splice_into` (view 0's prompt) and read by the model family
(generate/families/sd.py). In a causal text encoder every word after a changed one also reads
it; splicing keeps those words the anchor's, so the views differ in the varied words alone.

With `align_noise` (a varied slot of colour names), each view's starting noise is view 0's
turned in the latent's channel space, at every pixel, by the rotation that takes the latent of
view 0's colour onto the latent of the view's (generate/noise_turn.py): where the noise favours
a red object for view 0, it favours a blue one for a blue view. A rotation keeps the noise a
unit Gaussian, so each view is still a fair draw. Recorded in each view's `noise_turn`
(the two colours), read by the sampler. On world-sd, with `hold_layout`, the position held
in 89% of 110 groups instead of 87% (docs/WORLD.md, "Counterfactual views").
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from PIL import ImageColor
from pydantic import Field, field_validator, model_serializer, model_validator

from synthgen.recipe_base import CLASS_SLOT, StrictModel, recipe_problem
from synthgen.views.base import ViewStrategy


# `hold_layout: true`: the fraction of the steps measured on builtin:world-sd (docs/WORLD.md);
# equal to generate.attention_sharing.LAYOUT_SHARING (a test checks; the plan imports no torch).
HELD_LAYOUT_FRACTION = 0.85
# Strategies that give views starting noise other than the group's one shared seed (an img2img
# view starts from another image): layout sharing was measured only on shared noise, and
# align_noise turns that one noise.
_OWN_STARTING_NOISE = ("seeds", "latent", "img2img")


def _own_noise_strategy(spec) -> str | None:
    """The first strategy of `spec` that gives views their own starting noise, or None."""
    return next((name for name in _OWN_STARTING_NOISE if name in spec.strategy), None)


class HeldCheck(StrictModel):
    """`slots.check`: after a group is drawn, read what its views should share, and draw the
    whole group again (new shared seed) where they do not, at most `max_retries` times.

    `hold` lists what a CLIP model (`detector`) reads in every view: the class (`class`) or a
    held slot, each read by comparing the view's own prompt with the same prompt filled with
    each other value (the class's other names, the slot's other values); a view passes where
    its own value wins. `layout` is the least correlation of each view's edge map with view 0's
    (0 to 1; the object's outline and place, whatever its colour). The last draw of a group
    that never passes is stored and recorded as failing (`held_check` in each view's json).
    """

    hold: list[str] = []
    layout: float | None = Field(None, gt=0.0, lt=1.0)
    detector: str = "builtin:world-clip"
    max_retries: int = Field(5, ge=1, le=50)

    @model_validator(mode="after")
    def _checks_something(self) -> HeldCheck:
        if not self.hold and self.layout is None:
            raise recipe_problem("slots", "check needs hold (e.g. hold: [class]) and/or layout "
                                 "(e.g. layout: 0.7); drop check to keep every draw")
        repeated = sorted({name for name in self.hold if self.hold.count(name) > 1})
        if repeated:
            raise recipe_problem("slots", f"check.hold lists {repeated} twice; list each once")
        return self


class SlotViews(StrictModel):
    """`slots`: every view re-draws the slots in `vary` (by their weights); the template, the
    class and every other slot stay the group's. With `distinct`, a group's views take
    different values while the slot has values left (weighted draws without replacement).
    With `hold_layout`, views hold view 0's layout (generate/attention_sharing.py)."""

    vary: list[str] = Field(min_length=1)
    distinct: bool = True
    # Off, `true` (the measured default, HELD_LAYOUT_FRACTION) or the fraction of the steps
    # for which views take view 0's attention maps and coarse decoder features.
    hold_layout: bool | float = False
    # Views take view 0's prompt embedding except at the tokens where their own prompt differs.
    splice_text: bool = False
    # Views start from view 0's noise turned from view 0's colour to their own (a slot of
    # colour names; `colour_rgb`).
    align_noise: bool = False
    # Redraw groups whose views disagree on what they hold (`HeldCheck`).
    check: HeldCheck | None = None

    @field_validator("hold_layout")
    @classmethod
    def _fraction_of_steps(cls, hold_layout: bool | float) -> bool | float:
        if not isinstance(hold_layout, bool) and not 0.0 < hold_layout <= 1.0:
            raise recipe_problem("slots", f"hold_layout {hold_layout} is the fraction of the "
                                 "denoising steps that share view 0's layout, above 0 and at "
                                 f"most 1 (true: {HELD_LAYOUT_FRACTION}, the measured default)")
        return hold_layout

    @model_serializer(mode="wrap")
    def _record(self, handler) -> dict[str, Any]:
        # `hold_layout` came later: left out while off, so recipes that do not set it keep
        # the recipe hash (and sample bytes) they had before it existed.
        recorded = handler(self)
        for later in ("hold_layout", "splice_text", "align_noise", "check"):  # in order
            if recorded.get(later) in (False, None):
                recorded.pop(later)
        return recorded

    @property
    def layout_sharing(self) -> dict[str, float] | None:
        """For what fraction of the steps views take each part from view 0 (the fields of
        `generate.attention_sharing.LayoutSharing`), or None when the layout is not held."""
        if self.hold_layout is False:
            return None
        fraction = HELD_LAYOUT_FRACTION if self.hold_layout is True else float(self.hold_layout)
        # The pooled text stays each view's own: sharing it did not help on world-sd
        # (docs/WORLD.md, "Counterfactual views").
        return {"self_maps": fraction, "cross_maps": fraction, "pooled_text": 0.0,
                "coarse_features": fraction}

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

    @model_validator(mode="after")
    def _held_not_varied(self) -> SlotViews:
        varied = sorted(set(self.check.hold) & set(self.vary)) if self.check else []
        if varied:
            raise recipe_problem("slots", f"check.hold lists {varied}, which vary lists: the "
                                 "views change it on purpose; hold other slots or the class")
        return self


@dataclass(frozen=True)
class HeldCheckPlan:
    """What the sampler checks on one view of a group with `slots.check` (`HeldCheck`).

    `readings`: per held name, its value in this view and every (value, prompt) a detector
    compares, the view's own prompt among them (`plan._view_texts` fills them)."""

    readings: tuple[tuple[str, str, tuple[tuple[str, str], ...]], ...]
    layout: float | None
    detector: str
    max_retries: int


def colour_rgb(value: str) -> tuple[int, int, int] | None:
    """The RGB of a colour name as CSS names it (Pillow's table: "red", "light blue",
    "dark-green", "#ff8800"), or None when `value` is not one."""
    name = value.strip().lower().replace(" ", "").replace("-", "")
    try:
        red, green, blue = ImageColor.getrgb(name)[:3]
    except ValueError:
        return None
    return red, green, blue


class Slots(ViewStrategy):
    name = "slots"
    settings = SlotViews
    missing_block = ("strategy slots needs a slots block naming the slots each view re-draws, "
                     "e.g. slots: {vary: [colour]}")

    def describe(self, spec) -> str:
        how = "; distinct" if spec.slots.distinct else ""
        noise = "; one shared seed" if spec.noise == "shared" else ""
        sharing = spec.slots.layout_sharing
        layout = (f"; layout held to view 0 for {sharing['self_maps']:.0%} of the steps"
                  if sharing else "")
        spliced = "; text spliced into view 0's" if spec.slots.splice_text else ""
        aligned = "; noise turned to each view's colour" if spec.slots.align_noise else ""
        check = spec.slots.check
        checked = ""
        if check is not None:
            read = [*check.hold, *([f"layout >= {check.layout}"] if check.layout else [])]
            checked = f"; groups redrawn up to {check.max_retries}x unless {', '.join(read)} hold"
        return (f"slots (vary {', '.join(spec.slots.vary)}{how}{noise}{layout}{spliced}{aligned}"
                f"{checked})")

    def aligned_noise_problem(self, spec) -> str | None:
        """Why `align_noise` cannot run with the strategies chosen, or None: it turns the
        group's one shared noise, and is defined for one varied slot (its colour)."""
        if not spec.slots.align_noise:
            return None
        own = _own_noise_strategy(spec)
        if own:
            return (f"strategy: slots.align_noise turns the group's one shared starting noise "
                    f"towards each view's colour, and {own} gives views other starting noise "
                    f"or images; drop {own} from the strategy list, or set align_noise: false")
        if len(spec.slots.vary) != 1:
            return (f"slots.align_noise turns the noise by one slot's colours, and vary lists "
                    f"{spec.slots.vary}; vary one slot of colour names, or set align_noise: false")
        return None

    def held_layout_problem(self, spec) -> str | None:
        """Why `hold_layout` cannot run with the other strategies chosen, or None."""
        own = _own_noise_strategy(spec)
        if spec.slots.hold_layout is False or not own:
            return None
        return (f"strategy: slots.hold_layout holds every view to view 0's layout on the "
                f"group's one shared starting noise, and {own} gives views other "
                f"starting noise or images; drop {own} from the strategy list, or "
                "set hold_layout: false")

    def change_view(self, spec, recipe_seed, group_id, view, request) -> None:
        text = request["text"]
        request.update(slots=text.slots or None, balance=text.balance or None)
        if spec.slots.layout_sharing is not None:
            request.update(layout_anchor=0, layout_sharing=spec.slots.layout_sharing)
        if spec.slots.splice_text and view != 0:
            request.update(splice_into=request["group_texts"][0].prompt)
        if spec.slots.align_noise and view != 0:
            request.update(noise_turn=(_varied_value(spec, request["group_texts"][0]),
                                       _varied_value(spec, text)))
        check = spec.slots.check
        if check is not None:
            from synthgen.attributes import planning_revision

            # The compared prompts are worded as the view's own (with its modifier, say).
            reword = request["reword"] if planning_revision.get() >= 3 else (lambda text: text)
            readings = tuple((name, own, tuple((value, reword(compared)) for value, compared in alternatives))
                             for name, own, alternatives in text.held_readings)
            request.update(held_check=HeldCheckPlan(
                readings=readings, layout=check.layout, detector=check.detector,
                max_retries=check.max_retries))


def _varied_value(spec, text) -> str:
    """The value a view drew for the one slot `align_noise` varies: a recipe slot's, else the
    balanced attribute's (its only per-view value)."""
    slot = spec.slots.vary[0]
    if slot in text.slots:
        return text.slots[slot]
    (value,) = text.balance.values()
    return value
