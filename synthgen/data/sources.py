"""Where a dataset's shards are: a synthgen dataset directory, a split directory, or URLs.

A `ShardSource` is the list of shard URLs plus, when known, how many samples (groups) they
hold and the fewest views any group has; the loader needs the first for a fixed epoch length
in resampled mode and the second to refuse an impossible `views=k` before any worker starts.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from synthgen.errors import UserError

MANIFEST = "manifest.json"  # the same name synthgen.write uses; not imported to stay light
SHARD_GLOB = "shard-*.tar"


@dataclass(frozen=True)
class ShardSource:
    """Shard URLs (local paths or anything webdataset opens) and what is known about them.

    `samples` is the number of groups in all shards (None when unknown); `min_views` is the
    smallest view count of any group (None when unknown: checked per sample instead).
    """

    urls: tuple[str, ...]
    samples: int | None = None
    min_views: int | None = None


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


def _from_directory(directory: Path) -> ShardSource:
    manifest_path = directory / MANIFEST
    if manifest_path.is_file():
        manifest = json.loads(manifest_path.read_text())
        urls = tuple(str(directory / shard["name"]) for shard in manifest["shards"])
        samples = manifest.get("totals", {}).get("samples")
        if samples is None:
            samples = sum(shard["samples"] for shard in manifest["shards"])
        return ShardSource(urls, samples, _min_views_of_recipe(manifest.get("recipe") or {}))
    # A directory of shards without a manifest (a world real-render split, or an unfinished
    # dataset): every tar, with the sample counts of their stats files where all have one.
    tars = sorted(directory.glob(SHARD_GLOB))
    if not tars:
        raise UserError(
            f"data {directory}: holds neither {MANIFEST} nor {SHARD_GLOB} files; pass the --out "
            "directory of synthgen generate, a split directory of synthgen world dataset "
            "(e.g. DIR/train), or shard URLs")
    counts = []
    for tar in tars:
        stats = tar.with_name(tar.name[: -len(".tar")] + ".stats.json")
        counts.append(json.loads(stats.read_text())["samples"] if stats.is_file() else None)
    samples = None if None in counts else sum(counts)
    return ShardSource(tuple(str(t) for t in tars), samples, None)


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
