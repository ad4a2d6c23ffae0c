"""View strategies: each turns one group's prompt into per-view requests.

One module per strategy, registered in `STRATEGIES` (in this order they change a view, are
listed in errors and are keys of the recipe's `views` block):

- `seeds`: the same prompt, an independent seed per view (StableRep).
- `latent`: a neighbourhood of the group's anchor noise of scale sigma (GenRep's latent views).
- `prompt`: the prompt varied per view by modifiers (steering by text).
- `img2img`: views 1.. re-noise view 0 to a strength and denoise again (SDEdit).
- `slots`: each view re-draws the named slots and holds the template, class and other slots
  (the plan fills the view's prompt: `plan._view_texts`); with `hold_layout`, views also take
  view 0's layout (`ViewPlan.layout_anchor`, generate/attention_sharing.py).
`seeds` or `latent` decides the starting noise; with neither, every view shares the group's
seed (with `slots`: minimal counterfactuals, one attribute changed on the same noise). Every
parameter a view was made with is in its `ViewPlan` and so in the sample's json.

A new strategy is a module here with a `ViewStrategy` (its recipe block, plan line, how it
changes a view, what it combines with) and one line in `STRATEGIES`; the sampler changes
only if it needs a new kind of sampling (it reads `ViewPlan`, never a strategy's name).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from itertools import combinations
from typing import Any, Literal

from pydantic import Field, create_model, field_validator, model_validator

from synthgen.recipe_base import StrictModel, recipe_problem
from synthgen.seeding import seed_for
from synthgen.views.base import ViewStrategy
from synthgen.views.img2img import Img2Img
from synthgen.views.latent import Latent
from synthgen.views.prompt import Prompt
from synthgen.views.seeds import Seeds
from synthgen.views.slots import HeldCheckPlan, Slots

STRATEGIES: dict[str, ViewStrategy] = {strategy.name: strategy for strategy in (
    Seeds(), Latent(), Prompt(), Img2Img(), Slots())}
VIEW_STRATEGIES = tuple(STRATEGIES)
NOISE_STRATEGIES = tuple(name for name, strategy in STRATEGIES.items() if strategy.decides_noise)


class _ViewsBase(StrictModel):
    """How many views each group has and how they differ; strategies combine.

    `seeds` (an independent seed per view) or `latent` (a neighbourhood of one noise) decide
    the starting noise; with neither, all views share the group's seed. `prompt` varies the
    text per view; `img2img` derives views 1.. from view 0; `slots` re-draws named slots per
    view and holds the rest (with shared noise: minimal counterfactuals). Each strategy's
    block (`latent`, `prompt`, ...) is its module's settings model.
    """

    count: int = Field(2, ge=1, le=64)
    strategy: list[Literal[VIEW_STRATEGIES]] = ["seeds"]

    @field_validator("strategy", mode="before")
    @classmethod
    def _one_or_many(cls, value: Any) -> Any:
        return [value] if isinstance(value, str) else value

    @model_validator(mode="after")
    def _strategies_fit_together(self) -> ViewsSpec:
        chosen = set(self.strategy)
        if not chosen:
            raise recipe_problem("views", "strategy needs at least one of "
                                 + ", ".join(VIEW_STRATEGIES))
        repeated = sorted({name for name in self.strategy if self.strategy.count(name) > 1})
        if repeated:
            raise recipe_problem("views", f"strategy: {', '.join(repeated)} listed twice; list "
                                 "each strategy once")
        for first, second in combinations(NOISE_STRATEGIES, 2):
            if {first, second} <= chosen:
                raise recipe_problem("views", f"strategy: {first} and {second} both decide the "
                                     "starting noise; pick one")
        for name, strategy in STRATEGIES.items():
            for other, why in strategy.excludes.items():
                if name in chosen and other in chosen:
                    raise recipe_problem("views", f"strategy: {why}")
        for name, strategy in STRATEGIES.items():
            if strategy.missing_block and name in chosen and getattr(self, name) is None:
                raise recipe_problem("views", strategy.missing_block)
        if "slots" in chosen and self.count < 2:
            raise recipe_problem("views", "strategy slots re-draws slots per view, and count is "
                                 f"{self.count}, so a group's views cannot differ; set count: 2 "
                                 "or more, or drop slots")
        problem = "slots" in chosen and (STRATEGIES["slots"].held_layout_problem(self)
                                         or STRATEGIES["slots"].aligned_noise_problem(self))
        if problem:
            raise recipe_problem("views", problem)
        if "slots" in chosen and self.slots.check is not None and "img2img" in chosen:
            raise recipe_problem("views", "strategy: slots.check redraws a whole group at once, "
                                 "and img2img draws views 1.. from view 0 afterwards; drop "
                                 "img2img or the check")
        return self

    @property
    def varied_slots(self) -> tuple[str, ...]:
        """The slots each view re-draws (none without the `slots` strategy)."""
        return tuple(self.slots.vary) if "slots" in self.strategy else ()

    @property
    def holds_layout(self) -> bool:
        """Whether views hold view 0's layout (`slots.hold_layout`): their group is then
        made in one pipeline call."""
        return "slots" in self.strategy and self.slots.hold_layout is not False

    @property
    def checks_groups(self) -> bool:
        """Whether groups are checked and redrawn whole (`slots.check`)."""
        return "slots" in self.strategy and self.slots.check is not None

    @property
    def whole_groups(self) -> bool:
        """Whether a group's views must come to the sampler together: they hold a layout or
        are checked as a group."""
        return self.holds_layout or self.checks_groups

    @property
    def noise(self) -> str:
        """'seeds', 'latent' or 'shared' (every view starts from the group's one seed)."""
        for strategy in NOISE_STRATEGIES:
            if strategy in self.strategy:
                return strategy
        return "shared"

    def describe(self) -> str:
        """One line a person can read: '4 views: latent (sigma 0.5, anchor) + prompt (3 modifiers)'."""
        return (f"{self.count} views: "
                + " + ".join(STRATEGIES[name].describe(self) for name in self.strategy))


# The recipe's `views` block: count, strategy, then each registered strategy's own block.
ViewsSpec = create_model(
    "ViewsSpec", __base__=_ViewsBase, __module__=__name__,
    **{name: (strategy.settings | None, None) if strategy.missing_block
       else (strategy.settings, strategy.settings())
       for name, strategy in STRATEGIES.items() if strategy.settings is not None})
ViewsSpec.__doc__ = _ViewsBase.__doc__


@dataclass(frozen=True)
class ViewPlan:
    """One image to generate: everything the sampler needs, nothing that depends on batching.

    Starting noise: N(seed) alone, or with `anchor_seed`, (N(anchor) + sigma N(seed)) /
    sqrt(1 + sigma^2); with `noise_turn`, N(seed) turned in channel space from the latent of
    its first colour to that of its second (generate/noise_turn.py). With `source_view`, the
    image is view `source_view` of the same group re-noised to `strength` (with N(seed)) and
    denoised again. With `layout_anchor`, the view is made in one pipeline call with view
    `layout_anchor` of its group and takes that view's attention maps and coarse features for
    the fractions of the steps in `layout_sharing` (generate/attention_sharing.py; the
    anchor's own picture is its plain one up to float rounding).
    """

    group_id: str
    view: int
    prompt: str
    negative_prompt: str
    seed: int
    anchor_seed: int | None = None
    sigma: float | None = None
    modifier: str | None = None
    source_view: int | None = None
    strength: float | None = None
    # `slots` strategy: the values this view re-drew, recipe slots by slot name and balanced
    # attributes by attribute (the group's `slots` and `balance` hold the rest).
    slots: dict[str, str] | None = field(default=None, hash=False)
    balance: dict[str, str] | None = field(default=None, hash=False)
    # `slots` with `hold_layout`: the view whose layout this one holds, and for what fraction
    # of the steps it takes each part (the fields of `attention_sharing.LayoutSharing`).
    layout_anchor: int | None = None
    layout_sharing: dict[str, float] | None = field(default=None, hash=False)
    # `slots` with `splice_text`: the prompt (view 0's) whose embedding takes this view's
    # tokens where they differ from its own (generate/families/sd.py).
    splice_into: str | None = None
    # `slots` with `align_noise`: (view 0's colour, this view's): the starting noise is view
    # 0's turned from the one to the other (generate/noise_turn.py).
    noise_turn: tuple[str, str] | None = None
    # `slots` with `check`: what the sampler reads to redraw a group whose views disagree
    # (views/slots.py `HeldCheckPlan`); its outcome, not this, goes into the sample json.
    held_check: HeldCheckPlan | None = field(default=None, hash=False)

    def to_json(self) -> dict:
        """The view's entry in the sample metadata: strategy fields only where they apply."""
        entry = {"view": self.view, "prompt": self.prompt,
                 "negative_prompt": self.negative_prompt, "seed": self.seed}
        for name in ("anchor_seed", "sigma", "modifier", "source_view", "strength"):
            value = getattr(self, name)
            if value is not None:
                entry[name] = value
        if self.layout_anchor is not None:
            entry["layout_anchor"] = self.layout_anchor
        if self.splice_into is not None:
            entry["splice_into"] = self.splice_into
        if self.noise_turn is not None:
            entry["noise_turn"] = list(self.noise_turn)
        for name in ("slots", "balance", "layout_sharing"):
            value = getattr(self, name)
            if value is not None:
                entry[name] = dict(value)
        return entry


@dataclass(frozen=True)
class ViewText:
    """One view's prompt under the `slots` strategy, and the values it re-drew for it."""

    prompt: str
    slots: dict[str, str] = field(hash=False)
    balance: dict[str, str] = field(hash=False)
    # With `slots.check`: per held name, this view's value and each (value, prompt) to compare.
    held_readings: tuple[tuple[str, str, tuple[tuple[str, str], ...]], ...] = ()


def plan_views(spec: ViewsSpec, recipe_seed: int, group_id: str, prompt: str,
               negative_prompt: str, texts: Sequence[ViewText] = ()) -> tuple[ViewPlan, ...]:
    """The views of one group under its strategies. `prompt` is the group's; with the
    `slots` strategy, `texts` (one per view) give each view its own prompt and values."""
    if "slots" in spec.strategy and len(texts) != spec.count:
        raise ValueError(f"strategy slots needs one ViewText per view ({spec.count}), "
                         f"got {len(texts)}")
    views = []
    for view in range(spec.count):
        # Without a strategy that decides the noise, every view starts from view 0's seed.
        seed_view = view if spec.noise != "shared" else 0
        # "reword": how strategies so far changed the view's prompt text (the `prompt`
        # strategy's modifier), for prompts compared with it (`slots.check`, after it).
        request: dict = {"seed": seed_for(recipe_seed, group_id, seed_view),
                         "prompt": texts[view].prompt if texts else prompt,
                         "text": texts[view] if texts else None, "group_texts": texts,
                         "reword": lambda text: text}
        for name, strategy in STRATEGIES.items():
            if name in spec.strategy:
                strategy.change_view(spec, recipe_seed, group_id, view, request)
        del request["text"], request["group_texts"], request["reword"]
        views.append(ViewPlan(group_id=group_id, view=view, negative_prompt=negative_prompt,
                              **request))
    # A spliced view reads view 0's prompt as view 0 is drawn: with every strategy's change
    # (the `prompt` strategy's modifier, say), known only now.
    return tuple(replace(plan, splice_into=views[0].prompt) if plan.splice_into is not None
                 else plan for plan in views)
