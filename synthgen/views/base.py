"""What a view strategy is: one module per strategy implements a `ViewStrategy` and
synthgen/views/__init__.py registers it."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, ClassVar

from synthgen.recipe_base import StrictModel

if TYPE_CHECKING:
    from synthgen.views import ViewsSpec


class ViewStrategy:
    """One way a group's views differ.

    `settings` is the model of its recipe block `views.<name>` (None: it has none); with
    `missing_block` set, choosing the strategy without the block is a mistake (that message),
    else the block defaults to `settings()`. A strategy that `decides_noise` picks each view's
    starting noise (at most one such strategy per recipe); `excludes` names the strategies it
    cannot combine with, each with the message that says why. One that `needs_own_latents`
    runs only on a pipeline whose starting latents synthgen draws (`Sampler.draws_own_latents`).
    """

    name: ClassVar[str]
    settings: ClassVar[type[StrictModel] | None] = None
    missing_block: ClassVar[str | None] = None
    decides_noise: ClassVar[bool] = False
    excludes: ClassVar[dict[str, str]] = {}
    needs_own_latents: ClassVar[bool] = False

    def describe(self, spec: ViewsSpec) -> str:
        """Its part of the plan's views line, e.g. 'latent (sigma 0.5, view 0 = anchor)'."""
        return self.name

    def change_view(self, spec: ViewsSpec, recipe_seed: int, group_id: str, view: int,
                    request: dict[str, Any]) -> None:
        """Change one view's request in place (the `ViewPlan` fields: `seed`, `prompt`,
        `anchor_seed`, ...). Strategies run in registry order, so one that varies the
        prompt sees what the earlier ones made of it."""
