"""The world oracle: a small supervised CNN that reads a 32x32 render's attributes.

It predicts shape, colour, size and striped (classification) and the object's
centre x, y (regression, fractions of the image side) of single-object
scenes. It judges generated images in :mod:`synthgen.world.evaluate`:
the oracle is trained on real renders only, so it measures how world-like
the generator's pictures are.

Saved as ``model.safetensors`` + ``config.json``; :func:`load_oracle` reads it back.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from synthgen.world.corpus import ScenePool, images_to_tensor
from synthgen.world.scene import COLOURS, SHAPES, SIZES
from synthgen.world.settings import TrainingOptions

COLOUR_NAMES: tuple[str, ...] = tuple(COLOURS)


class WorldOracle(nn.Module):
    """Conv net 32x32x3 -> logits for shape (11), colour (10), size (3), striped (1), and (x, y).

    Input pixels are in [-1, 1]. Spatial features are flattened (not pooled)
    before the heads so the position regression keeps where things are.
    """

    def __init__(self, width: int = 16):
        super().__init__()

        def block(inputs: int, outputs: int) -> nn.Sequential:
            return nn.Sequential(
                nn.Conv2d(inputs, outputs, 3, padding=1), nn.BatchNorm2d(outputs), nn.ReLU(),
                nn.Conv2d(outputs, outputs, 3, padding=1), nn.BatchNorm2d(outputs), nn.ReLU(),
                nn.MaxPool2d(2),
            )

        self.width = width
        self.features = nn.Sequential(block(3, width), block(width, 2 * width), block(2 * width, 4 * width))
        self.trunk = nn.Sequential(nn.Flatten(), nn.Linear(4 * width * 4 * 4, 256), nn.ReLU())
        self.shape_head = nn.Linear(256, len(SHAPES))
        self.colour_head = nn.Linear(256, len(COLOURS))
        self.size_head = nn.Linear(256, len(SIZES))
        self.striped_head = nn.Linear(256, 1)
        self.position_head = nn.Linear(256, 2)

    def forward(self, pixels: torch.Tensor) -> dict[str, torch.Tensor]:
        hidden = self.trunk(self.features(pixels))
        return {"shape": self.shape_head(hidden), "colour": self.colour_head(hidden),
                "size": self.size_head(hidden), "striped": self.striped_head(hidden).squeeze(-1),
                "position": self.position_head(hidden)}

    @torch.no_grad()
    def read(self, images: np.ndarray | torch.Tensor, batch_size: int = 512) -> list[dict]:
        """Attributes of each image: uint8 (N, 32, 32, 3) numpy, or float (N, 3, 32, 32) in [-1, 1].

        Returns one dict per image with shape, colour, size (names), striped
        (bool), x, y (floats in [0, 1]).
        """
        self.eval()
        pixels = images_to_tensor(images) if isinstance(images, np.ndarray) else images
        device = next(self.parameters()).device
        results = []
        for start in range(0, len(pixels), batch_size):
            outputs = self(pixels[start:start + batch_size].to(device))
            for i in range(len(outputs["shape"])):
                results.append({
                    "shape": SHAPES[int(outputs["shape"][i].argmax())],
                    "colour": COLOUR_NAMES[int(outputs["colour"][i].argmax())],
                    "size": SIZES[int(outputs["size"][i].argmax())],
                    "striped": bool(outputs["striped"][i] > 0),
                    "x": float(outputs["position"][i, 0]), "y": float(outputs["position"][i, 1]),
                })
        return results


def scene_targets(pool: ScenePool) -> dict[str, torch.Tensor]:
    """Supervised targets of a single-object pool, aligned with ``pool.images``."""
    objects = [scene.objects[0] for scene in pool.scenes]
    return {
        "shape": torch.tensor([SHAPES.index(o.shape) for o in objects]),
        "colour": torch.tensor([COLOUR_NAMES.index(o.colour) for o in objects]),
        "size": torch.tensor([SIZES.index(o.size) for o in objects]),
        "striped": torch.tensor([float(o.striped) for o in objects]),
        "position": torch.tensor([(o.x, o.y) for o in objects], dtype=torch.float32),
    }


@dataclass(frozen=True)
class OracleTrainingOptions(TrainingOptions):
    steps: int = 4000
    batch_size: int = 128
    learning_rate: float = 2e-3
    warmup_steps: int = 50
    pixel_noise_std: float = 0.04


def _augment(pixels: torch.Tensor, generator: torch.Generator, noise_std: float) -> torch.Tensor:
    """Pixel noise and, on half the batch, a light blur: generated images are softer than renders."""
    blurred = F.avg_pool2d(F.pad(pixels, (1, 1, 1, 1), mode="replicate"), 3, stride=1)
    mix = (torch.rand(len(pixels), 1, 1, 1, generator=generator) < 0.5).float() * 0.5
    softened = (1 - mix) * pixels + mix * blurred
    return softened + noise_std * torch.randn(pixels.shape, generator=generator)


def train_world_oracle(pool: ScenePool, settings: OracleTrainingOptions, device: torch.device, seed: int,
                       log=print):
    """Train the oracle on a single-object pool; returns (oracle, stats)."""
    torch.manual_seed(seed)
    oracle = WorldOracle().to(device)
    oracle.train()
    optimizer = torch.optim.AdamW(oracle.parameters(), lr=settings.learning_rate, weight_decay=1e-4)
    images = images_to_tensor(pool.images)
    targets = scene_targets(pool)
    generator = torch.Generator().manual_seed(seed)
    started = time.time()
    for step in range(settings.steps):
        # 1. Batch with augmentation (applied on the CPU, from a seeded generator).
        indices = torch.randint(0, len(pool), (settings.batch_size,), generator=generator)
        pixels = _augment(images[indices], generator, settings.pixel_noise_std).to(device)
        batch_targets = {name: values[indices].to(device) for name, values in targets.items()}
        # 2. One loss per head; position error is in image fractions, scaled to matter as much.
        outputs = oracle(pixels)
        loss = (F.cross_entropy(outputs["shape"], batch_targets["shape"])
                + F.cross_entropy(outputs["colour"], batch_targets["colour"])
                + F.cross_entropy(outputs["size"], batch_targets["size"])
                + F.binary_cross_entropy_with_logits(outputs["striped"], batch_targets["striped"])
                + 100 * F.mse_loss(outputs["position"], batch_targets["position"]))
        # 3. Update.
        for group in optimizer.param_groups:
            group["lr"] = settings.learning_rate_at(step)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if step % 100 == 0 or step == settings.steps - 1:
            log(f"oracle step {step}/{settings.steps} loss {loss.item():.4f} ({time.time() - started:.0f}s)")
    oracle.eval()
    stats = {"steps": settings.steps, "batch_size": settings.batch_size, "train_scenes": len(pool),
             "final_loss": round(loss.item(), 4), "wall_seconds": round(time.time() - started, 1),
             "settings": asdict(settings)}
    return oracle, stats


def oracle_accuracy(oracle: WorldOracle, pool: ScenePool) -> dict:
    """Held-out accuracy per attribute and mean absolute position error (fraction of the side)."""
    readings = oracle.read(pool.images)
    objects = [scene.objects[0] for scene in pool.scenes]
    count = len(objects)
    return {
        "shape_accuracy": sum(r["shape"] == o.shape for r, o in zip(readings, objects)) / count,
        "colour_accuracy": sum(r["colour"] == o.colour for r, o in zip(readings, objects)) / count,
        "size_accuracy": sum(r["size"] == o.size for r, o in zip(readings, objects)) / count,
        "striped_accuracy": sum(r["striped"] == o.striped for r, o in zip(readings, objects)) / count,
        "position_mean_abs_error": float(np.mean([abs(r["x"] - o.x) + abs(r["y"] - o.y)
                                                  for r, o in zip(readings, objects)]) / 2),
        "held_out_images": count,
    }


def save_oracle(oracle: WorldOracle, directory: str | Path) -> None:
    """Write ``model.safetensors`` and ``config.json`` (architecture and label vocabularies)."""
    from safetensors.torch import save_file

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    state = {name: tensor.detach().cpu().contiguous() for name, tensor in oracle.state_dict().items()}
    save_file(state, str(directory / "model.safetensors"))
    config = {"architecture": "WorldOracle", "width": oracle.width, "resolution": 32,
              "pixel_range": [-1, 1], "shapes": list(SHAPES), "colours": list(COLOUR_NAMES),
              "sizes": list(SIZES)}
    (directory / "config.json").write_text(json.dumps(config, indent=2) + "\n")


def load_oracle(directory: str | Path | None = None, device: str | torch.device = "cpu") -> WorldOracle:
    """Load a saved oracle (default: the one shipped in ``synthgen/models/world-oracle``), in eval mode.

    Raises ``ValueError`` if the saved label vocabularies differ from this
    version of the world, since the predictions would then be mislabelled.
    """
    from safetensors.torch import load_file

    if directory is None:
        directory = Path(__file__).resolve().parent.parent / "models" / "world-oracle"
    directory = Path(directory)
    config = json.loads((directory / "config.json").read_text())
    if (config["shapes"], config["colours"], config["sizes"]) != (list(SHAPES), list(COLOUR_NAMES), list(SIZES)):
        raise ValueError(f"{directory}: oracle labels do not match this world's vocabulary")
    oracle = WorldOracle(width=config["width"])
    oracle.load_state_dict(load_file(str(directory / "model.safetensors")))
    return oracle.to(device).eval()
