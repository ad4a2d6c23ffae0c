"""Training runs end to end, and resuming from a checkpoint equals never stopping."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from synthgen.data.fixtures import write_solid_dataset
from synthgen.errors import UserError
from synthgen.train.checkpoint import LAST, read_checkpoint
from synthgen.train.encoders import EncoderSpec
from synthgen.train.trainer import TrainOptions, train

TINY = EncoderSpec(arch="resnet", width=4, blocks=(1, 1), resolution=8, projection_dim=8)


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    directory = tmp_path_factory.mktemp("train-data")
    write_solid_dataset(directory, shards=2, groups_per_shard=6, views=3, size=12)
    return directory


def config(data: Path, **overrides) -> TrainOptions:
    settings = dict(data=str(data), method="multipos", views=3, batch_size=4, steps=7, lr=1e-2,
                    resolution=8, encoder=TINY, seed=5, num_workers=0, checkpoint_every=2,
                    log_every=1)
    return TrainOptions(**{**settings, **overrides})


def logged_losses(out_dir: Path) -> list[float]:
    return [json.loads(line)["loss"] for line in (out_dir / "log.jsonl").read_text().splitlines()]


@pytest.mark.parametrize("method,views,crops", [("multipos", 3, 1), ("simclr", 1, 2), ("supcon", 2, 1)])
def test_resume_gives_the_same_weights_as_an_uninterrupted_run(data, tmp_path, method, views, crops):
    settings = config(data, method=method, views=views, crops_per_view=crops)
    whole = train(settings, tmp_path / "whole", device="cpu", quiet=True)
    # Stopped after 4 steps (mid-epoch: 3 batches per epoch), then resumed to the end.
    train(settings, tmp_path / "parts", device="cpu", stop_after=4, quiet=True)
    assert read_checkpoint(tmp_path / "parts" / LAST)[1]["step"] == 4
    parts = train(settings, tmp_path / "parts", device="cpu", quiet=True)
    assert whole.steps == parts.steps == 7
    a, _ = read_checkpoint(whole.checkpoint)
    b, record = read_checkpoint(parts.checkpoint)
    assert a.keys() == b.keys() and any(k.startswith("optimizer.") for k in a)
    for key in a:
        assert torch.equal(a[key], b[key]), key
    assert logged_losses(tmp_path / "whole") == logged_losses(tmp_path / "parts")
    assert record["config"]["method"] == method


def test_training_lowers_the_loss(data, tmp_path):
    result = train(config(data, steps=12, lr=3e-2, checkpoint_every=100), tmp_path / "run", device="cpu",
                   quiet=True)
    losses = logged_losses(tmp_path / "run")
    assert sum(losses[-5:]) / 5 < sum(losses[:5]) / 5
    assert result.final_loss == losses[-1]


def test_config_mistakes_are_user_errors(data, tmp_path):
    with pytest.raises(UserError, match="simclr needs exactly 2 crops"):
        train(config(data, method="simclr", views=3), tmp_path / "a", device="cpu", quiet=True)
    with pytest.raises(UserError, match="method: unknown method 'byol'"):
        train(config(data, method="byol"), tmp_path / "b", device="cpu", quiet=True)
    train(config(data, steps=1), tmp_path / "c", device="cpu", quiet=True)
    with pytest.raises(UserError, match=r"another training config \(lr 0.01 in the checkpoint, 0.5 now \(--lr\)\)"):
        train(config(data, steps=1, lr=0.5), tmp_path / "c", device="cpu", quiet=True)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("method,views,crops", [("multipos", 3, 1), ("simclr", 1, 2)])
def test_mixed_precision_on_a_gpu_trains_and_resumes_exactly(data, tmp_path, method, views, crops):
    # bfloat16 autocast where the GPU has it (float16 with a gradient scaler otherwise).
    settings = config(data, method=method, views=views, crops_per_view=crops, steps=6)
    whole = train(settings, tmp_path / "whole", device="cuda", quiet=True)
    train(settings, tmp_path / "parts", device="cuda", stop_after=3, quiet=True)
    parts = train(settings, tmp_path / "parts", device="cuda", quiet=True)
    losses = logged_losses(tmp_path / "whole")
    assert all(loss == loss for loss in losses), "no NaN under autocast"
    # GPU kernels need not be bitwise deterministic, so resume is checked to rounding.
    assert logged_losses(tmp_path / "parts") == pytest.approx(losses, rel=1e-3)
    a, _ = read_checkpoint(whole.checkpoint)
    b, _ = read_checkpoint(parts.checkpoint)
    for key in a:
        assert torch.allclose(a[key].float(), b[key].float(), rtol=1e-3, atol=1e-4), key
