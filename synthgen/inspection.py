"""Read a finished dataset back: counts per class and corner case, samples, contact sheets.

Reads shards with webdataset only, so what it shows is what a trainer will see.
"""

from __future__ import annotations

import io
import json
import textwrap
from collections import Counter
from pathlib import Path

from PIL import Image, ImageDraw

from synthgen.errors import UserError
from synthgen.write import MANIFEST


def load_manifest(dataset_dir: Path) -> dict:
    """The dataset's manifest; a directory without one is not a finished dataset."""
    path = dataset_dir / MANIFEST
    if not path.is_file():
        raise UserError(f"{dataset_dir}: no {MANIFEST}, so this is not a finished synthgen dataset; "
                        "run (or rerun) synthgen generate RECIPE --out DIR first")
    return json.loads(path.read_text())


def shard_paths(dataset_dir: Path, manifest: dict) -> list[str]:
    return [str(dataset_dir / shard["name"]) for shard in manifest["shards"]]


def iter_samples(paths: list[str]):
    """Yields raw webdataset samples (dicts of bytes keyed by extension), in shard order."""
    import webdataset

    dataset = webdataset.WebDataset(paths, shardshuffle=False, empty_check=False)
    yield from dataset


def count_groups(dataset_dir: Path) -> dict:
    """Groups and images per class and per corner case, counted from the shards themselves."""
    manifest = load_manifest(dataset_dir)
    classes: Counter = Counter()
    corner_cases: Counter = Counter()
    images = 0
    for sample in iter_samples(shard_paths(dataset_dir, manifest)):
        metadata = json.loads(sample["json"])
        if metadata["corner_case"] is None:
            classes[metadata["class_name"]] += 1
        else:
            corner_cases[metadata["corner_case"]] += 1
        images += sum(1 for key in sample if key.startswith("view"))
    return {"groups": sum(classes.values()) + sum(corner_cases.values()), "images": images,
            "classes": dict(classes), "corner_cases": dict(corner_cases)}


def shard_samples(dataset_dir: Path, shard: int) -> list[dict]:
    """The metadata of every sample in one shard."""
    manifest = load_manifest(dataset_dir)
    if not 0 <= shard < len(manifest["shards"]):
        raise UserError(f"--shard {shard}: the dataset has shards 0 to {len(manifest['shards']) - 1}")
    return [json.loads(sample["json"])
            for sample in iter_samples([str(dataset_dir / manifest["shards"][shard]["name"])])]


def contact_sheet(dataset_dir: Path, groups: int = 8, cell: int = 128) -> Image.Image:
    """A grid, one row per group (first `groups` of the dataset), one column per view."""
    manifest = load_manifest(dataset_dir)
    rows = []
    for sample in iter_samples(shard_paths(dataset_dir, manifest)):
        metadata = json.loads(sample["json"])
        views = [Image.open(io.BytesIO(sample[view["file"]])).convert("RGB")
                 for view in metadata["views"]]
        rows.append((metadata, views))
        if len(rows) == groups:
            break
    label_width = 200
    columns = max(len(views) for _, views in rows)
    sheet = Image.new("RGB", (label_width + columns * cell, len(rows) * cell), "white")
    draw = ImageDraw.Draw(sheet)
    for row, (metadata, views) in enumerate(rows):
        label = metadata["corner_case"] or metadata["class_name"] or "-"
        draw.text((4, row * cell + 4), label[:30], fill="black")
        draw.text((4, row * cell + 18), metadata["group_id"][:30], fill="gray")
        prompt_lines = textwrap.wrap(metadata["views"][0]["prompt"], 30)[: (cell - 40) // 12]
        for line, text in enumerate(prompt_lines):
            draw.text((4, row * cell + 36 + 12 * line), text, fill="black")
        for column, view in enumerate(views):
            sheet.paste(view.resize((cell, cell), Image.Resampling.LANCZOS),
                        (label_width + column * cell, row * cell))
    return sheet
