"""What an audit measurement is: the record each measurement module registers, what it reads,
and the scopes (whole dataset, each class, each corner case) it reports by.

A measurement module holds everything about one measurement: the function computing its
section of report.json from the view table, the `--fail-on` figures it adds to the report's
summary (with what each means), the lines `synthgen audit` prints, its part of report.html
(and the pictures that part shows), and what it moves into views.jsonl. It ends with one
`Measurement(...)` record, listed once in `measurements/__init__.py`.

Measurement modules import nothing heavy at module level (no torch, no scipy): thresholds.py
reads their `--fail-on` names before `synthgen audit` loads a model.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from synthgen.audit.classify import TextEmbeddings
    from synthgen.audit.run import AuditOptions, ViewTable
    from synthgen.audit.source import ShardProblems
    from synthgen.audit.spec import ResolvedAuditSpec

OVERALL = "overall"


@dataclass
class MeasurementInputs:
    """What every measurement reads: one row per readable view (`table`), what to measure
    (`spec`), text embeddings through the audit's encoder, and what the shard pass found."""

    table: ViewTable
    spec: ResolvedAuditSpec
    texts: TextEmbeddings
    logit_scale: float
    settings: AuditOptions
    shards: list[dict]             # the manifest's shard entries
    problems: ShardProblems        # missing, mismatched and unreadable shards and samples


def _no_figures(section: dict) -> dict:
    return {}


def _no_lines(section: dict) -> list[str]:
    return []


def _no_views(section: dict) -> set[str]:
    return set()


def _no_columns(section: dict) -> dict[str, dict]:
    return {}


@dataclass(frozen=True)
class Measurement:
    """One measurement, registered once; every field is a plain function of its own section.

    `section` is `report[name]`, the dict `measure` returned; `figures` gets it as measured,
    the others as report.json holds it (non-finite numbers None).
    """

    name: str                                           # its key in report.json
    measure: Callable[[MeasurementInputs], dict]        # -> its section
    # section, report directory, view id -> encoded image -> its part of report.html (a list
    # of HTML fragments, joined by newlines), after writing the pictures that part shows.
    html: Callable[[dict, Path, dict[str, bytes]], list[str]]
    fail_on: dict[str, str] = field(default_factory=dict)  # --fail-on name -> what it is
    # section -> {fail-on name: value, None where nothing was measured}; an infinite value
    # (a KL with a forbidden value seen) stays infinite here, so it fails `kl>...`.
    figures: Callable[[dict], dict] = _no_figures
    printed: Callable[[dict], list[str]] = _no_lines      # the lines `synthgen audit` prints
    pictured: Callable[[dict], set[str]] = _no_views      # view ids whose images the html shows
    # Moves per-view results out of the section (report.json stays small): view id ->
    # {views.jsonl column: value}.
    per_view: Callable[[dict], dict[str, dict]] = _no_columns


def worst(values, pick=max):
    """The worst of the measured `values` (the largest, or by `pick`), None if none was measured."""
    present = [v for v in values if v is not None]
    return pick(present) if present else None


def rows_by_scope(labels: list[str]) -> dict[str, np.ndarray]:
    """Indices of all rows (`overall`) and of each label's rows, labels sorted."""
    scopes: dict[str, list[int]] = defaultdict(list)
    for row, label in enumerate(labels):
        scopes[label].append(row)
    return {OVERALL: np.arange(len(labels)),
            **{name: np.array(rows, dtype=np.int64) for name, rows in sorted(scopes.items())}}


def view_scopes(table: ViewTable) -> dict[str, np.ndarray]:
    """Row indices of the whole dataset, each class and each corner case."""
    return rows_by_scope([item.scope for item in table.items])
