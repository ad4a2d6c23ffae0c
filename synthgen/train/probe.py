"""Linear probe: frozen encoder features -> a linear classifier -> top-1 on a held-out split.

Features are the encoder's output (before the projection head), extracted once with the
encoder in eval mode (BatchNorm running statistics) and no augmentation. They are standardised
with the mean and standard deviation of the *train* split only, then a multinomial logistic
regression (L2 `weight_decay`) is fitted full-batch with L-BFGS. Deterministic on the CPU.
The random-init floor is the same procedure on a freshly initialised encoder of the same spec.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from synthgen.data import image_folder_classes, load_labelled
from synthgen.errors import UserError
from synthgen.train.checkpoint import LAST, damaged, model_state, read_checkpoint
from synthgen.train.encoders import EncoderSpec, build_encoder


@dataclass(frozen=True)
class ProbeResult:
    """Top-1 accuracies in [0, 1] of the linear classifier on the train and test splits."""

    test_top1: float
    train_top1: float
    train_samples: int
    test_samples: int
    classes: int
    unlabelled_left_out: int = 0   # samples without a class (corner cases, class -1), both splits


def load_encoder(checkpoint: Path) -> tuple[nn.Module, EncoderSpec]:
    """The encoder of a training checkpoint (a file, or a training --out directory)."""
    path = Path(checkpoint)
    if path.is_dir():
        path = path / LAST
    if not path.is_file():
        raise UserError(f"--checkpoint {checkpoint}: no checkpoint there; pass a "
                        f"{LAST} file or the --out directory of synthgen train")
    tensors, record = read_checkpoint(path)
    try:
        spec = EncoderSpec.from_json(record["config"]["encoder"])
        encoder = build_encoder(spec)
        encoder.load_state_dict(model_state(tensors, "model.encoder."))
    except (KeyError, ValueError, TypeError, RuntimeError, AssertionError) as error:
        # The record's encoder spec does not build the encoder its tensors hold.
        raise damaged(path, error) from None
    return encoder, spec


def random_encoder(spec: EncoderSpec, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return build_encoder(spec)


@torch.no_grad()
def extract_features(encoder: nn.Module, images: torch.Tensor, batch_size: int = 256,
                     device: str = "cpu") -> torch.Tensor:
    """images (N, 3, H, W) in [0, 1] -> features float32 (N, feature_dim), encoder in eval mode."""
    encoder = encoder.to(device).eval()
    return torch.cat([encoder(images[start:start + batch_size].to(device)).float().cpu()
                      for start in range(0, len(images), batch_size)])


def fit_linear_probe(train_x: torch.Tensor, train_y: torch.Tensor, test_x: torch.Tensor,
                     test_y: torch.Tensor, weight_decay: float = 1e-4,
                     max_iterations: int = 500) -> ProbeResult:
    """Standardise with train statistics, fit logistic regression by L-BFGS, report top-1."""
    mean = train_x.mean(0)
    std = train_x.std(0).clamp_min(1e-6)  # constant features (dead units) stay 0, not NaN
    train_x, test_x = (train_x - mean) / std, (test_x - mean) / std
    classes = int(max(train_y.max(), test_y.max())) + 1
    classifier = nn.Linear(train_x.shape[1], classes)
    nn.init.zeros_(classifier.weight)
    nn.init.zeros_(classifier.bias)
    optimizer = torch.optim.LBFGS(classifier.parameters(), lr=1.0, max_iter=max_iterations,
                                  history_size=20, line_search_fn="strong_wolfe",
                                  tolerance_grad=1e-6, tolerance_change=1e-9)

    def objective() -> torch.Tensor:
        optimizer.zero_grad()
        loss = F.cross_entropy(classifier(train_x), train_y) \
            + weight_decay * classifier.weight.pow(2).sum()
        loss.backward()
        return loss

    optimizer.step(objective)
    with torch.no_grad():
        train_top1 = (classifier(train_x).argmax(1) == train_y).float().mean().item()
        test_top1 = (classifier(test_x).argmax(1) == test_y).float().mean().item()
    return ProbeResult(test_top1, train_top1, len(train_y), len(test_y), classes)


def probe(encoder: nn.Module, train_data, test_data, resolution: int, device: str = "cpu",
          weight_decay: float = 1e-4, num_workers: int = 0) -> ProbeResult:
    """Linear-probe `encoder` on labelled `train_data`, report on `test_data` (shards, split
    directories or ImageFolder trees; one image per sample, resized to `resolution`)."""
    classes = image_folder_classes(train_data)
    if (classes is None) != (image_folder_classes(test_data) is None) and not (
            isinstance(train_data, (list, tuple)) or isinstance(test_data, (list, tuple))):
        # Shards label by the recipe's class order, a folder tree by its sorted folder names:
        # the same images got other numbers, and the top-1 meant nothing.
        raise UserError(f"--train {train_data} and --test {test_data}: one is shards, the other an "
                        "ImageFolder tree, which number their classes differently; give both as "
                        "shards or both as folder trees")
    train_images, train_labels = load_labelled(train_data, resolution, num_workers=num_workers,
                                               classes=classes)
    test_images, test_labels = load_labelled(test_data, resolution, num_workers=num_workers,
                                             classes=classes)
    # Groups without a class (corner cases written with class -1) are no class to score.
    labelled = {"train": train_labels >= 0, "test": test_labels >= 0}
    left_out = int(sum((~kept).sum() for kept in labelled.values()))
    for split, kept in labelled.items():
        if not kept.any():
            raise UserError(f"{split} data {train_data if split == 'train' else test_data}: no "
                            "sample has a class (all are corner cases without one); probe on "
                            "labelled data")
    if int(labelled["train"].sum()) < 2:
        raise UserError(f"train data {train_data}: {int(labelled['train'].sum())} labelled sample; "
                        "a linear probe needs 2 or more to fit")
    train_x = extract_features(encoder, train_images[labelled["train"]], device=device)
    test_x = extract_features(encoder, test_images[labelled["test"]], device=device)
    result = fit_linear_probe(train_x, train_labels[labelled["train"]], test_x,
                              test_labels[labelled["test"]], weight_decay)
    return replace(result, unlabelled_left_out=left_out)
