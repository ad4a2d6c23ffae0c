"""Rendered training and held-out pools of world scenes, with disjoint seed ranges.

Every model in :mod:`synthgen.world.train` learns from scenes drawn by
``render_scene_from_seed(seed)``; evaluation uses seeds from a range that no
training run touches, so held-out numbers are on scenes never seen in training.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from synthgen.world.render import render
from synthgen.world.scene import Scene, caption, sample_scene

TRAIN_SEEDS_PER_RUN = 10_000_000
"""Run seed ``s`` trains on scene seeds ``[s * TRAIN_SEEDS_PER_RUN, (s + 1) * TRAIN_SEEDS_PER_RUN)``."""

HELD_OUT_SEED_OFFSET = 1_000_000_000
"""Held-out scenes use seeds from here on; training runs with seed < 100 never reach it."""

RUN_SEEDS = range(HELD_OUT_SEED_OFFSET // TRAIN_SEEDS_PER_RUN)


def check_train_scene_count(count: int, given: str, largest: str) -> None:
    """A UserError unless a run's `count` training scenes fit its seed range: more would draw
    the next run's scenes, and from run seed 99 the held-out ones every evaluation uses.
    `given` names the option and its value, `largest` the largest value allowed."""
    from synthgen.errors import UserError

    if count > TRAIN_SEEDS_PER_RUN:
        raise UserError(f"{given} asks for {count:,} training scenes, more than the "
                        f"{TRAIN_SEEDS_PER_RUN:,} seeds of one run (beyond them lie the next run's "
                        f"scenes, and from seed 99 the held-out ones); give at most {largest}")


def check_run_seed(seed, option: str = "seed") -> None:
    """A UserError unless `seed` is a run seed (0-99): from 100 on a run's training scenes are
    the held-out ones (seed 100 trained on the test split), and below 0 there are none."""
    from synthgen.errors import UserError

    if isinstance(seed, bool) or not isinstance(seed, int) or seed not in RUN_SEEDS:
        raise UserError(f"{option}: {seed!r} is not a run seed; give 0 to {RUN_SEEDS[-1]} (seed 100 "
                        "and above would draw the held-out scenes every evaluation uses)")

# The world's default nuisance rates for the models: ~30% of objects striped so
# "striped" is well represented in captions, a logo on 20% of images.
STRIPED_PROB = 0.3
LOGO_PROB = 0.2


@dataclass(frozen=True)
class ScenePool:
    """``images[i]`` (uint8 HxWx3) is ``render(scenes[i])``; ``seeds[i]`` regenerates it."""

    images: np.ndarray
    scenes: tuple[Scene, ...]
    seeds: np.ndarray

    def __len__(self) -> int:
        return len(self.scenes)


def render_pool(first_seed: int, count: int, resolution: int = 32, two_object_prob: float = 0.0,
                striped_prob: float = STRIPED_PROB, logo_prob: float = LOGO_PROB) -> ScenePool:
    """Render scenes for seeds ``first_seed .. first_seed + count - 1`` (deterministic)."""
    seeds = np.arange(first_seed, first_seed + count, dtype=np.int64)
    scenes = tuple(
        sample_scene(np.random.default_rng(int(seed)), two_object_prob=two_object_prob,
                     striped_prob=striped_prob, logo_prob=logo_prob)
        for seed in seeds
    )
    images = np.stack([render(scene, resolution) for scene in scenes])
    return ScenePool(images=images, scenes=scenes, seeds=seeds)


def train_pool(run_seed: int, count: int, resolution: int = 32, **probs: float) -> ScenePool:
    """The first ``count`` training scenes of run ``run_seed``."""
    return render_pool(run_seed * TRAIN_SEEDS_PER_RUN, count, resolution, **probs)


def held_out_pool(count: int, resolution: int = 32, **probs: float) -> ScenePool:
    """``count`` scenes whose seeds no training run uses."""
    return render_pool(HELD_OUT_SEED_OFFSET, count, resolution, **probs)


def templated_captions(scenes: tuple[Scene, ...], seed: int) -> list[str]:
    """One caption per scene, wording drawn from ``caption``'s templates with a seeded rng."""
    rng = np.random.default_rng(seed)
    return [caption(scene, rng) for scene in scenes]


def images_to_tensor(images: np.ndarray):
    """uint8 (N, H, W, 3) -> float32 torch (N, 3, H, W) in [-1, 1], the range every world model uses."""
    import torch

    # contiguous(): a permuted (channels-last) batch makes CPU convolutions several times slower.
    return torch.from_numpy(images).permute(0, 3, 1, 2).contiguous().float().div(127.5).sub(1.0)
