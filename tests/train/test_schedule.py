import math

import pytest

from synthgen.train.schedule import warmup_cosine
from synthgen.world.settings import LEARNING_RATE_FLOOR, TrainingOptions


def test_warmup_rises_linearly_to_the_peak():
    assert [warmup_cosine(step, 100, 1.0, 4) for step in range(4)] == [0.25, 0.5, 0.75, 1.0]


@pytest.mark.parametrize("floor", [0.0, 0.05])
def test_cosine_decays_from_the_peak_to_the_floor_and_stays_there(floor):
    assert warmup_cosine(10, 110, 2.0, 10, floor) == pytest.approx(2.0)
    assert warmup_cosine(60, 110, 2.0, 10, floor) == pytest.approx(2.0 * (floor + (1 - floor) * 0.5))
    assert warmup_cosine(110, 110, 2.0, 10, floor) == pytest.approx(2.0 * floor)
    assert warmup_cosine(500, 110, 2.0, 10, floor) == pytest.approx(2.0 * floor)


def test_world_settings_follow_the_schedule_with_the_world_floor():
    settings = TrainingOptions(steps=50, batch_size=1, learning_rate=1e-3, warmup_steps=5)
    rates = [settings.learning_rate_at(step) for step in range(50)]
    assert max(rates) == pytest.approx(1e-3)
    assert rates[-1] > LEARNING_RATE_FLOOR * 1e-3
    assert settings.learning_rate_at(50) == pytest.approx(LEARNING_RATE_FLOOR * 1e-3)
    assert all(math.isfinite(rate) for rate in rates)
