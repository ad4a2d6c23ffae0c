"""Loader and trainer faults found in review (2026-12-03), each test failing before its fix: a
group drawn twice into a batch, a one-group shard read twice in the view layout, a resume on
changed data, ImageFolder splits numbering classes apart, corner cases without a class.

Tiny solid-colour datasets (synthgen.data.fixtures), tiny encoders, a few steps on the CPU.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import synthgen.train.losses as losses
import synthgen.train.trainer as trainer_module
from synthgen.data import group_loader
from synthgen.data.fixtures import solid_sample, write_solid_dataset
from synthgen.errors import UserError
from synthgen.train.checkpoint import read_checkpoint
from synthgen.train.encoders import EncoderSpec
from synthgen.train.probe import probe, random_encoder
from synthgen.train.trainer import TrainOptions, train
from synthgen.write import write_shard

TINY = EncoderSpec(arch="resnet", width=4, blocks=(1, 1), resolution=8, projection_dim=8)


def config(data: Path, **overrides) -> TrainOptions:
    settings = dict(data=str(data), method="multipos", views=2, batch_size=4, steps=3, lr=1e-2,
                    resolution=8, encoder=TINY, seed=5, num_workers=0, checkpoint_every=100,
                    log_every=1)
    return TrainOptions(**{**settings, **overrides})


class RecordingLoader:
    """Wraps a GroupLoader and records the group ids of every batch the trainer takes."""

    def __init__(self, loader, seen: list):
        self.loader = loader
        self.batches_per_epoch = loader.batches_per_epoch
        self.seen = seen

    def epoch(self, epoch: int):
        for batch in self.loader.epoch(epoch):
            self.seen.append(list(batch.group_id))
            yield batch


def test_a_group_drawn_twice_into_one_batch_is_trained_once(tmp_path, monkeypatch):
    # Train mode draws shards with replacement, so one batch can hold the same group twice
    # (here it must: 4 groups per batch from 3). Both copies have the same views and, seeded
    # by (seed, epoch, group id), the same crops; the multi-positive loss used to push those
    # identical crops apart as negatives. The trainer keeps one copy of each group.
    write_solid_dataset(tmp_path / "ds", shards=1, groups_per_shard=3, views=2, size=12)
    batches: list[list[str]] = []
    labels_seen: list[list[int]] = []
    real_loader = trainer_module.group_loader
    monkeypatch.setattr(trainer_module, "group_loader",
                        lambda *a, **k: RecordingLoader(real_loader(*a, **k), batches))
    real_multi_positive = losses.multi_positive

    def recording(z, labels, temperature=0.1):
        labels_seen.append(labels.tolist())
        return real_multi_positive(z, labels, temperature)

    monkeypatch.setattr(losses, "multi_positive", recording)
    train(config(tmp_path / "ds", steps=2), tmp_path / "run", device="cpu", quiet=True)

    assert len(batches) == len(labels_seen) == 2
    assert any(len(set(ids)) < len(ids) for ids in batches), "no batch held a group twice"
    for group_ids, labels in zip(batches, labels_seen):
        distinct = list(dict.fromkeys(group_ids))
        crops = len(labels) // len(distinct)
        assert len(labels) == crops * len(distinct) and crops == 2
        assert labels == [k for k in range(len(distinct)) for _ in range(crops)]


def test_view_layout_gives_the_same_batches_as_group_layout_with_one_group_shards(tmp_path):
    # A shard of one group (e.g. a dataset's last shard) drawn twice in a row by the resampler:
    # in the view layout both reads' views are consecutive samples with one group id, and the
    # reader merges them into one group with its views listed twice, so a group is lost from
    # the batch stream and every later batch shifts.
    for layout in ("group", "view"):
        (tmp_path / layout).mkdir()
        for shard in range(3):
            write_shard(tmp_path / layout, shard, [solid_sample(shard, shard % 4, views=2)], {},
                        layout=layout)

    def stream(layout):
        loader = group_loader(tmp_path / layout, views=2, batch_size=2, resolution=8,
                              augment="none", seed=0, epoch_groups=12)
        out = []
        for epoch in range(2):
            for batch in loader.epoch(epoch):
                out += [(g, tuple(v), len(m["views"])) for g, v, m in
                        zip(batch.group_id, batch.view_index.tolist(), batch.metadata)]
        return out

    group_stream, view_stream = stream("group"), stream("view")
    assert all(count == 2 for _, _, count in view_stream), "a group lists more views than it has"
    assert view_stream == group_stream


def test_resume_on_a_dataset_that_changed_is_refused_or_continues_the_same_run(tmp_path):
    # A dataset directory without manifest.json is read as the shards that have a stats file,
    # so a generation still running adds shards between a training run and its resume. The
    # checkpoint records batches_per_epoch, but resume never compares it: the resumed run
    # silently reads another epoch length and shard pool. It should refuse (UserError) or
    # continue exactly the run it checkpointed.
    data = tmp_path / "ds"
    write_solid_dataset(data, shards=2, groups_per_shard=6, views=2, size=12, manifest=False)
    settings = config(data, steps=5, batch_size=4)
    whole = train(settings, tmp_path / "whole", device="cpu", quiet=True)
    train(settings, tmp_path / "parts", device="cpu", stop_after=2, quiet=True)
    # Another finished shard appears (groups 12..17).
    samples = [solid_sample(g, g % 4, views=2, size=12) for g in range(12, 18)]
    write_shard(data, 2, samples, {})
    try:
        parts = train(settings, tmp_path / "parts", device="cpu", quiet=True)
    except UserError:
        return  # refusing to resume on other data is a correct answer
    a, _ = read_checkpoint(whole.checkpoint)
    b, _ = read_checkpoint(parts.checkpoint)
    differing = [key for key in a if not torch.equal(a[key], b[key])]
    assert not differing, f"resumed run is not the checkpointed run: {differing[:3]}"


def _image_folder(root: Path, classes: dict[str, tuple[int, int, int]], per_class: int = 3):
    for name, colour in classes.items():
        (root / name).mkdir(parents=True)
        for i in range(per_class):
            pixels = np.full((12, 12, 3), colour, np.uint8)
            pixels[0, 0] = (i * 7, i * 7, i * 7)  # not all identical
            Image.fromarray(pixels).save(root / name / f"{i}.png")


def test_probe_on_image_folders_keeps_class_indices_across_splits(tmp_path):
    # ImageFolder indexes classes per tree, so a test split lacking one class ("dog") gives
    # "fox" index 1 in test but 2 in train: the probe scores against the wrong labels.
    colours = {"cat": (255, 0, 0), "dog": (0, 255, 0), "fox": (0, 0, 255)}
    _image_folder(tmp_path / "train", colours)
    _image_folder(tmp_path / "test", {k: v for k, v in colours.items() if k != "dog"})
    spec = EncoderSpec(width=4, blocks=(1,), resolution=8)
    result = probe(random_encoder(spec, seed=0), tmp_path / "train", tmp_path / "test",
                   resolution=8)
    assert result.train_top1 == 1.0  # solid colours: separable even for a random encoder
    assert result.test_top1 == 1.0


def _with_unlabelled(directory: Path, groups: int, unlabelled: set[int]) -> None:
    """One shard of 1-view solid groups (class g mod 3); groups in `unlabelled` are corner
    cases without a class (-1 in json and cls, as synthgen writes them)."""
    directory.mkdir(parents=True)
    samples = []
    for g in range(groups):
        sample = solid_sample(g, g % 3, views=1)
        if g in unlabelled:
            metadata = json.loads(sample["json"])
            metadata.update(class_index=-1, class_name="", corner_case="odd")
            sample["json"] = json.dumps(metadata, sort_keys=True).encode()
            sample["cls"] = b"-1"
        samples.append(sample)
    write_shard(directory, 0, samples, {})


@pytest.mark.parametrize("split", ["train", "test"])
def test_probe_on_shards_with_unlabelled_corner_cases(tmp_path, split):
    # Groups without a class (class_index -1) are not a class: in train they crash
    # cross_entropy (IndexError: target -1 out of bounds); in test they count as errors,
    # lowering top-1 without a word. They should be left out (or refused with a UserError).
    for name in ("train", "test"):
        _with_unlabelled(tmp_path / name, 12, {1, 5} if name == split else set())
    spec = EncoderSpec(width=4, blocks=(1,), resolution=8)
    try:
        result = probe(random_encoder(spec, seed=0), tmp_path / "train", tmp_path / "test",
                       resolution=8)
    except UserError:
        return
    assert result.test_top1 == 1.0
