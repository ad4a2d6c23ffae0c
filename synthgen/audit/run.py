"""One audit: shards -> embeddings -> measurements -> report dict (+ the views its pictures show).

Stages, each a generator or a pure function over the previous one's output:
1. `source.iter_views` streams views out of the shards (sha256 checked per shard);
2. `embedded_batches` decodes and embeds them in batches, reusing cached embeddings;
3. `ViewTable` keeps one small row per view (embedding, labels, prompt), never pixels;
4. every registered measurement (measurements/__init__.py) computes its section of the report
   from the table, and its `--fail-on` figures from its section;
5. a second, targeted read fetches the encoded bytes of the few views the report pictures.

Contract of `run_audit`: returns `AuditOutcome` whose `report` is JSON-able (non-finite numbers
become None) and whose `summary` holds the numbers `--fail-on` rules read (see thresholds.py).
"""

from __future__ import annotations

import hashlib
import math
import queue
import threading
from collections import defaultdict
from dataclasses import dataclass, field, replace
from itertools import islice
from pathlib import Path

import numpy as np
import torch

from synthgen.audit import source
from synthgen.audit.cache import EmbeddingCache, save_cache
from synthgen.audit.classify import TextEmbeddings
from synthgen.audit.decode import ImageDecoder, black_flags
from synthgen.audit.measurements import MEASUREMENTS
from synthgen.audit.measurements.base import MeasurementInputs
from synthgen.audit.spec import ResolvedAuditSpec
from synthgen.audit.thresholds import FailRule, evaluate

# 3: an attribute's unit may be "draw" (groups counted once where they hold it, views where
# they vary it). 2: attributes counted per group or per view ("unit"), recorded slot values,
# agreement per unit; unreadable_samples is a list of samples, like every other integrity entry.
REPORT_FORMAT = "synthgen-audit/3"


@dataclass
class AuditOptions:
    batch_size: int = 64
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    cache_path: Path | None = None
    sheet_groups: int = 6          # groups per class / corner case on the contact sheets
    worst_views: int = 16          # lowest-fidelity views listed and pictured
    duplicate_examples: int = 8    # duplicate pairs pictured
    pairs_per_label: int = 2000    # pairs per class for between-group similarity (all, if fewer)
    progress: bool = True
    decode_workers: int = 4


@dataclass
class AuditOutcome:
    report: dict
    summary: dict
    checks: list[dict]
    pictures: dict[str, bytes]     # view id -> encoded image, for the views the report shows


@dataclass
class EmbeddedView:
    item: source.ViewItem
    status: str                    # ok | missing | unreadable
    embedding: np.ndarray | None
    black: bool
    digest: str | None


@dataclass
class DecodedBatch:
    """A batch of views with digests, cache hits, and decoded pixels for the rest."""

    items: list[source.ViewItem]
    digests: list[str | None]
    cached: list[tuple[np.ndarray, bool] | None]
    todo: list[int]                        # batch positions decoded (not cached, not missing)
    images: list                           # uint8 tensors or None (unreadable), per todo entry
    blacks: list[bool]


def decoded_batches(items, decoder: ImageDecoder, cache: EmbeddingCache, batch_size: int):
    """Yields `DecodedBatch`es: everything before the vision tower (reading, sha1, decode)."""
    iterator = iter(items)
    while batch := list(islice(iterator, batch_size)):
        digests = [hashlib.sha1(item.data).hexdigest() if item.data is not None else None
                   for item in batch]
        cached = [cache.get(item.view_id, digest) if digest else None
                  for item, digest in zip(batch, digests)]
        todo = [i for i, item in enumerate(batch) if item.data is not None and cached[i] is None]
        images = decoder.decode_batch([batch[i].data for i in todo])
        yield DecodedBatch(batch, digests, cached, todo, images, black_flags(images))


def embedded_batches(items, encoder, decoder: ImageDecoder, cache: EmbeddingCache, batch_size: int,
                     prefetch: int = 2):
    """Yields lists of `EmbeddedView`, one batch of views at a time.

    Reading and decoding run `prefetch` batches ahead in a background thread, so the next
    batch decodes (Pillow and nvJPEG release the GIL) while the vision tower runs.
    """
    for decoded in _ahead(decoded_batches(items, decoder, cache, batch_size), prefetch):
        readable = [k for k, image in enumerate(decoded.images) if image is not None]
        vectors = encoder.encode_images([decoded.images[k] for k in readable]) if readable else []
        fresh = {decoded.todo[k]: (vector, decoded.blacks[k]) for k, vector in zip(readable, vectors)}
        views = []
        for i, item in enumerate(decoded.items):
            found = decoded.cached[i] or fresh.get(i)
            if item.data is None:
                views.append(EmbeddedView(item, "missing", None, False, None))
            elif found is None:
                views.append(EmbeddedView(item, "unreadable", None, False, decoded.digests[i]))
            else:
                views.append(EmbeddedView(item, "ok", np.asarray(found[0], np.float32),
                                          bool(found[1]), decoded.digests[i]))
        yield views


_DONE = object()


def _ahead(iterator, depth: int):
    """Runs `iterator` in a daemon thread, `depth` items ahead; re-raises its errors here."""
    if depth <= 0:
        yield from iterator
        return
    slots: queue.Queue = queue.Queue(maxsize=depth)
    stop = threading.Event()

    def offer(entry) -> bool:
        """Put `entry` unless the consumer has gone; never blocks forever."""
        while not stop.is_set():
            try:
                slots.put(entry, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def produce():
        try:
            for value in iterator:
                if not offer((value, None)):
                    return
            offer((_DONE, None))
        except BaseException as error:  # handed to the consumer, which raises it
            offer((_DONE, error))

    worker = threading.Thread(target=produce, name="audit-read-decode", daemon=True)
    worker.start()
    try:
        while True:
            value, error = slots.get()
            if value is _DONE:
                if error is not None:
                    raise error
                return
            yield value
    finally:
        # The consumer stopped early (or failed): let the producer finish and exit.
        stop.set()
        worker.join(timeout=5)


class ViewTable:
    """One row per readable view, plus the integrity lists; built by `add`, then `freeze`."""

    def __init__(self):
        self.view_ids: list[str] = []
        self.digests: list[str] = []
        # Embeddings go straight into one float32 matrix that doubles when full: a list of
        # per-view arrays stacked at the end held every embedding twice (three times when
        # they were converted), ~14 GB at the peak for 5M views of a 128-d CLIP.
        self._matrix = np.zeros((0, 1), np.float32)
        self._rows = 0
        self.black: list[bool] = []
        self.group_of_key: dict[str, int] = {}
        self.groups: list[int] = []
        self.items: list[source.ViewItem] = []
        self.listed_views = 0
        self.missing_views: list[str] = []
        self.unreadable_views: list[str] = []
        self.first_keys_by_scope: dict[str, list[str]] = defaultdict(list)
        # Every view the sheets' groups list, present or not: a missing view keeps its column.
        self.sheet_views: dict[str, list[str]] = defaultdict(list)
        # Per group, every view its json lists (without bytes), embedded or not: what a group
        # records (view 0's values, the slots it varies) holds when a view is damaged.
        self.listed_items: dict[int, list[source.ViewItem]] = defaultdict(list)

    def add(self, view: EmbeddedView, sheet_groups: int) -> None:
        item = view.item
        self.listed_views += 1
        group = self.group_of_key.setdefault(item.key, len(self.group_of_key))
        keys = self.first_keys_by_scope[item.scope]
        if item.key not in keys and len(keys) < sheet_groups:
            keys.append(item.key)
        if item.key in keys:
            self.sheet_views[item.key].append(item.view_id)
        self.listed_items[group].append(_without_data(item))
        if view.status == "missing":
            self.missing_views.append(item.view_id)
            return
        if view.status == "unreadable":
            self.unreadable_views.append(item.view_id)
            return
        self.view_ids.append(item.view_id)
        self.digests.append(view.digest)
        self._append_embedding(view.embedding)
        self.black.append(view.black)
        self.groups.append(group)
        self.items.append(self.listed_items[group][-1])  # its metadata; the bytes are not needed

    def _append_embedding(self, vector: np.ndarray) -> None:
        if self._rows == len(self._matrix):
            grown = np.empty((max(1024, 2 * self._rows), vector.shape[-1]), np.float32)
            grown[:self._rows] = self._matrix[:self._rows]
            self._matrix = grown
        self._matrix[self._rows] = vector
        self._rows += 1

    def freeze(self) -> None:
        self.embeddings = self._matrix[:self._rows] if self._rows else np.zeros((0, 1), np.float32)
        self.group_array = np.array(self.groups, dtype=np.int64)
        self.black_array = np.array(self.black, dtype=bool)


def _without_data(item: source.ViewItem) -> source.ViewItem:
    return replace(item, data=None)


def run_audit(dataset_dir: Path, spec: ResolvedAuditSpec, encoder, settings: AuditOptions,
              rules: list[FailRule] = ()) -> AuditOutcome:
    manifest, shards = source.dataset_shards(dataset_dir)
    problems = source.ShardProblems()
    cache = (EmbeddingCache.load(settings.cache_path, encoder.identity)
             if settings.cache_path else EmbeddingCache(encoder.identity))
    decoder = ImageDecoder(settings.device, settings.decode_workers, getattr(encoder, "input_size", None))
    table = ViewTable()
    # Only for the progress bar: a manifest's odd count ("unknown", 1e999) shows no total.
    counts = [entry.get("images") for entry in shards]
    whole = all(isinstance(n, int) and not isinstance(n, bool) and n >= 0 for n in counts)
    total_views = (sum(counts) or None) if whole else None
    progress = _progress(total_views, settings.progress)
    try:
        views = source.iter_views(dataset_dir, shards, problems)
        for batch in embedded_batches(views, encoder, decoder, cache, settings.batch_size):
            for view in batch:
                table.add(view, settings.sheet_groups)
            progress.update(len(batch))
    finally:
        progress.close()
        decoder.close()
    table.freeze()
    if settings.cache_path is not None and table.view_ids:
        settings.cache_path.parent.mkdir(parents=True, exist_ok=True)
        save_cache(settings.cache_path, encoder.identity, table.view_ids, table.digests,
                   table.embeddings, table.black_array)

    inputs = MeasurementInputs(table=table, spec=spec, texts=TextEmbeddings(encoder),
                               logit_scale=encoder.logit_scale, settings=settings, shards=shards,
                               problems=problems)
    sections = {name: measurement.measure(inputs) for name, measurement in MEASUREMENTS.items()}
    summary = {figure: value for name, measurement in MEASUREMENTS.items()
               for figure, value in measurement.figures(sections[name]).items()}
    checks = evaluate(list(rules), summary)
    report = {
        "format": REPORT_FORMAT,
        "dataset": str(dataset_dir),
        "recipe": {"name": (manifest.get("recipe") or {}).get("name"),
                   "hash": manifest.get("recipe_hash")},
        "model": {"clip": spec.clip, "identity": encoder.identity,
                  "logit_scale": encoder.logit_scale},
        "settings": {"margin": spec.margin, "fidelity_threshold": spec.fidelity_threshold,
                     "duplicate_threshold": spec.duplicate_threshold,
                     "batch_size": settings.batch_size, "device": str(settings.device)},
        "totals": {"groups": len(table.group_of_key), "listed_views": table.listed_views,
                   "embedded_views": len(table.view_ids), "embeddings_from_cache": cache.hits},
        **sections,
        "sheets": dict(table.first_keys_by_scope),
        "sheet_views": dict(table.sheet_views),
        "recorded": _sheet_recorded_values(table, spec),
        "summary": summary,
        "checks": checks,
    }
    report = json_safe(report)
    pictures = fetch_pictures(dataset_dir, shards, report, table)
    return AuditOutcome(report=report, summary=summary, checks=checks, pictures=pictures)


def _sheet_recorded_values(table: ViewTable, spec: ResolvedAuditSpec) -> dict[str, dict[str, str]]:
    """The recorded values of the audited attributes for each view on a contact sheet."""
    keys = {key for keys in table.first_keys_by_scope.values() for key in keys}
    names = [attribute.name for attribute in spec.attributes]
    return {view_id: {name: str(item.assigned[name]) for name in names if name in item.assigned}
            for view_id, item in zip(table.view_ids, table.items) if item.key in keys}


def _progress(total: int | None, enabled: bool):
    from tqdm import tqdm

    return tqdm(total=total, unit="view", desc="audit", disable=not enabled)


def fetch_pictures(dataset_dir: Path, shards: list[dict], report: dict, table: ViewTable) -> dict[str, bytes]:
    """Encoded bytes of the views the report shows: the contact sheets' groups, and the views
    each measurement pictures (worst fidelity, duplicate pairs, ...)."""
    wanted_views = {view for name, measurement in MEASUREMENTS.items()
                    for view in measurement.pictured(report[name])}
    sheet_keys = {key for keys in table.first_keys_by_scope.values() for key in keys}
    keys = sheet_keys | {view.split(".", 1)[0] for view in wanted_views}
    shard_of_key = {item.key: item.shard for item in table.items}
    needed_shards = {shard_of_key[k] for k in keys if k in shard_of_key}
    pictures = {}
    ignored = source.ShardProblems()  # already reported by the first pass
    for item in source.iter_views(dataset_dir, [s for s in shards if s["name"] in needed_shards],
                                  ignored, only_keys=keys):
        if item.data is not None and (item.key in sheet_keys or item.view_id in wanted_views):
            pictures[item.view_id] = item.data
    return pictures


def json_safe(value):
    """The report with non-finite floats as None (JSON has no inf/NaN) and numpy scalars as Python."""
    if isinstance(value, dict):
        return {str(k): json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    if isinstance(value, (np.floating, float)):
        return float(value) if math.isfinite(value) else None
    if isinstance(value, np.integer):
        return int(value)
    return value
