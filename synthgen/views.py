"""View strategies: each turns one group's prompt into per-view requests.

- `seeds`: the same prompt, an independent seed per view (StableRep).
- `latent`: a neighbourhood of the group's anchor noise of scale sigma (GenRep's latent views).
- `prompt`: the prompt varied per view by modifiers (steering by text).
- `img2img`: views 1.. re-noise view 0 to a strength and denoise again (SDEdit).
`seeds` or `latent` decides the starting noise; with neither, every view shares the group's
seed. Every parameter a view was made with is in its `ViewPlan` and so in the sample's json.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

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

    def to_json(self) -> dict:
        """The view's entry in the sample metadata: strategy fields only where they apply."""
        entry = {"view": self.view, "prompt": self.prompt,
                 "negative_prompt": self.negative_prompt, "seed": self.seed}
        for name in ("anchor_seed", "sigma", "modifier", "source_view", "strength"):
            value = getattr(self, name)
            if value is not None:
                entry[name] = value
        return entry


def plan_views(spec: ViewsSpec, recipe_seed: int, group_id: str, prompt: str,
               negative_prompt: str) -> tuple[ViewPlan, ...]:
    """The views of one group under its strategies."""
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
        if "prompt" in spec.strategy:
            modifier = _modifier(spec, recipe_seed, group_id, view)
            fields["modifier"] = modifier
            view_prompt = spec.prompt.template.format(prompt=prompt, modifier=modifier)
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
