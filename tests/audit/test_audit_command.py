"""`synthgen audit` through click: exit statuses, report files, and the real CLIP path."""

from __future__ import annotations

import json
from html.parser import HTMLParser
from pathlib import Path

import click
import pytest
import yaml
from click.testing import CliRunner
from audit_fixtures import build_dataset

from synthgen.audit.command import audit

REPOSITORY = Path(__file__).resolve().parents[2]

RECIPE = {"balance": [{"attribute": "colour", "values": {"red": 1, "green": 1, "blue": 1},
                       "applies_to": None}],
          "suppress": [{"concept": "blue", "method": "negative", "threshold": None}]}


def _cli():
    """The audit command inside the CLI's group, which turns UserError into exit status 2."""
    from synthgen.cli import SynthgenGroup

    group = SynthgenGroup()
    group.add_command(audit)
    return group


def _dataset(tmp_path, colours: list[str]):
    return build_dataset(tmp_path / "data", [{"class": "circle", "colours": [c] * 2} for c in colours], RECIPE)


@pytest.mark.parametrize("rule, fails", [("kl>0.05", False), ("kl>=0.0", True), ("suppressed>0.4", False),
                                         ("suppressed>0.3", True), ("duplicates>0", False),
                                         ("unsure>0", False), ("chi2_p<0.5", False)])
def test_fail_on_exits_one_exactly_when_a_threshold_is_crossed(tmp_path, fake_encoder, rule, fails):
    dataset = _dataset(tmp_path, ["red", "green", "blue"] * 2)   # balanced; blue views are 1/3
    result = CliRunner().invoke(_cli(), ["audit", str(dataset), "--quiet", "--fail-on", rule])
    assert result.exit_code == (1 if fails else 0), result.output
    assert ("FAILED " + rule.replace(">=0.0", ">=0")) in result.output if fails else "FAILED" not in result.output


def test_planted_imbalance_fails_the_kl_rule(tmp_path, fake_encoder):
    dataset = _dataset(tmp_path, ["red"] * 8 + ["green", "blue"])
    result = CliRunner().invoke(_cli(), ["audit", str(dataset), "--quiet", "--fail-on", "kl>0.05,unsure>0.2"])
    assert result.exit_code == 1
    assert "FAILED kl>0.05" in result.output and "unsure" not in result.output.split("FAILED", 1)[1]


class _Links(HTMLParser):
    def __init__(self):
        super().__init__()
        self.images: list[str] = []

    def handle_starttag(self, tag, attrs):
        if tag == "img":
            self.images.append(dict(attrs)["src"])


def test_report_files_are_written_and_the_html_references_existing_pngs(tmp_path, fake_encoder):
    dataset = _dataset(tmp_path, ["red", "green", "blue", "olive"])
    report_dir = tmp_path / "out"
    result = CliRunner().invoke(_cli(), ["audit", str(dataset), "--quiet", "--report", str(report_dir),
                                         "--attribute", "shade=red,green"])
    assert result.exit_code == 0, result.output
    report = json.loads((report_dir / "report.json").read_text())
    assert set(report["attributes"]) == {"colour", "shade"}
    # Counted per group (a group's views share a prompt): the olive group is unsure.
    assert report["attributes"]["colour"]["scopes"]["overall"]["unsure_rate"] == pytest.approx(1 / 4)
    assert "classified" not in report["attributes"]["colour"]
    lines = [json.loads(line) for line in (report_dir / "views.jsonl").read_text().splitlines()]
    assert len(lines) == 8 and lines[0]["colour"] == "red" and "clip_score" in lines[0]
    assert (report_dir / "embeddings.npz").is_file()
    parser = _Links()
    parser.feed((report_dir / "report.html").read_text())
    parser.close()
    assert any(src.startswith("charts/") for src in parser.images)
    assert any(src.startswith("sheets/") for src in parser.images)
    assert "worst-fidelity.png" in parser.images
    for src in parser.images:
        assert (report_dir / src).is_file(), src
    assert not (dataset / "audit").exists()


def test_default_report_dir_is_inside_the_dataset(tmp_path, fake_encoder):
    dataset = _dataset(tmp_path, ["red", "blue"])
    result = CliRunner().invoke(_cli(), ["audit", str(dataset), "--quiet"])
    assert result.exit_code == 0, result.output
    assert (dataset / "audit" / "report.html").is_file()


@pytest.mark.parametrize("arguments, message", [
    (["--fail-on", "kl>>1"], "--fail-on"),
    (["--attribute", "colour"], "--attribute"),
    (["--clip", "builtin:no-such-clip"], "builtin:no-such-clip"),
])
def test_user_mistakes_exit_two_with_one_line(tmp_path, arguments, message):
    dataset = _dataset(tmp_path, ["red", "blue"])
    result = CliRunner().invoke(_cli(), ["audit", str(dataset), "--quiet", *arguments])
    assert result.exit_code == 2 and message in result.output and "Traceback" not in result.output


def test_not_a_dataset_is_a_user_error(tmp_path):
    result = CliRunner().invoke(_cli(), ["audit", str(tmp_path), "--quiet"])
    assert result.exit_code == 2 and "manifest.json" in result.output


def test_real_clip_path_end_to_end_and_cache(tmp_path, tiny_clip_dir):
    dataset = _dataset(tmp_path, ["red", "green", "blue", "olive"])
    arguments = ["audit", str(dataset), "--quiet", "--clip", str(tiny_clip_dir), "--device", "cpu",
                 "--batch-size", "3", "--attribute", "shape=circle,square"]
    first = CliRunner().invoke(_cli(), arguments)
    assert first.exit_code == 0, first.output
    report = json.loads((dataset / "audit" / "report.json").read_text())
    assert report["totals"]["embedded_views"] == 8 and report["model"]["identity"].startswith(str(tiny_clip_dir))
    shape = report["attributes"]["shape"]["scopes"]["overall"]
    assert shape["total"] + shape["unsure"] == shape["units"] == 4 and shape["views"] == 8
    second = CliRunner().invoke(_cli(), arguments)
    assert second.exit_code == 0, second.output
    again = json.loads((dataset / "audit" / "report.json").read_text())
    assert again["totals"]["embeddings_from_cache"] == 8
    assert again["attributes"]["shape"]["scopes"] == report["attributes"]["shape"]["scopes"]


def test_command_is_a_click_command():
    assert isinstance(audit, click.Command) and audit.name == "audit"


def test_a_rule_on_something_the_dataset_does_not_have_fails_as_not_measured(tmp_path, fake_encoder):
    # No balance entries: nothing was assigned, so disagreement with assignments is unmeasured.
    dataset = _dataset(tmp_path, ["red", "green", "blue"])
    result = CliRunner().invoke(_cli(), ["audit", str(dataset), "--quiet", "--fail-on",
                                         "disagreement>0.5,low_fidelity>0.9"])
    assert result.exit_code == 1, result.output
    assert "FAILED disagreement>0.5: not measured" in result.output
    assert "low_fidelity" not in result.output.split("FAILED", 1)[1], "measured and below 0.9"


def test_templates_come_from_the_command_line_or_a_recipe_files_audit_block(tmp_path, fake_encoder):
    dataset = _dataset(tmp_path, ["red", "green", "blue"])
    report_path = dataset / "audit" / "report.json"
    result = CliRunner().invoke(_cli(), ["audit", str(dataset), "--quiet",
                                         "--template", "colour=a {value} thing",
                                         "--template", "colour=something {value}"])
    assert result.exit_code == 0, result.output
    colour = json.loads(report_path.read_text())["attributes"]["colour"]
    assert colour["templates"] == ["a {value} thing", "something {value}"]
    assert colour["source"] == "recipe balance, command-line templates"
    # A recipe file's audit: block alone; the dataset's recipe still gives the colour target.
    recipe = yaml.safe_load((REPOSITORY / "recipes" / "quickstart.yaml").read_text())
    recipe["audit"] = {"margin": 0.2, "attributes": [{"name": "colour", "values": ["red", "blue"],
                                                      "templates": ["a {value} shape"]}]}
    recipe_file = tmp_path / "audit.yaml"
    recipe_file.write_text(yaml.safe_dump(recipe))
    result = CliRunner().invoke(_cli(), ["audit", str(dataset), "--quiet", "--recipe", str(recipe_file)])
    assert result.exit_code == 0, result.output
    report = json.loads(report_path.read_text())
    colour = report["attributes"]["colour"]
    assert colour["templates"] == ["a {value} shape"] and colour["values"] == ["red", "blue"]
    assert colour["target_from"] == "balance" and report["settings"]["margin"] == 0.2


@pytest.mark.parametrize("arguments, message", [
    (["--template", "shape=a {value}"], "no attribute 'shape'"),
    (["--template", "colour=a plain photo"], "must use {value}"),
    (["--template", "colour"], "--template"),
    (["--recipe", "no-such-recipe.yaml"], "recipe file not found"),
])
def test_template_mistakes_exit_two_with_one_line(tmp_path, fake_encoder, arguments, message):
    dataset = _dataset(tmp_path, ["red", "blue"])
    result = CliRunner().invoke(_cli(), ["audit", str(dataset), "--quiet", *arguments])
    assert result.exit_code == 2 and message in result.output and "Traceback" not in result.output


def test_the_printed_summary_counts_groups_agreement_and_unreadable_samples(tmp_path, fake_encoder):
    groups = [{"class": "circle", "colours": [c] * 2, "balance": {"colour": c}}
              for c in ("red", "green", "blue", "red")]
    groups[3]["json"] = b"{not json"
    dataset = build_dataset(tmp_path / "data", groups, RECIPE)
    result = CliRunner().invoke(_cli(), ["audit", str(dataset), "--quiet", "--fail-on", "integrity>0"])
    assert result.exit_code == 1, result.output
    assert "colour (per group): red 1, green 1, blue 1; unsure 0" in result.output
    assert "counted per view: red 2, green 2, blue 2" in result.output
    assert "agrees with the recorded colour in 3 of 3 sure groups" in result.output
    assert "integrity: 1 damaged (" in result.output and "1 unreadable samples" in result.output
    assert "FAILED integrity>0: value 1" in result.output
