"""View strategies: each turns one group's prompt into per-view requests.

- `seeds`: the same prompt, an independent seed per view (StableRep).
- `latent`: a neighbourhood of the group's anchor noise of scale sigma (GenRep's latent views).
- `prompt`: the prompt varied per view by modifiers (steering by text).
- `img2img`: views 1.. re-noise view 0 to a strength and denoise again (SDEdit).
- `slots`: each view re-draws the named slots and holds the template, class and other slots
  (the plan fills the view's prompt: `plan._view_texts`).
`seeds` or `latent` decides the starting noise; with neither, every view shares the group's
seed (with `slots`: minimal counterfactuals, one attribute changed on the same noise). Every
parameter a view was made with is in its `ViewPlan` and so in the sample's json.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass, field

from synthgen.recipe import ViewsSpec
from synthgen.seeding import derive_seed, seed_for


@dataclass(frozen=True)
class ViewPlan:
    """One image to generate: everything the sampler needs, nothing that depends on batching.

    Starting noise: N(seed) alone, or with `anchor_seed`, (N(anchor) + sigma N(seed)) /
    sqrt(1 + sigma^2). With `source_view`, the image is view `source_view` of the same group
    re-noised to `strength` (with N(seed)) and denoised again.
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

    def to_json(self) -> dict:
        """The view's entry in the sample metadata: strategy fields only where they apply."""
        entry = {"view": self.view, "prompt": self.prompt,
                 "negative_prompt": self.negative_prompt, "seed": self.seed}
        for name in ("anchor_seed", "sigma", "modifier", "source_view", "strength"):
            value = getattr(self, name)
            if value is not None:
                entry[name] = value
        for name in ("slots", "balance"):
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


def plan_views(spec: ViewsSpec, recipe_seed: int, group_id: str, prompt: str,
               negative_prompt: str, texts: Sequence[ViewText] = ()) -> tuple[ViewPlan, ...]:
    """The views of one group under its strategies. `prompt` is the group's; with the
    `slots` strategy, `texts` (one per view) give each view its own prompt and values."""
    if "slots" in spec.strategy and len(texts) != spec.count:
        raise ValueError(f"strategy slots needs one ViewText per view ({spec.count}), "
                         f"got {len(texts)}")
    views = []
    anchor = derive_seed("anchor", recipe_seed, group_id) if spec.noise == "latent" else None
    for view in range(spec.count):
        own_seed = seed_for(recipe_seed, group_id, view)
        fields: dict = {"seed": own_seed}
        if spec.noise == "shared":
            fields["seed"] = seed_for(recipe_seed, group_id, 0)
        elif spec.noise == "latent":
            at_anchor = spec.latent.anchor_view and view == 0
            fields.update(anchor_seed=anchor, sigma=0.0 if at_anchor else spec.latent.sigma)
        view_prompt = prompt
        if texts:
            view_prompt = texts[view].prompt
            fields.update(slots=texts[view].slots or None, balance=texts[view].balance or None)
        if "prompt" in spec.strategy:
            modifier = _modifier(spec, recipe_seed, group_id, view)
            fields["modifier"] = modifier
            view_prompt = spec.prompt.template.format(prompt=view_prompt, modifier=modifier)
        if "img2img" in spec.strategy and view > 0:
            # Re-noising always uses the view's own seed, or every derived view would be alike.
            fields.update(seed=own_seed, source_view=0, strength=spec.img2img.strength)
        views.append(ViewPlan(group_id=group_id, view=view, prompt=view_prompt,
                              negative_prompt=negative_prompt, **fields))
    return tuple(views)


def _modifier(spec: ViewsSpec, recipe_seed: int, group_id: str, view: int) -> str:
    modifiers = spec.prompt.modifiers
    if spec.prompt.mode == "cycle":
        return modifiers[view % len(modifiers)]
    rng = random.Random(derive_seed("modifier", recipe_seed, group_id, view))
    return modifiers[int(rng.random() * len(modifiers))]
