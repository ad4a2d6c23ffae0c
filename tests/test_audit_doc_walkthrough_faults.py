"""Faults found by walking through docs/AUDIT.md (and README.md, "Auditing a dataset") as a user:
each test fails on the code the walkthrough ran. docs/AUDIT.md promises exit status 2 with one
line on stderr for a mistake, and reads the stored recipe "defensively"."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import yaml

sys.path.insert(0, str(Path(__file__).parent / "audit"))

import synthgen  # noqa: E402
from audit_fixtures import MeanColourEncoder, build_dataset  # noqa: E402
from cli_checks import assert_no_traceback, invoke  # noqa: E402
from small_recipe import SMALL_RECIPE  # noqa: E402

RECIPE = {"slots": {"colour": {"red": 1, "green": 1, "blue": 1}},
          "templates": ["a {colour} {class}"], "classes": [{"name": "circle", "groups": 4}],
          "audit": {"attributes": [{"name": "colour", "values": ["red", "green", "blue"]}]}}
GROUPS = [{"class": "circle", "colours": [c] * 2, "slots": {"colour": c}}
          for c in ("red", "red", "green", "blue")]


@pytest.fixture
def fake_encoder(monkeypatch):
    """The audit loads a MeanColourEncoder instead of a CLIP (as tests/audit/conftest.py)."""
    from synthgen.audit import encoder as encoders

    fake = MeanColourEncoder()
    monkeypatch.setattr(encoders, "load_encoder", lambda clip_id, device, dtype="auto": fake)
    return fake


@pytest.fixture
def dataset(tmp_path) -> Path:
    return build_dataset(tmp_path / "data", GROUPS, RECIPE)


def _one_line(result) -> str:
    lines = result.output.strip().splitlines()
    assert len(lines) == 1, result.output
    return lines[0]


# docs/AUDIT.md, Exit status: "2 for a mistake (...: one line on stderr)". A --report that is a
# file got click's four-line usage error "Directory '...' is a file." (the API's own one-line
# message, "--report X: exists and is not a folder", is never reached from the command line).
def test_report_folder_that_is_a_file_is_one_line(fake_encoder, dataset, tmp_path):
    taken = tmp_path / "report.txt"
    taken.write_text("not a folder")
    result = invoke("audit", dataset, "--report", taken, "--quiet")
    assert_no_traceback(result, allowed=(2,))
    line = _one_line(result)
    assert "--report" in line and str(taken) in line


# The same for DATASET_DIR: a user passing a shard (or any file) got the usage error.
def test_dataset_that_is_a_file_is_one_line(fake_encoder, dataset):
    result = invoke("audit", dataset / "shard-000000.tar", "--quiet")
    assert_no_traceback(result, allowed=(2,))
    line = _one_line(result)
    assert "shard-000000.tar" in line


# synthgen.audit(a file): the UserError blamed --report, an option the caller never gave
# ("--report .../shard-000000.tar/audit: cannot be created (... is not a folder)").
def test_api_audit_of_a_file_names_the_dataset_not_report(fake_encoder, dataset):
    with pytest.raises(synthgen.UserError) as caught:
        synthgen.audit(dataset / "shard-000000.tar", progress=False)
    assert "--report" not in str(caught.value), str(caught.value)


# --recipe FILE reads "this recipe file's audit: block instead of the one stored in the
# dataset". A recipe without an audit: block silently replaced the dataset's own block with
# defaults: the recipe's colour attribute vanished from the audit, exit 0.
def test_recipe_without_audit_block_is_refused(fake_encoder, dataset, tmp_path):
    assert "audit" not in SMALL_RECIPE
    other = tmp_path / "other.yaml"
    other.write_text(yaml.safe_dump(SMALL_RECIPE, sort_keys=False))
    baseline = invoke("audit", dataset, "--quiet", "--report", tmp_path / "a")
    assert baseline.exit_code == 0 and "colour (per group)" in baseline.output
    result = invoke("audit", dataset, "--quiet", "--report", tmp_path / "b", "--recipe", other)
    assert_no_traceback(result, allowed=(2,))
    line = _one_line(result)
    assert "audit" in line and str(other) in line


# A --recipe file holding only the audit: block it is read for: three lines about name, seed
# and model being missing, with the real mistake (audit.margin 2) on the fourth.
def test_recipe_file_with_only_an_audit_block_is_one_line(fake_encoder, dataset, tmp_path):
    only_audit = tmp_path / "audit-only.yaml"
    only_audit.write_text("audit:\n  margin: 2\n")
    result = invoke("audit", dataset, "--quiet", "--recipe", only_audit)
    assert_no_traceback(result, allowed=(2,))
    line = _one_line(result)
    assert "required field is missing" not in line


# docs/AUDIT.md, Where attributes come from: the manifest's recipe is "read defensively". A
# stored recipe whose sections have the wrong shape (a hand-edited manifest, another tool's)
# raised AttributeError / TypeError / ValueError out of the command.
@pytest.mark.parametrize("section", [
    {"audit": "colour"},
    {"audit": {"attributes": "colour"}},
    {"audit": {"margin": "high"}},
    {"balance": {"colour": 1}},
    {"balance": [{"attribute": "colour", "values": ["red", "green"]}]},
    {"suppress": "blue"},
    {"suppress": [{"concept": 5}]},
    {"suppress": [{"concept": "blue", "threshold": "high"}]},
    {"classes": "circle"},
], ids=lambda section: json.dumps(section))
def test_malformed_stored_recipe_section_is_not_a_traceback(fake_encoder, tmp_path, section):
    data = build_dataset(tmp_path / "data", GROUPS, {**{k: v for k, v in RECIPE.items()
                                                        if k not in section}, **section})
    result = invoke("audit", data, "--quiet", "--attribute", "colour=red,green,blue")
    assert_no_traceback(result, allowed=(0, 2))
    if result.exit_code == 2:
        assert "manifest.json" in _one_line(result)


# docs/AUDIT.md, Report layout: "duplicates.png  the most similar duplicate pairs (when there
# are any)". An audit that finds none left the previous audit's duplicates.png in the folder,
# showing pairs this report says do not exist.
def test_reaudit_without_duplicates_leaves_no_stale_duplicates_picture(fake_encoder, dataset, tmp_path):
    report = tmp_path / "report"
    first = invoke("audit", dataset, "--quiet", "--report", report, "--duplicate-threshold", "0.4")
    assert first.exit_code == 0 and (report / "duplicates.png").is_file(), first.output
    assert json.loads((report / "report.json").read_text())["duplicates"]["view_pairs"] > 0
    second = invoke("audit", dataset, "--quiet", "--report", report)
    assert second.exit_code == 0, second.output
    assert json.loads((report / "report.json").read_text())["duplicates"]["view_pairs"] == 0
    assert not (report / "duplicates.png").exists()


# --attribute is repeatable and "--template ... (repeatable: together they replace NAME's
# templates)"; two --attribute options of one name silently kept the last (red,blue dropped).
def test_same_attribute_given_twice_is_refused(fake_encoder, dataset):
    result = invoke("audit", dataset, "--quiet", "--attribute", "colour=red,blue",
                    "--attribute", "colour=green,blue")
    assert_no_traceback(result, allowed=(2,))
    line = _one_line(result)
    assert "--attribute" in line and "colour" in line


# A --fail-on of only commas (an unset variable: --fail-on "$RULES,") ran with no rule and
# exited 0: a gate that gates nothing.
def test_fail_on_without_a_rule_is_refused():
    from synthgen.audit.thresholds import parse_fail_on

    for empty in (",", " , ", ""):
        with pytest.raises(synthgen.UserError, match="holds no rule"):
            parse_fail_on([empty])
