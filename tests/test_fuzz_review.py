"""Bugs found by fuzzing recipes (seeded mutations of the shipped and test recipes, 2026-12-03);
each test fails on the code it was written against.

The rules: a user's mistake is one message that names the file and field, with exit status 2
and no traceback; a recipe that validates plans and generates what it describes; the same
recipe gives the same plan (and recipe hash) every time, in every process.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from click.testing import CliRunner

from synthgen.cli import main
from synthgen.errors import UserError
from synthgen.recipe import load_recipe, parse_recipe

REPO = Path(__file__).resolve().parents[1]
HEADER = """\
name: fuzzed
seed: 1
model: {id: "builtin:tiny-random", steps: 1, width: 32, height: 32}
"""


def recipe_text(body: str) -> str:
    return HEADER + textwrap.dedent(body)


@contextlib.contextmanager
def at_most(seconds: int):
    """Fail instead of hanging: TimeoutError after `seconds` (main thread, POSIX)."""
    def stop(*_):
        raise TimeoutError(f"still running after {seconds} s")

    previous = signal.signal(signal.SIGALRM, stop)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


# --- 1. fill_templates reads the text it inserts (concept, class name, balanced value) as slots

def _erase_contexts(recipe):
    (index, entry), = [(i, e) for i, e in enumerate(recipe.suppress) if e.method == "erase"]
    return entry.filled_contexts(recipe, index)


def _debias_prompts(recipe):
    from synthgen.generate.debias import debias_targets, untouched_prompts

    (index,) = [i for i, e in enumerate(recipe.balance) if e.method == "debias"]
    targets = debias_targets(recipe, index)
    return [p for t in targets for p in t.prompts] + untouched_prompts(recipe, index)


FILLED_TEXT_CASES = {
    # erase concept with braces: KeyError: 'x' (synthgen generate: traceback, exit 1)
    "erase-concept": ("""\
        templates: ["a {class}"]
        classes: [{name: circle, groups: 1}]
        suppress:
          - {concept: "{x}", method: erase, contexts: ["a {concept}"], context_prompts: 2}
        """, _erase_contexts, "a {x}"),
    # a class named "{class}": every pass fills {class} with "{class}" again: never ends
    "erase-class-name": ("""\
        templates: ["a {class}"]
        classes: [{name: "{class}", groups: 1}]
        suppress:
          - {concept: striped, method: erase, contexts: ["a {concept} {class}"], context_prompts: 2}
        """, _erase_contexts, "a striped {class}"),
    # a prompt-balanced value with braces, in the prompts debias edits: KeyError: 'y'
    "debias-balanced-value": ("""\
        templates: ["a {class}"]
        classes: [{name: circle, groups: 2}]
        balance:
          - {attribute: mood, values: {"{y}": 1, calm: 1}}
          - {attribute: colour, values: {red: 1, blue: 1}, method: debias, prompts: 4}
        """, _debias_prompts, "a circle, {y}"),
}


@pytest.mark.parametrize("case", list(FILLED_TEXT_CASES))
def test_generation_prompts_keep_inserted_text_verbatim(case):
    """Input: a recipe that validates and plans, whose erase concept, class name or
    prompt-balanced value holds braces ("{x}", a class named "{class}", a value "{y}"; the
    plan puts each into its prompts as written). What happens: the prompts erase edits
    (`EraseSuppression.filled_contexts`) and debias reads (`debias_targets`) are filled by
    `generate.erase.fill_templates`, which formats its text again after each pass, so the
    inserted text is read as slots: KeyError ('x', 'y'), ValueError for '{}' or '{0}', or, for a
    class name holding {class}, a loop that never ends; `synthgen generate` fails after
    loading the model with a traceback (exit 1), or hangs. Correct: the inserted text appears
    verbatim, as in the plan's prompts (or validate refuses such a value with a UserError)."""
    body, prompts_of, expected = FILLED_TEXT_CASES[case]
    try:
        recipe = parse_recipe(recipe_text(body))
    except UserError:
        return  # refusing the value at validate time is a correct fix too
    with at_most(10):
        prompts = prompts_of(recipe)
    assert expected in prompts


# --- 2. a YAML !!set or !!map tag on a sequence

YAML_TAGGED = {
    "set-on-a-sequence": HEADER + 'templates: !!set ["a {class}"]\nclasses: [{name: circle, groups: 1}]\n',
    "map-on-a-sequence": HEADER.replace("name: fuzzed", "name: !!map [a, b]")
    + 'templates: ["a {class}"]\nclasses: [{name: circle, groups: 1}]\n',
}


@pytest.mark.parametrize("case", list(YAML_TAGGED))
def test_yaml_mapping_tag_on_a_sequence_is_a_user_error(tmp_path, case):
    """Input: a recipe line `templates: !!set ["a {class}"]` (or `name: !!map [a, b]`).
    What happens: PyYAML constructs a set or map by calling construct_mapping, which
    recipe._UniqueKeyLoader overrides without the base class's check that the node is a
    mapping, so it unpacks a sequence's items: TypeError: cannot unpack non-iterable
    ScalarNode object, and `synthgen validate` prints a traceback (exit 1). Correct: a
    UserError naming the line (PyYAML's own 'expected a mapping node, but found sequence'),
    exit 2."""
    text = YAML_TAGGED[case]
    with pytest.raises(UserError, match="<recipe>"):
        parse_recipe(text)
    path = tmp_path / "recipe.yaml"
    path.write_text(text, encoding="utf-8")
    result = CliRunner().invoke(main, ["validate", str(path)])
    assert result.exit_code == 2, (result.exception, result.output)


# --- 3. a YAML set as a recipe list: the plan depends on the process's hash seed

_PLAN_IN_A_PROCESS = """
import json, sys
from synthgen.recipe import load_recipe
from synthgen.errors import UserError
from synthgen.plan import make_plan
try:
    recipe = load_recipe(sys.argv[1])
except UserError as error:
    print(json.dumps({"error": str(error)}))
else:
    print(json.dumps({"hash": recipe.recipe_hash,
                      "prompts": [g.views[0].prompt for g in make_plan(recipe).groups]}))
"""


def test_yaml_set_of_templates_plans_the_same_in_every_process(tmp_path):
    """Input: `templates: !!set {"a photo of a {class}", "a drawing of a {class}", ...}`
    (YAML's set type). What happens: pydantic takes the Python set for list[str], in the
    set's iteration order, which depends on PYTHONHASHSEED: each run of `synthgen plan`
    gives another recipe hash and other prompts for the same file (resume and finalize then
    see a different recipe). Correct: the same recipe plans the same in every process;
    either the set is refused (a UserError: write a list) or read in one fixed order."""
    path = tmp_path / "recipe.yaml"
    path.write_text(recipe_text("""\
        templates: !!set {"a photo of a {class}", "a drawing of a {class}",
                          "a painting of a {class}", "a sketch of a {class}",
                          "a render of a {class}", "a cartoon of a {class}"}
        classes: [{name: circle, groups: 8}]
        views: {count: 1}
        """), encoding="utf-8")
    outcomes = set()
    for hash_seed in ("1", "2", "3", "4"):
        env = {**os.environ, "PYTHONHASHSEED": hash_seed, "PYTHONPATH": str(REPO)}
        done = subprocess.run([sys.executable, "-c", _PLAN_IN_A_PROCESS, str(path)], env=env,
                              capture_output=True, text=True, timeout=120, check=True)
        outcomes.add(done.stdout)
    assert len(outcomes) == 1, [json.loads(o).get("hash", "")[:12] for o in outcomes]


# --- 4. a model folder's synthgen-edits.json that is not what synthgen edit writes

@pytest.mark.parametrize("edits", ['{"base_model": "x", "edits": [', '["x"]',
                                   '{"edits": ["striped"]}',
                                   '{"edits": [{"method": "erase", "concept": 5}]}',
                                   '{"edits": [{"method": ["debias"], "attribute": "colour"}]}'])
def test_unreadable_edits_record_in_model_folder_is_a_user_error(tmp_path, edits):
    """Input: model.id is a local pipeline folder (model_index.json) whose
    synthgen-edits.json is cut short, or not the mapping `synthgen edit` writes (a list, or
    edits that are strings, or an edit whose concept or method is not a string); the recipe
    erases a concept. What happens: recipe_warnings ->
    plan._erased_twice_warnings -> builtin.edit_record json.loads it unguarded:
    JSONDecodeError or AttributeError ('list' object has no attribute 'get'), and `synthgen
    validate` prints a traceback (exit 1). Correct: one error line naming the folder's
    synthgen-edits.json and what is wrong with it, exit 2."""
    folder = tmp_path / "edited-model"
    folder.mkdir()
    (folder / "model_index.json").write_text("{}")
    (folder / "synthgen-edits.json").write_text(edits)
    path = tmp_path / "recipe.yaml"
    path.write_text(textwrap.dedent(f"""\
        name: edited
        seed: 1
        model: {{id: "{folder}", steps: 1, width: 32, height: 32}}
        templates: ["a {{class}}"]
        classes: [{{name: circle, groups: 1}}]
        suppress: [{{concept: striped, method: erase}}]
        """), encoding="utf-8")
    result = CliRunner().invoke(main, ["validate", str(path)])
    assert result.exit_code == 2, (result.exception, result.output)
    assert "synthgen-edits.json" in result.output


# --- 5. a debias entry's detector is not checked by validate

def test_debias_detector_is_checked_like_a_reject_detector(tmp_path):
    """Input: `balance: [{attribute: colour, values: {red: 1, blue: 1}, method: debias,
    detector: builtin:no-such-clip}]`. What happens: load_recipe (validate) passes it:
    `check_model_references` checks model.id, model.decoder, every suppress entry's detector
    (a reject entry with the same detector is refused: 'suppress[0].detector: unknown builtin
    model'), audit.clip and slots.check's detector, but no balance entry's, so the mistake
    shows only in generate, after the pipeline is loaded. Correct: validate refuses it,
    naming balance[0].detector."""
    path = tmp_path / "recipe.yaml"
    path.write_text(recipe_text("""\
        templates: ["a {class}"]
        classes: [{name: circle, groups: 1}]
        balance:
          - {attribute: colour, values: {red: 1, blue: 1}, method: debias,
             detector: "builtin:no-such-clip"}
        """), encoding="utf-8")
    with pytest.raises(UserError, match=r"balance\[0\]\.detector"):
        load_recipe(path)


# --- 6. an erase context with malformed braces: pydantic's words, no fix

@pytest.mark.parametrize("context", ["a {concept} {", "{concept} {0}", "{concept} {colour!r}"])
def test_malformed_erase_context_reads_like_every_other_template_problem(context):
    """Input: `suppress: [{concept: striped, method: erase, contexts: ["a {concept} {"]}]`.
    What happens: EraseSuppression._contexts_name_the_concept calls template_slots, whose
    ValueError pydantic wraps: "suppress[0].contexts: Value error, Single '{' encountered in
    format string (got [...])": pydantic's 'Value error,' prefix and no fix, where a template,
    slot value or audit template with the same mistake says "slots look like {breed}, literal
    braces are written {{ and }}". Correct: the same wording as those (no 'Value error')."""
    body = f"""\
        templates: ["a {{class}}"]
        classes: [{{name: circle, groups: 1}}]
        suppress:
          - {{concept: striped, method: erase, contexts: [{json.dumps(context)}]}}
        """
    with pytest.raises(UserError) as raised:
        parse_recipe(recipe_text(body))
    message = str(raised.value)
    assert "Value error" not in message
    assert "literal braces are written {{ and }}" in message


# --- 7. a slot with a format spec or conversion: the message names the slot without it

@pytest.mark.parametrize("written", ["{colour:>10}", "{colour!r}"])
def test_format_spec_in_a_template_is_named_as_written(written):
    """Input: `templates: ["a {colour:>10} {class}"]` with slot colour defined (or
    `{colour!r}`). What happens: recipe_base._template_slots rebuilds the field from its name
    alone, so the message says "'{colour}' is not a slot name" about a slot that is defined,
    and never mentions the ':>10' (or '!r') that is the mistake. Correct: the message shows
    the field as written ('{colour:>10}') and says slots take no format spec or conversion."""
    text = recipe_text(f"""\
        templates: ["a {written} {{class}}"]
        slots: {{colour: [red, blue]}}
        classes: [{{name: circle, groups: 1}}]
        """)
    with pytest.raises(UserError) as raised:
        parse_recipe(text)
    message = str(raised.value)
    after_template = message.split(f"'a {written} {{class}}'", 1)[-1]
    assert written in after_template, message
    assert "'{colour}' is not a slot name" not in message
