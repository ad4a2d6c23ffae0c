"""Audit test helpers: hand-built datasets of coloured noise images and a deterministic fake encoder.

The fake encoder makes zero-shot results predictable, so the tests check the audit's counting
and metrics independent of any CLIP's quality: an image embeds as (its mean colour direction,
its coarse texture), a text as the colour words it contains.
"""

from __future__ import annotations

import hashlib
import io
import json
import tarfile
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from synthgen.recipe import canonical_json
from synthgen.write import MANIFEST, write_shard

COLOURS = {"red": (1.0, 0.0, 0.0), "green": (0.0, 1.0, 0.0), "blue": (0.0, 0.0, 1.0)}
RGB = {"red": (200, 0, 0), "green": (0, 200, 0), "blue": (0, 0, 200), "olive": (150, 150, 0),
       "black": (0, 0, 0)}
NEUTRAL_WEIGHT = 0.15
SIZE = 16


class MeanColourEncoder:
    """Image: unit([unit([r, g, b, 0.15]), unit(4x4 texture - channel means)]); text: its colour words.

    A red image is "red" with probability ~1; an olive one (red = green) is a red/green tie,
    hence unsure; a black one is the neutral direction (the contrast prompt "a photo").
    Identical images embed identically; different noise images differ in the texture half.
    """

    identity = "fake-mean-colour/1"
    logit_scale = 100.0

    def __init__(self):
        self.image_calls = 0

    def encode_images(self, images):
        self.image_calls += len(images)
        rows = []
        for image in images:
            pixels = image.float().cpu() / 255.0
            mean = pixels.mean(dim=(1, 2))
            colour = F.normalize(torch.cat([mean, torch.tensor([NEUTRAL_WEIGHT])]), dim=0)
            coarse = F.adaptive_avg_pool2d(pixels[None], 4)[0]
            texture = (coarse - coarse.mean(dim=(1, 2), keepdim=True)).flatten()
            texture = texture / texture.norm() if texture.norm() > 1e-6 else texture
            rows.append(F.normalize(torch.cat([colour, texture]), dim=0))
        return torch.stack(rows).numpy().astype(np.float32)

    def encode_texts(self, texts):
        rows = []
        for text in texts:
            vector = np.zeros(4 + 48, np.float32)
            words = set(text.lower().replace(",", " ").split())
            for word, direction in COLOURS.items():
                if word in words:
                    vector[:3] += direction
            if not vector.any():
                vector[3] = 1.0
            rows.append(vector / np.linalg.norm(vector))
        return np.stack(rows)


def expected_label(colour: str) -> str | None:
    """What the fake classifies an image of this colour as (None: unsure)."""
    return colour if colour in COLOURS else None


def noise_image(colour: str, seed: int, fmt: str = "png") -> bytes:
    rng = np.random.default_rng(seed)
    base = np.array(RGB[colour], dtype=np.int16)
    if colour == "black":
        pixels = np.zeros((SIZE, SIZE, 3), np.uint8)
    else:
        noise = rng.integers(-40, 41, (SIZE, SIZE, 3))
        if colour == "olive":
            noise[..., 1] = noise[..., 0]  # equal red and green means: an exact tie, unsure
        pixels = np.clip(base + noise, 0, 255).astype(np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, "PNG" if fmt == "png" else "JPEG", quality=95)
    return buffer.getvalue()


def build_dataset(out_dir: Path, groups: list[dict], recipe: dict | None = None,
                  groups_per_shard: int = 4) -> Path:
    """Shards + manifest from group specs.

    A group spec: {"class": name, "colours": [one per view], "corner": name|None,
    "balance": {...}|None, "slots": {...}|None, "view_fields": [{json fields} per view]|None,
    "prompt": str | [one per view], "drop_view": index|None, "images": [bytes]|None,
    "json": bytes|None}.
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    samples = []
    for index, group in enumerate(groups):
        corner = group.get("corner")
        key = (f"corner-{corner}-{index:06d}" if corner else f"class-{group['class']}-{index:06d}")
        colours = group["colours"]
        images = group.get("images") or [noise_image(c, seed=index * 100 + v) for v, c in enumerate(colours)]
        prompt = group.get("prompt", f"a {colours[0]} {group['class']}")
        prompts = prompt if isinstance(prompt, list) else [prompt] * len(colours)
        metadata = {
            "group_id": key, "index": index, "class_name": group["class"], "class_index": 0,
            "corner_case": corner, "tags": [], "view_strategy": group.get("strategy", ["seeds"]),
            "views": [{"view": v, "prompt": prompts[v], "negative_prompt": "", "seed": v,
                       "file": f"view{v}.png"} for v in range(len(colours))],
        }
        if group.get("balance"):
            metadata["balance"] = group["balance"]
        if group.get("slots"):
            metadata["slots"] = group["slots"]
        for view, fields in zip(metadata["views"], group.get("view_fields") or []):
            view.update(fields)
        sample = {"__key__": key, "json": canonical_json(metadata), "cls": b"0"}
        for v, data in enumerate(images):
            if v != group.get("drop_view"):
                sample[f"view{v}.png"] = data
        samples.append(sample)
    shards = []
    for shard, start in enumerate(range(0, len(samples), groups_per_shard)):
        stats = write_shard(out_dir, shard, samples[start:start + groups_per_shard], {}).to_json()
        # "json": raw bytes in place of the metadata, to plant a damaged sample (write_shard
        # reads the metadata it writes, so these are swapped into the finished tar).
        damaged = {f"{sample['__key__']}.json": group["json"]
                   for sample, group in zip(samples[start:], groups[start:start + groups_per_shard])
                   if group.get("json") is not None}
        if damaged:
            stats.update(_replace_members(out_dir / stats["name"], damaged))
        shards.append({key: stats[key] for key in ("name", "samples", "images", "bytes", "sha256")})
    manifest = {"format": "synthgen-dataset/1", "recipe_hash": "0" * 64,
                "recipe": {"name": "handmade", **(recipe or {})}, "shards": shards,
                "totals": {"shards": len(shards), "samples": len(samples)}}
    (out_dir / MANIFEST).write_text(json.dumps(manifest))
    return out_dir


def _replace_members(path: Path, replacements: dict[str, bytes]) -> dict:
    """Rewrite the tar at `path` with some members' bytes replaced; its new size and sha256."""
    with tarfile.open(path) as source:
        members = [(info, source.extractfile(info).read()) for info in source.getmembers()]
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as target:
        for info, data in members:
            data = replacements.get(info.name, data)
            info.size = len(data)
            target.addfile(info, io.BytesIO(data))
    path.write_bytes(buffer.getvalue())
    return {"bytes": len(buffer.getvalue()), "sha256": hashlib.sha256(buffer.getvalue()).hexdigest()}
