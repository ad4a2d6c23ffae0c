"""Shards in a dataset store: samples, tar files, per-shard stats, the manifest, and state.

What holds for a dataset location (a directory or an object-store prefix, see `store.py`):
- a `shard-NNNNNN.tar` is complete: a store never shows part of a file;
- a shard is *done* only when its `.stats.json` exists, which is written after the tar, and
  the tar has the size recorded there; a resume (`prepare_output_dir`, for the shards it
  would skip) and `finalize_dataset` also check the recorded sha256, reading each tar once,
  and rebuild (or name) a shard that fails;
- `manifest.json` exists only when every planned shard is done; a run that writes it
  leaves no temporary files of dead writers;
- `recipe.json` names the recipe the location belongs to and the digest of its model's
  weights; another recipe is refused, and so are shards of other weights under the same model
  id (each shard's stats record a digest). A shard is published only while `recipe.json`
  names its recipe and weights, so a worker that outlived its run publishes nothing into a
  dataset that `--overwrite` started over with another recipe.
Tar members have fixed order, mtime, owner and mode, so equal inputs give equal bytes.

Several workers (processes, Ray actors, Slurm array tasks, on one machine or sharing a
filesystem or a bucket) may write into one location at once:
- a shard is *published* with the store's `publish_once` (`os.link` on a filesystem, a
  conditional PUT on an object store), so of two workers racing on one shard exactly one
  publishes; the loser writes nothing else. Only the publisher writes the shard's stats file.
- `prepare_output_dir` removes only stale temporary files (never a live worker's) and the
  unfinished or damaged files of the shards its own run will build.

Every function here takes a `Location`: a local path, an `s3://` (or other supported) URL,
or an open `DatasetStore`.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import platform
import re
from contextvars import ContextVar
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np
from PIL import Image

from synthgen.version import __version__
from synthgen.attributes import PLAN_REVISION
from synthgen.card import (CARD, CARD_MARKER, WIDS_INDEX, dataset_card, index_bytes, json_schema,
                           merge_schemas, wids_index)
from synthgen.errors import UserError
from synthgen.generate.identity import detectors_digest, weights_digest
from synthgen.plan import GroupPlan, Plan, make_plan, stored_size, summarize
from synthgen.recipe import Recipe, canonical_json
from synthgen.shards import (DATASET_FORMAT, MANIFEST, SHARD_FILE, SHARD_FILE_PATTERN, layout_named,
                             shard_name, stats_name, view_file)
from synthgen.store import DATASET_TEMPORARY, DatasetStore, LocalStore, Location, open_store
from synthgen.suppress import RejectSuppression

RECIPE_FILE = "recipe.json"
_OWNED_FILE = re.compile(rf"^({SHARD_FILE_PATTERN}|manifest\.json|recipe\.json|index\.json)$")
_PIL_FORMATS = {"jpg": "JPEG", "png": "PNG", "webp": "WEBP"}
# synthgen audit's default report folder inside a dataset (audit/command.py): `--overwrite`
# removes it with the dataset it described, when it holds an audit's report.json (a folder
# of that name holding only the user's own files is theirs).
AUDIT_FOLDER = "audit"
AUDIT_REPORT = "report.json"
# What synthgen audit writes there (audit/report.py, measurements/, cache.py; a test checks the
# list against a real report): --overwrite removes these, and no other file of the folder.
AUDIT_FILES = (AUDIT_REPORT, "report.html", "views.jsonl", "worst-fidelity.png", "duplicates.png",
               "embeddings.npz")
AUDIT_PICTURE_FOLDERS = ("charts", "sheets")


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
    rejecting = [entry.concept for entry in recipe.suppress if isinstance(entry, RejectSuppression)]
    views = [{**view.to_json(), **_stable_record(record, view.seed, view.anchor_seed, rejecting),
              "file": view_file(view.view, extension)}
             for view, record in zip(group.views, records, strict=True)]
    model = recipe.model.model_dump(mode="json", exclude={"negative_prompt", "trust_remote_code"})
    return {
        "group_id": group.group_id,
        "index": group.index,
        "shard": group.shard,
        # "" rather than null when there is none: readers that infer column types from the
        # first samples (Hugging Face datasets) fail on a field that is null there and a
        # string later.
        "class_name": group.class_name or "",
        "class_index": group.class_index,
        "corner_case": group.corner_case or "",
        # Every tag of the recipe, true where the group has it: a list would be empty in the
        # first samples (classes) and typed as a list of nulls by such readers.
        "tags": {tag: tag in group.tags for tag in recipe_tags(recipe)},
        "template": group.template,
        "slots": dict(group.slots),
        "balance": dict(group.balance),
        "view_strategy": list(group.view_strategy),
        "views": views,
        "model": {**model, **model_info},
        "image": {"format": extension, "size": list(stored_size(recipe)),
                  "quality": recipe.output.quality if extension != "png" else None},
        "recipe": {"name": recipe.name, "seed": recipe.seed, "hash": recipe.recipe_hash},
        "synthgen_version": __version__,
    }


def recipe_tags(recipe: Recipe) -> list[str]:
    """Every tag the recipe's corner cases name, in order of first appearance."""
    return list(dict.fromkeys(tag for case in recipe.corner_cases for tag in case.tags))


def _stable_record(record: dict, seed: int, anchor_seed: int | None, rejecting: list[str]) -> dict:
    """What sampling did to one view, with the same keys for every view of a dataset that
    rejects: the retries per rejecting concept (0 when none), whether each concept still
    failed after its retries, and the seeds finally used (the planned ones when no retry).
    The sampler records only what happened; a reader that infers its column types from the
    first samples would type keys that are absent there as nulls, or drop them."""
    if not rejecting:
        return record
    failed = set(record.get("suppression_failed", ()))
    stable = {"rejections": {concept: record.get("rejections", {}).get(concept, 0)
                             for concept in rejecting},
              "suppression_failed": {concept: concept in failed for concept in rejecting},
              "seed_used": record.get("seed_used", seed)}
    if anchor_seed is not None:
        stable["anchor_seed_used"] = record.get("anchor_seed_used", anchor_seed)
    return {**record, **stable}


def build_sample(group: GroupPlan, images: list[bytes], metadata: dict, extension: str) -> dict:
    """One webdataset sample: key, one file per view, json metadata and the class index."""
    sample = {"__key__": group.group_id, "json": canonical_json(metadata),
              "cls": str(group.class_index).encode()}
    for view, data in zip(group.views, images, strict=True):
        sample[view_file(view.view, extension)] = data
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
    # The type every tar sample's json fits (`card.json_schema`): the dataset card declares it.
    json_schema: object = "null"

    def to_json(self) -> dict:
        return {"shard": self.shard, "name": shard_name(self.shard), "samples": self.samples,
                "images": self.images, "bytes": self.bytes, "sha256": self.sha256,
                "nonfinite_views": [list(item) for item in self.nonfinite_views],
                "rejections": dict(sorted(self.rejections.items())), "model": self.model,
                "json_schema": self.json_schema}


@dataclass(frozen=True)
class PublishResult:
    """What `publish_shard` did: `published` is False when another worker had published first."""

    stats: ShardStats
    published: bool


def write_shard(location: Location, shard: int, samples: list[dict], model_info: dict,
                nonfinite_views: tuple[tuple[str, int], ...] = (),
                layout: str = "group") -> ShardStats:
    """Write one shard (tar, then stats last), replacing any earlier one, and return its stats.

    For one writer; where several workers may build the same shard, use `publish_shard`.
    `nonfinite_views` lists (group id, view) whose model output had NaN/inf and was stored
    black: recorded per item so the run goes on and the audit can find them.
    """
    store = open_store(location)
    data, stats = shard_tar(shard, samples, model_info, nonfinite_views, layout)
    store.write(shard_name(shard), data)
    store.write(stats_name(shard), canonical_json(stats.to_json()) + b"\n")
    return stats


def publish_shard(location: Location, shard: int, samples: list[dict], model_info: dict,
                  nonfinite_views: tuple[tuple[str, int], ...] = (),
                  layout: str = "group") -> PublishResult:
    """Publish one shard unless another worker has: tar first (`publish_once`), then stats.

    Exactly one of several workers racing on a shard publishes it and writes its stats; the
    others get `published=False` and write nothing (their stats are what the shard would have
    had). A tar already there is never replaced: a rerun removes unfinished ones first
    (`prepare_output_dir`, `remove_unfinished_shard`).

    Before and after the tar appears, `recipe.json` must name the samples' recipe hash and
    `model_info`'s weights (`check_claim`): a worker whose run was replaced meanwhile (another
    recipe with `--overwrite`, or a coordinator killed and rerun) gets a `UserError` and
    leaves nothing published.
    """
    store = open_store(location)
    data, stats = shard_tar(shard, samples, model_info, nonfinite_views, layout)
    recipe_hashes = {json.loads(sample["json"])["recipe"]["hash"] for sample in samples}
    check_claim(store, shard, recipe_hashes, model_info.get("weights"))
    published = store.publish_once(shard_name(shard), data)
    if published:
        try:
            # Again: a run with --overwrite may have claimed the location since the first look.
            check_claim(store, shard, recipe_hashes, model_info.get("weights"))
        except UserError:
            store.remove(shard_name(shard))
            raise
        # Stats last: a shard counts as done only once this file exists.
        store.write(stats_name(shard), canonical_json(stats.to_json()) + b"\n")
    return PublishResult(stats=stats, published=published)


def check_claim(location: Location, shard: int, recipe_hashes: set[str],
                weights: str | None) -> None:
    """A `UserError` unless `recipe.json` names the one recipe hash in `recipe_hashes` and, if
    it records weights, `weights`: what a shard about to be published must match."""
    store = open_store(location)
    record = read_recipe_record(
        store, f"{shard_name(shard)} was not published; pass --overwrite to start the dataset "
        "over, or choose another --out") or {}
    recorded_hash, recorded_weights = record.get("recipe_hash"), record.get("weights")
    shown = ", ".join(sorted(str(h)[:12] for h in recipe_hashes))
    if recipe_hashes != {recorded_hash}:
        raise UserError(
            f"--out {store.location}: {shard_name(shard)} of recipe {shown} was not published: "
            f"{RECIPE_FILE} now names recipe {str(recorded_hash)[:12]}, so another run replaced "
            "this dataset (--overwrite) while this one was building; let that run finish, or "
            "give this one another --out")
    if recorded_weights not in (None, weights):
        raise UserError(
            f"--out {store.location}: {shard_name(shard)} made with weights {weights} was not "
            f"published: {RECIPE_FILE} records the dataset's weights as {recorded_weights} (the "
            "model changed since this run started, or another run with other weights replaced "
            "the dataset); pass --overwrite to start over with these weights, or choose "
            "another --out")


def shard_tar(shard: int, samples: list[dict], model_info: dict,
              nonfinite_views: tuple[tuple[str, int], ...] = (),
              layout: str = "group") -> tuple[bytes, ShardStats]:
    """The shard's tar bytes and its stats. `samples` are group samples (`build_sample`);
    `layout` (the recipe's `output.layout`, see `shards.py`) turns them into tar samples."""
    import webdataset

    buffer = io.BytesIO()
    tar_jsons = []
    # mtime 0, fixed owner and mode, members sorted by name inside each sample: equal
    # samples give equal bytes whoever writes them.
    with webdataset.TarWriter(buffer, user="synthgen", group="synthgen", mode=0o444,
                              encoder=False, mtime=0) as writer:
        for sample in samples:
            for tar_sample in layout_named(layout).tar_samples(sample):
                writer.write(tar_sample)
                tar_jsons.append(json.loads(tar_sample["json"]))
    data = buffer.getvalue()
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
        json_schema=json_schema(tar_jsons),
    )
    return data, stats


# What a stats file must hold, and of which type, for its shard to count as done (`ShardStats.to_json`).
_STATS_FIELDS = {"name": str, "samples": int, "images": int, "bytes": int, "sha256": str,
                 "nonfinite_views": list, "model": dict}


def read_stats(location: Location, shard: int) -> dict | None:
    """The stats of `shard`, or None when it has none or they are damaged: not JSON, or
    without a field the resume and the manifest read (one flipped bit in a key still parses).
    A shard with damaged stats is rebuilt like an unfinished one."""
    data = open_store(location).read(stats_name(shard))
    if data is None:
        return None
    try:
        stats = json.loads(data)
    except ValueError:
        return None
    if not isinstance(stats, dict) or any(
            not isinstance(stats.get(field), kind) or isinstance(stats.get(field), bool)
            for field, kind in _STATS_FIELDS.items()):
        return None
    # A flipped bit in the name would have the manifest list one shard twice and this one never.
    if stats["name"] != shard_name(shard) or stats.get("shard", shard) != shard:
        return None
    return stats


def stats_fit_plan(stats: dict, plan: Plan, shard: int) -> bool:
    """Whether a shard's stats count the groups and images the plan puts in it: its tar can
    match the recorded size and sha256 while a flipped digit in `samples` would have the
    manifest claim a group that is not there."""
    return (stats["samples"], stats["images"]) == plan.shard_size(shard)


def read_recipe_record(store: DatasetStore, fix: str) -> dict | None:
    """`recipe.json` at `store` as a dict (None when there is none); a damaged one (not JSON,
    not an object) is a `UserError` that names it and says `fix`."""
    data = store.read(RECIPE_FILE)
    if data is None:
        return None
    try:
        record = json.loads(data)
    except ValueError as error:  # also bytes that are not UTF-8
        record, reason = None, f"not JSON ({error})"
    else:
        reason = "not a JSON object"
    if not isinstance(record, dict):
        raise UserError(f"{store.location}/{RECIPE_FILE} is damaged: {reason}; {fix}")
    return record


def done_shard_stats(location: Location, shard: int, verify: bool = False) -> dict | None:
    """The stats of `shard` if it is done, else None.

    Done: its stats file exists and its tar has the size recorded there; with `verify`, the
    tar's sha256 is also the recorded one (the tar is read once, as a stream). Bytes flipped
    inside an image or the json keep the size, so only `verify` catches them.
    """
    store = open_store(location)
    stats = read_stats(store, shard)
    if not stats or store.size(shard_name(shard)) != stats["bytes"]:
        return None
    if verify and store.sha256(shard_name(shard)) != stats["sha256"]:
        return None
    return stats


def shard_done(location: Location, shard: int) -> bool:
    """Whether `shard` is done, checked by size (`done_shard_stats`)."""
    return done_shard_stats(location, shard) is not None


def missing_shards(location: Location, plan: Plan) -> list[int]:
    """The planned shards that are not done at `location` (checked by size), in order."""
    store = open_store(location)
    return [shard for shard in range(plan.shard_count) if not shard_done(store, shard)]


def format_shard_ranges(shards) -> str:
    """[0, 1, 2, 5, 7, 8] -> '0-2,5,7-8' (the syntax `--shards` reads)."""
    ordered = sorted(set(shards))
    parts = []
    start = previous = None
    for shard in ordered + [None]:
        if start is not None and (shard is None or shard != previous + 1):
            parts.append(str(start) if start == previous else f"{start}-{previous}")
            start = None
        if shard is not None and start is None:
            start = shard
        previous = shard
    return ",".join(parts)


def remove_unfinished_shard(location: Location, shard: int) -> None:
    """Remove what a worker killed mid-publish left of `shard` (a tar without stats).

    Only the run that is about to build `shard`, with no other live worker on it, may call
    this: a tar without stats is also what a live publisher shows between its two writes.
    """
    store = open_store(location)
    if not shard_done(store, shard):
        store.remove(stats_name(shard))
        store.remove(shard_name(shard))


def remove_stale_temporaries(location: Location, now: float | None = None) -> list[str]:
    """Remove temporary files no live writer will rename; returns their names.

    A live worker's temporary file (on this host or another) is left alone; see
    `LocalStore.remove_stale_temporaries` for what counts as stale.
    """
    return open_store(location).remove_stale_temporaries(now)


def prepare_output_dir(location: Location, plan: Plan, overwrite: bool,
                       shards: tuple[int, ...] | None = None) -> set[int]:
    """Make `location` ready for `plan` and return the shards already done there (all of them).

    Refuses a directory made from another recipe, or whose done shards were made by other
    weights than the recipe's model has now (`generate/identity.py`), unless `overwrite`
    (which also removes the deleted dataset's `audit/` folder); removes stale temporary files
    and the unfinished or damaged files of the shards this run will build (`shards`, default
    all), and records the recipe and weights. The done shards of the selection are checked
    against their recorded sha256 (each tar read once), the others by size. Only files
    synthgen writes are ever removed. Safe when several workers prepare one directory at once,
    as long as none passes `overwrite` (which deletes the dataset) and no two runs build the
    same shards.
    """
    recipe = plan.recipe
    store = open_store(location)
    store.prepare()
    # Only a dataset (one that recipe.json claims) is ever deleted or written over: a folder
    # without one holds the user's own files, whatever their names.
    claimed = store.size(RECIPE_FILE) is not None
    if not claimed:
        foreign = [name for name in store.names()
                   if _OWNED_FILE.match(name)]
        if foreign:
            raise UserError(
                f"--out {store.location}: holds {', '.join(foreign[:4])}"
                f"{' and more' if len(foreign) > 4 else ''} but no {RECIPE_FILE}, so they are "
                "not a synthgen dataset's, and this run would write over them; choose an empty "
                "or new --out")
    if overwrite and claimed:
        # This run's claim replaces the old one first: from then on a run still building the
        # old dataset fails its claim check before it publishes (and cannot claim again), so
        # no shard of it appears after the listing below.
        store.write(RECIPE_FILE, _recipe_record(recipe, None))
        _claimed(store, recipe)
        for name in store.names():
            if name != RECIPE_FILE and (_OWNED_FILE.match(name) or DATASET_TEMPORARY.match(name)):
                store.remove(name)
        _remove_own_card(store)
        _remove_audit_report(store)
    # 1. Claim the location for this recipe; of workers starting at once, one writes it.
    #    (The weights are recorded below: another recipe is refused before its model is looked at.)
    record = {"recipe_hash": recipe.recipe_hash, "weights": None}
    if store.publish_once(RECIPE_FILE, _recipe_record(recipe, None)):
        _claimed(store, recipe)
    else:
        record = read_recipe_record(store, "pass --overwrite to delete that dataset and start "
                                           "over, or choose another --out") or {}
        if record.get("recipe_hash") != recipe.recipe_hash:
            raise UserError(
                f"--out {store.location}: holds a dataset made from a different recipe (hash "
                f"{str(record.get('recipe_hash'))[:12]}, this recipe {recipe.recipe_hash[:12]}); "
                "choose another --out, or pass --overwrite to delete that dataset and start over")
        if _written_order_differs(record, recipe, plan):
            raise UserError(
                f"--out {store.location}: holds a dataset made from this recipe with its slot or "
                "balance values in another order, which plans other groups; restore the order "
                f"recorded in {RECIPE_FILE}, or pass --overwrite to start over")
        check_plan_revision(store, record, plan)
    # None: a hub model not downloaded yet; publishers and `write_manifest` check the shards.
    weights = weights_digest(recipe.model)
    # 2. Debris of killed writers: only temporaries no live process will rename.
    store.remove_stale_temporaries()
    # 3. The done shards, each stats file read once: the selection's by digest, as this run
    #    would otherwise skip them; the others (other slices' work) by size.
    selected = set(range(plan.shard_count) if shards is None else shards)
    stats_by_shard = {}
    for shard in range(plan.shard_count):
        stats = done_shard_stats(store, shard, verify=shard in selected)
        if stats is not None and stats_fit_plan(stats, plan, shard):
            stats_by_shard[shard] = stats
    if weights is not None:
        _refuse_other_weights(store, recipe, stats_by_shard, weights)
    detectors = detectors_digest(recipe)
    if detectors is not None:
        _refuse_other_detectors(store, stats_by_shard, detectors)
    recorded = weights if weights is not None else record.get("weights")
    if record.get("weights") != recorded or record.get("plan_revision") != PLAN_REVISION:
        # Just claimed, or claimed under weights nothing was built with: publishers must match
        # these. (A record of an earlier plan revision whose plan is today's, or that nothing
        # was built under, takes this one: `check_plan_revision` passed.)
        store.write(RECIPE_FILE, _recipe_record(recipe, recorded))
    # 4. Unfinished or damaged shards of this run's own selection; no other run builds them.
    for shard in sorted(selected - stats_by_shard.keys()):
        store.remove(stats_name(shard))
        store.remove(shard_name(shard))
    if len(stats_by_shard) < plan.shard_count:
        _remove_finished_marks(store)
    return set(stats_by_shard)


def _remove_finished_marks(store: DatasetStore) -> None:
    """What describes a finished dataset goes when a shard is missing or damaged (the manifest
    first: it says finished)."""
    store.remove(MANIFEST)
    store.remove(WIDS_INDEX)
    _remove_own_card(store)


def _own_card(store: DatasetStore) -> bool:
    """Whether the location's README.md is a card synthgen wrote (a user's is left alone)."""
    data = store.read(CARD)
    return data is not None and CARD_MARKER.encode() in data


def _remove_own_card(store: DatasetStore) -> None:
    if _own_card(store):
        store.remove(CARD)


def _remove_audit_report(store: DatasetStore) -> None:
    """The old dataset's audit report in `AUDIT_FOLDER`: only the files synthgen audit writes
    (`AUDIT_FILES`), and only where its report.json says one is there; a link of that name is
    unlinked, the files it points at left alone."""
    if isinstance(store, LocalStore) and (store.root / AUDIT_FOLDER).is_symlink():
        store.remove_folder(AUDIT_FOLDER)
        return
    if store.size(f"{AUDIT_FOLDER}/{AUDIT_REPORT}") is None:
        return
    for name in AUDIT_FILES:
        store.remove(f"{AUDIT_FOLDER}/{name}")
    for folder in AUDIT_PICTURE_FOLDERS:
        store.remove_folder(f"{AUDIT_FOLDER}/{folder}")
    if isinstance(store, LocalStore):
        with contextlib.suppress(OSError):  # kept where the user's own files remain
            (store.root / AUDIT_FOLDER).rmdir()


def _refuse_other_weights(store: DatasetStore, recipe: Recipe, stats_by_shard: dict[int, dict],
                          weights: str | None, compared_with: str = "now") -> None:
    """One message for shards whose recorded weights are not `weights`: a dataset is made by one
    model. (Shards written before synthgen recorded weights have none, and are refused too.)"""
    other = {shard: stats["model"].get("weights", "not recorded")
             for shard, stats in stats_by_shard.items() if stats["model"].get("weights") != weights}
    if other:
        recorded = sorted(set(other.values()))
        raise UserError(
            f"--out {store.location}: shards {format_shard_ranges(other)} were made by other "
            f"weights of model.id {recipe.model.id!r} ({', '.join(recorded)}; "
            f"{compared_with} {weights}); "
            "pass --overwrite to delete that dataset and start over, or choose another --out")


def _refuse_other_detectors(store: DatasetStore, stats_by_shard: dict[int, dict], detectors: str,
                            compared_with: str = "now") -> None:
    """One message for shards whose recorded CLIP detectors (`model.detectors`) are not
    `detectors`: they decided which draws were kept. Shards that record none (made before
    synthgen recorded them) cannot tell, and pass."""
    other = {shard: stats["model"]["detectors"] for shard, stats in stats_by_shard.items()
             if stats["model"].get("detectors") not in (None, detectors)}
    if other:
        raise UserError(
            f"--out {store.location}: shards {format_shard_ranges(other)} were made with other "
            f"weights of the recipe's CLIP detectors ({', '.join(sorted(set(other.values())))}; "
            f"{compared_with} {detectors}); pass --overwrite to delete that dataset and start "
            "over, or choose another --out")


# (location, recipe hash) of the claims (recipe.json) the current run created
# (`releasing_unused_claim` opens a run): a failed run gives back only a claim it made, never
# one of another run building in the same place (a live slice, still loading its model).
_run_claims: ContextVar[set[tuple[str, str]] | None] = ContextVar("synthgen_run_claims", default=None)


def _claimed(store: DatasetStore, recipe: Recipe) -> None:
    made = _run_claims.get()
    if made is not None:
        made.add((str(store.location), recipe.recipe_hash))


def claim_for_recipe(location: Location, recipe: Recipe) -> None:
    """Record `recipe` as the location's recipe unless one is recorded (it is then `recipe`:
    `prepare_output_dir` checked). Every publisher calls this, so a claim released by a
    failed worker (`release_unused_claim`) is back before any shard of the recipe appears."""
    store = open_store(location)
    # A look first: the claim is almost always there, and creating it writes a file.
    if store.size(RECIPE_FILE) is None:
        if store.publish_once(RECIPE_FILE, _recipe_record(recipe, weights_digest(recipe.model))):
            _claimed(store, recipe)


def release_unused_claim(location: Location, recipe: Recipe) -> bool:
    """After a failed run: forget the claim for `recipe` if no shard was ever built under it.

    A run that fails before its first shard (a wrong model id, no GPU) then does not lock
    the location against the corrected recipe. Returns True if the claim was removed.
    """
    store = open_store(location)
    if (str(store.location), recipe.recipe_hash) not in (_run_claims.get() or ()):
        return False  # another run's claim (a live one, maybe still loading its model)
    try:
        record = store.read(RECIPE_FILE)
        if record is None or json.loads(record).get("recipe_hash") != recipe.recipe_hash:
            return False
        if any(SHARD_FILE.match(name) for name in store.names()):
            return False
        store.remove(RECIPE_FILE)
    except (OSError, ValueError):
        return False  # the location itself is the problem; the run's own error says so
    return True


@contextmanager
def releasing_unused_claim(location: Location, recipe: Recipe):
    """On any failure inside the block, give the location back if nothing was built in it
    (`release_unused_claim`), so a corrected recipe is not refused as "different"."""
    token = _run_claims.set(set())
    try:
        yield
    except BaseException:
        release_unused_claim(location, recipe)
        raise
    finally:
        _run_claims.reset(token)


def finalize_dataset(location: Location) -> dict:
    """Write `manifest.json` for the dataset at `location` once every shard is done.

    The plan is rebuilt from the recipe recorded in `recipe.json`, so any worker (or a
    person, with `synthgen finalize DIR`) can finish a dataset built by slices.
    """
    store = open_store(location)
    store.check_reachable()
    regenerate = ("regenerate the dataset with synthgen generate RECIPE --out "
                  f"{store.location} --overwrite")
    record = read_recipe_record(store, regenerate)
    if record is None:
        raise UserError(f"{store.location}: has no {RECIPE_FILE}, so it is not a synthgen "
                        "dataset; pass the --out of a synthgen generate run")
    recipe_path = f"{store.location}/{RECIPE_FILE}"
    try:
        recipe = Recipe.model_validate(record.get("recipe"))
    except ValueError as error:  # pydantic's ValidationError
        raise UserError(f"{recipe_path} is damaged: its recipe does not validate "
                        f"({str(error).splitlines()[0]}); {regenerate}") from None
    if recipe.recipe_hash != record.get("recipe_hash"):
        raise UserError(f"{recipe_path}: the recorded recipe hashes to {recipe.recipe_hash[:12]}, "
                        f"not the recorded {str(record.get('recipe_hash'))[:12]} (written by "
                        "another synthgen version?); finalize with the version that generated it")
    plan = make_plan(recipe)
    check_plan_revision(store, record, plan)
    # Every finished tar is read once against its recorded sha256: a manifest vouches for them.
    problems = shard_problems(store, plan, range(plan.shard_count))
    if problems:
        _remove_finished_marks(store)  # a manifest from before must not vouch for them now
        raise UserError(f"{store.location}: {describe_shard_problems(problems, plan.shard_count)}; "
                        f"build them with synthgen generate RECIPE --out {store.location} --shards "
                        f"{format_shard_ranges(sorted(s for shards in problems.values() for s in shards))}, "
                        "then finalize again")
    return write_manifest(store, plan)


def shard_problems(location: Location, plan: Plan, shards) -> dict[str, list[int]]:
    """What keeps `shards` out of a manifest, each tar read once against its sha256:
    {"unfinished" | "sha256" | "counts": [shard, ...]}, only the kinds found."""
    store = open_store(location)
    problems: dict[str, list[int]] = {}
    for shard in shards:
        stats = done_shard_stats(store, shard)
        if stats is None:
            kind = "unfinished"
        elif store.sha256(shard_name(shard)) != stats["sha256"]:
            kind = "sha256"
        elif not stats_fit_plan(stats, plan, shard):
            kind = "counts"
        else:
            continue
        problems.setdefault(kind, []).append(shard)
    return problems


def describe_shard_problems(problems: dict[str, list[int]], total: int) -> str:
    words = {"unfinished": lambda shards: f"{len(shards)} of {total} shards "
                                          f"{'is' if len(shards) == 1 else 'are'} not finished "
                                          f"(shards {format_shard_ranges(shards)})",
             "sha256": lambda shards: f"shards {format_shard_ranges(shards)} do not match the "
                                      "sha256 their stats file records (damaged since written)",
             "counts": lambda shards: f"the stats files of shards {format_shard_ranges(shards)} "
                                      "count other groups or images than the plan puts there "
                                      "(their stats damaged)"}
    return "; ".join(words[kind](shards) for kind, shards in problems.items())


# `recipe.json` holds the recipe's mappings in their written order (marked so): the recipe hash
# ignores that order, but the plan does not (the first of equal weights wins a quota's tie, a
# draw walks values in order), so `finalize` must rebuild the plan from the order that made it.
RECIPE_ORDER = "as written"


def _recipe_record(recipe: Recipe, weights: str | None) -> bytes:
    """`recipe.json`: the recipe (mappings in written order), its hash, and the digest of its
    model's weights (None for a hub model not downloaded yet)."""
    return json.dumps({"recipe_hash": recipe.recipe_hash, "weights": weights,
                       "order": RECIPE_ORDER, "plan_revision": PLAN_REVISION,
                       "recipe": recipe.model_dump(mode="json")},
                      indent=2).encode() + b"\n"


def check_plan_revision(store: DatasetStore, record: dict, plan: Plan) -> None:
    """A UserError if the dataset was planned by an earlier revision of the planning
    (`attributes.PLAN_REVISION`) that plans this recipe otherwise: resumed or finalized with
    today's plan it would hold groups of two plans under one recipe hash."""
    revision = record.get("plan_revision", 1)
    if revision == PLAN_REVISION or not isinstance(revision, int):
        return
    if not any(SHARD_FILE.match(name) for name in store.names()):
        return  # nothing built yet: the record is rewritten with this revision
    earlier = make_plan(plan.recipe, revision=revision)
    if _drawn(earlier) != _drawn(plan):
        raise UserError(
            f"--out {store.location}: holds a dataset planned by an earlier synthgen (plan "
            f"revision {revision}), which draws other groups for this recipe than this version "
            f"(revision {PLAN_REVISION}); pass --overwrite to start it over, or finish it with "
            "the synthgen that started it")


def _drawn(plan: Plan) -> list:
    """What a plan's groups record in their samples, and how their views are checked: two plans
    with equal `_drawn` make the same dataset."""
    return [(group.to_json(), [view.held_check for view in group.views]) for group in plan.groups]


def _written_order_differs(record: dict, recipe: Recipe, plan: Plan) -> bool:
    """Whether the recorded recipe, which hashes as `recipe` does, plans other groups: some of
    its values listed in another order (a dataset recorded before the order was kept cannot
    tell: False). What the hash leaves out on purpose (the audit block) and orders that plan
    the same (slot names) are not a difference."""
    if record.get("order") != RECIPE_ORDER:
        return False
    recorded = record.get("recipe")
    if not isinstance(recorded, dict):
        return True

    def generating(dumped: dict) -> str:  # as the hash reads it: the audit block left out
        return json.dumps({key: value for key, value in dumped.items() if key != "audit"})

    if generating(recorded) == generating(recipe.model_dump(mode="json")):
        return False
    # Listed in another order somewhere: only a plan tells whether that order plans otherwise
    # (slot values do; slot names do not). Rare, so planning twice here is affordable.
    try:
        recorded_recipe = Recipe.model_validate(recorded)
    except ValueError:  # pydantic's ValidationError: a damaged record plans nothing we can compare
        return True
    return _drawn(make_plan(recorded_recipe)) != _drawn(plan)


def library_versions() -> dict:
    import diffusers
    import torch
    import transformers
    import webdataset

    return {"synthgen": __version__, "torch": torch.__version__,
            "diffusers": diffusers.__version__, "transformers": transformers.__version__,
            "webdataset": getattr(webdataset, "__version__", "unknown"),
            "python": platform.python_version()}


def write_manifest(location: Location, plan: Plan) -> dict:
    """Assemble `manifest.json` from the stats files alone; refuses while a shard is missing.

    Removes the temporary files of dead writers first: a finished dataset holds none.
    """
    store = open_store(location)
    store.remove_stale_temporaries()
    shards = []
    for shard in range(plan.shard_count):
        stats = read_stats(store, shard)
        if stats is None:
            raise UserError(f"{store.location}: shard {shard_name(shard)} is not finished; "
                            "rerun synthgen generate to complete the dataset")
        shards.append(stats)
    # Shards resumed with other weights are refused before they are built; this catches
    # runs that wrote here at the same time under different weights.
    first_weights = shards[0]["model"].get("weights")
    _refuse_other_weights(store, plan.recipe, dict(enumerate(shards)), first_weights, "shard 0 has")
    recorded = [(index, shard["model"]["detectors"]) for index, shard in enumerate(shards)
                if shard["model"].get("detectors") is not None]
    if recorded:
        _refuse_other_detectors(store, dict(enumerate(shards)), recorded[0][1], f"shard {recorded[0][0]} has")
        # Shards made before synthgen recorded detectors (a resumed dataset) were checked
        # against none; they are described with the dataset's, not counted as another model.
        models = [{**shard["model"], "detectors": recorded[0][1]} for shard in shards]
    else:
        models = [shard["model"] for shard in shards]
    manifest = {
        "format": DATASET_FORMAT,
        "recipe_hash": plan.recipe.recipe_hash,
        "recipe": plan.recipe.model_dump(mode="json"),
        "plan": summarize(plan),
        "model": models[0],
        # Shards resumed or sliced with other options (device, dtype, edits) record what made
        # them; more than one entry here means the dataset mixes them.
        "model_variants": _model_variants(shards, models),
        "versions": library_versions(),
        "totals": {"shards": len(shards), "samples": sum(s["samples"] for s in shards),
                   "images": sum(s["images"] for s in shards),
                   "bytes": sum(s["bytes"] for s in shards),
                   "nonfinite_views": sum(len(s["nonfinite_views"]) for s in shards),
                   "rejections": _sum_counts(s.get("rejections", {}) for s in shards)},
        "shards": [{key: s[key] for key in ("name", "samples", "images", "bytes", "sha256")}
                   for s in shards],
    }
    _write_reader_files(store, manifest, shards)
    store.write(MANIFEST, json.dumps(manifest, indent=2, sort_keys=True).encode() + b"\n")
    return manifest


def _write_reader_files(store: DatasetStore, manifest: dict, shards: list[dict]) -> None:
    """The dataset card and wids index (`card.py`), before the manifest that vouches for them.
    A README.md the user put there is kept: the card is then not written."""
    layout = layout_named(manifest["recipe"]["output"].get("layout", "group"))
    counts = [layout.tar_sample_count(stats) for stats in shards]
    store.write(WIDS_INDEX, index_bytes(wids_index(manifest, counts)))
    if store.size(CARD) is None or _own_card(store):
        schema = "null"
        for stats in shards:
            schema = merge_schemas(schema, stats.get("json_schema", "null"))
        store.write(CARD, dataset_card(manifest, schema, sum(counts)).encode())


def _model_variants(shards: list[dict], models: list[dict]) -> list[dict]:
    """Each distinct model description (`models`, one per shard), with the shards it made."""
    variants: dict[bytes, dict] = {}
    for stats, model in zip(shards, models, strict=True):
        key = canonical_json(model)
        variants.setdefault(key, {"model": model, "shards": []})["shards"].append(stats["name"])
    return list(variants.values())


def _sum_counts(counts) -> dict[str, int]:
    total: dict[str, int] = {}
    for mapping in counts:
        for key, value in mapping.items():
            total[key] = total.get(key, 0) + value
    return dict(sorted(total.items()))
