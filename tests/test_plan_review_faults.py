"""Faults in validate, plan, finalize and edit found in review; each test fails on the code it
was written against, for the reason its docstring gives.

Plan-only where possible (`parse_recipe` + `make_plan`); finalize runs on fake shards; `edit`
and the command line run through click's runner; nothing is generated.
"""

from __future__ import annotations

import resource
import subprocess
import sys
import textwrap
from collections import Counter
from pathlib import Path

import pytest
import yaml

sys.path.insert(0, str(Path(__file__).parent / "engines"))
from engine_helpers import finished_dataset  # noqa: E402

from synthgen.errors import UserError
from synthgen.plan import make_plan
from synthgen.recipe import parse_recipe
from synthgen.write import (MANIFEST, finalize_dataset)
from cli_checks import assert_no_traceback, invoke  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
HEADER = """\
name: review
seed: 1
model: {id: builtin:tiny-random, width: 32, height: 32}
"""


def _recipe(**fields):
    base = {"name": "review", "seed": 1, "model": {"id": "builtin:tiny-random"}}
    return parse_recipe(yaml.safe_dump({**base, **fields}, sort_keys=False))




# --- plan --jsonl ---------------------------------------------------------------------------

def test_plan_jsonl_with_a_mistyped_recipe_path_is_a_user_error(tmp_path, monkeypatch):
    """api.plan calls `jsonl.samefile(recipe)` whenever the --jsonl file exists, before the
    recipe is loaded: a recipe path that does not exist (a typo, rerunning `plan` into last
    run's plan.jsonl) raises FileNotFoundError with a traceback and exit 1. It should be the
    usual one-line "recipe file not found" UserError, exit 2."""
    monkeypatch.chdir(tmp_path)
    Path("plan.jsonl").write_text("old plan\n")
    result = invoke("plan", "no-such-recipe.yaml", "--jsonl", "plan.jsonl")
    assert_no_traceback(result, allowed=(2,))
    assert "no-such-recipe.yaml" in result.output and "not found" in result.output, result.output
    assert Path("plan.jsonl").read_text() == "old plan\n"


# --- recipe validation and the plan ---------------------------------------------------------

def test_slot_weights_whose_sum_overflows_still_draw_every_value():
    """Slot weights are only required to be positive and finite, so {a: 1e308, b: 1e308}
    validates; their sum is inf in plan._weighted_choice (threshold = random() * inf = inf,
    never below a running sum), so every group gets the last value and 'a' is never drawn
    although the weights are equal. Either bound the weights (as balance proportions are,
    MAX_PROPORTION) and refuse with a message naming slots.c, or draw as the weights say."""
    try:
        recipe = _recipe(slots={"c": {"a": 1.0e308, "b": 1.0e308}},
                         classes=[{"name": "x", "templates": ["{c} x"], "groups": 200}])
    except UserError as error:
        assert "slots.c" in str(error), error
        return
    drawn = Counter(group.slots["c"] for group in make_plan(recipe).groups)
    assert drawn["a"] > 50 and drawn["b"] > 50, drawn


def test_balance_quotas_do_not_depend_on_how_equal_proportions_are_written():
    """attributes.largest_remainder_quotas compares float remainders, so a tie the docstring
    says is broken 'by the order of proportions' is broken by rounding noise instead:
    proportions {woman: 0.3, man: 0.1} over 34 groups give 25/9 (34*0.3/0.4 is
    25.499999999999996), while {woman: 3, man: 1}, the same normalised proportions (README:
    'proportions (normalised)'), give 26/8. Both should give 26/8 (the exact 25.5/8.5 tie to
    the first value), e.g. by computing the shares with fractions of the written decimals."""
    def counts(values):
        recipe = _recipe(classes=[{"name": "dog", "templates": ["a {g} dog"], "groups": 34}],
                         balance=[{"attribute": "g", "values": values}])
        return Counter(group.balance["g"] for group in make_plan(recipe).groups)

    assert counts({"woman": 3, "man": 1}) == {"woman": 26, "man": 8}
    assert counts({"woman": 0.3, "man": 0.1}) == {"woman": 26, "man": 8}


def test_literal_braces_in_the_deepest_allowed_slot_render_as_braces():
    """The recipe allows slots nested 8 deep (recipe._check_nested_slots raises only past
    MAX_SLOT_NESTING), but plan._expand returns a value at depth > 8 unformatted, and the
    9th slot of an allowed chain s0 -> ... -> s8 is expanded at depth 9: its '{{x}}' stays
    '{{x}}' in the prompt, while the same value one level higher renders as '{x}'. Either
    the check or the expansion is off by one; literal braces must read alike at every depth."""
    def prompt(levels):
        slots = {f"s{i}": [f"{{s{i + 1}}}"] for i in range(levels)}
        slots[f"s{levels}"] = ["{{x}}"]
        recipe = _recipe(slots=slots,
                         classes=[{"name": "a", "templates": ["{s0} {class}"], "groups": 1}])
        return make_plan(recipe).groups[0].views[0].prompt

    assert prompt(7) == "{x} a"
    assert prompt(8) == "{x} a"


def test_yaml_merge_keys_are_read_as_yaml_safe_load_reads_them(tmp_path):
    """A recipe is YAML read 'with yaml.safe_load' (README, Security), which supports merge
    keys (`<<: *base`), the usual way to share settings between anchored entries. The
    duplicate-key loader (_UniqueKeyLoader.construct_mapping) constructs every key node before
    the mapping is flattened, meets the merge tag, and reports 'not valid YAML ... fix the
    syntax there (indentation, a missing ':' ...)' for valid YAML. Merge keys should work
    (an explicit key overriding a merged one, as YAML specifies), duplicates still refused."""
    path = tmp_path / "merge.yaml"
    path.write_text(HEADER + textwrap.dedent("""\
        templates: ["a {class}"]
        classes:
          - &dog {name: dog, groups: 3}
          - {<<: *dog, name: cat}
        """))
    result = invoke("validate", path)
    assert_no_traceback(result, allowed=(0,))
    assert "2 classes" in result.output and "6 groups" in result.output, result.output


def test_nested_slot_fan_out_is_refused_quickly(tmp_path):
    """recipe._check_nested_slots walks every path through nested slots without remembering
    what it has seen, and plan._expand draws every path too: 9 levels of 8 slots, each value
    naming the 8 slots of the next level (3.5 KB of YAML), is 8**8 = 16.7 million paths per
    slot, so `validate` runs for minutes (6 per level: 11 s; the plan's prompts would hold
    millions of words). The alias bomb is bounded; this one is not. validate should answer in
    seconds: refuse the recipe (a bound on the expanded prompt) as a UserError, exit 2."""
    k, depth = 8, 8
    lines = ["templates: ['{s0_0} {class}']", "classes: [{name: a, groups: 1}]", "slots:"]
    for level in range(depth + 1):
        for j in range(k if level else 1):
            value = (" ".join(f"{{s{level + 1}_{i}}}" for i in range(k))
                     if level < depth else "w")
            lines.append(f"  s{level}_{j}: ['{value}']")
    path = tmp_path / "fan.yaml"
    path.write_text(HEADER + "\n".join(lines) + "\n")

    def limit_memory():
        resource.setrlimit(resource.RLIMIT_AS, (3 * 2**30, 3 * 2**30))

    try:
        result = subprocess.run([sys.executable, str(REPO / "cli.py"), "validate", str(path)],
                                capture_output=True, text=True, timeout=20,
                                preexec_fn=limit_memory, cwd=REPO)
    except subprocess.TimeoutExpired:
        pytest.fail("validate of a 3.5 KB recipe of nested slots ran past 20 s")
    assert result.returncode == 2, result.stdout + result.stderr
    assert "Traceback" not in result.stderr, result.stderr


def test_a_suppress_concept_without_words_is_refused(tmp_path):
    """`concept: ','` (or only spaces) passes `min_length=1`; attributes.concept_words then
    builds the pattern (?<!\\w)(?:)(?!\\w), which matches the empty string in every text, so
    validate warns that every template 'asks for what it suppresses', and the negative prompt
    is ','. A concept with no words is a mistake: one UserError naming suppress[0].concept."""
    path = tmp_path / "concept.yaml"
    path.write_text(HEADER + textwrap.dedent("""\
        templates: ["a {class}"]
        classes: [{name: dog, groups: 2}]
        suppress: [{concept: ",", method: negative}]
        """))
    result = invoke("validate", path)
    assert_no_traceback(result)
    assert result.exit_code == 2 and "suppress[0].concept" in result.output, result.output


def test_a_boolean_where_a_count_goes_is_refused(tmp_path):
    """pydantic's lax mode reads YAML booleans as integers, so `groups: yes` plans 1 group and
    `groups: off` plans none, silently (YAML 1.1 reads yes/no/on/off as booleans). recipe.py
    refuses booleans for slot weights and write.py for stats counts, but not for counts in
    the recipe. A boolean count should be one UserError naming classes[0].groups."""
    path = tmp_path / "bool.yaml"
    path.write_text(HEADER + textwrap.dedent("""\
        templates: ["a {class}"]
        classes: [{name: dog, groups: 4}, {name: cat, groups: off}]
        """))
    result = invoke("validate", path)
    assert_no_traceback(result)
    assert result.exit_code == 2 and "classes[1].groups" in result.output, result.output


# --- finalize -------------------------------------------------------------------------------

def _finished_dataset(out: Path):
    plan = make_plan(_recipe(classes=[{"name": "dog", "templates": ["a dog"], "groups": 4}],
                             output={"groups_per_shard": 2, "format": "png"}))
    finished_dataset(out, plan)
    assert (out / MANIFEST).exists()
    return plan


@pytest.mark.parametrize("damage", ["bytes flipped", "tar deleted"])
def test_finalize_that_finds_damaged_shards_leaves_no_finished_manifest(tmp_path, damage):
    """finalize_dataset refuses when a shard is damaged or unfinished, but leaves the
    manifest.json of the earlier finalize in place: the directory still says 'finished' over
    a shard that no longer matches it (README: manifest.json only exists when all shards
    do; prepare_output_dir removes manifest, index and card in the same situation).
    finalize should remove them before it raises, as a resume would."""
    out = tmp_path / "out"
    _finished_dataset(out)
    tar = out / "shard-000001.tar"
    if damage == "bytes flipped":
        data = bytearray(tar.read_bytes())
        data[600] ^= 0xFF
        tar.write_bytes(bytes(data))
    else:
        tar.unlink()
    with pytest.raises(UserError, match="shards 1"):
        finalize_dataset(out)
    assert not (out / MANIFEST).exists(), "a manifest vouches for a damaged dataset"


# --- edit -----------------------------------------------------------------------------------

ERASE_RECIPE = HEADER + textwrap.dedent("""\
    templates: ["a {class}"]
    classes: [{name: dog, groups: 2}]
    suppress: [{concept: red, method: erase}]
    """)


def test_edit_into_the_current_empty_folder_is_not_a_traceback(tmp_path, monkeypatch):
    """`synthgen edit RECIPE --out .` from an empty folder passes api.edit's checks (it is an
    empty folder), then folder_written_whole calls store.temporary_path(Path('.')), whose
    with_name raises ValueError "PosixPath('.') has an empty name": a traceback, exit 1.
    It should write the model there or refuse with one UserError (exit 2)."""
    recipe = tmp_path / "erase.yaml"
    recipe.write_text(ERASE_RECIPE)
    here = tmp_path / "empty"
    here.mkdir()
    monkeypatch.chdir(here)
    result = invoke("edit", recipe, "--out", ".", "--device", "cpu")
    assert_no_traceback(result)


def test_a_refused_edit_leaves_no_folders_behind(tmp_path):
    """api.edit enters folder_written_whole, whose `temporary.mkdir(parents=True)` creates
    every missing parent of --out, before write_edited_model checks that the recipe has an
    edit at all: `synthgen edit recipes/quickstart.yaml --out new/sub/model` is refused (no
    erase or debias entry) but leaves new/sub behind. A refused command should write nothing:
    check the recipe first, and remove (or do not create) the parents on failure."""
    recipe = tmp_path / "no-edit.yaml"
    recipe.write_text(HEADER + 'templates: ["a {class}"]\nclasses: [{name: dog, groups: 2}]\n')
    result = invoke("edit", recipe, "--out", tmp_path / "new" / "sub" / "model",
                     "--device", "cpu")
    assert_no_traceback(result, allowed=(2,))
    assert "erase" in result.output, result.output
    assert not (tmp_path / "new").exists(), sorted(p.name for p in (tmp_path / "new").rglob("*"))
