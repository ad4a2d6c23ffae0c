"""Which weights a recipe's model names, as a digest every shard records.

The recipe hash covers the model's *id*, but the weights behind one id can change: a local
folder retrained in place, the builtin models of a newer synthgen, a hub repository's main
branch moving on. A dataset resumed or finished under other weights would mix two models
under one name, so `write.py` refuses that, comparing these digests.

- A folder (a local model or a `builtin:` one): sha256 over its model files, names and
  contents (`model_index.json` and the component folders it names, or a single model's
  `config.json` and safetensors). Model cards and hidden download metadata do not count.
- A hub id: the commit of the snapshot in the local Hugging Face cache, which pins every
  file. None before the first download (nothing can have been made with it here yet).

A recipe's CLIP detectors (reject's, debias's, `slots.check`'s) decide which draws a shard
keeps or how the model is edited, so their weights are recorded too, apart from the model's
(`detectors_digest`: datasets made before it was recorded still resume).
"""

from __future__ import annotations

import functools
import hashlib
import json
from pathlib import Path

from synthgen.builtin import resolve_model_source
from synthgen.recipe import ModelSpec, Recipe


def weights_digest(spec: ModelSpec) -> str | None:
    """The identity of the weights `spec` loads (pipeline, and decoder if any), or None when
    a hub model is not in the local cache yet."""
    parts = [_source_digest(resolve_model_source(spec.id), spec.revision)]
    if spec.decoder is not None:
        decoder = _source_digest(resolve_model_source(spec.decoder, "model.decoder"), None)
        parts.append(None if decoder is None else f"decoder {decoder}")
    return None if None in parts else " + ".join(parts)


def recipe_detectors(recipe: Recipe) -> list[str]:
    """The CLIP models a run of `recipe` loads besides its pipeline: each reject or debias
    entry's `detector`, and the detector of every `slots.check` that reads what views hold."""
    detectors = [entry.detector for entry in [*recipe.suppress, *recipe.balance]
                 if getattr(entry, "detector", None)]
    for spec in (recipe.views_for(entry) for entry in [*recipe.classes, *recipe.corner_cases]):
        if spec.checks_groups and spec.slots.check.hold:
            detectors.append(spec.slots.check.detector)
    return sorted(set(detectors))


def detectors_digest(recipe: Recipe) -> str | None:
    """The identity of the recipe's CLIP detectors' weights (`recipe_detectors`), recorded
    beside the model's (`model.detectors` in stats), or None when it has none or a hub
    detector is not in the local cache yet (nothing to compare then)."""
    parts = []
    for detector in recipe_detectors(recipe):
        digest = _source_digest(resolve_model_source(detector, "detector"), None)
        if digest is None:
            return None
        parts.append(f"{detector} {digest}")
    return " + ".join(parts) or None


def _source_digest(source: str, revision: str | None) -> str | None:
    folder = Path(source)
    if folder.is_dir():
        return "sha256:" + folder_digest(folder)[:16]
    return _hub_snapshot(source, revision)


def folder_digest(folder: Path) -> str:
    """sha256 over the relative name and content digest of each model file in `folder`."""
    digest = hashlib.sha256()
    for path in _model_files(folder):
        stat = path.stat()
        digest.update(path.relative_to(folder).as_posix().encode() + b"\0")
        digest.update(_file_sha256(path, stat.st_size, stat.st_mtime_ns, stat.st_ino,
                                   stat.st_ctime_ns).encode())
    return digest.hexdigest()


def _model_files(folder: Path) -> list[Path]:
    index = folder / "model_index.json"
    if index.is_file():
        # A pipeline: its index and every file of the components it names.
        components = [name for name, value in json.loads(index.read_text()).items()
                      if isinstance(value, list) and value and value[0] is not None]
        files = [index] + [path for name in components if (folder / name).is_dir()
                           for path in (folder / name).rglob("*") if path.is_file()]
    else:
        # One model (a decoder, a CLIP): its config and weights.
        files = [path for path in folder.iterdir() if path.is_file()
                 and (path.name == "config.json" or path.suffix == ".safetensors")]
    return sorted(path for path in files
                  if not any(part.startswith(".") for part in path.relative_to(folder).parts))


@functools.lru_cache(maxsize=256)
def _file_sha256(path: Path, size: int, mtime_ns: int, inode: int, ctime_ns: int) -> str:
    """Cached on the file's size, times and inode as well as its path: a file rewritten in
    place or replaced is hashed again, even where a copy kept its size and mtime (cp -p,
    rsync -a), since a change of contents or a new file moves its ctime, which no one sets.
    (Several workers of one process, and the check before loading, then hash a 7 GB
    pipeline once.)"""
    with path.open("rb") as handle:
        return hashlib.file_digest(handle, "sha256").hexdigest()


def _hub_snapshot(repo_id: str, revision: str | None) -> str | None:
    from huggingface_hub import snapshot_download

    try:
        snapshot = snapshot_download(repo_id, revision=revision, local_files_only=True)
    except (OSError, ValueError):  # not downloaded yet, or not a hub id (loading says why)
        return None
    return f"hub:{repo_id}@{Path(snapshot).name}"
