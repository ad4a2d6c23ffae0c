"""The measurement registry: every measurement is documented, computes the --fail-on figures it
declares, and can be imported before torch (thresholds.py reads it while checking options)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from audit_fixtures import MeanColourEncoder, build_dataset
from markdown_sections import markdown_section

from synthgen.audit.measurements import MEASUREMENTS
from synthgen.audit.run import AuditOptions, run_audit
from synthgen.audit.spec import spec_from_recipe
from synthgen.audit.thresholds import METRICS

REPOSITORY = Path(__file__).resolve().parents[2]


def _undocumented(names, text: str, form: str) -> list[str]:
    return [name for name in names if form.format(name=name) not in text]


def test_every_measurement_is_named_in_the_readme_and_docs_audit():
    readme = markdown_section(REPOSITORY / "README.md", "Auditing a dataset")
    numbers = markdown_section(REPOSITORY / "docs" / "AUDIT.md", "What each number means")
    # A made-up measurement is reported missing: the check reads the right text.
    assert _undocumented(["no_such_measurement"], readme + numbers, "`{name}`") == ["no_such_measurement"]
    assert _undocumented(MEASUREMENTS, readme, "`{name}`") == [], (
        "README.md's 'Auditing a dataset' names each measurement by its report.json key, in backticks")
    assert _undocumented(MEASUREMENTS, numbers, "(`{name}") == [], (
        "docs/AUDIT.md's 'What each number means' has a paragraph per measurement: **Title** (`key`...)")


def test_every_fail_on_figure_is_in_the_docs_table():
    table = markdown_section(REPOSITORY / "docs" / "AUDIT.md", "--fail-on")
    assert _undocumented(METRICS, table, "`{name}`") == [], (
        "docs/AUDIT.md's --fail-on table names every figure a measurement declares")


def test_each_measurement_computes_exactly_the_figures_it_declares(tmp_path):
    recipe = {"balance": [{"attribute": "colour", "values": {"red": 1, "green": 1, "blue": 1},
                           "applies_to": None}],
              "suppress": [{"concept": "blue", "method": "reject", "threshold": 0.5}]}
    groups = [{"class": "circle", "colours": [c] * 2, "balance": {"colour": c}}
              for c in ("red", "green", "blue")]
    # Counterfactual groups (views record their own slots): one varies the colour, one holds it.
    groups += [{"class": "circle", "colours": ["red", "green"],
                "view_fields": [{"slots": {"colour": c}} for c in ("red", "green")]},
               {"class": "circle", "colours": ["blue", "blue"], "balance": {"colour": "blue"},
                "view_fields": [{"slots": {"size": s}} for s in ("small", "large")]}]
    dataset = build_dataset(tmp_path / "data", groups, recipe)
    outcome = run_audit(dataset, spec_from_recipe(recipe), MeanColourEncoder(),
                        AuditOptions(progress=False))
    for name, measurement in MEASUREMENTS.items():
        assert name in outcome.report, name
        assert set(measurement.figures(outcome.report[name])) == set(measurement.fail_on), name
    assert list(outcome.summary) == list(METRICS)
    # Every figure is measured on this dataset: none of them is a constant None.
    assert None not in outcome.summary.values()


def test_fail_on_names_are_unique_across_measurements():
    declared = [figure for measurement in MEASUREMENTS.values() for figure in measurement.fail_on]
    assert len(declared) == len(set(declared)) == len(METRICS)


def test_the_registry_imports_nothing_heavy():
    """thresholds.py imports every measurement; `synthgen audit` checks --fail-on before it
    loads anything heavy, so a typo costs a fraction of a second (scipy alone takes ~1 s)."""
    check = "import sys, synthgen.audit.thresholds; print(' '.join(sorted(sys.modules)))"
    result = subprocess.run([sys.executable, "-c", check], capture_output=True, text=True,
                            timeout=120, cwd=REPOSITORY, check=True)
    loaded = {name.split(".")[0] for name in result.stdout.split()}
    assert loaded & {"torch", "scipy", "transformers", "matplotlib"} == set()
