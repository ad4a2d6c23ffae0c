"""The learning-rate schedule every trainer in synthgen uses: one definition."""

from __future__ import annotations

import math


def warmup_cosine(step: int, steps: int, peak: float, warmup: int, floor: float = 0.0) -> float:
    """Linear warm-up to `peak` over `warmup` steps, then cosine decay to `floor * peak` at `steps`.

    `step` counts from 0; steps past `steps` stay at the floor.
    """
    if step < warmup:
        return peak * (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, steps - warmup))
    return peak * (floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * progress)))
