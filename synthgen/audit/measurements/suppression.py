"""Suppressed concepts (`suppression.CONCEPT`): how many views a CLIP still finds each concept
in, scored as `suppress: method: reject` scores it at generation time, so rates compare."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from synthgen.audit.classify import ConceptDetector
from synthgen.audit.measurements.base import OVERALL, Measurement, MeasurementInputs, view_scopes, worst
from synthgen.audit.render import html_table

if TYPE_CHECKING:
    from synthgen.audit.run import ViewTable


def measure_concept(table: ViewTable, detector: ConceptDetector) -> dict:
    spec = detector.spec
    probability = (detector.probability(table.embeddings, [item.prompt for item in table.items])
                   if len(table.items) else np.zeros(0, np.float32))
    detected = probability > spec.threshold
    per_scope = {}
    for scope, rows in view_scopes(table).items():
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
            "texts_per_view": spec.per_view, **per_scope[OVERALL], "per_scope": per_scope,
            "strongest": [{"view": table.view_ids[i], "probability": float(probability[i])}
                          for i in strongest]}


def measure(inputs: MeasurementInputs) -> dict:
    return {concept.concept: measure_concept(inputs.table, ConceptDetector(concept, inputs.texts,
                                                                           inputs.logit_scale))
            for concept in inputs.spec.concepts}


def figures(section: dict) -> dict:
    return {"suppressed": worst(c["rate"] for c in section.values())}


def printed(section: dict) -> list[str]:
    return [f"  suppressed {concept!r}: {data['detected']} of {data['views']} views above "
            f"{data['threshold']} ({data['groups_detected']} of {data['groups']} groups)"
            for concept, data in section.items()]


def report_html(section: dict, report_dir: Path, pictures: dict[str, bytes]) -> list[str]:
    return ["<h2>Suppression</h2>",
            html_table(["concept", "method", "threshold", "views", "detected", "rate", "groups",
                        "groups with a detected view"],
                       [[c, d["method"], d["threshold"], d["views"], d["detected"], d["rate"],
                         d["groups"], d["groups_detected"]] for c, d in section.items()])
            if section else "<p>No suppressed concepts in the recipe.</p>"]


MEASUREMENT = Measurement(
    name="suppression", measure=measure, html=report_html, figures=figures, printed=printed,
    fail_on={"suppressed": "largest detection rate over suppressed concepts"})
