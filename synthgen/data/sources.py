"""Where a dataset's shards are: a synthgen dataset directory, a split directory, or URLs.

A `ShardSource` is the list of shard URLs plus, when known, how many samples (groups) they
hold, the fewest views any group has, and each shard's recorded sample count and sha256; the
loader needs the first for a fixed epoch length in resampled mode, the second to refuse an
impossible `views=k` before any worker starts, and the digests to verify shards
(`verified_source`).
"""

from __future__ import annotations

import hashlib
import json
import warnings
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

from synthgen.errors import UserError
from synthgen.shards import DATASET_FORMAT, MANIFEST, SHARD_FILE, SHARD_GLOB, shard_order, stats_name_of


@dataclass(frozen=True)
class ShardSource:
    """Shard URLs (local paths or anything webdataset opens) and what is known about them.

    `samples` is the number of groups in all shards (None when unknown); `min_views` is the
    smallest view count of any group (None when unknown: checked per sample instead);
    `shard_samples` and `sha256`, when known, what the manifest or stats files record for each
    URL, in order.
    """

    urls: tuple[str, ...]
    samples: int | None = None
    min_views: int | None = None
    shard_samples: tuple[int, ...] | None = None
    sha256: tuple[str, ...] | None = None


class ShardChecksumError(ValueError):
    """A shard's bytes do not have the sha256 its dataset records for it."""

    reason = "checksum"  # as the loader counts it (`synthgen.data.pipeline.SKIP_REASONS`)


def _min_views_of_recipe(recipe: dict) -> int | None:
    """The fewest views any class or corner case of a recorded recipe draws."""
    try:
        counts = [recipe["views"]["count"]]
        for spec in list(recipe.get("classes") or []) + list(recipe.get("corner_cases") or []):
            if spec.get("views"):
                counts.append(spec["views"]["count"])
        return min(counts)
    except (KeyError, TypeError):
        return None


def _read_record(path: Path, label: str = "data") -> dict:
    try:
        return json.loads(path.read_text())
    except ValueError as error:
        raise UserError(f"{label} {path}: is not valid JSON ({error}), so the dataset is damaged; "
                        "rebuild it (synthgen finalize DIR rewrites manifest.json; synthgen "
                        "generate rebuilds a shard whose stats file is damaged)") from None


def _whole_number(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _shard_record_ok(record) -> bool:
    """A manifest shard entry or a stats file as synthgen writes them: a count and a digest."""
    return (isinstance(record, dict) and _whole_number(record.get("samples"))
            and isinstance(record.get("sha256"), str))


def read_manifest(path: Path, label: str = "data") -> tuple[dict, list[dict]]:
    """The manifest at `path` and its shard entries, or a UserError starting with `label` (the
    option or command that named the dataset): valid JSON of another shape (another tool's
    manifest.json, a hand-edited one) and shard names that are not synthgen's
    (`shard-NNNNNN.tar`, which also keeps readers inside the dataset directory). The one check
    every reader of a manifest (loader, inspect, audit, edit) goes through."""
    manifest = _read_record(path, label)
    if not isinstance(manifest, dict):
        manifest = {}
    shards = manifest.get("shards")
    if manifest.get("format") != DATASET_FORMAT or not isinstance(shards, list) \
            or not all(_shard_record_ok(shard) for shard in shards):
        raise UserError(f"{label} {path}: is not a synthgen manifest (format {DATASET_FORMAT}, a "
                        "list of shards, each with its name, samples and sha256); pass a synthgen "
                        f"dataset directory, or rewrite it with synthgen finalize {path.parent}")
    for shard in shards:
        name = shard.get("name")
        if not (isinstance(name, str) and SHARD_FILE.match(name) and name.endswith(".tar")):
            raise UserError(f"{label} {path}: shard entry {name!r} is not a shard of this "
                            "directory (synthgen names them shard-NNNNNN.tar); rewrite the "
                            f"manifest with synthgen finalize {path.parent}")
    return manifest, shards


def _from_directory(directory: Path) -> ShardSource:
    manifest_path = directory / MANIFEST
    if manifest_path.is_file():
        # Only the manifest's shards: any other tar in the directory is not part of the dataset.
        manifest, shards = read_manifest(manifest_path)
        # A finished dataset missing some of its shards would train on what is left while
        # counting epochs from the manifest: refused, as a missing shard path is.
        missing = [shard["name"] for shard in shards if not (directory / shard["name"]).is_file()]
        if missing:
            listed = ", ".join(missing[:5]) + (f" and {len(missing) - 5} more" if len(missing) > 5 else "")
            raise UserError(f"data {directory}: {len(missing)} of the {len(shards)} shards its "
                            f"{MANIFEST} lists are missing ({listed}); copy them back, or rebuild "
                            "them with synthgen generate (its recipe and --out)")
        samples = sum(shard["samples"] for shard in shards)
        return ShardSource(tuple(str(directory / shard["name"]) for shard in shards), samples,
                           _min_views_of_recipe(manifest.get("recipe") or {}),
                           tuple(shard["samples"] for shard in shards),
                           tuple(shard["sha256"] for shard in shards))
    # A directory of shards without a manifest (a world real-render split, or an unfinished
    # dataset): the tars whose stats file exists, as only those are finished; a directory
    # where no tar has one holds shards from elsewhere, and every tar is read.
    tars = sorted(directory.glob(SHARD_GLOB), key=lambda tar: shard_order(tar.name))
    if not tars:
        raise UserError(
            f"data {directory}: holds neither {MANIFEST} nor {SHARD_GLOB} files; pass the --out "
            "directory of synthgen generate, a split directory of synthgen world dataset "
            "(e.g. DIR/train), or shard URLs")
    stats = {tar: _read_record(path) for tar in tars
             if (path := tar.with_name(stats_name_of(tar.name))).is_file()}
    for tar, record in stats.items():
        if not _shard_record_ok(record):
            raise UserError(f"data {tar.with_name(stats_name_of(tar.name))}: is not a synthgen stats "
                            "file (its samples and sha256), so the shard is damaged; rerun synthgen "
                            "generate with its recipe and --out to rebuild it, or delete the stats "
                            "file to leave the shard out")
    if not stats:
        return ShardSource(tuple(str(t) for t in tars))
    unfinished = [tar.name for tar in tars if tar not in stats]
    if unfinished:
        warnings.warn(f"data {directory}: leaves out {', '.join(unfinished)}: no stats file, so "
                      "not a finished shard of this dataset", stacklevel=3)
    done = [tar for tar in tars if tar in stats]
    counts = tuple(stats[tar]["samples"] for tar in done)
    return ShardSource(tuple(str(t) for t in done), sum(counts), None, counts,
                       tuple(stats[tar]["sha256"] for tar in done))


def resolve_shards(data: str | Path | list | tuple | ShardSource) -> ShardSource:
    """A dataset directory, a shard URL pattern (`dir/shard-{000000..000009}.tar`), a list of
    shard URLs, or a `ShardSource` -> a `ShardSource`. Directories read `manifest.json`."""
    if isinstance(data, ShardSource):
        return data
    if isinstance(data, (list, tuple)):
        if not data:
            raise UserError("data: an empty list of shards; pass at least one shard URL")
        return ShardSource(tuple(str(url) for url in data))
    path = Path(data)
    if path.is_dir():
        return _from_directory(path)
    import braceexpand

    urls = tuple(braceexpand.braceexpand(str(data)))
    local = [url for url in urls if "://" not in url and not url.startswith("pipe:")]
    missing = [url for url in local if not Path(url).is_file()]
    if missing:
        raise UserError(f"data {data}: {len(missing)} of {len(urls)} shards do not exist (first: "
                        f"{missing[0]}); pass a dataset directory or existing shard paths")
    return ShardSource(urls)


def verified_source(source: ShardSource, handler: Callable[[Exception], bool]) -> ShardSource:
    """`source` without the shards whose bytes do not have their recorded sha256. Each shard is
    read once; a mismatch (or a shard that cannot be read) goes to `handler` as a
    `ShardChecksumError` (webdataset's convention: it raises, or returns to leave it out).

    Needs the digests a dataset directory records (manifest.json or stats files).
    """
    if source.sha256 is None:
        raise UserError("verify: the shards' sha256 are unknown (shard URLs, or a directory "
                        "without manifest.json or stats files); pass the dataset directory, "
                        "or verify=False")
    kept = []
    for index, (url, expected) in enumerate(zip(source.urls, source.sha256, strict=True)):
        try:
            with open(url, "rb") as stream:
                actual = hashlib.file_digest(stream, "sha256").hexdigest()
        except OSError as error:
            handler(ShardChecksumError(f"{url}: cannot be read to check its sha256 "
                                       f"({error.strerror})"))
            continue
        if actual == expected:
            kept.append(index)
            continue
        handler(ShardChecksumError(f"{url}: sha256 {actual[:16]}, but its dataset records "
                                   f"{expected[:16]}: its bytes changed since it was written"))
    counts = None if source.shard_samples is None else tuple(source.shard_samples[i] for i in kept)
    return replace(source, urls=tuple(source.urls[i] for i in kept),
                   samples=None if counts is None else sum(counts), shard_samples=counts,
                   sha256=tuple(source.sha256[i] for i in kept))
