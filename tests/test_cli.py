"""The command line through click's CliRunner: the commands work, mistakes exit 2 cleanly."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest
from click.testing import CliRunner
from PIL import Image

from synthgen.cli import main


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


def test_validate_counts_each_class_with_its_own_views_and_says_1_not_1s(write_recipe):
    recipe = write_recipe({"classes": [
        {"name": "circle", "templates": ["a {colour} circle"], "groups": 4, "views": {"count": 3}},
        {"name": "square", "templates": ["a {colour} square"], "groups": 3}]})
    result = invoke("validate", recipe)
    assert result.exit_code == 0, result.output
    # circle 4 x 3, square 3 x 2, the corner case 2 x 2
    assert "2 classes, 1 corner case, 9 groups, 22 images" in result.output


def test_generate_names_counts_in_the_singular_and_plan_estimates_the_real_size(write_recipe,
                                                                               tmp_path):
    recipe = write_recipe({"output": {"groups_per_shard": 9}})
    estimate = json.loads(invoke("plan", recipe, "--json").output)["estimated_bytes"]
    out = tmp_path / "out"
    result = invoke("generate", recipe, "--out", out, "--device", "cpu", "--quiet")
    assert result.exit_code == 0, result.output
    assert "wrote 1 shard (18 images)" in result.output and "0 shards were already done" in result.output
    written = sum(path.stat().st_size for path in out.glob("shard-*"))
    # At 32 px tar headers and json are half the bytes, and the estimate counts them exactly;
    # it guesses the pixels at 14 bits each, and random-weight images take 23.
    assert 0.8 < written / estimate < 1.4, (written, estimate)
    again = invoke("generate", recipe, "--out", out, "--device", "cpu", "--quiet")
    assert f"{out}: its 1 shard was already done" in again.output


def test_inspect_checks_the_contact_sheet_name_before_printing_anything(tmp_path):
    result = invoke("inspect", tmp_path / "no-dataset", "--contact-sheet", tmp_path / "x.txt")
    assert_clean_user_error(result, "--contact-sheet", "must end in one of .png")
    assert "not a finished synthgen dataset" not in result.output


def test_an_erase_already_in_the_model_folder_is_warned_about(write_recipe, tmp_path):
    import shutil

    from synthgen.builtin import EDITS_FILE, resolve_model_source

    edited = tmp_path / "edited-model"
    shutil.copytree(resolve_model_source("builtin:tiny-random"), edited)
    (edited / EDITS_FILE).write_text(json.dumps({
        "base_model": "builtin:tiny-random", "edits": [{"concept": "red", "target": "blue"}]}))
    recipe = write_recipe({"model": {"id": str(edited)},
                           "suppress": [{"concept": "Red", "method": "erase", "target": "blue"},
                                        {"concept": "green", "method": "erase"}]})
    for command in ("validate", "plan"):
        result = invoke(command, recipe)
        assert result.exit_code == 0, result.output
        assert "warning: suppress[0]:" in result.output and "'Red' already erased" in result.output
        assert "warning: suppress[1]:" not in result.output  # (its slot value warning is another)


def test_world_sd_prompts_without_a_background_or_outside_its_words_are_warned_about(write_recipe):
    quiet = write_recipe({"model": {"id": "builtin:world-sd"},
                          "templates": ["a large {colour} {class} on a gray background"],
                          "classes": [{"name": "circle", "groups": 2}], "corner_cases": [],
                          "slots": {"colour": ["red", "blue"]}}, name="ok.yaml")
    assert "warning" not in invoke("validate", quiet).output
    noisy = write_recipe({"model": {"id": "builtin:world-sd"},
                          "templates": ["a photo of a {colour} {class}"],
                          "classes": [{"name": "circle", "groups": 2},
                                      {"name": "dog", "groups": 2}], "corner_cases": [],
                          "slots": {"colour": ["red", "teal"]}}, name="noisy.yaml")
    for command in ("validate", "plan"):
        output = invoke(command, noisy).output
        assert "'photo' (circle)" in output and "'dog' (dog)" in output and "'teal' (slot colour)" in output
        assert "name no background" not in output
        assert "1 of the recipe's prompt templates name none, e.g. 'a photo of a {colour} {class}'" in output


def test_a_bad_fail_on_rule_is_refused_before_torch_is_imported(tmp_path):
    """The audit's torch and transformers imports took 6-7 s before a typo was reported."""
    import subprocess
    import sys

    check = ("import sys; from click.testing import CliRunner; from synthgen.cli import main; "
             f"result = CliRunner().invoke(main, ['audit', {str(tmp_path)!r}, '--fail-on', 'kll>0.1']); "
             "print(result.exit_code, 'torch' in sys.modules); print(result.output)")
    result = subprocess.run([sys.executable, "-c", check], capture_output=True, text=True,
                            timeout=120, cwd=Path(__file__).resolve().parents[1])
    assert result.stdout.startswith("2 False"), result.stdout + result.stderr
    assert "unknown metric 'kll'" in result.stdout


def test_loading_a_model_prints_no_accelerate_warning(caplog):
    import torch

    from synthgen.generate.load import load_pipeline
    from synthgen.recipe import ModelSpec

    library_logger = logging.getLogger("diffusers")  # it does not propagate to the root
    library_logger.addHandler(caplog.handler)
    try:
        load_pipeline(ModelSpec(id="builtin:tiny-random", width=32, height=32),
                      torch.device("cpu"), torch.float32)
    finally:
        library_logger.removeHandler(caplog.handler)
    assert not [r.getMessage() for r in caplog.records if "accelerate" in r.getMessage()]


def test_a_model_folder_that_does_not_load_gets_a_message_about_the_folder(tmp_path):
    import shutil

    import torch

    from synthgen.builtin import resolve_model_source
    from synthgen.errors import UserError
    from synthgen.generate.load import load_pipeline
    from synthgen.recipe import ModelSpec

    broken = tmp_path / "model"
    broken.mkdir()
    index = Path(resolve_model_source("builtin:tiny-random")) / "model_index.json"
    shutil.copy(index, broken)
    with pytest.raises(UserError) as caught:  # none of the folders its index names
        load_pipeline(ModelSpec(id=str(broken)), torch.device("cpu"), torch.float32)
    assert "lacks the folders scheduler, text_encoder, tokenizer, unet, vae" in str(caught.value)
    for name in ("scheduler", "text_encoder", "tokenizer", "unet", "vae"):
        (broken / name).mkdir()  # the folders, empty: diffusers cannot load them
    with pytest.raises(UserError) as caught:
        load_pipeline(ModelSpec(id=str(broken)), torch.device("cpu"), torch.float32)
    message = str(caught.value)
    assert message.startswith(f"model.id: cannot load '{broken}' (") and "save_pretrained" in message
    assert "revision" not in message and "network" not in message and ".." not in message


def test_the_command_line_lives_in_the_package_and_the_checkout_entry_runs_it():
    """A top-level module named `cli` was installed beside synthgen: any project could shadow
    it. The console script runs synthgen.cli; the repository's cli.py only runs that group."""
    import subprocess
    import sys

    tomllib = pytest.importorskip("tomllib")  # Python 3.11+
    project = tomllib.loads((Path(__file__).resolve().parents[1] / "pyproject.toml").read_text())
    assert project["project"]["scripts"] == {"synthgen": "synthgen.cli:main"}
    assert "py-modules" not in project["tool"].get("setuptools", {})
    repository = Path(__file__).resolve().parents[1]
    result = subprocess.run([sys.executable, str(repository / "cli.py"), "--version"],
                            capture_output=True, text=True, timeout=120, cwd=repository.parent)
    assert result.returncode == 0 and result.stdout == "cli.py, version 0.1.0\n", result.stderr


def test_plan_lists_a_balance_that_edits_the_model(write_recipe):
    # A debias entry fills no slot, so the balance table cannot show it; plan says what it does.
    recipe = write_recipe({"balance": [{"attribute": "colour", "values": {"red": 3, "blue": 1},
                                        "applies_to": ["circle"], "method": "debias",
                                        "trials": 4}]})
    result = invoke("plan", recipe)
    assert result.exit_code == 0, result.output
    assert ("balance of 'colour' by debias (circle): prompts name no value; the model is edited "
            "toward red 75%, blue 25%, as builtin:world-clip reads 4 trial images per class") in result.output
    summary = json.loads(invoke("plan", recipe, "--json").output)
    assert summary["balance_edits"][0]["values"] == {"red": 3, "blue": 1}
