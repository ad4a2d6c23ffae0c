"""The audit's counterfactual section on hand-built datasets: edit success where views vary an
attribute, leak where groups hold it (the fake encoder reads each view's colour)."""

from __future__ import annotations

import pytest
from audit_fixtures import MeanColourEncoder, build_dataset

from synthgen.audit.measurements import MEASUREMENTS
from synthgen.audit.run import AuditOptions, run_audit
from synthgen.audit.spec import spec_from_recipe
from synthgen.audit.thresholds import evaluate, parse_fail_on

RECIPE = {"balance": [{"attribute": "colour", "values": {"red": 1, "green": 1, "blue": 1},
                       "applies_to": None}]}


def _varying(name: str, recorded: list[str], drawn: list[str], held: dict | None = None) -> dict:
    """A group whose views record their own `name` (the slots strategy), drawn as `drawn`."""
    return {"class": "circle", "colours": drawn, "slots": held,
            "view_fields": [{"slots": {name: value}} for value in recorded],
            "strategy": ["slots"]}


def _audit(tmp_path, groups):
    dataset = build_dataset(tmp_path / "data", groups, RECIPE)
    return run_audit(dataset, spec_from_recipe(RECIPE), MeanColourEncoder(),
                     AuditOptions(progress=False))


def test_edit_success_counts_the_changed_views_read_as_recorded(tmp_path):
    outcome = _audit(tmp_path, [
        _varying("colour", ["red", "green", "blue"], ["red", "green", "blue"]),
        _varying("colour", ["red", "blue", "green"], ["red", "blue", "red"]),   # green drawn red
        _varying("colour", ["red", "red", "blue"], ["red", "blue", "olive"]),   # no edit; unsure
        {"class": "circle", "colours": ["red", "red"]},                         # not counterfactual
    ])
    section = outcome.report["counterfactuals"]
    assert section["groups"] == 3 and section["varied"] == ["colour"]
    overall = section["attributes"]["colour"]["scopes"]["overall"]
    edit = overall["edit_success"]
    # Edits: green, blue (group 1), blue, green (group 2), blue (group 3, unsure). View 1 of
    # group 3 repeats view 0's red: not an edit, although it is drawn blue.
    assert (edit["count"], edit["of"], edit["unsure_views"]) == (3, 4, 1)
    assert edit["rate"] == pytest.approx(0.75)
    assert edit["ci95"][0] < 0.75 < edit["ci95"][1]
    assert overall["varied_in_groups"] == 3 and overall["held_in_groups"] == 0
    assert outcome.summary["edit_failure"] == pytest.approx(0.25)
    assert outcome.summary["leak"] is None  # nothing held: not measured, not 0
    lines = MEASUREMENTS["counterfactuals"].printed(section)
    assert any("colour varied: read as recorded in 3 of 4 changed views" in line for line in lines)


def test_leak_counts_groups_whose_views_read_a_held_attribute_differently(tmp_path):
    held = {"colour": "red"}
    outcome = _audit(tmp_path, [
        _varying("size", ["small", "large"], ["red", "red"], held),
        _varying("size", ["small", "large"], ["red", "blue"], held),              # leaked
        _varying("size", ["small", "large", "medium"], ["red", "olive", "red"], held),  # unsure view
        _varying("size", ["small", "large"], ["olive", "red"], held),             # one sure: not judged
    ])
    overall = outcome.report["counterfactuals"]["attributes"]["colour"]["scopes"]["overall"]
    assert overall["held_in_groups"] == 4 and overall["varied_in_groups"] == 0
    assert (overall["leak"]["count"], overall["leak"]["of"]) == (1, 3)
    assert outcome.summary["leak"] == pytest.approx(1 / 3)
    assert outcome.summary["edit_failure"] is None
    (check,) = evaluate(parse_fail_on(["leak>0.3"]), outcome.summary)
    assert check["failed"] and check["metric"] == "leak"
    (check,) = evaluate(parse_fail_on(["leak>0.4"]), outcome.summary)
    assert not check["failed"]


def test_a_dataset_without_varied_views_has_an_empty_section(tmp_path):
    outcome = _audit(tmp_path, [{"class": "circle", "colours": ["red", "blue"]}])
    assert outcome.report["counterfactuals"] == {"groups": 0, "varied": [], "attributes": {}}
    assert outcome.summary["edit_failure"] is None and outcome.summary["leak"] is None
    html = "\n".join(MEASUREMENTS["counterfactuals"].html(outcome.report["counterfactuals"],
                                                            tmp_path, {}))
    assert "No group's views vary a recorded slot" in html


def test_the_report_tables_each_attribute_and_scope(tmp_path):
    outcome = _audit(tmp_path, [_varying("colour", ["red", "green"], ["red", "blue"])])
    html = "\n".join(MEASUREMENTS["counterfactuals"].html(outcome.report["counterfactuals"],
                                                            tmp_path, {}))
    assert "class:circle" in html and "0/1" in html
