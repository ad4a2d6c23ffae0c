"""Tiny datasets whose pixels say what they are, for tests, smoke runs and loader benchmarks.

Every view of `write_solid_dataset` is one solid colour that encodes where it came from:
red = group number mod 256, green = 16 * view + class, blue = 128. A test reading a batch back
can tell which group, view and class every crop shows (with augment="none").
"""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
from PIL import Image

SOLID_MODEL_INFO = {"pipeline": "synthgen.data.fixtures", "device_type": "cpu", "dtype": "uint8"}


def solid_colour(group: int, view: int, class_index: int) -> tuple[int, int, int]:
    return (group % 256, 16 * view + class_index, 128)


def decode_solid_colour(pixel) -> tuple[int, int, int]:
    """(group mod 256, view, class) of one pixel of a solid view: a float tensor (3,) in [0, 1]."""
    red, green, _ = (pixel * 255).round().int().tolist()
    return red, green // 16, green % 16


def _image(colour: tuple[int, int, int], size: int, extension: str) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(np.full((size, size, 3), colour, dtype=np.uint8)).save(
        buffer, {"png": "PNG", "jpg": "JPEG"}[extension])
    return buffer.getvalue()


def solid_sample(group: int, class_index: int, views: int, size: int = 16,
                 class_names: tuple[str, ...] = ("a", "b", "c", "d"),
                 extension: str = "png") -> dict:
    """One sample in synthgen's format (key, viewN.png, json, cls) of solid-colour views
    (`extension` "jpg": JPEG views, whose colours are only close to the solid ones)."""
    group_id = f"class-{class_names[class_index]}-{group:06d}"
    metadata = {"group_id": group_id, "index": group, "class_index": class_index,
                "class_name": class_names[class_index], "view_strategy": ["seeds"],
                "views": [{"view": v, "file": f"view{v}.{extension}", "seed": group * 100 + v,
                           "prompt": f"a solid {class_names[class_index]}"}
                          for v in range(views)]}
    sample = {"__key__": group_id, "json": json.dumps(metadata, sort_keys=True).encode(),
              "cls": str(class_index).encode()}
    for view in range(views):
        sample[f"view{view}.{extension}"] = _image(solid_colour(group, view, class_index), size,
                                                   extension)
    return sample


def write_solid_dataset(out_dir: Path, shards: int, groups_per_shard: int, views: int,
                        classes: int = 4, size: int = 16, manifest: bool = True,
                        extension: str = "png", layout: str = "group") -> list[str]:
    """Write `shards` shards of solid-colour groups (group g has class g mod `classes`) into
    `out_dir` with `synthgen.write.write_shard`, plus a minimal manifest.json unless told not
    to, in `layout` (synthgen/shards.py); returns the group ids in write order."""
    from synthgen.write import write_shard

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    group_ids, shard_records = [], []
    for shard in range(shards):
        samples = [solid_sample(g, g % classes, views, size, extension=extension)
                   for g in range(shard * groups_per_shard, (shard + 1) * groups_per_shard)]
        stats = write_shard(out_dir, shard, samples, SOLID_MODEL_INFO, layout=layout)
        group_ids += [sample["__key__"] for sample in samples]
        shard_records.append({"name": f"shard-{shard:06d}.tar", "samples": stats.samples,
                              "images": stats.images, "bytes": stats.bytes, "sha256": stats.sha256})
    if manifest:
        record = {"format": "synthgen-dataset/1", "shards": shard_records,
                  "recipe": {"views": {"count": views}, "classes": []},
                  "totals": {"shards": shards, "samples": len(group_ids),
                             "images": len(group_ids) * views}}
        (out_dir / "manifest.json").write_text(json.dumps(record, indent=2))
    return group_ids
