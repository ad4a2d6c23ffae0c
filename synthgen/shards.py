"""Shard files: their names, and how one group becomes tar samples (the output layout).

Every other module asks this one for a shard's file names (`shard_name`, `stats_name`,
`SHARD_GLOB`) and the manifest's (`MANIFEST`) and for the tar members of a group; nothing else spells them.

A *group sample* is what the engine builds and the readers consume: one dict per multi-view
group, `{"__key__": group id, "json": metadata, "cls": class index, "view0.jpg": ..., ...}`,
where the json's `views[i]["file"]` names each view's member. A layout decides how group
samples become tar samples (`Layout.tar_samples`), chosen by the recipe's `output.layout`:
- `group` (the default): one tar sample per group, the group sample itself;
- `view`: one tar sample per view, the CLIP-style convention (open_clip, img2dataset):
  `KEY.jpg`, `KEY.txt` (the view's prompt), `KEY.json` (the group's metadata with only this
  view in `views`, and `view`: its index), `KEY.cls`, with KEY `GROUPID-viewN`. A shard
  holds whole groups, their views consecutive and in order.
Readers put either layout back into group samples with `regrouped`, so the loader, the audit
and inspection read both the same way.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Iterator

MANIFEST = "manifest.json"  # the finished dataset's list of shards (write.finalize_dataset)
DATASET_FORMAT = "synthgen-dataset/1"  # its "format"
SHARD_GLOB = "shard-*.tar"
# A shard's tar or stats file, as a pattern for the names of a dataset's files (here, and in
# store.py's and write.py's). Six digits, more without a leading zero: shard 1,000,000 (a
# valid recipe can reach it) is shard-1000000.tar, and shard-0000001.tar is no name synthgen writes.
SHARD_FILE_PATTERN = r"shard-(?:\d{6}|[1-9]\d{6,})\.(?:tar|stats\.json)"
SHARD_FILE = re.compile(f"^{SHARD_FILE_PATTERN}$")
_TAR_SUFFIX, _STATS_SUFFIX = ".tar", ".stats.json"
# Image members a view-layout sample names by extension alone (`KEY.jpg`).
_VIEW_IMAGE_MEMBERS = ("jpg", "jpeg", "png", "webp")


def shard_name(shard: int) -> str:
    return f"shard-{shard:06d}{_TAR_SUFFIX}"


def stats_name(shard: int) -> str:
    return f"shard-{shard:06d}{_STATS_SUFFIX}"


def shard_order(tar_name: str) -> tuple:
    """Sort key for shard file names: synthgen's by shard number (shard-1000000.tar after
    shard-999999.tar, where names alone would put it after shard-100000.tar), then others by name."""
    if SHARD_FILE.match(tar_name):
        return (0, int(tar_name[len("shard-"):].split(".", 1)[0]), tar_name)
    return (1, 0, tar_name)


def stats_name_of(tar_name: str) -> str:
    """The stats file name of a shard file name: shard-000003.tar -> shard-000003.stats.json."""
    return tar_name[: -len(_TAR_SUFFIX)] + _STATS_SUFFIX


def view_file(view: int, extension: str) -> str:
    """The member name of a view inside a group sample (and its json's `file`)."""
    return f"view{view}.{extension}"


class GroupLayout:
    """One tar sample per group: the group sample as it is."""

    name = "group"

    def tar_samples(self, group_sample: dict) -> list[dict]:
        return [group_sample]

    def tar_sample_count(self, stats: dict) -> int:
        """Tar samples in a shard, from its stats (`samples` counts groups)."""
        return stats["samples"]


class ViewLayout:
    """One tar sample per view: KEY.EXT image, KEY.txt prompt, KEY.json, KEY.cls."""

    name = "view"

    def tar_samples(self, group_sample: dict) -> list[dict]:
        metadata = json.loads(group_sample["json"])
        samples = []
        for record in metadata["views"]:
            extension = record["file"].rsplit(".", 1)[1]
            own = {**metadata, "view": record["view"], "views": [record]}
            samples.append({
                "__key__": f"{group_sample['__key__']}-view{record['view']}",
                extension: group_sample[record["file"]],
                "txt": record["prompt"].encode(),
                "json": json.dumps(own, sort_keys=True, separators=(",", ":"),
                                   ensure_ascii=False).encode(),
                "cls": group_sample["cls"],
            })
        return samples

    def tar_sample_count(self, stats: dict) -> int:
        return stats["images"]


LAYOUTS = {layout.name: layout for layout in (GroupLayout(), ViewLayout())}


# The key `data.pipeline.tar_samples` numbers each shard it reads under (a resampled shard read
# again gets a new number); `regrouped` carries it to the group sample.
SHARD_DRAW = "__shard_draw__"


def layout_named(name: str) -> GroupLayout | ViewLayout:
    return LAYOUTS[name]


def is_view_sample(sample: dict) -> bool:
    """Whether a tar sample is one view (`view` layout) rather than a whole group."""
    return any(member in sample for member in _VIEW_IMAGE_MEMBERS)


# Stage: yields group samples. Group-layout samples pass unchanged; the consecutive view
# samples of one group (same json `group_id`) become one group sample with the metadata the
# group layout would hold. A view sample whose json does not parse passes unchanged, for the
# reader's own checks to reject.
def regrouped(samples: Iterable[dict]) -> Iterator[dict]:
    pending: list[tuple[dict, dict]] = []
    dropped: str | None = None  # a group one of whose views is damaged: its other views go too
    for sample in samples:
        metadata = _view_metadata(sample)
        if metadata is None:
            damaged_group = _group_of_view_key(sample.get("__key__"))
            if pending and pending[0][1]["group_id"] != damaged_group:
                yield _group_of(pending)
            if damaged_group is not None:
                # A damaged view (its json unreadable) damages its group, as a group-layout
                # sample with damaged json is: the group is left out whole, whichever of its
                # views is hit (else its other views would pass as a shorter group).
                dropped = damaged_group
            pending = []
            yield sample
            continue
        if metadata["group_id"] == dropped:
            continue
        dropped = None
        # Another group id, or the same group read again (a resampler can draw a one-group
        # shard twice in a row: its view numbers then start over), starts a new group.
        if pending and (pending[0][1]["group_id"] != metadata["group_id"]
                        or 0 <= _view_number(metadata) <= _view_number(pending[-1][1])):
            yield _group_of(pending)
            pending = []
        pending.append((sample, metadata))
    if pending:
        yield _group_of(pending)


def _group_of_view_key(key) -> str | None:
    """The group id in a view sample's key ("GROUP-view2" -> "GROUP"), or None."""
    if isinstance(key, str) and re.fullmatch(r".+-view\d+", key):
        return key.rsplit("-view", 1)[0]
    return None


def _view_metadata(sample: dict) -> dict | None:
    """A view sample's metadata, or None for anything else. Known by its json (a group id, one
    view record and the top-level `view`), not by its image: a view sample whose image is lost
    is still its group's view, which the reader then lists as missing."""
    if "json" not in sample:
        return None
    try:
        metadata = json.loads(sample["json"])
    except ValueError:
        return None
    if not isinstance(metadata, dict):
        return None
    views = metadata.get("views")
    if (isinstance(metadata.get("group_id"), str) and "view" in metadata and isinstance(views, list)
            and len(views) == 1 and isinstance(views[0], dict)
            and isinstance(views[0].get("file"), str)):
        return metadata
    return None


def _view_number(metadata: dict) -> int:
    try:
        return int(metadata["view"])
    except (TypeError, ValueError):
        return -1  # unreadable: never taken for a repeat (the reader's checks reject it)


def _group_of(views: list[tuple[dict, dict]]) -> dict:
    first_sample, first = views[0]
    records = [metadata["views"][0] for _, metadata in views]
    metadata = {key: value for key, value in first.items() if key != "view"}
    metadata["views"] = records
    group = {"__key__": first["group_id"], "json": json.dumps(metadata, sort_keys=True).encode()}
    for key in ("__url__", SHARD_DRAW, "cls"):
        if key in first_sample:
            group[key] = first_sample[key]
    for (sample, _), record in zip(views, records, strict=True):
        image = next((sample[m] for m in _VIEW_IMAGE_MEMBERS if m in sample), None)
        if image is not None:  # a lost image stays missing, for the reader to report
            group[record["file"]] = image
    return group
