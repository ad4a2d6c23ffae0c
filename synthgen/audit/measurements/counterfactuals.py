"""Counterfactual groups (`counterfactuals.NAME`): in groups whose views vary chosen slots (the
`slots` view strategy), did each varied attribute change as recorded, and did the held ones hold?

A group is counterfactual when the recorded value of some slot differs between its views
(values a view records itself: `ViewItem.assigned_per_view`). For each audited attribute:

- **edit success**, where the group varies the attribute: of the views whose recorded value
  differs from their group's first view's, the share read as their own recorded value. Counted
  per view (each changed view is one edit); a group's views share a layout and a reader's
  habits, so the interval is narrower than independent draws would earn.
- **leak**, where the group holds the attribute: the share of groups whose views are not all
  read as the same value (over groups with at least two sure readings). Counted per group.

Readings are the attribute's zero-shot readings of single views (`ZeroShotAttribute`), the
same the attributes section counts; unsure views enter neither figure.
"""

from __future__ import annotations

import html
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from synthgen.audit.classify import UNSURE, ZeroShotAttribute
from synthgen.audit.measurements.base import OVERALL, Measurement, MeasurementInputs, worst
from synthgen.audit.metrics import wilson_interval
from synthgen.audit.render import html_table

if TYPE_CHECKING:
    from synthgen.audit.run import ViewTable
    from synthgen.audit.source import ViewItem


def varied_slots(items: list[ViewItem]) -> set[str]:
    """The recorded names whose values differ between these views of one group."""
    names = {name for item in items for name in item.assigned_per_view}
    return {name for name in names if len({str(item.assigned.get(name)) for item in items}) > 1}


def counterfactual_groups(table: ViewTable) -> dict[int, tuple[list[int], set[str], dict]]:
    """Group -> (its embedded rows in view order, the slots its views vary, the values its
    first view records), for groups that vary one. What a group varies and its first view's
    values come from every view its json lists: a damaged view 0 is still the reference."""
    rows_of: dict[int, list[int]] = defaultdict(list)
    for row, group in enumerate(table.group_array.tolist()):
        rows_of[group].append(row)
    groups = {}
    for group, rows in rows_of.items():
        rows = sorted(rows, key=lambda row: table.items[row].view)
        listed = sorted(table.listed_items.get(group) or [table.items[row] for row in rows],
                        key=lambda item: item.view)
        varied = varied_slots(listed)
        if varied:
            groups[group] = (rows, varied, listed[0].assigned)
    return groups


def _rate(hits: int, total: int) -> dict:
    low, high = wilson_interval(hits, total)
    return {"count": hits, "of": total, "rate": hits / total if total else None,
            "ci95": [low, high]}


@dataclass
class _Tally:
    """One scope's counts for one attribute."""

    edits_read_as_recorded: int = 0
    sure_edits: int = 0
    unsure_edits: int = 0
    groups_leaked: int = 0
    groups_judged: int = 0      # holding it, with two sure readings or more
    groups_varying: int = 0
    groups_holding: int = 0


def measure_attribute(table: ViewTable, groups: dict, attribute, texts, logit_scale: float,
                      margin: float) -> dict:
    """Edit success and leak of one attribute, overall and per class / corner case."""
    choice, _ = ZeroShotAttribute(attribute, texts, logit_scale, margin).classify(table.embeddings)
    values = attribute.values
    name = attribute.name
    tallies: dict[str, _Tally] = defaultdict(_Tally)
    for rows, varied, reference in groups.values():
        counts = [tallies[OVERALL], tallies[table.items[rows[0]].scope]]
        if name in varied:
            first = str(reference.get(name))
            for row in rows:
                recorded = str(table.items[row].assigned.get(name))
                if recorded == first or recorded not in values:
                    continue  # not an edit, or a value the audit does not read
                for tally in counts:
                    if choice[row] == UNSURE:
                        tally.unsure_edits += 1
                    else:
                        tally.edits_read_as_recorded += values[choice[row]] == recorded
                        tally.sure_edits += 1
            for tally in counts:
                tally.groups_varying += 1
        else:
            sure = {values[choice[row]] for row in rows if choice[row] != UNSURE}
            judged = sum(choice[row] != UNSURE for row in rows) >= 2
            for tally in counts:
                tally.groups_holding += 1
                if judged:
                    tally.groups_leaked += len(sure) > 1
                    tally.groups_judged += 1
    scopes = {}
    for scope in [OVERALL] + sorted(s for s in tallies if s != OVERALL):
        tally = tallies[scope]
        scopes[scope] = {"varied_in_groups": tally.groups_varying,
                         "held_in_groups": tally.groups_holding,
                         "edit_success": _rate(tally.edits_read_as_recorded, tally.sure_edits)
                         | {"unsure_views": tally.unsure_edits},
                         "leak": _rate(tally.groups_leaked, tally.groups_judged)}
    return {"values": list(values), "scopes": scopes}


def measure(inputs: MeasurementInputs) -> dict:
    groups = counterfactual_groups(inputs.table)
    section = {"groups": len(groups),
               "varied": sorted({slot for _, varied, _ in groups.values() for slot in varied}),
               "attributes": {}}
    if groups:
        section["attributes"] = {
            attribute.name: measure_attribute(inputs.table, groups, attribute, inputs.texts,
                                              inputs.logit_scale, inputs.spec.margin)
            for attribute in inputs.spec.attributes}
    return section


def _overall(section: dict, figure: str) -> list[dict]:
    return [metrics["scopes"][OVERALL][figure] for metrics in section["attributes"].values()]


def figures(section: dict) -> dict:
    return {"edit_failure": worst(1 - f["rate"] for f in _overall(section, "edit_success")
                                  if f["rate"] is not None),
            "leak": worst(f["rate"] for f in _overall(section, "leak"))}


def _figure_text(figure: dict, unit: str) -> str:
    if not figure["of"]:
        return f"no sure {unit}s"
    low, high = figure["ci95"]
    return (f"{figure['count']} of {figure['of']} {unit}s ({figure['rate']:.3f}, "
            f"95% CI {low:.3f}-{high:.3f})")


def printed(section: dict) -> list[str]:
    if not section["groups"]:
        return []
    lines = [f"  counterfactual groups: {section['groups']} (views vary "
             f"{', '.join(section['varied'])})"]
    for name, metrics in section["attributes"].items():
        overall = metrics["scopes"][OVERALL]
        if overall["varied_in_groups"]:
            lines.append(f"    {name} varied: read as recorded in "
                         f"{_figure_text(overall['edit_success'], 'changed view')}")
        if overall["held_in_groups"]:
            lines.append(f"    {name} held: views disagree in "
                         f"{_figure_text(overall['leak'], 'group')}")
    return lines


def report_html(section: dict, report_dir: Path, pictures: dict[str, bytes]) -> list[str]:
    e = html.escape
    parts = ["<h2>Counterfactual groups</h2>"]
    if not section["groups"]:
        return parts + ["<p>No group's views vary a recorded slot (the <code>slots</code> view "
                        "strategy makes such groups).</p>"]
    parts.append(f"<p>{section['groups']} groups whose views vary "
                 f"{e(', '.join(section['varied']))}. Edit success: of the views whose recorded "
                 "value differs from their group's first view's, the share read as recorded "
                 "(per view). Leak: of the groups holding the attribute, the share whose views "
                 "are read as different values (per group, two sure readings or more).</p>")
    rows = []
    for name, metrics in section["attributes"].items():
        for scope, data in metrics["scopes"].items():
            edit, leak = data["edit_success"], data["leak"]
            rows.append([name, scope, data["varied_in_groups"],
                         f"{edit['count']}/{edit['of']}", edit["rate"],
                         f"{edit['ci95'][0]:.3f}-{edit['ci95'][1]:.3f}", edit["unsure_views"],
                         data["held_in_groups"], f"{leak['count']}/{leak['of']}", leak["rate"],
                         f"{leak['ci95'][0]:.3f}-{leak['ci95'][1]:.3f}"])
    parts.append(html_table(["attribute", "scope", "groups varying it", "edits read as recorded",
                             "edit success", "95% CI", "unsure edited views", "groups holding it",
                             "groups that leaked", "leak", "95% CI"], rows))
    return parts


MEASUREMENT = Measurement(
    name="counterfactuals", measure=measure, html=report_html, figures=figures, printed=printed,
    fail_on={
        "edit_failure": "largest share, over attributes varied within groups, of changed views "
                        "not read as their recorded value",
        "leak": "largest share, over attributes held within counterfactual groups, of groups "
                "whose views are read as different values",
    })
