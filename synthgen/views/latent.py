"""`latent`: a neighbourhood of the group's anchor noise of scale sigma (GenRep's latent views)."""

from __future__ import annotations

from pydantic import Field

from synthgen.recipe_base import StrictModel
from synthgen.seeding import derive_seed
from synthgen.views.base import ViewStrategy


class LatentViews(StrictModel):
    """`latent`: views start from the group's anchor noise plus a perturbation of scale sigma.

    Mixing is variance preserving, (anchor + sigma * own) / sqrt(1 + sigma^2), so every view's
    noise stays a unit Gaussian, as the sampler expects. sigma 0 gives identical views.
    """

    sigma: float = Field(0.5, ge=0.0, le=100.0)
    anchor_view: bool = True  # view 0 is the unperturbed anchor


class Latent(ViewStrategy):
    name = "latent"
    settings = LatentViews
    decides_noise = True
    needs_own_latents = True

    def describe(self, spec) -> str:
        anchor = ", view 0 = anchor" if spec.latent.anchor_view else ""
        return f"latent (sigma {spec.latent.sigma:g}{anchor})"

    def change_view(self, spec, recipe_seed, group_id, view, request) -> None:
        at_anchor = spec.latent.anchor_view and view == 0
        request.update(anchor_seed=derive_seed("anchor", recipe_seed, group_id),
                       sigma=0.0 if at_anchor else spec.latent.sigma)
