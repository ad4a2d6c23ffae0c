"""Stream a dataset's views out of its shards, checking each shard against the manifest.

Contract of `iter_views`: yields one `ViewItem` per view listed in a sample's json, in shard
order; `data` is None where the json lists a view the sample lacks. Shards that are missing,
unreadable part-way, or whose sha256 differs from the manifest are recorded in the given
`ShardProblems` (a damaged shard still yields what can be read from it). Nothing but the
current sample is held in memory.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path

from synthgen.inspection import iter_samples, load_manifest
from synthgen.recipe import CLASS_SLOT

_HASH_CHUNK = 1 << 20


@dataclass(frozen=True)
class ViewItem:
    """One view of one group, with what the audit needs from the sample's json."""

    key: str
    view: int
    file: str
    shard: str
    data: bytes | None
    class_name: str | None
    corner_case: str | None
    strategy: str
    prompt: str
    # What the recipe recorded for this view, attribute or slot name -> value: the group's
    # class (as `class`, the slot every template can use), slot values and balanced values,
    # overridden by the view's own re-drawn slots and balanced values (the `slots` view
    # strategy). Names in `assigned_per_view` are the view's own (they may differ between a
    # group's views).
    assigned: dict
    assigned_per_view: tuple[str, ...] = ()

    @property
    def view_id(self) -> str:
        return f"{self.key}.{self.file}"

    @property
    def scope(self) -> str:
        """The class or corner case the view counts under in per-group tables."""
        if self.corner_case is not None:
            return f"corner:{self.corner_case}"
        return f"class:{self.class_name}"


@dataclass
class ShardProblems:
    missing: list[str] = field(default_factory=list)
    sha256_mismatches: list[dict] = field(default_factory=list)
    unreadable: list[dict] = field(default_factory=list)
    unreadable_samples: list[dict] = field(default_factory=list)


def dataset_shards(dataset_dir: Path) -> tuple[dict, list[dict]]:
    """The manifest and its shard entries (name, sha256, samples, ...)."""
    manifest = load_manifest(dataset_dir)
    return manifest, list(manifest.get("shards") or [])


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as stream:
        while chunk := stream.read(_HASH_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def iter_views(dataset_dir: Path, shards: list[dict], problems: ShardProblems,
               only_keys: set[str] | None = None):
    """Yields `ViewItem`s of every shard (of the samples in `only_keys`, if given)."""
    for entry in shards:
        path = dataset_dir / entry["name"]
        if not path.is_file():
            problems.missing.append(entry["name"])
            continue
        if only_keys is None:
            # Hash right before reading: the file is then in the page cache for the reader.
            actual = file_sha256(path)
            if entry.get("sha256") and actual != entry["sha256"]:
                problems.sha256_mismatches.append(
                    {"shard": entry["name"], "manifest": entry["sha256"], "actual": actual})
        try:
            for sample in iter_samples([str(path)]):
                if only_keys is not None and sample.get("__key__") not in only_keys:
                    continue
                yield from _sample_views(sample, entry["name"], problems)
        except Exception as error:  # a truncated or corrupt tar: keep what was read, go on
            problems.unreadable.append({"shard": entry["name"], "error": f"{type(error).__name__}: {error}"})


def _sample_views(sample: dict, shard: str, problems: ShardProblems):
    try:
        items = list(_view_items(sample, shard))
    except (KeyError, ValueError, TypeError, AttributeError) as error:
        # A sample whose json is absent or malformed lists no views the audit can trust.
        problems.unreadable_samples.append(
            {"shard": shard, "sample": str(sample.get("__key__")),
             "error": f"{type(error).__name__}: {error}"})
        return
    yield from items


def _view_items(sample: dict, shard: str):
    metadata = json.loads(sample["json"])
    # "" (and None, in datasets written before it became "") means none.
    class_name, corner_case = metadata.get("class_name") or None, metadata.get("corner_case") or None
    label = {CLASS_SLOT: class_name} if class_name is not None else {}
    group_assigned = {**label, **(metadata.get("slots") or {}), **(metadata.get("balance") or {})}
    for index, view in enumerate(metadata.get("views") or []):
        file = view.get("file") or f"view{index}"
        own = {**(view.get("slots") or {}), **(view.get("balance") or {})}
        yield ViewItem(
            key=sample["__key__"], view=int(view.get("view", index)), file=file, shard=shard,
            data=sample.get(file), class_name=class_name, corner_case=corner_case,
            strategy=_strategy_label(view.get("strategy") or metadata.get("view_strategy")),
            prompt=str(view.get("prompt") or ""),
            assigned={**group_assigned, **own}, assigned_per_view=tuple(own),
        )


def _strategy_label(strategy) -> str:
    """`view_strategy` is a string in older datasets and a list of combined strategies in newer
    ones (e.g. ["prompt", "img2img"]); both become one label ("prompt+img2img")."""
    if isinstance(strategy, (list, tuple)):
        return "+".join(str(s) for s in strategy) or "unknown"
    return str(strategy or "unknown")
