"""Audit faults found by walking through docs/AUDIT.md (and README.md, "Auditing a dataset")
as a user, then by a review of the fixes (stored-recipe check, audit --recipe, the api's option
checks, removal of an earlier audit's pictures): each test fails on the code it was written
against. docs/AUDIT.md promises exit status 2 with one line on stderr for a mistake, and reads
the stored recipe "defensively"."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import yaml

import synthgen
from audit_fixtures import build_dataset
from cli_checks import assert_no_traceback, invoke
from small_recipe import SMALL_RECIPE

RECIPE = {"slots": {"colour": {"red": 1, "green": 1, "blue": 1}},
          "templates": ["a {colour} {class}"], "classes": [{"name": "circle", "groups": 4}],
          "audit": {"attributes": [{"name": "colour", "values": ["red", "green", "blue"]}]}}
GROUPS = [{"class": "circle", "colours": [c] * 2, "slots": {"colour": c}}
          for c in ("red", "red", "green", "blue")]


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


# 1. check_stored_recipe checks each section's type and a few entry fields, but the audit
# reads deeper than that (spec_from_recipe, slot_weight_targets, _varying, _attribute): a
# hand-edited manifest with these wrong types is still a ValueError / TypeError traceback.
@pytest.mark.parametrize("section", [
    {"balance": [{"attribute": "colour", "values": {"red": "high", "green": 1, "blue": 1}}]},
    {"slots": {"colour": {"red": "high", "green": 1, "blue": 1}}},
    {"slots": {"colour": 3}},
    {"views": {"strategy": 5}},
    {"views": {"strategy": ["slots"], "slots": {"vary": 5}}},
    {"audit": {"attributes": [{"name": "colour", "values": [1, 2]}]}},
    {"audit": {"attributes": [{"name": "colour", "values": [["red"], ["green"]]}]}},
    {"audit": {"attributes": [{"name": "colour", "values": ["red", "green"], "templates": [5]}]}},
], ids=lambda section: json.dumps(section))
def test_nested_wrong_types_in_stored_recipe_are_not_a_traceback(fake_encoder, tmp_path, section):
    data = build_dataset(tmp_path / "data", GROUPS, {**RECIPE, **section})
    attributes = [] if "audit" in section else ["colour=red,green,blue"]
    try:
        synthgen.audit(data, attributes=attributes, progress=False, device="cpu")
    except synthgen.UserError as error:
        assert "manifest.json" in str(error)


# 2. load_audit_block skips check_model_references, which load_recipe ran on the same block:
# `audit --recipe FILE` with a mistyped audit.clip was "FILE: audit.clip: unknown builtin
# model ..."; now the error comes from loading the encoder, blames "--clip" (not given) and
# does not name FILE.
def test_recipe_block_bad_clip_names_the_file(dataset, tmp_path):
    other = tmp_path / "other.yaml"
    other.write_text(yaml.safe_dump({**SMALL_RECIPE, "audit": {"clip": "builtin:world-clp"}}))
    with pytest.raises(synthgen.UserError) as caught:
        synthgen.audit(dataset, recipe=other, progress=False, device="cpu")
    assert str(other) in str(caught.value), str(caught.value)


# 3. _remove_earlier_pictures globs charts/*.png through a link: a charts/ that links to the
# user's own figures folder loses every PNG there (store.remove_folder, used by --overwrite,
# unlinks such a link and leaves its files alone).
def test_reaudit_does_not_delete_files_behind_a_charts_link(fake_encoder, dataset, tmp_path):
    report = tmp_path / "report"
    synthgen.audit(dataset, report=report, progress=False, device="cpu")
    for picture in (report / "charts").iterdir():
        picture.unlink()
    (report / "charts").rmdir()
    figures = tmp_path / "figures"
    figures.mkdir()
    (figures / "my-plot.png").write_bytes(b"the user's own picture")
    os.symlink(figures, report / "charts")
    synthgen.audit(dataset, report=report, progress=False, device="cpu")
    assert (figures / "my-plot.png").exists()


# 4. (older than these commits) a file named charts in the report folder: FileExistsError
# from write_png's mkdir, a traceback, not one UserError.
def test_charts_that_is_a_file_is_a_user_error(fake_encoder, dataset, tmp_path):
    report = tmp_path / "report"
    report.mkdir()
    (report / "charts").write_text("not a folder")
    try:
        synthgen.audit(dataset, report=report, progress=False, device="cpu")
    except synthgen.UserError:
        pass


# 5. 98f46c0 made generate refuse an unknown dtype; api.audit takes any text and the CLIP
# loader silently falls back to auto (`{...}.get(dtype)` is None).
def test_audit_api_refuses_unknown_dtype(fake_encoder, dataset):
    with pytest.raises(synthgen.UserError, match="dtype"):
        synthgen.audit(dataset, dtype="fp16", progress=False, device="cpu")


# 6. api.audit's numeric options given as text: TypeError / ValueError tracebacks (batch_size
# is checked, these are not).
@pytest.mark.parametrize("option", [{"margin": "0.2"}, {"duplicate_threshold": "high"}],
                         ids=lambda option: next(iter(option)))
def test_audit_api_numeric_options_as_text_are_user_errors(fake_encoder, dataset, option):
    with pytest.raises(synthgen.UserError):
        synthgen.audit(dataset, progress=False, device="cpu", **option)


# 7. ba6890e stopped blaming --report for a DATASET that is a file; the default report folder
# DATASET/audit being a file still blames "--report", an option the caller never gave.
def test_default_report_folder_that_is_a_file_does_not_blame_report(fake_encoder, dataset):
    (dataset / "audit").write_text("my notes")
    with pytest.raises(synthgen.UserError) as caught:
        synthgen.audit(dataset, progress=False, device="cpu")
    assert "--report" not in str(caught.value), str(caught.value)


# 8. 98f46c0 checks generate's workers/encode_workers/cpu_threads/dtype/shards types, not
# rank/world_size: text (os.environ["RANK"]) is a TypeError from choose_slice.
@pytest.mark.parametrize("ranks", [{"rank": "0", "world_size": "2"}, {"rank": 0, "world_size": 2.0}],
                         ids=["text", "float"])
def test_generate_rank_world_size_of_wrong_type_are_user_errors(tmp_path, ranks):
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(yaml.safe_dump(SMALL_RECIPE, sort_keys=False))
    with pytest.raises(synthgen.UserError):
        synthgen.generate(recipe, tmp_path / "out", progress=False, device="cpu", **ranks)
