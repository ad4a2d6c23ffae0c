"""Hostile and mistaken input found in review (2026-12-03), beyond tests/test_hostile_input.py;
each test failed before its fix.

Each test states the project's rule for one input: a user's mistake is
one message and exit status 2 (no traceback), a recipe that validates makes the prompts it
describes, and nothing outside what synthgen writes is removed.
"""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from click.testing import CliRunner

from synthgen.cli import main

REPO = Path(__file__).resolve().parents[1]
SYNTHGEN = REPO / ".venv" / "bin" / "synthgen"
HEADER = """\
name: hostile
seed: 1
model: {id: builtin:tiny-random, width: 32, height: 32}
"""


def write(tmp_path: Path, header: str, body: str = "", name: str = "recipe.yaml") -> Path:
    path = tmp_path / name
    path.write_text(header + textwrap.dedent(body), encoding="utf-8")
    return path


def invoke(*args: str):
    return CliRunner().invoke(main, [str(arg) for arg in args])


def assert_user_error(result, *fragments: str) -> None:
    """Exit 2 with a message, and no exception escaping the command."""
    escaped = result.exception if not isinstance(result.exception, SystemExit) else None
    assert escaped is None, f"{type(escaped).__name__}: {str(escaped)[:300]}"
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output
    for fragment in fragments:
        assert fragment in result.output, result.output


def planned_prompts(tmp_path: Path, recipe: Path) -> list[str]:
    jsonl = tmp_path / "plan.jsonl"
    result = invoke("plan", recipe, "--jsonl", jsonl)
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exception
    if result.exit_code == 2:  # refused with a message naming the slots: also fine
        assert "not valid YAML" not in result.output and "{" in result.output, result.output
        return []
    assert result.exit_code == 0, result.output
    return [view["prompt"] for line in jsonl.read_text().splitlines()
            for view in json.loads(line)["views"]]


# --- numbers that are finite in the recipe but overflow once multiplied ----------------------

@pytest.mark.parametrize("case, field", [
    ("{name: c, prompt: x, weight: 1.0e308}", "corner_cases[0].weight"),
    ("{name: c, prompt: x, label: thing, oversample: 1.0e308}", "corner_cases[0].oversample"),
])
def test_corner_case_size_that_overflows_is_a_user_error(tmp_path, case, field):
    # recipe.py corner_case_groups: round(1e308 * groups) -> OverflowError, a traceback.
    path = write(tmp_path, HEADER, f"""\
        templates: ["a {{class}}"]
        classes: [{{name: thing, groups: 2}}]
        corner_cases: [{case}]
        """)
    assert_user_error(invoke("validate", path), field)


def test_balance_proportions_that_overflow_are_a_user_error(tmp_path):
    # attributes.largest_remainder_quotas: total * 1e308 is inf -> int(inf) in `plan`.
    path = write(tmp_path, HEADER, """\
        templates: ["a {class}"]
        classes: [{name: thing, groups: 4}]
        balance: [{attribute: size, values: {small: 1.0e308, large: 1}}]
        """)
    assert_user_error(invoke("plan", path), "balance[0].values")


# --- YAML that loads but that the loader or later stages cannot take -------------------------

def test_a_list_as_a_mapping_key_is_a_user_error(tmp_path):
    # _UniqueKeyLoader.construct_mapping puts the key in a dict: TypeError unhashable 'list'.
    path = write(tmp_path, HEADER + "? [a, b]\n: 1\n")
    assert_user_error(invoke("validate", path))


def test_a_lone_surrogate_escape_is_a_user_error(tmp_path):
    # "\udc80" is a valid YAML escape; validate passes, plan dies encoding the recipe hash.
    path = write(tmp_path, HEADER, """\
        templates: ["a {class} \\udc80"]
        classes: [{name: thing, groups: 2}]
        """)
    assert_user_error(invoke("plan", path))


def test_aliases_of_a_long_string_cannot_expand_past_memory(tmp_path):
    """The alias bound counts values, not their size: 99,000 aliases of one 400 KB string (an
    0.8 MB file, under both caps) are 40 GB of text, which `plan` tries to serialise."""
    long = "x" * 400_000
    path = tmp_path / "bomb.yaml"
    path.write_text(HEADER + "templates: ['a {class}']\nclasses: [{name: dog, groups: 1}]\n"
                    f"corner_cases:\n  - name: c\n    prompt: x\n    groups: 1\n"
                    f"    tags: [&t \"{long}\"" + ", *t" * 99_000 + "]\n")
    assert path.stat().st_size < 1_000_000

    def limit_memory():
        resource.setrlimit(resource.RLIMIT_AS, (2 * 2**30, 2 * 2**30))

    result = subprocess.run([sys.executable, str(REPO / "cli.py"), "plan", str(path)],
                            capture_output=True, text=True, timeout=120, cwd=REPO,
                            preexec_fn=limit_memory, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert "MemoryError" not in result.stderr, result.stderr[-1500:]
    assert "Traceback" not in result.stderr, result.stderr[-1500:]
    assert result.returncode == 2, result.stderr[-1500:]


# --- model references -----------------------------------------------------------------------

def test_a_model_id_longer_than_a_file_name_is_a_user_error(tmp_path):
    # builtin.check_model_reference: Path(id).is_dir() raises ENAMETOOLONG, not caught.
    path = write(tmp_path, HEADER.replace("builtin:tiny-random", "a" * 300), """\
        templates: ["a {class}"]
        classes: [{name: thing, groups: 2}]
        """)
    assert_user_error(invoke("validate", path), "model.id")


def test_a_model_folder_with_a_foreign_model_index_is_a_user_error(tmp_path):
    # validate accepts any folder holding a model_index.json; generate's load_pipeline then
    # raises KeyError '_class_name' from diffusers (only OSError/ValueError are caught).
    model = tmp_path / "model"
    model.mkdir()
    (model / "model_index.json").write_text("{}")
    path = write(tmp_path, HEADER.replace("builtin:tiny-random", str(model)), """\
        templates: ["a {class}"]
        classes: [{name: thing, groups: 1}]
        views: {count: 1}
        """)
    result = subprocess.run([str(SYNTHGEN), "generate", str(path), "--out", str(tmp_path / "out"),
                             "--device", "cpu", "--quiet"], capture_output=True, text=True,
                            timeout=300, cwd=REPO,
                            env={**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"})
    assert "Traceback" not in result.stderr, result.stderr[-1500:]
    assert result.returncode == 2, result.stderr[-1500:]
    assert "model.id" in result.stderr


# --- recipes that validate but do not make the prompts they describe -------------------------

def test_two_balance_entries_for_one_attribute_are_refused(tmp_path):
    # The plan keys balanced values by attribute: the second entry overwrites the first, so
    # every prompt says "a red thing, red" and small/large never appear.
    path = write(tmp_path, HEADER, """\
        templates: ["a {size} {class}"]
        classes: [{name: thing, groups: 4}]
        balance:
          - {attribute: size, values: {small: 1, large: 1}}
          - {attribute: size, slot: colour, values: {red: 1, blue: 1}}
        """)
    assert_user_error(invoke("validate", path), "balance[1]")


def test_class_inside_a_slot_value_is_filled_or_refused(tmp_path):
    # _check_nested_slots allows {class} in slot values; plan._expand never fills it.
    path = write(tmp_path, HEADER, """\
        templates: ["a photo of {thing}"]
        slots: {thing: ["a {class} toy", "a big {class}"]}
        classes: [{name: dog, groups: 2}]
        """)
    for prompt in planned_prompts(tmp_path, path):
        assert "{" not in prompt, prompt


def test_balance_slot_inside_a_class_slot_value_is_filled_or_refused(tmp_path):
    # A class's slot values may name a balance slot (it is in `known`); plan._expand leaves
    # it as literal text: "a photo of a {gender} walking, woman".
    path = write(tmp_path, HEADER, """\
        balance: [{attribute: gender, values: {woman: 1, man: 1}}]
        classes:
          - name: person
            groups: 2
            templates: ["a photo of {who}"]
            slots: {who: ["a {gender} walking"]}
        """)
    for prompt in planned_prompts(tmp_path, path):
        assert "{" not in prompt, prompt


def test_slots_nested_deeper_than_the_plan_expands_are_refused(tmp_path):
    # plan._MAX_SLOT_DEPTH stops at 8 levels silently: 'x0 ... x8 {s9} dog'.
    slots = "".join(f"  s{i}: ['x{i} {{s{i + 1}}}']\n" for i in range(10)) + "  s10: [end]\n"
    path = tmp_path / "deep.yaml"
    path.write_text(HEADER + "templates: ['{s0} {class}']\nslots:\n" + slots
                    + "classes: [{name: dog, groups: 1}]\n")
    for prompt in planned_prompts(tmp_path, path):
        assert "{" not in prompt, prompt


def test_recipe_name_with_a_trailing_newline_is_refused(tmp_path):
    # _NAME_PATTERN ends in `$`, which re.match lets match before a final "\n".
    path = write(tmp_path, HEADER.replace("name: hostile", 'name: "hostile\\n"'), """\
        templates: ["a {class}"]
        classes: [{name: thing, groups: 2}]
        """)
    assert_user_error(invoke("validate", path), "name")


# --- audit templates ------------------------------------------------------------------------

def test_validate_refuses_a_malformed_audit_template(tmp_path):
    path = write(tmp_path, HEADER, """\
        templates: ["a {class}"]
        classes: [{name: thing, groups: 2}]
        audit: {attributes: [{name: colour, values: [red, green], templates: ["a {value"]}]}
        """)
    assert_user_error(invoke("validate", path), "audit.attributes[0].templates")


def test_audit_template_option_with_malformed_braces_is_a_user_error(tmp_path):
    # audit/spec.py _attribute: string.Formatter().parse raises ValueError, before any model.
    dataset = tmp_path / "dataset"
    dataset.mkdir()
    (dataset / "manifest.json").write_text(json.dumps({"format": "synthgen-dataset/1", "recipe": {"name": "x"}, "shards": []}))
    result = invoke("audit", dataset, "--attribute", "colour=red,green",
                    "--template", "colour=a {value", "--report", tmp_path / "report")
    assert_user_error(result, "command-line templates", "template 'a {value' is malformed")


# --- command-line outputs -------------------------------------------------------------------

def test_plan_jsonl_onto_its_own_recipe_is_refused(tmp_path):
    path = write(tmp_path, HEADER, """\
        templates: ["a {class}"]
        classes: [{name: thing, groups: 2}]
        """)
    before = path.read_text()
    result = invoke("plan", path, "--jsonl", path)
    assert path.read_text() == before, "the recipe was overwritten by the plan"
    assert_user_error(result, "--jsonl")


def test_inspect_a_folder_with_a_foreign_manifest_is_a_user_error(tmp_path):
    # A web app's or another tool's manifest.json: KeyError 'shards' / TypeError.
    for text in ("{}", "[]"):
        (tmp_path / "manifest.json").write_text(text)
        assert_user_error(invoke("inspect", tmp_path), "manifest.json")


def test_overwrite_into_a_folder_that_is_no_dataset_keeps_the_users_files(tmp_path):
    """`--overwrite` deletes "the dataset in --out"; a folder without recipe.json holds none,
    yet its audit/ tree, index.json and manifest.json are removed (write.prepare_output_dir)."""
    out = tmp_path / "project"
    (out / "audit").mkdir(parents=True)
    (out / "audit" / "notes.txt").write_text("mine")
    (out / "index.json").write_text('{"mine": 1}')
    (out / "manifest.json").write_text('{"mine": 1}')
    # A hub id that cannot load offline: the run stops after preparing --out, before a model.
    path = write(tmp_path, HEADER.replace("builtin:tiny-random", "nobody/no-such-model"), """\
        templates: ["a {class}"]
        classes: [{name: thing, groups: 1}]
        """)
    subprocess.run([str(SYNTHGEN), "generate", str(path), "--out", str(out), "--overwrite",
                    "--device", "cpu", "--quiet"], capture_output=True, text=True, timeout=300,
                   cwd=REPO, env={**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"})
    assert (out / "audit" / "notes.txt").is_file(), "the user's audit/ folder was deleted"
    assert (out / "index.json").is_file(), "the user's index.json was deleted"
    assert (out / "manifest.json").is_file(), "the user's manifest.json was deleted"


def test_an_output_file_that_is_a_pipe_is_refused_and_left_alone(tmp_path):
    """Output files are written beside and renamed over; over a FIFO (or /dev/stdout, or as
    root /dev/null) that replaced the device or pipe with a plain file."""
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text('name: pipe\nmodel: {id: builtin:tiny-random}\ntemplates: ["a {class}"]\n'
                      "classes: [{name: dog, groups: 2}]\n")
    fifo = tmp_path / "plan.jsonl"
    os.mkfifo(fifo)
    assert_user_error(invoke("plan", str(recipe), "--jsonl", str(fifo)), "not a file")
    assert fifo.is_fifo()
