"""Views and groups (`similarity`): how alike a group's views are (mean cosine within a group)
against how diverse the groups are (mean cosine between views of different groups), per class
or corner case and per view strategy. Descriptive: no --fail-on figure."""

from __future__ import annotations

import html
from pathlib import Path

from synthgen.audit.measurements.base import Measurement, MeasurementInputs
from synthgen.audit.render import html_table
from synthgen.audit.similarity import view_similarity_table


def measure(inputs: MeasurementInputs) -> dict:
    table, pairs = inputs.table, inputs.settings.pairs_per_label
    scopes = [item.scope for item in table.items]
    return {
        "per_class": view_similarity_table(table.embeddings, table.group_array, scopes, pairs),
        "per_strategy": view_similarity_table(table.embeddings, table.group_array,
                                              [item.strategy for item in table.items], pairs,
                                              classes=scopes),
    }


def report_html(section: dict, report_dir: Path, pictures: dict[str, bytes]) -> list[str]:
    parts = ["<h2>Views and groups</h2><p>Mean cosine between views of one group (alike) and "
             "between random views of different groups of the same class (diversity).</p>"]
    for title, table in (("per class / corner case", section["per_class"]),
                         ("per view strategy", section["per_strategy"])):
        parts.append(f"<h3>{html.escape(title)}</h3>")
        parts.append(html_table(["label", "groups", "views", "within group", "between groups",
                                 "pairs used", "pairs there are"],
                                [[k, v["groups"], v["views"], v["within_group"], v["between_groups"],
                                  v["pairs_sampled"], v["pairs_possible"]] for k, v in table.items()]))
    return parts


MEASUREMENT = Measurement(name="similarity", measure=measure, html=report_html)
