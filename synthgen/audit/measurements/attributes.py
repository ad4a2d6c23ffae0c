"""Attribute balance (`attributes.NAME`): zero-shot readings counted per group or per view,
against the recipe's targets, and agreement with the values the samples recorded.

Counted in the attribute's unit (`attribute_unit`), decided group by group
(`counted_per_view`): once per group where all views of a group carry one value, so that tests
and intervals count independent draws, and per view in groups whose views vary it; the
per-view counts are kept beside them (`per_view`) where a group has more than one view.
"""

from __future__ import annotations

import html
import math
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from synthgen.audit.classify import UNSURE, ZeroShotAttribute
from synthgen.audit.measurements.base import OVERALL, Measurement, MeasurementInputs, rows_by_scope, worst
from synthgen.audit.metrics import agreement_metrics, distribution_metrics
from synthgen.audit.render import fmt, html_table, slug, write_png

if TYPE_CHECKING:
    from synthgen.audit.classify import TextEmbeddings
    from synthgen.audit.run import ViewTable
    from synthgen.audit.source import ViewItem

MAX_SCOPES_PER_CHART = 24


def counted_per_view(name: str, items: list[ViewItem], groups: np.ndarray) -> np.ndarray:
    """Per view (bool): whether its group counts attribute `name` once per view, decided
    group by group, since a recipe may vary a slot per view in one class and hold it in
    another (`classes[].views`), and counting the holding groups' views would count one draw
    several times.

    A group whose views record the value per view (a view's own `slots` or `balance`) can
    differ between its views: per view. A group that records it per group (its class, `slots`
    or `balance`) holds it: once. A group that records nothing: per view when its views have
    different prompts (the `prompt` view strategy can vary what a view shows), else once.
    """
    group_list = groups.tolist()
    varies: dict[int, bool] = {}
    records: dict[int, bool] = {}
    prompts: dict[int, set[str]] = {}
    for item, group in zip(items, group_list):
        varies[group] = varies.get(group, False) or name in item.assigned_per_view
        records[group] = records.get(group, False) or name in item.assigned
        prompts.setdefault(group, set()).add(item.prompt)
    per_view = {group: varies[group] or (not records[group] and len(prompts[group]) > 1)
                for group in varies}
    return np.array([per_view[group] for group in group_list], dtype=bool)


def attribute_unit(name: str, items: list[ViewItem], groups: np.ndarray) -> str:
    """What one observation of attribute `name` is (`counted_per_view`): "group", "view", or
    "draw" where some groups count it per view and others once."""
    per_view = counted_per_view(name, items, groups)
    if per_view.all() and len(per_view):
        return "view"
    return "draw" if per_view.any() else "group"


@dataclass
class AttributeReadings:
    """One row per counted unit (a group or a view) of one attribute."""

    choice: np.ndarray                   # value index, or UNSURE
    views: np.ndarray                    # views behind each reading (1 per view)
    items: list[ViewItem]                # the unit's (first) view: class, scope, recorded values


def group_readings(classifier: ZeroShotAttribute, probabilities: np.ndarray, groups: np.ndarray,
                   items: list[ViewItem]) -> AttributeReadings:
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
    """Counts, distribution metrics against the target, unsure rate and agreement, per scope."""
    values = attribute.values
    classifier = ZeroShotAttribute(attribute, texts, logit_scale, margin)
    if len(table.items):
        choice, probabilities = classifier.classify(table.embeddings)
    else:
        choice, probabilities = np.zeros(0, np.int64), np.zeros((0, len(values)), np.float32)
    by_view = AttributeReadings(choice, np.ones(len(choice), np.int64), table.items)
    unit = attribute_unit(attribute.name, table.items, table.group_array)
    per_view = counted_per_view(attribute.name, table.items, table.group_array)
    held = np.flatnonzero(~per_view)
    grouped = group_readings(classifier, probabilities[held], table.group_array[held],
                             [table.items[row] for row in held])
    varied = np.flatnonzero(per_view)
    readings = AttributeReadings(
        np.concatenate([grouped.choice, choice[varied]]),
        np.concatenate([grouped.views, np.ones(len(varied), np.int64)]),
        grouped.items + [table.items[row] for row in varied])
    scopes = _attribute_scopes(attribute, readings)
    agreement = agreement_metrics(_recorded_pairs(attribute, readings), values)
    if unit != "view" and len(readings.views) and readings.views.max() > 1:
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


def _unit_target(attribute, item: ViewItem) -> dict[str, float] | None:
    if attribute.target_from == "slot weights" and attribute.name not in item.assigned:
        return None  # this group's template has no such slot: nothing was drawn
    return attribute.target_for(item.class_name, item.corner_case)


def _attribute_scopes(attribute, readings: AttributeReadings) -> dict[str, dict]:
    """Distribution metrics of the readings against their targets, overall and per scope."""
    values = attribute.values
    targets = [_unit_target(attribute, item) for item in readings.items]
    has_targets = any(t is not None for t in targets)
    scopes = {}
    for scope, rows in rows_by_scope([item.scope for item in readings.items]).items():
        targeted = np.array([r for r in rows if targets[r] is not None], dtype=np.int64)
        if len(targeted):
            # The recipe sets targets only where applies_to says, and a slot's weights only for
            # the groups whose template drew it: a scope is tested over those units.
            rows = targeted
            target = {v: float(np.mean([targets[r][v] for r in rows])) for v in values}
            target_source = f"recipe {attribute.target_from}"
        else:
            target = {v: 1.0 / len(values) for v in values}
            target_source = "uniform (no recipe target)"
        counts = Counter(values[c] for c in readings.choice[rows] if c != UNSURE)
        metrics = distribution_metrics({v: counts.get(v, 0) for v in values}, target)
        unsure = int(np.sum(readings.choice[rows] == UNSURE))
        # Where the recipe sets targets, a scope it sets none for is described, not judged
        # (`kl_any` leaves it out): the uniform target there is the audit's, not the recipe's.
        metrics.update(units=int(len(rows)), views=int(readings.views[rows].sum()), unsure=unsure,
                       unsure_rate=unsure / len(rows) if len(rows) else None,
                       target_source=target_source,
                       judged=bool(len(targeted)) or not has_targets)
        scopes[scope] = metrics
    return scopes


def _recorded_pairs(attribute, readings: AttributeReadings) -> list[tuple[str, str | None]]:
    """(recorded value, reading or None for unsure) for each unit that recorded a value."""
    return [(str(item.assigned[attribute.name]),
             attribute.values[c] if c != UNSURE else None)
            for item, c in zip(readings.items, readings.choice) if attribute.name in item.assigned]


def measure(inputs: MeasurementInputs) -> dict:
    return {attribute.name: measure_attribute(inputs.table, attribute, inputs.texts,
                                              inputs.logit_scale, inputs.spec.margin)
            for attribute in inputs.spec.attributes}


def figures(section: dict) -> dict:
    def kl_of(metrics):
        if metrics["total"] and metrics["impossible_values"]:
            return math.inf
        return metrics["kl"]

    agreements = [a["agreement"] for a in (m["agreement"] for m in section.values()) if a]
    return {
        "kl": worst(kl_of(m["scopes"][OVERALL]) for m in section.values()),
        "kl_any": worst(kl_of(s) for m in section.values() for s in m["scopes"].values()
                        if s.get("judged", True)),
        "chi2_p": worst((m["scopes"][OVERALL]["chi2_p"] for m in section.values()), min),
        "unsure": worst(m["scopes"][OVERALL]["unsure_rate"] for m in section.values()),
        "disagreement": worst(1 - a for a in agreements if a is not None),
    }


def printed(section: dict) -> list[str]:
    lines = []
    for name, metrics in section.items():
        overall = metrics["scopes"][OVERALL]
        lines.append(f"  {name} (per {metrics['unit']}): {_counts_text(overall)}; "
                     f"KL {_kl_text(overall)}" + _p_text(overall))
        if "per_view" in overall:
            lines.append(f"    counted per view: {_counts_text(overall['per_view'])}"
                         + _p_text(overall["per_view"])
                         + " (for comparison only: a group's views are not independent draws)")
        agreement = metrics.get("agreement")
        if agreement and agreement["sure"]:
            low, high = agreement["ci95"]
            lines.append(f"    agrees with the recorded {name} in {agreement['agree']} of "
                         f"{agreement['sure']} sure {metrics['unit']}s ({agreement['agreement']:.3f}, "
                         f"95% CI {low:.3f}-{high:.3f}); confusion table in the report")
    return lines


def _counts_text(metrics: dict) -> str:
    counts = ", ".join(f"{v} {c}" for v, c in metrics["counts"].items())
    return f"{counts}; unsure {metrics['unsure']}"


def _p_text(metrics: dict) -> str:
    return "" if metrics["chi2_p"] is None else f", chi2 p {metrics['chi2_p']:.3g}"


def _kl_text(metrics: dict) -> str:
    if metrics["kl"] is not None:
        return f"{metrics['kl']:.4f}"
    return "inf" if metrics["total"] else "-"


def per_view(section: dict) -> dict[str, dict]:
    columns: dict[str, dict] = {}
    for name, metrics in section.items():
        for view_id, value in metrics.pop("classified", {}).items():
            columns.setdefault(view_id, {})[name] = value
    return columns


UNIT_REASONS = {
    "group": "all views of a group carry one value (recorded per group, or one prompt for all), "
             "so a group is one draw; its reading is the margin rule on the mean of its views' "
             "probabilities. Intervals and p-values count groups.",
    "view": "a group's views can differ (recorded per view, or prompts that differ between "
            "views), so each view is one draw.",
    "draw": "some groups' views can differ (recorded per view, or prompts that differ between "
            "views) and each of their views is one draw; the other groups' views carry one "
            "value, and each of those groups is one draw.",
}


def report_html(section: dict, report_dir: Path, pictures: dict[str, bytes]) -> list[str]:
    e = html.escape
    parts = ["<h2>Attributes</h2>"]
    if not section:
        parts.append("<p>No attributes: the recipe has no balance or audit.attributes, and no "
                     "--attribute was given.</p>")
    for name, metrics in section.items():
        chart = write_png(report_dir, f"charts/{slug(name)}.png", _attribute_chart(name, metrics))
        unit = metrics["unit"]
        parts.append(f"<h3>{e(name)}</h3><p>values {e(', '.join(metrics['values']))}; templates "
                     f"{e(' | '.join(metrics['templates']))} ({e(metrics['source'])}). Counted per "
                     f"<b>{e(unit)}</b>: " + e(UNIT_REASONS[unit]) + "</p>")
        rows = []
        for scope, data in metrics["scopes"].items():
            per_view_scope = data.get("per_view")
            rows.append([scope, data["units"], data["views"], data["unsure"], data["unsure_rate"],
                         " ".join(f"{v}:{c}" for v, c in data["counts"].items()), _kl_text(data),
                         data["normalised_entropy"], data["max_min_ratio"], data["chi2"],
                         data["chi2_p"], per_view_scope["chi2_p"] if per_view_scope else None,
                         data["target_source"]])
        parts.append(html_table(["scope", f"{unit}s", "views", "unsure", "unsure rate", "counts",
                                 "KL", "norm. entropy", "max/min", "chi2", "p", "p if views counted",
                                 "target"], rows))
        if metrics.get("agreement"):
            parts.append(_agreement_html(name, unit, metrics))
        parts.append(f"<img src='{e(chart)}' alt='{e(name)} distribution'>")
    return parts


def _agreement_html(name: str, unit: str, metrics: dict) -> str:
    """Agreement with the recorded values and the confusion table, recorded rows x read columns."""
    agreement = metrics["agreement"]
    columns = list(metrics["values"]) + ["unsure"]
    rows = [[recorded] + [counts.get(c, 0) for c in columns] + [sum(counts.values())]
            for recorded, counts in sorted(agreement["confusion"].items())]
    low, high = agreement["ci95"]
    text = (f"<p>Read vs recorded {html.escape(name)}: {agreement['agree']} of {agreement['sure']} "
            f"sure {unit}s agree ({fmt(agreement['agreement'])}, 95% CI {fmt(low)}-{fmt(high)}); "
            f"{agreement['unsure']} unsure, {agreement['not_read']} recorded a value the audit "
            "does not read.")
    if agreement.get("per_view"):
        view = agreement["per_view"]
        text += f" Per view: {view['agree']} of {view['sure']} ({fmt(view['agreement'])})."
    text += (" Where the recorded value is not what is read, either the images or the classifier "
             "is wrong: look at the sheets before blaming the data.</p>")
    return text + html_table(["recorded \u2193 / read \u2192"] + columns + ["total"], rows)


def _attribute_chart(name: str, metrics: dict):
    """Bars of measured proportions with 95% Wilson intervals (over the attribute's unit)
    beside target markers, per scope."""
    import matplotlib

    matplotlib.use("Agg")  # no display: charts are files
    import matplotlib.pyplot as plt

    scopes = [OVERALL] + sorted((s for s in metrics["scopes"] if s != OVERALL),
                                key=lambda s: -(metrics["scopes"][s]["kl"] or 0))[:MAX_SCOPES_PER_CHART - 1]
    columns = min(4, len(scopes))
    rows = (len(scopes) + columns - 1) // columns
    figure, axes = plt.subplots(rows, columns, figsize=(3.6 * columns, 2.6 * rows), squeeze=False)
    values = metrics["values"]
    x = np.arange(len(values))
    for axis, scope in zip(axes.flat, scopes):
        data = metrics["scopes"][scope]
        proportions = [data["proportions"].get(v, {}).get("p", 0.0) for v in values]
        # max(0, ...): rounding can put p a hair outside its own interval.
        low = [max(0.0, p - data["proportions"].get(v, {}).get("ci95", [p, p])[0]) for v, p in zip(values, proportions)]
        high = [max(0.0, data["proportions"].get(v, {}).get("ci95", [p, p])[1] - p) for v, p in zip(values, proportions)]
        axis.bar(x, proportions, color="#4c78a8", yerr=[low, high], capsize=2, label="measured")
        axis.scatter(x, [data["target"].get(v, 0.0) for v in values], color="#e45756", marker="_",
                     s=400, linewidths=2, label="target", zorder=3)
        kl = data["kl"]
        axis.set_title(f"{scope}\n{data['total']} {metrics['unit']}s, unsure={data['unsure']} "
                       f"KL={'inf' if kl is None and data['total'] else (f'{kl:.3f}' if kl is not None else '-')}",
                       fontsize=8)
        axis.set_xticks(x, values, rotation=30, fontsize=7)
        axis.set_ylim(0, 1)
    for axis in list(axes.flat)[len(scopes):]:
        axis.axis("off")
    axes.flat[0].legend(fontsize=7)
    figure.suptitle(f"attribute: {name}", fontsize=10)
    figure.tight_layout()
    return figure


MEASUREMENT = Measurement(
    name="attributes", measure=measure, html=report_html, figures=figures, printed=printed,
    per_view=per_view,
    fail_on={
        "kl": "largest KL(measured || target) over attributes, whole dataset",
        "kl_any": "largest KL over attributes and every class / corner case with a recipe target",
        "chi2_p": "smallest chi-square p-value over attributes, whole dataset, counted in each "
                  "attribute's unit (groups, or views where a group's views differ)",
        "unsure": "largest unsure rate over attributes, in each attribute's unit",
        "disagreement": "largest share of sure units (groups or views) whose reading differs from "
                        "the recorded value",
    })
