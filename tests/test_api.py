"""The Python API (synthgen/api.py): what the commands print comes from these results."""

from __future__ import annotations

import json
import logging
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

import synthgen
from synthgen.errors import UserError
from synthgen.recipe import parse_recipe

REPO = Path(__file__).resolve().parents[1]


def readme_python_example() -> str:
    """The code block of the README's "Python API" section."""
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    section = readme.split("\n## Python API\n", 1)[1].split("\n## ", 1)[0]
    return re.search(r"```python\n(.*?)```", section, re.DOTALL).group(1)


def test_the_readme_example_runs_on_the_quickstart_with_a_tiny_model(tmp_path, tiny_clip_dir,
                                                                     capsys):
    """The README's snippet, unchanged but for the model: the quickstart recipe on
    builtin:tiny-random (2 steps), audited with a tiny CLIP, into a temporary folder."""
    recipe = yaml.safe_load((REPO / "recipes/quickstart.yaml").read_text())
    recipe["model"].update(id="builtin:tiny-random", steps=2)
    recipe["audit"] = {"clip": str(tiny_clip_dir)}
    recipe_path = tmp_path / "quickstart.yaml"
    recipe_path.write_text(yaml.safe_dump(recipe))
    code = readme_python_example()
    assert code.count('"recipes/quickstart.yaml"') == 1 and '"out/quickstart"' in code
    code = (code.replace('"recipes/quickstart.yaml"', repr(str(recipe_path)))
                .replace('"out/quickstart"', repr(str(tmp_path / "out"))))
    names: dict = {}
    exec(compile(code, "README.md", "exec"), names)

    made, held, checked = names["made"], names["held"], names["checked"]
    assert (made.images, made.shards_written, made.shards_skipped) == (112, 4, 0)
    assert made.manifest_path == tmp_path / "out" / "manifest.json"
    manifest = json.loads(made.manifest_path.read_text())
    assert manifest["totals"]["images"] == made.images
    assert held.classes == {"circle": 8, "square": 8, "star": 8}
    assert held.corner_cases == {"striped star": 4} and held.damaged == ()
    assert len(held.samples) == 8 and all(s["shard"] == 0 for s in held.samples)
    assert checked.report["totals"]["embedded_views"] == 112
    assert checked.report_page == tmp_path / "out" / "audit" / "report.html"
    assert [check["rule"] for check in checked.checks] == ["duplicates>0.5"]
    printed = capsys.readouterr().out
    assert "112 images in 4 of 4 shards; manifest" in printed


def test_a_sliced_run_then_finalize_report_what_is_on_disk(write_recipe, tmp_path):
    out = tmp_path / "out"
    recipe = parse_recipe(write_recipe().read_text())  # a loaded Recipe works as well as a path
    first = synthgen.generate(recipe, out, device="cpu", batch_size=4, shards="0-1",
                              progress=False)
    assert (first.shards, first.slice_source) == ((0, 1), "--shards 0-1")
    assert (first.shards_selected, first.shards_written, first.images) == (2, 2, 16)
    assert first.missing == (2,) and first.manifest_path is None
    assert not (out / "manifest.json").exists()
    with pytest.raises(UserError, match=r"1 of 3 shards is not finished \(shards 2\)"):
        synthgen.finalize(out)

    rest = synthgen.generate(recipe, str(out), device="cpu", batch_size=4, progress=False)
    assert (rest.shards, rest.shards_written, rest.shards_skipped, rest.images) == (None, 1, 2, 2)
    assert rest.missing == () and rest.manifest_path == out / "manifest.json"
    assert rest.model["device_type"] == "cpu"
    finalized = synthgen.finalize(str(out))
    assert finalized.totals["shards"] == 3 and finalized.totals["images"] == 18
    assert finalized.manifest == json.loads((out / "manifest.json").read_text())


def test_recipe_warnings_are_logged_when_found_and_kept_in_the_result(write_recipe, tmp_path,
                                                                     caplog):
    recipe = write_recipe({"suppress": [{"concept": "circle", "method": "negative"}]})
    checked = synthgen.validate(recipe)
    assert (checked.groups, checked.images) == (9, 18)
    assert any("asks for what it suppresses" in warning for warning in checked.warnings)

    # A slice of no shards still plans and checks the recipe, and logs before any work.
    with caplog.at_level(logging.INFO, logger="synthgen.api"):
        made = synthgen.generate(recipe, tmp_path / "out", device="cpu", rank=3,
                                 world_size=4, progress=False)
    assert made.warnings == checked.warnings
    logged = [(r.levelname, r.getMessage()) for r in caplog.records if r.name == "synthgen.api"]
    assert logged[:len(made.warnings)] == [("WARNING", w) for w in made.warnings]
    assert logged[len(made.warnings)] == (
        "INFO", "rank 3 of 4 (from --rank/--world-size): building shards none (0 of 3)")


def test_a_mistake_raises_the_message_the_command_line_prints(tmp_path, write_recipe):
    with pytest.raises(UserError, match="recipe file not found; check the path"):
        synthgen.plan(tmp_path / "missing.yaml")
    with pytest.raises(UserError, match=r"--out ftp://host/x: ftp:// is not a supported store"):
        synthgen.generate(write_recipe(), "ftp://host/x", device="cpu")
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "weights").write_text("")
    with pytest.raises(UserError, match="is not empty; choose a new folder"):
        synthgen.edit(write_recipe(), tmp_path / "full")


def test_plan_writes_the_jsonl_and_returns_the_summary(write_recipe, tmp_path):
    planned = synthgen.plan(write_recipe(), jsonl=str(tmp_path / "plan.jsonl"))
    assert planned.summary["groups"] == len(planned.plan.groups) == 9
    assert planned.jsonl == tmp_path / "plan.jsonl"
    lines = planned.jsonl.read_text().splitlines()
    assert [json.loads(line)["group_id"] for line in lines] == [g.group_id for g in planned.plan.groups]


def test_importing_synthgen_loads_no_stage():
    """`import synthgen` is what `synthgen --help` and the audit's --fail-on check pay for."""
    check = ("import sys, synthgen; loaded = sorted(m for m in sys.modules "
             "if m.startswith('synthgen.') or m in ('torch', 'pydantic', 'yaml')); print(loaded); "
             "synthgen.validate; print('synthgen.api' in sys.modules, 'torch' in sys.modules)")
    result = subprocess.run([sys.executable, "-c", check], capture_output=True, text=True,
                            timeout=120, cwd=REPO)
    assert result.stdout.splitlines() == ["['synthgen.version']", "True False"], result.stdout + result.stderr
    assert synthgen.generate is synthgen.api.generate and "audit" in dir(synthgen)
