"""One audit: shards -> embeddings -> measurements -> report dict (+ the views its pictures show).

Stages, each a generator or a pure function over the previous one's output:
1. `source.iter_views` streams views out of the shards (sha256 checked per shard);
2. `embedded_batches` decodes and embeds them in batches, reusing cached embeddings;
3. `ViewTable` keeps one small row per view (embedding, labels, prompt), never pixels;
4. measurements over the table: attributes, suppression, fidelity, similarity, duplicates;
5. a second, targeted read fetches the encoded bytes of the few views the report pictures.

Contract of `run_audit`: returns `AuditOutcome` whose `report` is JSON-able (non-finite numbers
become None) and whose `summary` holds the numbers `--fail-on` rules read (see thresholds.py).
"""

from __future__ import annotations

import hashlib
import math
import queue
import threading
from collections import Counter, defaultdict
from dataclasses import dataclass, field, replace
from itertools import islice
from pathlib import Path

import numpy as np
import torch

from synthgen.audit import source
from synthgen.audit.cache import EmbeddingCache, save_cache
from synthgen.audit.classify import UNSURE, ConceptDetector, TextEmbeddings, ZeroShotAttribute
from synthgen.audit.decode import ImageDecoder, black_flags
from synthgen.audit.metrics import agreement_metrics, distribution_metrics
from synthgen.audit.similarity import near_duplicates, view_similarity_table
from synthgen.audit.spec import AuditSpec
from synthgen.audit.thresholds import FailRule, evaluate

# 2: attributes counted per group or per view ("unit"), recorded slot values, agreement per
# unit; unreadable_samples is a list of samples, like every other integrity entry.
REPORT_FORMAT = "synthgen-audit/2"
OVERALL = "overall"
# The integrity lists whose lengths add up to the `integrity` summary figure, in print order.
DAMAGE_KINDS = ("missing_shards", "sha256_mismatches", "unreadable_shards", "unreadable_samples",
                "missing_views", "unreadable_views", "black_views")


@dataclass
class AuditSettings:
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
        self.vectors: list[np.ndarray] = []
        self.black: list[bool] = []
        self.group_of_key: dict[str, int] = {}
        self.groups: list[int] = []
        self.items: list[source.ViewItem] = []
        self.listed_views = 0
        self.missing_views: list[str] = []
        self.unreadable_views: list[str] = []
        self.first_keys_by_scope: dict[str, list[str]] = defaultdict(list)

    def add(self, view: EmbeddedView, sheet_groups: int) -> None:
        item = view.item
        self.listed_views += 1
        group = self.group_of_key.setdefault(item.key, len(self.group_of_key))
        keys = self.first_keys_by_scope[item.scope]
        if item.key not in keys and len(keys) < sheet_groups:
            keys.append(item.key)
        if view.status == "missing":
            self.missing_views.append(item.view_id)
            return
        if view.status == "unreadable":
            self.unreadable_views.append(item.view_id)
            return
        self.view_ids.append(item.view_id)
        self.digests.append(view.digest)
        self.vectors.append(view.embedding)
        self.black.append(view.black)
        self.groups.append(group)
        # The item's bytes are not needed any more: keep only its metadata.
        self.items.append(_without_data(item))

    def freeze(self) -> None:
        self.embeddings = (np.stack(self.vectors).astype(np.float32) if self.vectors
                           else np.zeros((0, 1), np.float32))
        self.vectors = []
        self.group_array = np.array(self.groups, dtype=np.int64)
        self.black_array = np.array(self.black, dtype=bool)


def _without_data(item: source.ViewItem) -> source.ViewItem:
    return replace(item, data=None)


def run_audit(dataset_dir: Path, spec: AuditSpec, encoder, settings: AuditSettings,
              rules: list[FailRule] = ()) -> AuditOutcome:
    manifest, shards = source.dataset_shards(dataset_dir)
    problems = source.ShardProblems()
    cache = (EmbeddingCache.load(settings.cache_path, encoder.identity)
             if settings.cache_path else EmbeddingCache(encoder.identity))
    decoder = ImageDecoder(settings.device, settings.decode_workers, getattr(encoder, "input_size", None))
    table = ViewTable()
    total_views = sum(int(entry.get("images") or 0) for entry in shards) or None
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

    texts = TextEmbeddings(encoder)
    attributes = {a.name: measure_attribute(table, a, texts, encoder.logit_scale, spec.margin)
                  for a in spec.attributes}
    suppression = {c.concept: measure_concept(table, ConceptDetector(c, texts, encoder.logit_scale))
                   for c in spec.concepts}
    fidelity = measure_fidelity(table, texts, spec.fidelity_threshold, settings.worst_views)
    similarity = {
        "per_class": view_similarity_table(table.embeddings, table.group_array,
                                           [item.scope for item in table.items], settings.pairs_per_label),
        "per_strategy": view_similarity_table(table.embeddings, table.group_array,
                                              [item.strategy for item in table.items], settings.pairs_per_label,
                                              classes=[item.scope for item in table.items]),
    }
    duplicates = measure_duplicates(table, spec.duplicate_threshold, settings)
    integrity = {
        "shards": len(shards), "missing_shards": problems.missing,
        "sha256_mismatches": problems.sha256_mismatches, "unreadable_shards": problems.unreadable,
        "unreadable_samples": problems.unreadable_samples,
        "listed_views": table.listed_views, "missing_views": table.missing_views,
        "unreadable_views": table.unreadable_views,
        "black_views": [v for v, black in zip(table.view_ids, table.black) if black],
    }
    summary = summarize(attributes, suppression, fidelity, duplicates, integrity)
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
        "attributes": attributes,
        "suppression": suppression,
        "fidelity": fidelity,
        "similarity": similarity,
        "duplicates": duplicates,
        "integrity": integrity,
        "sheets": dict(table.first_keys_by_scope),
        "recorded": _sheet_recorded_values(table, spec),
        "summary": summary,
        "checks": checks,
    }
    pictures = fetch_pictures(dataset_dir, shards, report, table)
    return AuditOutcome(report=json_safe(report), summary=summary, checks=checks, pictures=pictures)


def _sheet_recorded_values(table: ViewTable, spec: AuditSpec) -> dict[str, dict[str, str]]:
    """The recorded values of the audited attributes for each view on a contact sheet."""
    keys = {key for keys in table.first_keys_by_scope.values() for key in keys}
    names = [attribute.name for attribute in spec.attributes]
    return {view_id: {name: str(item.assigned[name]) for name in names if name in item.assigned}
            for view_id, item in zip(table.view_ids, table.items) if item.key in keys}


def _progress(total: int | None, enabled: bool):
    from tqdm import tqdm

    return tqdm(total=total, unit="view", desc="audit", disable=not enabled)


def _scopes(table: ViewTable) -> dict[str, np.ndarray]:
    """Row indices of the whole dataset, each class and each corner case."""
    return _rows_by_scope([item.scope for item in table.items])


def _rows_by_scope(labels: list[str]) -> dict[str, np.ndarray]:
    """Indices of all rows (`overall`) and of each label's rows, labels sorted."""
    scopes: dict[str, list[int]] = defaultdict(list)
    for row, label in enumerate(labels):
        scopes[label].append(row)
    return {OVERALL: np.arange(len(labels)),
            **{name: np.array(rows, dtype=np.int64) for name, rows in sorted(scopes.items())}}


def attribute_unit(name: str, items: list[source.ViewItem], groups: np.ndarray) -> str:
    """What one observation of attribute `name` is: "group" or "view".

    A value recorded per view (a view's own `slots` or `balance`) can differ between a group's
    views: "view". A value recorded per group (its class, `slots` or `balance`) is the same in
    all of them: "group".
    Nothing recorded: "view" when some group's views have different prompts (the `prompt`
    view strategy can vary what a view shows), else "group" (every view drew the same text).
    """
    if any(name in item.assigned_per_view for item in items):
        return "view"
    if any(name in item.assigned for item in items):
        return "group"
    prompt_of_group: dict[int, str] = {}
    for item, group in zip(items, groups.tolist()):
        if prompt_of_group.setdefault(group, item.prompt) != item.prompt:
            return "view"
    return "group"


@dataclass
class AttributeReadings:
    """One row per counted unit (a group or a view) of one attribute."""

    choice: np.ndarray                   # value index, or UNSURE
    views: np.ndarray                    # views behind each reading (1 per view)
    items: list[source.ViewItem]         # the unit's (first) view: class, scope, recorded values


def group_readings(classifier: ZeroShotAttribute, probabilities: np.ndarray, groups: np.ndarray,
                   items: list[source.ViewItem]) -> AttributeReadings:
    """A group's reading is the margin rule applied to the mean of its views' probabilities:
    it uses how sure each view is, is unsure when its views split, and equals the view's own
    reading for a one-view group (a majority vote would need a tie rule and drop the margin)."""
    present, first_rows, inverse, views = np.unique(groups, return_index=True,
                                                    return_inverse=True, return_counts=True)
    sums = np.zeros((len(present), probabilities.shape[1]), dtype=np.float64)
    np.add.at(sums, inverse, probabilities)
    choice = classifier.decide(sums / views[:, None])
    return AttributeReadings(choice, views, [items[row] for row in first_rows])


def measure_attribute(table: ViewTable, attribute, texts: TextEmbeddings, logit_scale: float,
                      margin: float) -> dict:
    """Counts, distribution metrics against the target, unsure rate and agreement, per scope.

    Counted in the attribute's unit (`attribute_unit`): per group where all views of a group
    carry one value, so that tests and intervals count independent draws; the per-view counts
    are kept beside them (`per_view`) where a group has more than one view.
    """
    values = attribute.values
    classifier = ZeroShotAttribute(attribute, texts, logit_scale, margin)
    if len(table.items):
        choice, probabilities = classifier.classify(table.embeddings)
    else:
        choice, probabilities = np.zeros(0, np.int64), np.zeros((0, len(values)), np.float32)
    by_view = AttributeReadings(choice, np.ones(len(choice), np.int64), table.items)
    unit = attribute_unit(attribute.name, table.items, table.group_array)
    readings = (group_readings(classifier, probabilities, table.group_array, table.items)
                if unit == "group" else by_view)
    scopes = _attribute_scopes(attribute, readings)
    agreement = agreement_metrics(_recorded_pairs(attribute, readings), values)
    if unit == "group" and len(readings.views) and readings.views.max() > 1:
        view_scopes = _attribute_scopes(attribute, by_view)
        for scope, metrics in scopes.items():
            per_view = view_scopes.get(scope)
            if per_view is not None:
                metrics["per_view"] = {key: per_view[key] for key in
                                       ("units", "counts", "unsure", "kl", "chi2", "chi2_p")}
        view_agreement = agreement_metrics(_recorded_pairs(attribute, by_view), values)
        if agreement and view_agreement:
            agreement["per_view"] = {key: view_agreement[key]
                                     for key in ("units", "sure", "agree", "agreement")}
    return {"values": list(values), "templates": list(attribute.templates),
            "source": attribute.source, "unit": unit, "target_from": attribute.target_from,
            "scopes": scopes, "agreement": agreement,
            "classified": {view_id: (values[c] if c != UNSURE else None)
                           for view_id, c in zip(table.view_ids, choice)}}


def _unit_target(attribute, item: source.ViewItem) -> dict[str, float] | None:
    if attribute.target_from == "slot weights" and attribute.name not in item.assigned:
        return None  # this group's template has no such slot: nothing was drawn
    return attribute.target_for(item.class_name, item.corner_case)


def _attribute_scopes(attribute, readings: AttributeReadings) -> dict[str, dict]:
    """Distribution metrics of the readings against their targets, overall and per scope."""
    values = attribute.values
    targets = [_unit_target(attribute, item) for item in readings.items]
    has_targets = any(t is not None for t in targets)
    scopes = {}
    for scope, rows in _rows_by_scope([item.scope for item in readings.items]).items():
        if scope == OVERALL and has_targets:
            # The recipe sets targets only where applies_to says; the overall test is over those.
            rows = np.array([r for r in rows if targets[r] is not None], dtype=np.int64)
        scope_targets = [targets[r] for r in rows if targets[r] is not None]
        if scope_targets:
            target = {v: float(np.mean([t[v] for t in scope_targets])) for v in values}
            target_source = f"recipe {attribute.target_from}"
        else:
            target = {v: 1.0 / len(values) for v in values}
            target_source = "uniform (no recipe target)"
        counts = Counter(values[c] for c in readings.choice[rows] if c != UNSURE)
        metrics = distribution_metrics({v: counts.get(v, 0) for v in values}, target)
        unsure = int(np.sum(readings.choice[rows] == UNSURE))
        metrics.update(units=int(len(rows)), views=int(readings.views[rows].sum()), unsure=unsure,
                       unsure_rate=unsure / len(rows) if len(rows) else None,
                       target_source=target_source)
        scopes[scope] = metrics
    return scopes


def _recorded_pairs(attribute, readings: AttributeReadings) -> list[tuple[str, str | None]]:
    """(recorded value, reading or None for unsure) for each unit that recorded a value."""
    return [(str(item.assigned[attribute.name]),
             attribute.values[c] if c != UNSURE else None)
            for item, c in zip(readings.items, readings.choice) if attribute.name in item.assigned]


def measure_concept(table: ViewTable, detector: ConceptDetector) -> dict:
    spec = detector.spec
    probability = (detector.probability(table.embeddings) if len(table.items)
                   else np.zeros(0, np.float32))
    detected = probability > spec.threshold
    per_scope = {}
    for scope, rows in _scopes(table).items():
        # Counted per view: rejection acts on each view; the groups with a detected view say
        # whether detections cluster in groups (a concept in a group's prompt shows in all).
        groups = table.group_array[rows]
        per_scope[scope] = {"views": int(len(rows)), "detected": int(detected[rows].sum()),
                            "rate": float(detected[rows].mean()) if len(rows) else None,
                            "groups": int(len(np.unique(groups))),
                            "groups_detected": int(len(np.unique(groups[detected[rows]])))}
    strongest = np.argsort(-probability)[:8]
    return {"method": spec.method, "threshold": spec.threshold, "contrast": spec.contrast,
            "generation_detector": spec.detector,
            "prompts": spec.concept_prompts(), **per_scope[OVERALL], "per_scope": per_scope,
            "strongest": [{"view": table.view_ids[i], "probability": float(probability[i])}
                          for i in strongest]}


def measure_fidelity(table: ViewTable, texts: TextEmbeddings, threshold: float, worst: int) -> dict:
    """CLIP score (cosine of a view and its own prompt) per view; the views below threshold."""
    if not len(table.items):
        return {"threshold": threshold, "views": 0, "mean": None, "below": 0, "below_rate": None,
                "per_scope": {}, "worst": []}
    prompts = [item.prompt for item in table.items]
    unique = list(dict.fromkeys(prompts))
    index = {prompt: i for i, prompt in enumerate(unique)}
    prompt_embeddings = texts(unique)
    rows_prompt = np.array([index[p] for p in prompts])
    scores = np.einsum("ij,ij->i", table.embeddings, prompt_embeddings[rows_prompt])
    below = scores < threshold
    per_scope = {scope: {"views": int(len(rows)), "mean": float(scores[rows].mean()),
                         "below": int(below[rows].sum())}
                 for scope, rows in _scopes(table).items() if scope != OVERALL}
    lowest = np.argsort(scores)[:worst]
    return {"threshold": threshold, "views": int(len(scores)), "mean": float(scores.mean()),
            "median": float(np.median(scores)), "below": int(below.sum()),
            "below_rate": float(below.mean()), "per_scope": per_scope,
            "worst": [{"view": table.view_ids[i], "score": float(scores[i]),
                       "prompt": table.items[i].prompt, "scope": table.items[i].scope}
                      for i in lowest],
            "per_view": dict(zip(table.view_ids, scores.tolist()))}


def measure_duplicates(table: ViewTable, threshold: float, settings: AuditSettings) -> dict:
    # Black views are all alike; they are reported under integrity, not as duplicates.
    rows = np.nonzero(~table.black_array)[0] if len(table.items) else np.zeros(0, np.int64)
    groups_total = len(table.group_of_key)
    if len(rows) < 2:
        return {"threshold": threshold, "view_pairs": 0, "group_pairs": 0, "groups_involved": 0,
                "rate": 0.0 if groups_total else None, "examples": []}
    found = near_duplicates(table.embeddings[rows], table.group_array[rows], threshold,
                            keep=max(settings.duplicate_examples, 100), device=settings.device)
    examples = [{"a": table.view_ids[rows[a]], "b": table.view_ids[rows[b]], "cosine": cosine}
                for a, b, cosine in found["top"]]
    return {"threshold": threshold, "view_pairs": found["view_pairs"],
            "group_pairs": found["group_pairs"], "groups_involved": len(found["groups_involved"]),
            "rate": len(found["groups_involved"]) / groups_total, "examples": examples}


def summarize(attributes: dict, suppression: dict, fidelity: dict, duplicates: dict,
              integrity: dict) -> dict:
    """The numbers `--fail-on` reads (thresholds.METRICS); None where nothing was measured."""

    def worst(values, pick=max):
        present = [v for v in values if v is not None]
        return pick(present) if present else None

    def kl_of(metrics):
        if metrics["total"] and metrics["impossible_values"]:
            return math.inf
        return metrics["kl"]

    listed = integrity["listed_views"]
    damaged = sum(len(integrity[kind]) for kind in DAMAGE_KINDS)
    agreements = [a["agreement"] for a in (m["agreement"] for m in attributes.values()) if a]
    return {
        "kl": worst(kl_of(m["scopes"][OVERALL]) for m in attributes.values()),
        "kl_any": worst(kl_of(s) for m in attributes.values() for s in m["scopes"].values()),
        "chi2_p": worst((m["scopes"][OVERALL]["chi2_p"] for m in attributes.values()), min),
        "unsure": worst(m["scopes"][OVERALL]["unsure_rate"] for m in attributes.values()),
        "disagreement": worst(1 - a for a in agreements if a is not None),
        "suppressed": worst(c["rate"] for c in suppression.values()),
        "duplicates": duplicates["rate"],
        "low_fidelity": fidelity["below_rate"],
        "black": len(integrity["black_views"]) / listed if listed else None,
        "unreadable": len(integrity["unreadable_views"]) / listed if listed else None,
        "missing_views": len(integrity["missing_views"]) / listed if listed else None,
        "integrity": damaged,
    }


def fetch_pictures(dataset_dir: Path, shards: list[dict], report: dict, table: ViewTable) -> dict[str, bytes]:
    """Encoded bytes of the views the report shows: sheets, worst fidelity, duplicate pairs."""
    wanted_views = {entry["view"] for entry in report["fidelity"]["worst"]}
    wanted_views |= {v for pair in report["duplicates"]["examples"][:8] for v in (pair["a"], pair["b"])}
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
