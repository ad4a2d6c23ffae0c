"""Audit, inspect and report faults found in review by fault injection; every test here fails
on the code it was written against, each for the bug its docstring names."""

from __future__ import annotations

import errno
import json

import pytest
import yaml
from audit_fixtures import MeanColourEncoder, build_dataset
from click.testing import CliRunner

from synthgen.audit.run import AuditOptions, run_audit
from synthgen.audit.spec import parse_attribute_option, spec_from_recipe
from synthgen.errors import UserError

RECIPE = {"balance": [{"attribute": "colour", "values": {"red": 1, "green": 1, "blue": 1},
                       "applies_to": None}]}


def _cli():
    from synthgen.cli import main

    return main


def _no_traceback(result) -> bool:
    return result.exception is None or isinstance(result.exception, SystemExit)


def _plain_dataset(tmp_path, name="data", colours=("red", "green", "blue", "red")):
    return build_dataset(tmp_path / name, [{"class": "circle", "colours": [c] * 2} for c in colours],
                         RECIPE)


# --- statistics ---------------------------------------------------------------------------


@pytest.mark.parametrize("n", [3, 6, 7, 10, 12])
def test_wilson_interval_at_zero_and_n_contains_the_point_estimate(n):
    """metrics.wilson_interval: with 0 successes the exact Wilson lower bound is 0, with n
    successes the upper bound is 1; rounding gives 5.6e-17 / 0.9999999999999999 for many n, so
    report.json's `ci95` does not contain its own `p` (0.0 or 1.0) and agreement 1.0 is printed
    with an interval that stops short of it. Correct: exactly 0.0 and 1.0 at the ends."""
    from synthgen.audit.metrics import wilson_interval

    low, _ = wilson_interval(0, n)
    _, high = wilson_interval(n, n)
    assert low == 0.0 and high == 1.0


def test_a_varied_distinct_slot_is_not_judged_against_its_sampling_weights(tmp_path):
    """spec.slot_weight_targets: a slot that the `slots` view strategy varies with `distinct`
    (the default) is drawn without replacement across a group's views, so its per-view shares
    are not the slot weights (weights red 3 : green 1 over 2 views give every group one red
    and one green view: 50/50). The audit still takes the weights as the target, so a dataset
    in which every view shows exactly its planned colour gets KL 0.14 and chi2 p 2e-7 and
    fails `kl>0.05` / `chi2_p<0.001`. Correct: the target is what the plan draws (or no
    recipe target), and a perfect dataset is on target."""
    from synthgen import api
    from synthgen.recipe import load_recipe

    recipe = {"name": "cf", "seed": 3,
              "model": {"id": "builtin:tiny-random", "steps": 2, "width": 32, "height": 32},
              "slots": {"colour": {"red": 3, "green": 1}},
              "classes": [{"name": "circle", "templates": ["a {colour} circle"], "groups": 40}],
              "views": {"count": 2, "strategy": ["slots"], "slots": {"vary": ["colour"]}},
              "output": {"groups_per_shard": 40, "format": "png"}}
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(recipe))
    plan = api.plan(path).plan
    # A perfect generator: each view drawn in exactly the colour its plan records.
    groups = [{"class": "circle", "strategy": ["slots"],
               "colours": [view.to_json()["slots"]["colour"] for view in group.views],
               "view_fields": [{"slots": view.to_json()["slots"]} for view in group.views],
               "prompt": [view.prompt for view in group.views]} for group in plan.groups]
    resolved = load_recipe(path).model_dump(mode="json")
    dataset = build_dataset(tmp_path / "data", groups,
                            {k: v for k, v in resolved.items() if k != "name"}, groups_per_shard=40)
    spec = spec_from_recipe(resolved, attributes=[parse_attribute_option("colour=red,green")])
    outcome = run_audit(dataset, spec, MeanColourEncoder(), AuditOptions(progress=False))
    overall = outcome.report["attributes"]["colour"]["scopes"]["overall"]
    assert overall["counts"] == {"red": 40, "green": 40}  # read exactly as planned
    assert outcome.summary["kl"] < 0.01, overall["target"]
    assert outcome.summary["chi2_p"] > 0.05, overall["target"]


# --- counterfactual groups with a damaged view ----------------------------------------------


def test_edit_success_measures_edits_against_view_0_even_when_view_0_does_not_decode(tmp_path):
    """counterfactuals.measure_attribute/counterfactual_groups: the reference value of a group
    is taken from its first *readable* row, not from view 0's recorded value (which its json
    still holds). With view 0 (recorded red) unreadable, view 1 (green) becomes the reference:
    its own edit (red -> green, drawn green) is not counted, and view 2 (recorded red, the same
    as view 0: not an edit) is counted as a failed edit, giving 0 of 1. Correct: edits are the views whose recorded value differs from view 0's: here only view 1,
    read as recorded: 1 of 1."""
    from audit_fixtures import noise_image

    group = {"class": "circle", "colours": ["red", "green", "blue"], "strategy": ["slots"],
             "images": [b"not an image", noise_image("green", 1), noise_image("blue", 2)],
             "view_fields": [{"slots": {"colour": c}} for c in ("red", "green", "red")]}
    dataset = build_dataset(tmp_path / "data", [group], RECIPE)
    outcome = run_audit(dataset, spec_from_recipe(RECIPE), MeanColourEncoder(),
                        AuditOptions(progress=False))
    assert outcome.report["integrity"]["unreadable_views"]  # view 0 is damaged
    edit = outcome.report["counterfactuals"]["attributes"]["colour"]["scopes"]["overall"]["edit_success"]
    assert (edit["count"], edit["of"]) == (1, 1)


# --- hostile command-line options -------------------------------------------------------------


@pytest.mark.parametrize("value", ["5", "nan"])
def test_an_impossible_duplicate_threshold_is_refused(tmp_path, fake_encoder, value):
    """api.audit / spec_from_recipe: --duplicate-threshold is not checked. A cosine is at most
    1, so 5 (or nan) finds no pair ever and `--fail-on duplicates>0` passes on any dataset; the
    recipe's audit block refuses the same values (0 < duplicate_threshold <= 1). Correct: one
    message naming --duplicate-threshold and its range, exit 2, no traceback."""
    dataset = _plain_dataset(tmp_path)
    result = CliRunner().invoke(_cli(), ["audit", str(dataset), "--quiet",
                                         "--duplicate-threshold", value, "--fail-on", "duplicates>0"])
    assert result.exit_code == 2 and "--duplicate-threshold" in result.output, result.output
    assert _no_traceback(result)


def test_a_nan_fidelity_threshold_is_refused(tmp_path, fake_encoder):
    """api.audit / spec_from_recipe: --fidelity-threshold nan is accepted; every comparison
    with nan is false, so no view is ever low fidelity and `--fail-on low_fidelity>0` passes
    whatever the images (the summary prints "views below None"). Correct: a clear error
    naming --fidelity-threshold, exit 2."""
    dataset = _plain_dataset(tmp_path)
    result = CliRunner().invoke(_cli(), ["audit", str(dataset), "--quiet", "--fidelity-threshold",
                                         "nan", "--fail-on", "low_fidelity>0"])
    assert result.exit_code == 2 and "--fidelity-threshold" in result.output, result.output


@pytest.mark.parametrize("template", ["a {value!r} circle", "a {value:>8} circle"])
def test_a_template_whose_value_is_never_filled_in_is_refused(template):
    """spec._attribute accepts `{value!r}` / `{value:>8}` (string.Formatter reports the field
    name `value`), but AttributeSpec.prompts fills templates with str.replace("{value}"), so
    the value never enters the text: every value gets the same prompt and every view is
    unsure, with no message. Correct: refuse the template (UserError naming it), or fill it."""
    try:
        spec = spec_from_recipe({}, attributes=[parse_attribute_option("colour=red,green")],
                                templates=[("colour", template)])
    except UserError as error:
        assert template in str(error)
        return
    colour = spec.attributes[0]
    assert colour.prompts("red") != colour.prompts("green"), colour.prompts("red")


def test_doubled_braces_in_an_audit_template_read_as_braces():
    """AttributeSpec.prompts: the template check parses templates as format strings and tells
    users to write `{{` and `}}` for literal braces (as recipe prompt templates do), but
    prompts() only replaces "{value}", so the CLIP reads "{{" literally. Correct: "a {{x}}
    {value}" gives "a {x} red", as a generation prompt would."""
    spec = spec_from_recipe({}, attributes=[parse_attribute_option("colour=red,green")],
                            templates=[("colour", "a {{striped}} {value}")])
    assert spec.attributes[0].prompts("red") == ["a {striped} red"]


def test_api_audit_refuses_batch_size_zero(tmp_path, fake_encoder):
    """api.audit(batch_size=0): the CLI's IntRange(min=1) is the only check; through the API,
    `islice(views, 0)` ends the read loop at once, so the audit embeds nothing and writes a
    finished-looking report of 0 groups and no damage (batch_size=-1 raises a bare
    ValueError from a background thread). Correct: UserError naming batch_size."""
    dataset = _plain_dataset(tmp_path)
    with pytest.raises(UserError, match="batch"):
        from synthgen import api

        result = api.audit(dataset, batch_size=0, progress=False)
        pytest.fail(f"audited {result.report['totals']}")


def test_api_inspect_refuses_zero_contact_sheet_groups(tmp_path):
    """api.inspect(groups=0): `len(rows) == groups` is never true, so the contact sheet takes
    every group of the dataset (unbounded memory) instead of refusing the value the CLI's
    IntRange(min=1) refuses. Correct: UserError naming the groups option."""
    from synthgen import api

    dataset = build_dataset(tmp_path / "data", [{"class": "c", "colours": ["red"]}] * 3,
                            {"model": {"id": "x"}})
    with pytest.raises(UserError, match="groups"):
        api.inspect(dataset, contact_sheet=tmp_path / "sheet.png", groups=0)


# --- odd sample json in inspect ---------------------------------------------------------------


def _sample_json(views: int = 1, **view_fields) -> bytes:
    metadata = {"group_id": "class-c-000000", "index": 0, "class_name": "c", "class_index": 0,
                "corner_case": "", "tags": {}, "view_strategy": ["seeds"],
                "views": [{"view": v, "prompt": "a red c", "negative_prompt": "", "seed": v,
                           "file": f"view{v}.png", **view_fields} for v in range(views)]}
    return json.dumps(metadata).encode()


def _odd_dataset(tmp_path, raw_json: bytes):
    dataset = build_dataset(tmp_path / "data", [{"class": "c", "colours": ["red"], "json": raw_json}],
                            {"model": {"id": "x"}})
    manifest = json.loads((dataset / "manifest.json").read_text())
    manifest["totals"].update(bytes=1, images=1)
    (dataset / "manifest.json").write_text(json.dumps(manifest))
    return dataset


@pytest.mark.parametrize("field", ["rejections", "suppression_failed"])
def test_inspect_survives_a_null_rejection_field(tmp_path, field):
    """inspection.count_groups (`view.get("rejections", {}).items()`) and failed_concepts
    (`list(failed)`) assume the field is a mapping when present; a view json with
    `"rejections": null` or `"suppression_failed": null` (which the trainer's loader reads
    without complaint) makes `synthgen inspect` die with AttributeError/TypeError and a
    traceback. Correct: null counts as none (or the sample is listed as damaged); no crash."""
    dataset = _odd_dataset(tmp_path, _sample_json(**{field: None}))
    result = CliRunner().invoke(_cli(), ["inspect", str(dataset)])
    assert _no_traceback(result), repr(result.exception)


@pytest.mark.parametrize("raw, option", [
    (_sample_json(views=0), "--contact-sheet"),
    (_sample_json(views=0), "--shard"),
    (_sample_json(prompt=None), "--contact-sheet"),
])
def test_inspect_listing_and_contact_sheet_survive_odd_view_lists(tmp_path, raw, option):
    """inspection.contact_sheet (`metadata["views"][0]["prompt"]`, textwrap of the prompt) and
    the CLI's --shard listing (`sample['views'][0]`) index the first view and wrap its prompt
    unchecked; a sample whose json lists no views, or a null prompt, passes the loader's
    checks (checked_metadata) and then crashes `synthgen inspect` with IndexError /
    AttributeError and a traceback. Correct: show the group without views/prompt, or list the
    sample as damaged; exit without a traceback."""
    dataset = _odd_dataset(tmp_path, raw)
    extra = ["--contact-sheet", str(tmp_path / "sheet.png")] if option == "--contact-sheet" else ["--shard", "0"]
    result = CliRunner().invoke(_cli(), ["inspect", str(dataset), *extra])
    assert _no_traceback(result), repr(result.exception)


# --- manifests and reports --------------------------------------------------------------------


@pytest.mark.parametrize("images", ["unknown", 1e308 * 10])
def test_audit_survives_an_odd_image_count_in_the_manifest(tmp_path, fake_encoder, images):
    """run.run_audit: `int(entry.get("images") or 0)`, used only for the progress bar's total,
    raises ValueError / OverflowError on a manifest shard entry whose `images` is not a number
    ("unknown", or 1e999 which json reads as inf), killing the audit with a traceback before
    any view is read; everything else in the entry is read defensively. Correct: an unknown
    total (no total on the bar), and the audit runs."""
    dataset = _plain_dataset(tmp_path)
    manifest = json.loads((dataset / "manifest.json").read_text())
    manifest["shards"][0]["images"] = images
    (dataset / "manifest.json").write_text(json.dumps(manifest).replace("Infinity", "1e999"))
    result = CliRunner().invoke(_cli(), ["audit", str(dataset), "--quiet"])
    assert _no_traceback(result), repr(result.exception)
    assert result.exit_code == 0, result.output


def test_a_report_that_fails_part_way_does_not_pair_new_json_with_an_old_page(tmp_path, fake_encoder,
                                                                             monkeypatch):
    """report.write_report writes views.jsonl and report.json first, then the pictures, then
    report.html, each file atomically but the set not: a second audit that stops while
    drawing (here the disk fills up writing a PNG; Ctrl-C does the same) leaves the new
    report.json beside the previous audit's report.html, a report that looks finished and
    contradicts itself. Correct: the report folder is replaced as a whole (outputs.py has
    folder_written_whole), or report.json is written last and the old page removed first."""
    dataset = _plain_dataset(tmp_path)
    runner = CliRunner()
    first = runner.invoke(_cli(), ["audit", str(dataset), "--quiet", "--attribute", "shade=red,green"])
    assert first.exit_code == 0, first.output

    from synthgen.audit import report as report_module

    def disk_full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(report_module, "write_png", disk_full)
    second = runner.invoke(_cli(), ["audit", str(dataset), "--quiet", "--attribute", "tone=red,blue"])
    assert second.exit_code == 2, second.output  # the CLI's "disk full" message
    report_dir = dataset / "audit"
    in_json = "tone" in json.loads((report_dir / "report.json").read_text())["attributes"]
    page = report_dir / "report.html"
    in_page = page.is_file() and "tone" in page.read_text()
    assert in_json == in_page or not page.is_file(), "report.json and report.html come from different audits"


def test_a_missing_view_keeps_its_place_on_the_contact_sheet(tmp_path):
    """run.fetch_pictures keeps only views whose bytes exist, and report._sheet_rows draws a
    group's cells from those pictures alone, so a group whose view 0 is missing shows view 1
    in view 0's column (cells carry no view name): its readings sit under the wrong column
    and the row looks complete. render.thumbnail already draws a "missing" cell for None.
    Correct: one cell per listed view, a "missing" placeholder where the image is absent."""
    from synthgen.audit.report import _per_view_lines, _sheet_rows

    dataset = build_dataset(tmp_path / "data", [
        {"class": "circle", "colours": ["red", "green", "blue"]},
        {"class": "circle", "colours": ["red", "green", "blue"], "drop_view": 0}], RECIPE)
    outcome = run_audit(dataset, spec_from_recipe(RECIPE), MeanColourEncoder(),
                        AuditOptions(progress=False))
    report = json.loads(json.dumps(outcome.report))
    read = {line["view"]: line for line in _per_view_lines(report)}
    keys = report["sheets"]["class:circle"]
    rows = _sheet_rows(report, outcome.pictures, read, keys)
    assert [len(cells) for _, cells in rows] == [3, 3]
