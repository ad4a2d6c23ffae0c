"""Audit figures found wrong in review (correctness, not faults): each test plants a dataset
whose right answer is known, checks it against an independent reference, and fails on the code
it was written against for the reason its docstring names."""

from __future__ import annotations

import math
import re
from collections import Counter

import pytest
from audit_fixtures import MeanColourEncoder, build_dataset

from synthgen.audit.command import format_summary
from synthgen.audit.report import write_report
from synthgen.audit.run import AuditOptions, run_audit
from synthgen.audit.spec import parse_attribute_option, spec_from_recipe
from synthgen.plan import make_plan
from synthgen.recipe import parse_recipe

COLOUR = "colour=red,green,blue"


def _recipe(views: str, prompt_mode: str = "sample", groups: int = 2000):
    """A real recipe (validated by recipe.py) with colour weights red 8 : green 1 : blue 1."""
    return parse_recipe(f"""
name: review
seed: 1
model: {{id: builtin:tiny-random}}
templates: ["a {{colour}} {{class}}"]
prompt_mode: {prompt_mode}
slots:
  colour: {{red: 8, green: 1, blue: 1}}
classes:
  - {{name: circle, groups: {groups}}}
views:
{views}
""")


def _shares(counter: Counter) -> dict[str, float]:
    total = sum(counter.values())
    return {value: counter[value] / total for value in ("red", "green", "blue")}


def _kl(p: dict[str, float], q: dict[str, float]) -> float:
    return sum(p[v] * math.log(p[v] / q[v]) for v in p if p[v] > 0)


def _audit(tmp_path, groups, recipe_json):
    dataset = build_dataset(tmp_path / "data", groups, recipe_json)
    spec = spec_from_recipe(recipe_json, attributes=[parse_attribute_option(COLOUR)])
    return run_audit(dataset, spec, MeanColourEncoder(), AuditOptions(progress=False))


def test_a_slots_block_without_the_slots_strategy_keeps_the_weights_as_target(tmp_path):
    """spec._view_shares (via slot_weight_targets): it treats a slot as varied per view with
    `distinct` whenever `views.slots.vary` names it, without checking that `slots` is in
    `views.strategy`. recipe.py accepts a `slots:` block beside `strategy: [seeds]` (e.g. the
    strategy switched off, block left in), and then the plan varies nothing
    (ViewsSpec.varied_slots is empty): every group draws its colour once from the weights
    (8:1:1, checked here on the plan itself). The audit instead targets the flatter
    without-replacement view shares (about 0.49 : 0.26 : 0.26), so a dataset exactly on the
    weights gets KL about 0.2 and fails `kl>0.05`. Reference: make_plan's own draw over 2,000
    groups and a hand-computed KL. Right: target = the weights (0.8, 0.1, 0.1), KL 0."""
    recipe = _recipe("  count: 2\n  strategy: [seeds]\n  slots: {vary: [colour], distinct: true}")
    plan = make_plan(recipe)
    assert all("colour" not in (view.slots or {}) for group in plan.groups for view in group.views)
    drawn = _shares(Counter(group.slots["colour"] for group in plan.groups))
    weights = {"red": 0.8, "green": 0.1, "blue": 0.1}
    assert all(abs(drawn[v] - weights[v]) < 0.03 for v in weights), drawn  # the plan draws by weight

    # 10 groups exactly on the weights, 2 views each, colour recorded per group as the plan does.
    colours = ["red"] * 8 + ["green", "blue"]
    groups = [{"class": "circle", "colours": [c, c], "slots": {"colour": c}} for c in colours]
    overall = _audit(tmp_path, groups, recipe.model_dump(mode="json")).report["attributes"]["colour"]["scopes"]["overall"]
    assert overall["counts"] == {"red": 8, "green": 1, "blue": 1}
    assert overall["target"] == pytest.approx(weights, abs=0.01)
    assert overall["kl"] == pytest.approx(0.0, abs=1e-9)


def test_a_varied_slot_under_prompt_mode_enumerate_is_drawn_by_its_weights(tmp_path):
    """spec.slot_weight_targets / _slot_proportions: under `prompt_mode: enumerate` every value
    of the slot gets an even target, also for a slot the `slots` view strategy varies. But the
    plan enumerates only the held slots (plan._held); a varied slot is drawn per view from its
    weights (plan._view_texts -> _draw_for_views), enumerate or not: red 8 : green 1 : blue 1
    gives 80% red views (checked here on make_plan over 4,000 views). So a dataset exactly on
    what the plan draws is judged against 1/3 each: KL 0.46 (hand-computed) and a tiny p.
    Right: target = the weights (0.8, 0.1, 0.1) (or their distinct-draw shares with
    `distinct: true`), KL 0."""
    recipe = _recipe("  count: 2\n  strategy: [seeds, slots]\n  slots: {vary: [colour], distinct: false}",
                     prompt_mode="enumerate")
    plan = make_plan(recipe)
    drawn = _shares(Counter(view.slots["colour"] for group in plan.groups for view in group.views))
    weights = {"red": 0.8, "green": 0.1, "blue": 0.1}
    assert all(abs(drawn[v] - weights[v]) < 0.03 for v in weights), drawn  # not 1/3 each

    # 5 groups x 2 views, each view recording its own colour (view unit), exactly 8:1:1.
    per_view = [["red", "red"], ["red", "red"], ["red", "red"], ["red", "green"], ["red", "blue"]]
    groups = [{"class": "circle", "colours": colours,
               "view_fields": [{"slots": {"colour": c}} for c in colours],
               "prompt": [f"a {c} circle" for c in colours]} for colours in per_view]
    colour = _audit(tmp_path, groups, recipe.model_dump(mode="json")).report["attributes"]["colour"]
    overall = colour["scopes"]["overall"]
    assert colour["unit"] == "view" and overall["counts"] == {"red": 8, "green": 1, "blue": 1}
    assert _kl(_shares(Counter(overall["counts"])), {v: 1 / 3 for v in weights}) > 0.4  # what even targets give
    assert overall["target"] == pytest.approx(weights, abs=0.01)
    assert overall["kl"] == pytest.approx(0.0, abs=1e-9)


def test_report_html_shows_an_infinite_kl_as_infinite_not_as_not_measured(tmp_path):
    """measurements/attributes.report_html (and report._html's summary table) put `kl` through
    render.fmt, which prints None as "-": the mark for "nothing measured". A value the recipe
    forbids (target 0) being seen makes KL infinite (None in report.json), which the printed
    line shows as "KL inf", the chart as "KL=inf" and `--fail-on kl>...` fails on as infinite;
    report.html's attribute table and summary show "-" for the same figure, so the worst
    possible KL reads as an unmeasured one. Reference: the printed summary of the same audit.
    Right: report.html shows "inf" where the printed line does."""
    recipe = {"balance": [{"attribute": "colour", "values": {"red": 1, "green": 1}, "applies_to": None}]}
    groups = [{"class": "circle", "colours": [c, c], "balance": {"colour": c}}
              for c in ("red", "green", "blue")]
    outcome = _audit(tmp_path, groups, recipe)
    overall = outcome.report["attributes"]["colour"]["scopes"]["overall"]
    assert overall["impossible_values"] == ["blue"] and outcome.summary["kl"] == math.inf
    printed = format_summary(outcome.report)
    assert "KL inf" in printed
    page = write_report(outcome, tmp_path / "report").read_text()
    section = page.split("<h3>colour</h3>", 1)[1]
    header = re.findall(r"<th>(.*?)</th>", section.split("</tr>", 1)[0])
    row = next(r for r in re.findall(r"<tr>(.*?)</tr>", section) if r.startswith("<td>overall</td>"))
    cells = re.findall(r"<td>(.*?)</td>", row)
    assert cells[header.index("KL")] == "inf", f"report.html KL cell {cells[header.index('KL')]!r}, printed 'KL inf'"


def test_overwrite_knows_every_file_an_audit_writes(tmp_path):
    """`generate --overwrite` removes from audit/ exactly the files synthgen audit writes
    (write.AUDIT_FILES and AUDIT_PICTURE_FOLDERS) and leaves the user's own; a report file
    missing from that list would outlive the dataset it described."""
    from synthgen.write import AUDIT_FILES, AUDIT_PICTURE_FOLDERS

    recipe = {"balance": [{"attribute": "colour", "values": {"red": 1, "green": 1}, "applies_to": None}]}
    groups = [{"class": "circle", "colours": [c, c], "balance": {"colour": c}}
              for c in ("red", "green", "red", "green")]
    dataset = build_dataset(tmp_path / "data", groups, recipe)
    report = tmp_path / "report"
    spec = spec_from_recipe(recipe, attributes=[parse_attribute_option(COLOUR)])
    outcome = run_audit(dataset, spec, MeanColourEncoder(),
                        AuditOptions(progress=False, cache_path=report / "embeddings.npz"))
    write_report(outcome, report)
    written = {path.relative_to(report).parts[0] for path in report.rglob("*") if path.is_file()}
    assert {"report.json", "report.html", "embeddings.npz"} <= written
    assert written <= set(AUDIT_FILES) | set(AUDIT_PICTURE_FOLDERS), written - set(AUDIT_FILES)
