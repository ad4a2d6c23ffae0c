"""The attribute-editing recipe's erase works on the shipped world-sd, judged by the oracle,
and `synthgen world edits` applies the issue's gates to its figures as written."""

from __future__ import annotations

import math
from collections import Counter
from pathlib import Path

import pytest
import torch

from synthgen.world.edits import debias_gates, erase_gates, kl_interval95, kl_to_wanted

ROOT = Path(__file__).resolve().parents[2]
RECIPE = ROOT / "recipes" / "attribute-editing.yaml"
MODELS = ROOT / "synthgen" / "models"
shipped = pytest.mark.skipif(not (MODELS / "world-sd" / "model_index.json").is_file(),
                             reason="world models not trained yet (synthgen world train)")


@shipped
def test_the_recipes_erase_removes_asked_for_stripes_and_keeps_the_prompted_shape():
    from synthgen.generate.load import load_pipeline
    from synthgen.generate.prepare import apply_erasures
    from synthgen.recipe import load_recipe
    from synthgen.world.evaluate import generate
    from synthgen.world.oracle import load_oracle

    recipe = load_recipe(RECIPE)
    model = load_pipeline(recipe.model, torch.device("cpu"), torch.float32)
    oracle = load_oracle(MODELS / "world-oracle")
    shapes = ["circle", "square", "ring", "heart", "diamond", "crescent"]
    asked = [f"a large striped red {shape} on a gray background" for shape in shapes]

    def read(prompts):
        return oracle.read(generate(model.pipeline, prompts, seeds=list(range(len(prompts))), steps=12))

    assert sum(r["striped"] for r in read(asked)) >= 5, "world-sd draws the stripes it is asked for"
    apply_erasures(recipe, model)
    after = read(asked)
    # 2.0% of 400 held-out prompts at 12 steps stayed striped (docs/WORLD.md); shapes that
    # world-sd draws well keep their shape.
    assert sum(r["striped"] for r in after) <= 1, after
    assert sum(r["shape"] == shape for r, shape in zip(after, shapes)) >= 5, after


def test_kl_to_wanted_is_zero_at_the_wanted_shares_and_infinite_off_them():
    wanted = {"red": 1.0, "blue": 1.0}
    assert kl_to_wanted(Counter(red=5, blue=5), wanted) == 0.0
    assert kl_to_wanted(Counter(red=10), wanted) == pytest.approx(math.log(2))
    assert kl_to_wanted(Counter(red=9, green=1), wanted) == math.inf


def test_kl_interval_brackets_the_figure_and_narrows_with_more_images():
    wanted = {value: 1.0 for value in ("red", "green", "blue", "black")}
    few, many = Counter(red=20, green=10, blue=6, black=4), Counter(red=200, green=100, blue=60, black=40)
    for counts in (few, many):
        low, high = kl_interval95(counts, wanted)
        assert low < kl_to_wanted(counts, wanted) < high
    assert kl_interval95(few, wanted) == kl_interval95(few, wanted), "deterministic"
    width = [high - low for low, high in (kl_interval95(few, wanted), kl_interval95(many, wanted))]
    assert width[1] < width[0] / 2  # ten times the images: about a third of the width
    assert kl_interval95(Counter(red=5, cyan=1), wanted) == [math.inf, math.inf]


def rates(striped=0.0, shape=0.9, colour=0.99, size=0.99) -> dict:
    return {"striped": {"rate": striped}, "shape": {"rate": shape}, "colour": {"rate": colour},
            "size": {"rate": size}}


def test_erase_gates_follow_the_issue():
    before = {"asked": rates(striped=1.0, shape=0.8), "plain": rates()}
    held = {"erase": {"before": before, "after": {"asked": rates(striped=0.1, shape=0.85),
                                                  "plain": rates(striped=0.01, shape=0.88)}}}
    assert all(erase_gates(held).values())
    missed = {"erase": {"before": before, "after": {"asked": rates(striped=0.11),
                                                    "plain": rates(striped=0.02, shape=0.87)}}}
    assert [name for name, ok in erase_gates(missed).items() if not ok] == [
        "asked striped <= 10%", "unasked striped <= unedited + 1 point",
        "plain shape >= unedited - 2 points"]


def test_debias_gates_halve_kl_and_keep_shape():
    result = {"debias": {"before": {"star": {"kl_to_wanted": 1.0, "shape_accuracy": 0.5}},
                         "after": {"star": {"kl_to_wanted": 0.5, "shape_accuracy": 0.48}}}}
    assert all(debias_gates(result).values())
    result["debias"]["after"]["star"] = {"kl_to_wanted": 0.51, "shape_accuracy": 0.47}
    assert not any(debias_gates(result).values())


class _Loaded(Exception):
    """Raised in place of loading a pipeline: carries the model id that would have loaded."""


def test_edits_model_option_judges_another_world_sd_folder(tmp_path, monkeypatch):
    import importlib

    from click.testing import CliRunner

    from synthgen.cli import main
    from synthgen.world.edits import measure_edits

    # a folder that is not a model: one clear line, no traceback
    result = CliRunner().invoke(main, ["world", "edits", "--model", str(tmp_path)])
    assert result.exit_code != 0 and "no model_index.json" in result.output, result.output
    assert "Traceback" not in result.output

    folder = tmp_path / "world-sd"
    folder.mkdir()
    (folder / "model_index.json").write_text("{}")

    def fake_load(spec, device, dtype):
        raise _Loaded(spec.id)

    # (synthgen.generate is also the API function's name: import the module by its full name)
    monkeypatch.setattr(importlib.import_module("synthgen.generate.load"), "load_pipeline", fake_load)
    with pytest.raises(_Loaded) as loaded:
        measure_edits(RECIPE, 10, "cpu", log=lambda message: None, model_folder=folder)
    assert loaded.value.args[0] == str(folder.resolve())
    with pytest.raises(_Loaded) as loaded:
        measure_edits(RECIPE, 10, "cpu", log=lambda message: None)
    assert loaded.value.args[0] == "builtin:world-sd"
