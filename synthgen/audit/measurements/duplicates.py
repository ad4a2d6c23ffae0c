"""Near-duplicates (`duplicates`): pairs of views of different groups whose embeddings' cosine
is above the threshold, found blockwise (no all-pairs matrix); the closest pairs pictured."""

from __future__ import annotations

import html
from pathlib import Path

import numpy as np

from synthgen.audit.measurements.base import Measurement, MeasurementInputs
from synthgen.audit.render import fmt, pair_sheet, write_png
from synthgen.audit.similarity import near_duplicates

PICTURE = "duplicates.png"
PICTURED_PAIRS = 8


def measure(inputs: MeasurementInputs) -> dict:
    table, threshold = inputs.table, inputs.spec.duplicate_threshold
    # Black views are all alike; they are reported under integrity, not as duplicates.
    rows = np.nonzero(~table.black_array)[0] if len(table.items) else np.zeros(0, np.int64)
    groups_total = len(table.group_of_key)
    if len(rows) < 2:
        return {"threshold": threshold, "view_pairs": 0, "group_pairs": 0, "groups_involved": 0,
                "rate": 0.0 if groups_total else None, "examples": []}
    found = near_duplicates(table.embeddings[rows], table.group_array[rows], threshold,
                            keep=max(inputs.settings.duplicate_examples, 100),
                            device=inputs.settings.device)
    examples = [{"a": table.view_ids[rows[a]], "b": table.view_ids[rows[b]], "cosine": cosine}
                for a, b, cosine in found["top"]]
    return {"threshold": threshold, "view_pairs": found["view_pairs"],
            "group_pairs": found["group_pairs"], "groups_involved": len(found["groups_involved"]),
            "rate": len(found["groups_involved"]) / groups_total, "examples": examples}


def figures(section: dict) -> dict:
    return {"duplicates": section["rate"]}


def printed(section: dict) -> list[str]:
    return [f"  duplicates: {section['view_pairs']} view pairs, {section['groups_involved']} groups"]


def pictured(section: dict) -> set[str]:
    return {view for pair in section["examples"][:PICTURED_PAIRS] for view in (pair["a"], pair["b"])}


def report_html(section: dict, report_dir: Path, pictures: dict[str, bytes]) -> list[str]:
    parts = [f"<h2>Near-duplicates</h2><p>{section['view_pairs']} view pairs in "
             f"{section['group_pairs']} group pairs above cosine {section['threshold']}; "
             f"{section['groups_involved']} groups involved (rate {fmt(section['rate'])}).</p>"]
    pairs = section["examples"][:PICTURED_PAIRS]
    if pairs:
        write_png(report_dir, PICTURE, pair_sheet(
            [(pair, pictures.get(pair["a"]), pictures.get(pair["b"])) for pair in pairs]))
        parts.append(f"<img src='{html.escape(PICTURE)}' alt='duplicate pairs'>")
    return parts


MEASUREMENT = Measurement(
    name="duplicates", measure=measure, html=report_html, figures=figures, printed=printed,
    pictured=pictured,
    fail_on={"duplicates": "fraction of groups with a near-duplicate view in another group"})
