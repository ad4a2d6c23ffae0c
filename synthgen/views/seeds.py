"""`seeds`: the same prompt, an independent seed per view (StableRep)."""

from __future__ import annotations

from synthgen.views.base import ViewStrategy


class Seeds(ViewStrategy):
    # Every view's request starts with its own seed (`plan_views`): nothing to change.
    name = "seeds"
    decides_noise = True
