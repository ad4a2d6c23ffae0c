"""Encoders for 32-64 px images and the projection head used during pretraining.

Every encoder takes float images (B, 3, H, W) in [0, 1] (what `synthgen.data` yields),
normalises them itself, and returns features (B, feature_dim); the probe reads these.
An `EncoderSpec` (plain JSON) is enough to rebuild an encoder, so checkpoints need no pickle.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
from torch import nn

from synthgen.errors import UserError

ARCHITECTURES = ("resnet", "vit")


@dataclass(frozen=True)
class EncoderSpec:
    """resnet: `width` channels in the first stage, doubling per stage, `blocks` basic blocks
    per stage ((2, 2, 2, 2) is the ResNet-18 layout). vit: `width` is the token dimension,
    `depth` layers of `heads` heads over `patch` x `patch` patches of a `resolution` image."""

    arch: str = "resnet"
    width: int = 32
    blocks: tuple[int, ...] = (2, 2, 2, 2)
    resolution: int = 32
    patch: int = 4
    depth: int = 4
    heads: int = 4
    projection_dim: int = 128

    def to_json(self) -> dict:
        return {**asdict(self), "blocks": list(self.blocks)}

    @classmethod
    def from_json(cls, record: dict) -> EncoderSpec:
        return cls(**{**record, "blocks": tuple(record.get("blocks", (2, 2, 2, 2)))})


class InputNormalisation(nn.Module):
    """[0, 1] pixels -> roughly zero mean, unit variance (fixed, not learned)."""

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return (images - 0.5) / 0.25


class BasicBlock(nn.Module):
    def __init__(self, channels_in: int, channels_out: int, stride: int):
        super().__init__()
        self.conv1 = nn.Conv2d(channels_in, channels_out, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(channels_out)
        self.conv2 = nn.Conv2d(channels_out, channels_out, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(channels_out)
        self.shortcut = nn.Identity()
        if stride != 1 or channels_in != channels_out:
            self.shortcut = nn.Sequential(nn.Conv2d(channels_in, channels_out, 1, stride, bias=False),
                                          nn.BatchNorm2d(channels_out))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.relu(self.bn1(self.conv1(x)))
        return torch.relu(self.bn2(self.conv2(out)) + self.shortcut(x))


class SmallResNet(nn.Module):
    """CIFAR-style ResNet: 3x3 stride-1 stem and no max-pool (a 7x7/2 stem and pool would
    leave 8x8 maps of a 32 px image before the first block); features = 8 x width (4 stages)."""

    def __init__(self, width: int = 32, blocks: tuple[int, ...] = (2, 2, 2, 2)):
        super().__init__()
        self.normalise = InputNormalisation()
        self.stem = nn.Sequential(nn.Conv2d(3, width, 3, 1, 1, bias=False), nn.BatchNorm2d(width),
                                  nn.ReLU(inplace=True))
        stages, channels = [], width
        for stage, count in enumerate(blocks):
            out = width * 2 ** stage
            for block in range(count):
                stages.append(BasicBlock(channels, out, stride=2 if stage > 0 and block == 0 else 1))
                channels = out
        self.stages = nn.Sequential(*stages)
        self.feature_dim = channels

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = self.stages(self.stem(self.normalise(images)))
        return x.mean(dim=(2, 3))


class TinyViT(nn.Module):
    """ViT with a class token and learned position embeddings for a fixed `resolution`."""

    def __init__(self, resolution: int = 32, patch: int = 4, width: int = 128, depth: int = 4,
                 heads: int = 4):
        super().__init__()
        if resolution % patch:
            raise UserError(f"patch: {patch} does not divide resolution {resolution}; pick a "
                            "divisor, e.g. 4")
        self.normalise = InputNormalisation()
        self.patches = nn.Conv2d(3, width, patch, patch)
        tokens = (resolution // patch) ** 2
        self.class_token = nn.Parameter(torch.zeros(1, 1, width))
        self.position = nn.Parameter(torch.randn(1, tokens + 1, width) * 0.02)
        layer = nn.TransformerEncoderLayer(width, heads, 2 * width, dropout=0.0, batch_first=True,
                                           norm_first=True, activation="gelu")
        self.blocks = nn.TransformerEncoder(layer, depth, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(width)
        self.feature_dim = width

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = self.patches(self.normalise(images)).flatten(2).transpose(1, 2)
        x = torch.cat([self.class_token.expand(len(x), -1, -1), x], dim=1) + self.position
        return self.norm(self.blocks(x)[:, 0])


class ProjectionHead(nn.Module):
    """SimCLR's MLP head: Linear - BN - ReLU - Linear; discarded after pretraining."""

    def __init__(self, feature_dim: int, output_dim: int = 128):
        super().__init__()
        self.mlp = nn.Sequential(nn.Linear(feature_dim, feature_dim, bias=False),
                                 nn.BatchNorm1d(feature_dim), nn.ReLU(inplace=True),
                                 nn.Linear(feature_dim, output_dim))

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.mlp(features)


class ContrastiveModel(nn.Module):
    """encoder + projection head: images (N, 3, H, W) -> embeddings (N, projection_dim)."""

    def __init__(self, spec: EncoderSpec):
        super().__init__()
        self.spec = spec
        self.encoder = build_encoder(spec)
        self.head = ProjectionHead(self.encoder.feature_dim, spec.projection_dim)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.head(self.encoder(images))


def build_encoder(spec: EncoderSpec) -> nn.Module:
    if spec.arch == "resnet":
        return SmallResNet(spec.width, spec.blocks)
    if spec.arch == "vit":
        return TinyViT(spec.resolution, spec.patch, spec.width, spec.depth, spec.heads)
    raise UserError(f"arch: unknown encoder {spec.arch!r}; use one of {', '.join(ARCHITECTURES)}")
