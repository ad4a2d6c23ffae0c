"""What every embedded-world training run is configured by: one base for the five model runs."""

from __future__ import annotations

from dataclasses import dataclass

from synthgen.train.schedule import warmup_cosine

# Every world run decays to 5% of its peak rate, not to 0: the last steps still move the weights
# (the shipped models were trained this way; their figures in docs/WORLD.md depend on it).
LEARNING_RATE_FLOOR = 0.05


@dataclass(frozen=True)
class TrainingOptions:
    """Steps, batch and the warm-up-then-cosine schedule; each model's settings add their own."""

    steps: int
    batch_size: int
    learning_rate: float
    warmup_steps: int

    def learning_rate_at(self, step: int) -> float:
        return warmup_cosine(step, self.steps, self.learning_rate, self.warmup_steps,
                             floor=LEARNING_RATE_FLOOR)
