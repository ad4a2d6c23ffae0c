"""Write labelled real renders of the world as synthgen WebDataset shards.

``write_real_dataset(out_dir, train=N, test=M)`` renders single-object
scenes (train and test from disjoint seed ranges, the same ones the world
models train and evaluate on) into ``out_dir/train/shard-*.tar`` and
``out_dir/test/shard-*.tar`` via :func:`synthgen.write.write_shard`. Each
sample holds ``view0.png``, ``json`` (labels + canonical caption, canonical
JSON) and ``cls`` (the shape's index in ``SHAPES``).
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
from PIL import Image

from synthgen.errors import UserError
from synthgen.recipe import canonical_json
from synthgen.world.corpus import (HELD_OUT_SEED_OFFSET, LOGO_PROB, STRIPED_PROB, TRAIN_SEEDS_PER_RUN,
                                   check_run_seed, check_train_scene_count)
from synthgen.world.render import render
from synthgen.world.scene import SHAPES, caption, labels, sample_scene

SAMPLES_PER_SHARD = 1000
REAL_MODEL_INFO = {"pipeline": "synthgen.world.render", "device_type": "cpu", "dtype": "uint8"}
"""Stored as the shards' ``model`` field: these images come from the renderer, not a model."""


def _png(image: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="PNG", optimize=False, compress_level=6)
    return buffer.getvalue()


def real_sample(split: str, index: int, seed: int, resolution: int) -> dict:
    """One WebDataset sample for the scene of ``seed``; the key is ``real-{split}-{index:06d}``."""
    scene = sample_scene(np.random.default_rng(seed), two_object_prob=0.0,
                         striped_prob=STRIPED_PROB, logo_prob=LOGO_PROB)
    record = labels(scene) | {"caption": caption(scene), "seed": seed, "split": split,
                              "resolution": resolution}
    return {
        "__key__": f"real-{split}-{index:06d}",
        "view0.png": _png(render(scene, resolution)),
        "json": canonical_json(record),
        "cls": str(SHAPES.index(scene.objects[0].shape)).encode(),
    }


def _rendered_here(tar: Path) -> bool:
    """Whether `tar` is a shard `write_real_dataset` wrote: its stats file names the renderer."""
    import json

    from synthgen.shards import stats_name_of

    try:
        stats = json.loads(tar.with_name(stats_name_of(tar.name)).read_text())
    except (OSError, ValueError):
        return False
    return isinstance(stats, dict) and stats.get("model") == REAL_MODEL_INFO


def write_real_dataset(out_dir: Path, train: int, test: int, resolution: int = 32, run_seed: int = 0) -> dict:
    """Render ``train`` + ``test`` scenes into shards under ``out_dir/{train,test}``; returns counts per split.

    Train scenes use run ``run_seed``'s training seeds, test scenes the
    held-out seeds, so the two splits never share a scene. Deterministic:
    the same arguments give byte-identical shards. Shards already in either
    split's folder are removed before any is written, so an interrupted rerun
    leaves no earlier run's split beside its own.
    """
    from synthgen.outputs import check_output_folder
    from synthgen.shards import MANIFEST, SHARD_FILE
    from synthgen.write import RECIPE_FILE, write_shard

    if resolution not in (32, 64):
        raise ValueError(f"resolution must be 32 or 64, got {resolution}")
    check_run_seed(run_seed)
    check_train_scene_count(train, f"--train {train}", f"{TRAIN_SEEDS_PER_RUN:,}")
    if train == 0 and test == 0:
        raise UserError("--train 0 --test 0: a dataset of no samples; give --train or --test above 0")
    out_dir = Path(out_dir)
    check_output_folder(out_dir, "--out")
    for split in ("train", "test"):
        # The splits hold shards only (no recipe.json or manifest.json): a folder with either
        # is a dataset synthgen generate made, whose shards the rerun below would delete.
        owned = [name for name in (RECIPE_FILE, MANIFEST) if (out_dir / split / name).exists()]
        if owned:
            raise UserError(f"--out {out_dir}: {out_dir / split} holds {owned[0]}, a dataset made by "
                            "synthgen generate, whose shards this would replace; choose another --out")
        # A rerun replaces only shards this command wrote (their stats record the renderer).
        theirs = [path.name for path in sorted((out_dir / split).glob("shard-*.tar"))
                  if SHARD_FILE.match(path.name) and not _rendered_here(path)]
        if theirs:
            raise UserError(f"--out {out_dir}: {out_dir / split} holds {theirs[0]}, a shard synthgen "
                            "world dataset did not write, which this would replace; choose another --out")
    # A rerun into the same folder replaces both splits, and before either is written: shards an
    # earlier, larger run (or another seed or resolution) left would otherwise be read as part of
    # it, and a rerun stopped midway would leave the new train split beside the old test split.
    for split in ("train", "test"):
        split_dir = out_dir / split
        split_dir.mkdir(parents=True, exist_ok=True)
        for stale in split_dir.iterdir():
            if SHARD_FILE.match(stale.name):
                stale.unlink()
    first_seeds = {"train": run_seed * TRAIN_SEEDS_PER_RUN, "test": HELD_OUT_SEED_OFFSET}
    written = {}
    for split, count in (("train", train), ("test", test)):
        split_dir = out_dir / split
        for shard, start in enumerate(range(0, count, SAMPLES_PER_SHARD)):
            samples = [real_sample(split, index, first_seeds[split] + index, resolution)
                       for index in range(start, min(count, start + SAMPLES_PER_SHARD))]
            write_shard(split_dir, shard, samples, REAL_MODEL_INFO)
        written[split] = count
    return written
