"""The probe separates what is separable, uses train statistics only, and reads checkpoints."""

from __future__ import annotations

import pytest
import torch

from synthgen.data.fixtures import write_solid_dataset
from synthgen.errors import UserError
from synthgen.train.encoders import EncoderSpec
from synthgen.train.probe import fit_linear_probe, load_encoder, probe, random_encoder


def separable(n: int, seed: int, shift: float = 0.0):
    """3 classes at well-separated means in 10-D, plus a large constant offset and a dead unit."""
    generator = torch.Generator().manual_seed(seed)
    labels = torch.arange(n) % 3
    means = torch.eye(3, 10) * 6
    features = means[labels] + torch.randn(n, 10, generator=generator) + 1000 + shift
    features[:, 9] = 5.0  # a constant feature: its std is 0
    return features, labels


def test_linearly_separable_features_reach_full_accuracy():
    train_x, train_y = separable(90, 0)
    test_x, test_y = separable(60, 1)
    result = fit_linear_probe(train_x, train_y, test_x, test_y)
    assert result.train_top1 == 1.0 and result.test_top1 >= 0.98
    assert result.classes == 3


def test_standardisation_uses_train_statistics_only():
    # The test split shifted far away: with train statistics the classifier is wrong on it;
    # fitting the statistics on test would hide the shift and score ~100%.
    train_x, train_y = separable(90, 0)
    test_x, test_y = separable(60, 1, shift=50.0)
    assert fit_linear_probe(train_x, train_y, test_x, test_y).test_top1 < 0.7


def test_probe_end_to_end_on_shards_and_checkpoints(tmp_path):
    for split in ("train", "test"):
        write_solid_dataset(tmp_path / split, shards=1, groups_per_shard=12, views=1, classes=3,
                            manifest=False)
    spec = EncoderSpec(width=4, blocks=(1,), resolution=8)
    result = probe(random_encoder(spec, seed=0), tmp_path / "train", tmp_path / "test", resolution=8)
    assert result.train_samples == result.test_samples == 12
    # Solid colours encode the class in green: even a random encoder separates them.
    assert result.test_top1 == 1.0
    with pytest.raises(UserError, match="--checkpoint .*no checkpoint there"):
        load_encoder(tmp_path / "train")
