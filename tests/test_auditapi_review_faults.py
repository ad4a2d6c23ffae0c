"""Faults found reviewing ba6890e / ff9ba12 / 98f46c0 (stored-recipe check, audit --recipe,
api option checks, removal of an earlier audit's pictures). Each test fails on that code."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pytest
import yaml

sys.path.insert(0, str(Path(__file__).parent / "audit"))

import synthgen  # noqa: E402
from audit_fixtures import MeanColourEncoder, build_dataset  # noqa: E402
from small_recipe import SMALL_RECIPE  # noqa: E402

RECIPE = {"slots": {"colour": {"red": 1, "green": 1, "blue": 1}},
          "templates": ["a {colour} {class}"], "classes": [{"name": "circle", "groups": 4}],
          "audit": {"attributes": [{"name": "colour", "values": ["red", "green", "blue"]}]}}
GROUPS = [{"class": "circle", "colours": [c] * 2, "slots": {"colour": c}}
          for c in ("red", "red", "green", "blue")]


@pytest.fixture
def fake_encoder(monkeypatch):
    from synthgen.audit import encoder as encoders

    fake = MeanColourEncoder()
    monkeypatch.setattr(encoders, "load_encoder", lambda clip_id, device, dtype="auto": fake)
    return fake


@pytest.fixture
def dataset(tmp_path) -> Path:
    return build_dataset(tmp_path / "data", GROUPS, RECIPE)


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
