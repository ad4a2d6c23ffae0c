"""The command line through click's CliRunner: the commands work, mistakes exit 2 cleanly."""

from __future__ import annotations

import json

from click.testing import CliRunner
from PIL import Image

from cli import main


def invoke(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


def test_validate_and_plan(write_recipe, tmp_path):
    recipe = write_recipe()
    result = invoke("validate", recipe)
    assert result.exit_code == 0 and "ok" in result.output and "9 groups" in result.output
    result = invoke("plan", recipe, "--jsonl", tmp_path / "plan.jsonl")
    assert result.exit_code == 0, result.output
    assert "9 groups, 18 images at 32x32, 3 shards" in result.output
    assert "2 views: seeds" in result.output
    assert "circle in square -> circle" in result.output and "[nested]" in result.output
    assert len((tmp_path / "plan.jsonl").read_text().splitlines()) == 9
    summary = json.loads(invoke("plan", recipe, "--json").output)
    assert summary["classes"]["circle"]["groups"] == 4 and summary["classes"]["circle"]["images"] == 8


def test_generate_then_inspect(write_recipe, tmp_path):
    out = tmp_path / "out"
    result = invoke("generate", write_recipe(), "--out", out, "--device", "cpu", "--quiet",
                    "--batch-size", "4")
    assert result.exit_code == 0, result.output
    assert "wrote 3 shards (18 images)" in result.output
    result = invoke("generate", write_recipe(), "--out", out, "--device", "cpu", "--quiet")
    assert result.exit_code == 0 and "already done" in result.output
    sheet = tmp_path / "sheet.png"
    result = invoke("inspect", out, "--shard", 2, "--contact-sheet", sheet, "--groups", 3)
    assert result.exit_code == 0, result.output
    assert "3 shards, 9 groups, 18 images" in result.output
    assert "class circle: 4 groups" in result.output
    assert "corner case circle in square: 2 groups" in result.output
    with Image.open(sheet) as image:
        assert image.size == (200 + 2 * 128, 3 * 128)


def assert_clean_user_error(result, *fragments):
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output
    assert result.exception is None or isinstance(result.exception, SystemExit)
    for fragment in fragments:
        assert fragment in result.output, result.output


def test_user_errors_exit_2_without_traceback(write_recipe, tmp_path):
    assert_clean_user_error(invoke("validate", tmp_path / "missing.yaml"), "recipe file not found")
    bad = write_recipe({"views": {"count": 0}})
    assert_clean_user_error(invoke("plan", bad), "views.count", "got 0", "at least 1")
    assert_clean_user_error(invoke("generate", bad, "--out", tmp_path / "o"), "views.count")
    assert_clean_user_error(invoke("inspect", tmp_path), "not a finished synthgen dataset")
    assert_clean_user_error(
        invoke("generate", write_recipe(name="ok.yaml"), "--out", tmp_path / "o2", "--device", "cuda:7"),
        "--device")


def test_output_path_mistakes_exit_2_without_traceback(write_recipe, tmp_path):
    recipe = write_recipe()
    assert_clean_user_error(invoke("plan", recipe, "--jsonl", tmp_path / "no" / "plan.jsonl"),
                            "--jsonl", "does not exist; create it first")
    (tmp_path / "a-file").write_text("")
    assert_clean_user_error(invoke("generate", recipe, "--out", tmp_path / "a-file" / "data"),
                            "cannot be created")
    out = tmp_path / "out"
    assert invoke("generate", recipe, "--out", out, "--device", "cpu", "--quiet").exit_code == 0
    assert_clean_user_error(invoke("inspect", out, "--contact-sheet", tmp_path / "sheet.gifx"),
                            "must end in one of .png")
    assert_clean_user_error(invoke("inspect", out, "--contact-sheet", tmp_path / "no" / "s.png"),
                            "does not exist")
