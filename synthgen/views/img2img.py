"""`img2img`: views 1.. re-noise view 0 to a strength and denoise again (SDEdit)."""

from __future__ import annotations

import math

from pydantic import Field

from synthgen.recipe_base import StrictModel
from synthgen.seeding import seed_for
from synthgen.views.base import ViewStrategy


def img2img_steps(steps: int, strength: float) -> tuple[int, float]:
    """(steps to ask diffusers' img2img for, the strength it then re-noises by): it runs
    int(steps x strength) of them, so at least 1/strength are asked for, for one to run."""
    asked = max(steps, math.ceil(1 / strength - 1e-9))
    return asked, int(asked * strength) / asked


class Img2ImgViews(StrictModel):
    """`img2img`: views after the first re-noise view 0 to `strength` and denoise it (SDEdit)."""

    # At least 0.01: below it the view is its source, and the 1/strength steps the sampler
    # would ask for pass what schedulers allow (1,000 training steps).
    strength: float = Field(0.5, ge=0.01, le=1.0)


class Img2Img(ViewStrategy):
    name = "img2img"
    settings = Img2ImgViews
    needs_own_latents = True
    excludes = {"latent": "img2img derives views from view 0 and cannot combine with latent; "
                          "use seeds or prompt with it"}

    def describe(self, spec) -> str:
        return f"img2img (strength {spec.img2img.strength:g})"

    def change_view(self, spec, recipe_seed, group_id, view, request) -> None:
        if view > 0:
            # Re-noising always uses the view's own seed, or every derived view would be alike.
            request.update(seed=seed_for(recipe_seed, group_id, view), source_view=0,
                           strength=spec.img2img.strength)
