"""View strategies: each turns one group's prompt into per-view requests.

Only `seeds` exists so far (StableRep: same prompt, an independent seed per view); latent
neighbourhoods, prompt variation and img2img plug in here as further strategies.
"""

from __future__ import annotations

from dataclasses import dataclass

from synthgen.recipe import ViewsSpec
from synthgen.seeding import seed_for


@dataclass(frozen=True)
class ViewPlan:
    """One image to generate: everything the sampler needs, nothing that depends on batching."""

    view: int
    prompt: str
    negative_prompt: str
    seed: int

    def to_json(self) -> dict:
        return {"view": self.view, "prompt": self.prompt,
                "negative_prompt": self.negative_prompt, "seed": self.seed}


def plan_views(spec: ViewsSpec, recipe_seed: int, group_id: str, prompt: str,
               negative_prompt: str) -> tuple[ViewPlan, ...]:
    """The views of one group under the recipe's strategy."""
    if spec.strategy == "seeds":
        return tuple(
            ViewPlan(view, prompt, negative_prompt, seed_for(recipe_seed, group_id, view))
            for view in range(spec.count)
        )
    raise ValueError(f"unknown view strategy {spec.strategy!r}")  # the recipe schema rules this out
