"""Shards on disk: samples, tar files, per-shard stats, the manifest, and output-dir state.

What holds for a dataset directory:
- a `shard-NNNNNN.tar` is complete: it is written under a temporary name and renamed;
- a shard is *done* only when its `.stats.json` exists, which is written after the rename;
- `manifest.json` exists only when every planned shard is done;
- `recipe.json` names the recipe the directory belongs to; another recipe is refused.
Tar members have fixed order, mtime, owner and mode, so equal inputs give equal bytes.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import platform
import re
import secrets
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from synthgen import __version__
from synthgen.errors import UserError
from synthgen.plan import GroupPlan, Plan, shard_name, stored_size, summarize
from synthgen.recipe import Recipe, canonical_json

MANIFEST = "manifest.json"
RECIPE_FILE = "recipe.json"
DATASET_FORMAT = "synthgen-dataset/1"
_OWNED_FILE = re.compile(r"^(shard-\d{6}\.(tar|stats\.json)|manifest\.json|recipe\.json|\..*\.tmp)$")
_PIL_FORMATS = {"jpg": "JPEG", "png": "PNG", "webp": "WEBP"}


def stats_name(shard: int) -> str:
    return f"shard-{shard:06d}.stats.json"


def write_atomically(path: Path, data: bytes) -> None:
    """Write to a temporary file beside `path`, flush to disk, then rename over `path`.

    A reader sees either no file or the whole file; two writers racing on one path leave
    exactly one whole file.
    """
    # A fresh random name per writer (not mkstemp, whose 0600 mode would survive the rename).
    temporary = path.with_name(f".{path.name}.{secrets.token_hex(8)}.tmp")
    try:
        with open(temporary, "xb") as stream:
            stream.write(data)
            stream.flush()
            os.fsync(stream.fileno())
        os.replace(temporary, path)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise


def encode_image(pixels: np.ndarray, recipe: Recipe) -> bytes:
    """uint8 (H, W, 3) -> image file bytes in the recipe's format and stored size."""
    image = Image.fromarray(pixels, "RGB")
    size = stored_size(recipe)
    if image.size != size:
        image = image.resize(size, Image.Resampling.LANCZOS)
    buffer = io.BytesIO()
    fmt = recipe.output.format
    if fmt == "jpg":
        image.save(buffer, "JPEG", quality=recipe.output.quality)
    elif fmt == "webp":
        image.save(buffer, "WEBP", quality=recipe.output.quality, method=4)
    else:
        image.save(buffer, "PNG", compress_level=6)
    return buffer.getvalue()


def sample_metadata(group: GroupPlan, recipe: Recipe, model_info: dict,
                    view_records: list[dict] | None = None) -> dict:
    """Everything needed to reproduce and audit one group, as stored in its `json` member.

    `view_records` (one dict per view) add what sampling did beyond the plan.
    """
    extension = recipe.output.format
    records = view_records or [{} for _ in group.views]
    views = [{**view.to_json(), **record, "file": f"view{view.view}.{extension}"}
             for view, record in zip(group.views, records, strict=True)]
    model = recipe.model.model_dump(mode="json", exclude={"negative_prompt", "trust_remote_code"})
    return {
        "group_id": group.group_id,
        "index": group.index,
        "shard": group.shard,
        "class_name": group.class_name,
        "class_index": group.class_index,
        "corner_case": group.corner_case,
        "tags": list(group.tags),
        "template": group.template,
        "slots": dict(group.slots),
        "view_strategy": recipe.views.strategy,
        "views": views,
        "model": {**model, **model_info},
        "image": {"format": extension, "size": list(stored_size(recipe)),
                  "quality": recipe.output.quality if extension != "png" else None},
        "recipe": {"name": recipe.name, "seed": recipe.seed, "hash": recipe.recipe_hash},
        "synthgen_version": __version__,
    }


def build_sample(group: GroupPlan, images: list[bytes], metadata: dict, extension: str) -> dict:
    """One webdataset sample: key, one file per view, json metadata and the class index."""
    sample = {"__key__": group.group_id, "json": canonical_json(metadata),
              "cls": str(group.class_index).encode()}
    for view, data in zip(group.views, images, strict=True):
        sample[f"view{view.view}.{extension}"] = data
    return sample


@dataclass(frozen=True)
class ShardStats:
    """What a finished shard holds; stored as `shard-NNNNNN.stats.json`."""

    shard: int
    samples: int
    images: int
    bytes: int
    sha256: str
    nonfinite_views: tuple[tuple[str, int], ...]
    model: dict
    rejections: dict[str, int]

    def to_json(self) -> dict:
        return {"shard": self.shard, "name": shard_name(self.shard), "samples": self.samples,
                "images": self.images, "bytes": self.bytes, "sha256": self.sha256,
                "nonfinite_views": [list(item) for item in self.nonfinite_views],
                "rejections": dict(sorted(self.rejections.items())), "model": self.model}


def write_shard(out_dir: Path, shard: int, samples: list[dict], model_info: dict,
                nonfinite_views: tuple[tuple[str, int], ...] = ()) -> ShardStats:
    """Write one shard (tar, then stats last) and return its stats.

    `nonfinite_views` lists (group id, view) whose model output had NaN/inf and was stored
    black: recorded per item so the run goes on and the audit can find them.
    """
    import webdataset

    buffer = io.BytesIO()
    # mtime 0, fixed owner and mode, members sorted by name inside each sample: equal
    # samples give equal bytes whoever writes them.
    with webdataset.TarWriter(buffer, user="synthgen", group="synthgen", mode=0o444,
                              encoder=False, mtime=0) as writer:
        for sample in samples:
            writer.write(sample)
    data = buffer.getvalue()
    write_atomically(out_dir / shard_name(shard), data)
    rejections: dict[str, int] = {}
    for sample in samples:
        for view in json.loads(sample["json"]).get("views", ()):
            for attribute, count in view.get("rejections", {}).items():
                rejections[attribute] = rejections.get(attribute, 0) + count
    stats = ShardStats(
        shard=shard, samples=len(samples),
        images=sum(1 for s in samples for k in s if k.startswith("view")),
        bytes=len(data), sha256=hashlib.sha256(data).hexdigest(),
        nonfinite_views=nonfinite_views, model=model_info, rejections=rejections,
    )
    write_atomically(out_dir / stats_name(shard), canonical_json(stats.to_json()) + b"\n")
    return stats


def read_stats(out_dir: Path, shard: int) -> dict | None:
    path = out_dir / stats_name(shard)
    if not path.is_file():
        return None
    return json.loads(path.read_text())


def prepare_output_dir(out_dir: Path, plan: Plan, overwrite: bool) -> set[int]:
    """Make `out_dir` ready for `plan` and return the shards already done there.

    Refuses a directory made from another recipe (unless `overwrite`), removes temporary and
    unfinished files, and records the recipe. Only files synthgen writes are ever removed.
    """
    recipe = plan.recipe
    if out_dir.exists() and not out_dir.is_dir():
        raise UserError(f"--out {out_dir}: exists and is not a directory; choose another path")
    out_dir.mkdir(parents=True, exist_ok=True)
    recipe_path = out_dir / RECIPE_FILE
    if overwrite:
        for entry in out_dir.iterdir():
            if entry.is_file() and _OWNED_FILE.match(entry.name):
                entry.unlink()
    elif recipe_path.is_file():
        existing = json.loads(recipe_path.read_text()).get("recipe_hash")
        if existing != recipe.recipe_hash:
            raise UserError(
                f"--out {out_dir}: holds a dataset made from a different recipe (hash "
                f"{str(existing)[:12]}, this recipe {recipe.recipe_hash[:12]}); choose another "
                "--out, or pass --overwrite to delete that dataset and start over")
    for entry in out_dir.iterdir():
        if entry.name.startswith(".") and entry.name.endswith(".tmp"):
            entry.unlink()
    if not recipe_path.is_file():
        write_atomically(recipe_path, _recipe_record(recipe))
    done = set()
    for shard in range(plan.shard_count):
        stats = read_stats(out_dir, shard)
        tar_path = out_dir / shard_name(shard)
        if stats and tar_path.is_file() and tar_path.stat().st_size == stats["bytes"]:
            done.add(shard)
        else:
            # Unfinished: a tar without stats (killed between rename and stats) is rebuilt.
            (out_dir / stats_name(shard)).unlink(missing_ok=True)
            tar_path.unlink(missing_ok=True)
    if len(done) < plan.shard_count:
        (out_dir / MANIFEST).unlink(missing_ok=True)
    return done


def _recipe_record(recipe: Recipe) -> bytes:
    return json.dumps({"recipe_hash": recipe.recipe_hash, "recipe": recipe.model_dump(mode="json")},
                      indent=2, sort_keys=True).encode() + b"\n"


def library_versions() -> dict:
    import diffusers
    import torch
    import transformers
    import webdataset

    return {"synthgen": __version__, "torch": torch.__version__,
            "diffusers": diffusers.__version__, "transformers": transformers.__version__,
            "webdataset": getattr(webdataset, "__version__", "unknown"),
            "python": platform.python_version()}


def write_manifest(out_dir: Path, plan: Plan) -> dict:
    """Assemble `manifest.json` from the stats files alone; refuses while a shard is missing."""
    shards = []
    for shard in range(plan.shard_count):
        stats = read_stats(out_dir, shard)
        if stats is None:
            raise UserError(f"{out_dir}: shard {shard_name(shard)} is not finished; "
                            "rerun synthgen generate to complete the dataset")
        shards.append(stats)
    manifest = {
        "format": DATASET_FORMAT,
        "recipe_hash": plan.recipe.recipe_hash,
        "recipe": plan.recipe.model_dump(mode="json"),
        "plan": summarize(plan),
        "model": shards[0]["model"],
        "versions": library_versions(),
        "totals": {"shards": len(shards), "samples": sum(s["samples"] for s in shards),
                   "images": sum(s["images"] for s in shards),
                   "bytes": sum(s["bytes"] for s in shards),
                   "nonfinite_views": sum(len(s["nonfinite_views"]) for s in shards),
                   "rejections": _sum_counts(s.get("rejections", {}) for s in shards)},
        "shards": [{key: s[key] for key in ("name", "samples", "images", "bytes", "sha256")}
                   for s in shards],
    }
    write_atomically(out_dir / MANIFEST, json.dumps(manifest, indent=2, sort_keys=True).encode() + b"\n")
    return manifest


def _sum_counts(counts) -> dict[str, int]:
    total: dict[str, int] = {}
    for mapping in counts:
        for key, value in mapping.items():
            total[key] = total.get(key, 0) + value
    return dict(sorted(total.items()))
