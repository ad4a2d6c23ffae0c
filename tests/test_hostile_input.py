"""Recipes built to hurt: alias bombs, huge files, numbers past what a machine can do,
non-finite floats and model references that cannot load. Each is refused by validation,
quickly, as one UserError that names the field; none reaches a later stage."""

from __future__ import annotations

import resource
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

from synthgen.cli import main
from synthgen.errors import UserError
from synthgen.recipe import load_recipe

REPO = Path(__file__).resolve().parents[1]
HEADER = """\
name: hostile
seed: 1
model: {id: builtin:tiny-random, width: 32, height: 32}
templates: ["a {class}"]
classes: [{name: thing, groups: 2}]
"""


def laughs(levels: int, indent: str = "") -> str:
    """A billion-laughs chain: each anchor is a list of nine aliases of the one before."""
    lines = [f'{indent}l0: &l0 ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]']
    lines += [f"{indent}l{n}: &l{n} [" + ",".join([f"*l{n - 1}"] * 9) + "]"
              for n in range(1, levels)]
    return "\n".join(lines) + "\n"


def validate_bounded(path: Path, seconds: int = 60, memory_gb: int = 3) -> subprocess.CompletedProcess:
    """`synthgen validate PATH` in a process that is killed past `seconds` or `memory_gb`:
    a recipe that hangs or eats the machine fails the test instead of the test run."""
    def limit_memory():
        limit = memory_gb * 2**30
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))

    started = time.monotonic()
    try:
        result = subprocess.run([sys.executable, str(REPO / "cli.py"), "validate", str(path)],
                                capture_output=True, text=True, timeout=seconds,
                                preexec_fn=limit_memory, cwd=REPO)
    except subprocess.TimeoutExpired:
        pytest.fail(f"validate {path.name} ran past {seconds} s")
    result.seconds = time.monotonic() - started
    return result


@pytest.mark.parametrize("placement", ["under slots", "as the whole document"])
def test_alias_bombs_are_refused_in_seconds(tmp_path, placement):
    path = tmp_path / "bomb.yaml"
    if placement == "under slots":
        path.write_text(HEADER + "slots:\n" + laughs(9, indent="  "))
    else:
        path.write_text(laughs(9))
    assert path.stat().st_size < 1000
    result = validate_bounded(path)
    assert result.returncode == 2, result.stderr[-2000:]
    assert "Traceback" not in result.stderr
    assert "aliases (*name) expand to" in result.stderr and "100,000" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_aliases_that_repeat_a_block_a_few_times_still_work(write_recipe):
    recipe = load_recipe(write_recipe(HEADER + textwrap.dedent("""\
        views: &views {count: 3}
        corner_cases:
          - {name: a, prompt: "x", groups: 1, views: *views}
          - {name: b, prompt: "y", groups: 1, views: *views}
        """)))
    assert [case.views.count for case in recipe.corner_cases] == [3, 3]


@pytest.mark.parametrize("text, fragment", [
    (HEADER + "slots: &loop {colour: [red], again: *loop}\n", "refers to the block that contains it"),
    ("[" * 3000 + "]" * 3000 + "\n", "nested more than 50 levels"),
    ("", "the recipe is empty"),
    ("# only a comment\n", "the recipe is empty"),
])
def test_self_reference_deep_nesting_and_empty_files(write_recipe, text, fragment):
    with pytest.raises(UserError, match=fragment):
        load_recipe(write_recipe(text))


def test_a_recipe_larger_than_the_cap_is_refused_before_parsing(write_recipe):
    # Valid YAML (the padding is a comment): without the cap it parses, slowly, and passes.
    path = write_recipe(HEADER + "# " + "x" * 1_000_000 + "\n")
    started = time.monotonic()
    with pytest.raises(UserError, match="larger than 1,000,000 bytes"):
        load_recipe(path)
    assert time.monotonic() - started < 1.0


def test_enumerating_a_huge_slot_product_plans_only_what_the_groups_use(tmp_path):
    """4 slots of 100 values: 10^8 combinations, of which 3 groups use 3."""
    values = "[" + ", ".join(f"v{n}" for n in range(100)) + "]"
    path = tmp_path / "product.yaml"
    path.write_text(HEADER.replace('"a {class}"', '"a {a} {b} {c} {d} {class}"')
                    .replace("groups: 2", "groups: 3")
                    + "prompt_mode: enumerate\nslots:\n"
                    + "".join(f"  {slot}: {values}\n" for slot in "abcd"))
    result = subprocess.run([sys.executable, str(REPO / "cli.py"), "plan", str(path)],
                            capture_output=True, text=True, timeout=120, cwd=REPO,
                            preexec_fn=lambda: resource.setrlimit(
                                resource.RLIMIT_AS, (3 * 2**30, 3 * 2**30)))
    assert result.returncode == 0, result.stderr[-2000:]
    assert "3 groups, 6 images" in result.stdout
    assert "100000000 template x slot combinations but only 3 groups" in result.stdout


def error_for(write_recipe, overrides) -> str:
    with pytest.raises(UserError) as caught:
        load_recipe(write_recipe(overrides))
    return str(caught.value)


@pytest.mark.parametrize("overrides, field", [
    ({"slots": {"colour": {"red": float("nan"), "blue": 1}}}, "slots.colour"),
    ({"slots": {"colour": {"red": float("inf"), "blue": 1}}}, "slots.colour"),
    ({"model": {"guidance_scale": float("inf")}}, "model.guidance_scale"),
    ({"views": {"count": 2, "strategy": "latent", "latent": {"sigma": float("nan")}}},
     "views.latent.sigma"),
    ({"corner_cases": [{"name": "c", "prompt": "x", "weight": float("nan")}]},
     "corner_cases[0].weight"),
    ({"balance": [{"attribute": "size", "values": {"small": float("inf"), "big": 1}}]},
     "balance[0].values.small"),
    ({"audit": {"fidelity_threshold": float("-inf")}}, "audit.fidelity_threshold"),
])
def test_nan_and_infinity_are_refused_by_name(write_recipe, overrides, field):
    message = error_for(write_recipe, overrides)
    assert field in message, message
    assert "finite" in message or "positive" in message, message


@pytest.mark.parametrize("overrides, fragments", [
    ({"classes": [{"name": "circle", "templates": ["a circle"], "groups": 10**12}],
      "corner_cases": []}, ["plans 2,000,000,000,000 images", "at most 5,000,000"]),
    ({"output": {"resolution": 10**9}}, ["output.resolution", "<= 8192"]),
    ({"output": {"groups_per_shard": 10**9}}, ["output.groups_per_shard", "<= 10000"]),
    ({"model": {"guidance_scale": 1e30}}, ["model.guidance_scale", "<= 100"]),
])
def test_numbers_past_what_a_machine_can_do_are_refused(write_recipe, overrides, fragments):
    message = error_for(write_recipe, overrides)
    for fragment in fragments:
        assert fragment in message, message


def test_the_plan_size_bound_counts_each_class_with_its_own_views(write_recipe):
    ok = load_recipe(write_recipe({"classes": [
        {"name": "circle", "templates": ["a circle"], "groups": 1_000_000,
         "views": {"count": 5}}], "corner_cases": []}))
    assert ok.image_count == 5_000_000
    message = error_for(write_recipe, {"classes": [
        {"name": "circle", "templates": ["a circle"], "groups": 1_000_000,
         "views": {"count": 6}}], "corner_cases": []})
    assert "plans 6,000,000 images" in message


@pytest.mark.parametrize("model, fragment", [
    ({"id": "../../no/such/folder/x"}, "model.id: cannot load '../../no/such/folder/x': no such folder"),
    ({"id": "builtin:nope"}, "model.id: unknown builtin model 'builtin:nope'"),
    ({"id": "builtin:world-clip"}, "model.id: 'builtin:world-clip' is not a text-to-image "
                                   "pipeline folder (it holds a CLIP model)"),
    ({"decoder": "builtin:world-sd"}, "model.decoder: 'builtin:world-sd' is not a tiny autoencoder"),
])
def test_validate_checks_model_references_without_loading_them(write_recipe, model, fragment):
    path = write_recipe({"model": model})
    result = CliRunner().invoke(main, ["validate", str(path)])
    assert result.exit_code == 2 and "Traceback" not in result.output
    assert f"{path}: {fragment}" in result.output, result.output


def test_validate_checks_detector_and_audit_clip_references(write_recipe, tmp_path):
    message = error_for(write_recipe, {"suppress": [
        {"concept": "red", "method": "reject", "detector": "builtin:world-sd"}]})
    assert "suppress[0].detector: 'builtin:world-sd' is not a CLIP model folder" in message
    assert "builtin:world-clip" in message, "names the CLIP that would do"
    message = error_for(write_recipe, {"audit": {"clip": str(tmp_path / "gone")}})
    assert "audit.clip: cannot load" in message
    # A well-formed hub id cannot be checked offline; it passes, as a folder of the right kind does.
    load_recipe(write_recipe({"model": {"id": "stabilityai/sd-turbo"},
                              "audit": {"clip": "builtin:world-clip"}}))


def test_float16_on_the_cpu_is_refused_before_the_output_folder_is_made(write_recipe, tmp_path):
    out = tmp_path / "out"
    result = CliRunner().invoke(main, ["generate", str(write_recipe()), "--out", str(out),
                                       "--device", "cpu", "--dtype", "float16", "--quiet"])
    assert result.exit_code == 2, result.output
    assert "float16 on the CPU" in result.output and "bfloat16" in result.output
    assert not out.exists()
