"""Faults in the command line and the Python API as a user meets them, found in review by
fault injection; each test fails on the code it was written against, for the reason its
docstring gives.

Commands run through click's runner on tiny recipes (builtin:tiny-random, 32 px, 2 steps);
datasets that need no real pixels are made of stand-in shards (engine_helpers), and the slow
parts a test does not need (saving a model, editing one) are replaced by monkeypatch.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
from pathlib import Path

import pytest
import yaml

from small_recipe import SMALL_RECIPE, merge

sys.path.insert(0, str(Path(__file__).parent / "engines"))
from engine_helpers import finished_dataset  # noqa: E402

from synthgen.plan import make_plan  # noqa: E402
from synthgen.recipe import load_recipe  # noqa: E402
from cli_checks import assert_no_traceback, invoke  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_thread")

# One class of one group, two views: the smallest dataset the tiny model makes (seconds).
ONE_GROUP = {"classes": [{"name": "circle", "templates": ["a {colour} circle"], "groups": 1}],
             "corner_cases": []}




def _files(folder: Path) -> dict[str, str]:
    """Every file under `folder` (relative name -> sha256 of its bytes)."""
    return {path.relative_to(folder).as_posix(): hashlib.sha256(path.read_bytes()).hexdigest()
            for path in sorted(folder.rglob("*")) if path.is_file()}


# --- a file where a folder goes -------------------------------------------------------------

@pytest.mark.parametrize("command", ["dev tiny-random", "train --out FILE", "train --out FILE/x",
                                     "world dataset"])
def test_a_folder_option_that_is_or_lies_below_a_file_is_one_line_and_exit_2(tmp_path, command):
    """`generate --out`, `edit --out`, `audit --report` check their folder first
    (outputs.check_output_folder) and say so in one line, exit 2. Other commands that write a
    folder do not: `synthgen dev tiny-random A_FILE/model` (dev.tiny_random) and `synthgen
    world dataset --out A_FILE/data` (world.dataset.write_real_dataset) end in
    NotADirectoryError, `synthgen train DATA --out A_FILE` in FileExistsError
    (train.trainer.train's mkdir), each a traceback with exit 1. Each should be the usual
    one-line message naming the option and path, exit 2, before any work."""
    a_file = tmp_path / "notes.txt"
    a_file.write_text("mine")
    data = tmp_path / "data"  # train fails on --out before it reads DATA's shards
    if command == "dev tiny-random":
        args = ["dev", "tiny-random", a_file / "model"]
    elif command == "train --out FILE":
        args = ["train", data, "--out", a_file, "--steps", 1, "--workers", 0, "--device", "cpu"]
    elif command == "train --out FILE/x":
        args = ["train", data, "--out", a_file / "run", "--steps", 1, "--workers", 0,
                "--device", "cpu"]
    else:
        args = ["world", "dataset", "--out", a_file / "real", "--train", 1, "--test", 1]
    if command.startswith("train"):
        finished_dataset(data, make_plan(load_recipe(_write(tmp_path, ONE_GROUP))))
    result = invoke(*args)
    assert_no_traceback(result, allowed=(2,))
    assert str(a_file) in result.output, result.output
    assert a_file.read_text() == "mine"


def _write(tmp_path: Path, overrides: dict, name: str = "recipe.yaml") -> Path:
    path = tmp_path / name
    path.write_text(yaml.safe_dump(merge(SMALL_RECIPE, overrides), sort_keys=False))
    return path


# --- outputs of an interrupted command ------------------------------------------------------

def test_an_interrupted_dev_tiny_random_leaves_no_half_model_folder(tmp_path, monkeypatch):
    """`synthgen dev tiny-random DIR` refuses a non-empty DIR saying "(a model folder is
    written whole)", but dev.tiny_random saves straight into DIR (tiny_random.save_tiny_pipeline
    -> save_pretrained): stopped while the UNet is saved (Ctrl-C, a full disk), DIR keeps
    text_encoder/, tokenizer/ and vae/, and the rerun the user then tries is refused because
    DIR is not empty. The folder should appear whole or not at all (written beside and
    renamed, as api.edit does with outputs.folder_written_whole)."""
    import diffusers

    def interrupted(self, *args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(diffusers.UNet2DConditionModel, "save_pretrained", interrupted)
    out = tmp_path / "model"
    result = invoke("dev", "tiny-random", out)
    assert result.exit_code == 130, result.output
    left = sorted(p.name for p in out.iterdir()) if out.exists() else []
    assert left == [], f"a half-written model folder was left: {left}"


# --- printed tables and reports with special characters in names ----------------------------

NEWLINE_CORNER = {"classes": [{"name": "circle", "templates": ["a {colour} circle"], "groups": 1}],
                  "corner_cases": [{"name": "fog\nat night", "prompt": "a {colour} thing in fog",
                                    "label": None, "groups": 1}]}


def test_a_name_with_a_newline_does_not_break_the_plan_table(tmp_path):
    """A corner case (or class) name may hold a newline (recipe.py checks the recipe's name
    for one, not these), and cli.format_plan_summary prints it as is: the table row
    '* fog' ends there and 'at night -> no label   1   2  2 views' starts a line of its
    own, so the table no longer has one row per corner case (inspect's 'corner case ...'
    lines break the same way). Either refuse the newline when the recipe loads (exit 2
    naming corner_cases[0].name) or print the name on one line (escaped)."""
    result = invoke("plan", _write(tmp_path, NEWLINE_CORNER))
    assert_no_traceback(result)
    if result.exit_code == 2:
        assert "corner_cases[0].name" in result.output, result.output
        return
    rows = [line for line in result.output.splitlines() if "-> no label" in line]
    assert len(rows) == 1 and rows[0].startswith("* fog"), result.output


def test_audit_of_a_name_with_a_newline_writes_its_report(tmp_path, tiny_clip_dir):
    """The same recipe generates and inspects fine, but `synthgen audit` then dies before
    report.html with "ValueError: can't measure length of multiline text": the fidelity
    section's worst-views picture captions each view with its class / corner case name
    (audit/render.view_caption, captioned_grid -> text_width, PIL's textlength refuses
    newlines). A name the recipe accepts must not crash the audit: caption it on one line
    (or refuse the name when the recipe loads, exit 2)."""
    recipe = _write(tmp_path, NEWLINE_CORNER)
    out = tmp_path / "out"
    made = invoke("generate", recipe, "--out", out, "--device", "cpu", "--quiet")
    assert_no_traceback(made)
    if made.exit_code == 2:
        assert "corner_cases[0].name" in made.output, made.output
        return
    result = invoke("audit", out, "--clip", tiny_clip_dir, "--device", "cpu", "--quiet")
    assert_no_traceback(result, allowed=(0,))
    assert (out / "audit" / "report.html").is_file()


# --- foreign folders and files --------------------------------------------------------------

def test_inspect_a_manifest_with_an_empty_shard_list_is_a_user_error(tmp_path):
    """inspection.load_manifest accepts any manifest.json whose "shards" is a list of named
    entries, so another tool's `{"shards": []}` passes, and cli.inspect_command then reads
    manifest['recipe'] and manifest['totals']: KeyError, a traceback and exit 1 (`{}` and
    `[]` were fixed; this is the same mistake one key further). It should be the one-line
    "not a synthgen manifest" message, exit 2."""
    (tmp_path / "manifest.json").write_text('{"shards": []}')
    result = invoke("inspect", tmp_path)
    assert_no_traceback(result, allowed=(2,))
    assert "manifest.json" in result.output, result.output


def test_world_dataset_does_not_delete_a_synthgen_dataset_in_its_split_folder(tmp_path):
    """`synthgen world dataset --out DIR` writes DIR/train and DIR/test, and first unlinks
    every shard-NNNNNN.tar / .stats.json there (world.dataset.write_real_dataset): where
    DIR/test is a dataset `synthgen generate` made (recipe.json, manifest.json), its shards
    are deleted or replaced without a word, and `synthgen inspect DIR/test` then reports
    every shard damaged. world dataset writes no recipe.json, so a split folder holding one
    is not its own: refuse it (one line, exit 2) and leave the dataset alone, as generate
    refuses another recipe's --out."""
    recipe = _write(tmp_path, {})
    generated = tmp_path / "data" / "test"
    finished_dataset(generated, make_plan(load_recipe(recipe)))
    before = _files(generated)
    result = invoke("world", "dataset", "--out", tmp_path / "data", "--train", 1, "--test", 1)
    assert _files(generated) == before, "the generated dataset's shards were deleted or replaced"
    assert_no_traceback(result, allowed=(2,))


def test_overwrite_keeps_a_users_audit_folder_that_holds_no_audit(tmp_path):
    """README: `--overwrite` deletes synthgen's own files there "(and the old audit/ report;
    never anything else)". A folder of the user's that already held audit/notes.txt is
    accepted as --out (only shard-like names are refused), and the next `generate
    --overwrite` removes audit/ whole (write.prepare_output_dir -> store.remove_folder
    rmtree), the user's notes with it, though no audit ever wrote there. Remove only an
    audit report (the files synthgen audit writes), or refuse the folder at the first run."""
    out = tmp_path / "project"
    (out / "audit").mkdir(parents=True)
    (out / "audit" / "notes.txt").write_text("mine")
    recipe = _write(tmp_path, ONE_GROUP)
    first = invoke("generate", recipe, "--out", out, "--device", "cpu", "--quiet")
    assert_no_traceback(first)
    if first.exit_code == 0:
        result = invoke("generate", recipe, "--out", out, "--device", "cpu", "--quiet",
                         "--overwrite")
        assert_no_traceback(result)
    assert (out / "audit" / "notes.txt").is_file(), "the user's audit/notes.txt was deleted"


def test_an_empty_out_is_refused_not_the_current_folder(tmp_path, monkeypatch):
    """`synthgen generate R --out ""` (a script's `--out "$OUT"` with OUT unset) is read as
    Path("") == ".", and the dataset (recipe.json, shards, README.md, index.json,
    manifest.json) is written into the current folder among the user's files (store.
    parse_location, api.generate). An empty --out names no place: refuse it in one line,
    exit 2, writing nothing."""
    monkeypatch.chdir(tmp_path)
    recipe = _write(tmp_path, ONE_GROUP)
    (tmp_path / "mine.txt").write_text("mine")
    result = invoke("generate", recipe, "--out", "", "--device", "cpu", "--quiet")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mine.txt", "recipe.yaml"]
    assert_no_traceback(result, allowed=(2,))
    assert "--out" in result.output, result.output


def test_edit_into_a_link_to_an_empty_folder_is_not_a_traceback_after_the_work(tmp_path,
                                                                                 monkeypatch):
    """`synthgen edit R --out models/edited`, where models/edited is a symlink to an empty
    folder on a larger disk, passes every check (outputs.check_output_folder, api.edit's
    "not empty" test follow the link), runs the whole edit, then fails at the rename
    (outputs.folder_written_whole: os.replace of a folder onto a symlink) with
    NotADirectoryError: a traceback, exit 1, and the edited model thrown away. Either write
    the model into the folder the link names, or refuse the link in one line before any work."""
    from synthgen.generate import prepare

    edited = []

    def quick_edit(recipe, out_dir, device):
        edited.append(out_dir)
        (Path(out_dir) / "model_index.json").write_text("{}")
        return []

    monkeypatch.setattr(prepare, "write_edited_model", quick_edit)
    recipe = _write(tmp_path, {"suppress": [{"concept": "red", "method": "erase",
                                             "target": "blue"}]})
    (tmp_path / "big-disk").mkdir()
    os.symlink(tmp_path / "big-disk", tmp_path / "edited")
    result = invoke("edit", recipe, "--out", tmp_path / "edited", "--device", "cpu")
    assert_no_traceback(result)
    if result.exit_code == 0:
        assert (tmp_path / "edited" / "model_index.json").is_file()
    else:
        assert not edited, "refused only after the edit had run"


# --- recipe files a user may hand over ------------------------------------------------------

def test_a_recipe_with_nul_bytes_is_one_line(tmp_path):
    """A recipe saved as UTF-16 without a byte-order mark (one Windows editors write) decodes
    as UTF-8 with a NUL after every letter; yaml raises a ReaderError, which is no
    MarkedYAMLError, and recipe.parse_recipe's fallback prints str(error): two lines
    ('... special characters are not allowed' / '  in "<unicode string>", position 1)'),
    and no fix. Every other YAML mistake is one line with the file, where, and what to do;
    so should this one (e.g. 'holds a NUL character; save it as UTF-8')."""
    path = tmp_path / "recipe.yaml"
    path.write_bytes(yaml.safe_dump(merge(SMALL_RECIPE, ONE_GROUP)).encode("utf-16-le"))
    result = invoke("validate", path)
    assert_no_traceback(result, allowed=(2,))
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"error: {path}"), result.output


# --- output meant for machines --------------------------------------------------------------

def test_plan_json_with_jsonl_prints_only_json(tmp_path):
    """`synthgen plan R --json` prints "the summary as JSON" for a script to parse, but with
    --jsonl cli.plan appends 'plan written to FILE (N lines)' to stdout after it, so
    `synthgen plan R --json --jsonl plan.jsonl | jq` (or json.loads of stdout) fails. With
    --json, stdout should be the JSON alone (the note on stderr, or left out)."""
    result = invoke("plan", _write(tmp_path, {}), "--json", "--jsonl", tmp_path / "plan.jsonl")
    assert_no_traceback(result, allowed=(0,))
    summary = json.loads(result.stdout)
    assert summary["groups"] == 9
