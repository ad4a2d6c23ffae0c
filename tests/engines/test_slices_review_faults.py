"""Review faults in slice choice (engines/slices.py), worker options (api.generate) and the
dataset card (card.py). Each test fails on the code as reviewed because of the bug its
docstring names; none loads a model."""

from __future__ import annotations

import pytest
import yaml
from click.testing import CliRunner

from small_recipe import SMALL_RECIPE, merge
from synthgen.card import dataset_card
from synthgen.cli import main
from synthgen.engines.slices import choose_slice
from synthgen.errors import UserError
from synthgen.recipe import parse_recipe


def _invoke(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


def _manifest(recipe_dict: dict) -> dict:
    """A manifest shaped as write.write_manifest writes it: `model` is shard 0's stats
    `model` (device type, dtype, pipeline, weights: no `id`), `recipe` the full recipe."""
    recipe = parse_recipe(yaml.safe_dump(recipe_dict))
    return {
        "recipe_hash": recipe.recipe_hash,
        "recipe": recipe.model_dump(mode="json"),
        "model": {"device_type": "cpu", "dtype": "float32",
                  "pipeline": "StableDiffusionPipeline", "weights": "sha256:6eac313bb5e3ad9b"},
        "totals": {"shards": 1, "samples": 9, "images": 18, "bytes": 102400},
        "shards": [{"name": "shard-000000.tar", "samples": 9, "images": 18, "bytes": 102400,
                    "sha256": "0" * 64}],
    }


def test_card_names_the_recipes_model_not_none():
    """card.py:133 reads the model id from `manifest['model']`, which write_manifest fills
    with shard 0's stats model (device_type, dtype, pipeline, weights): it has no `id`, so
    every card says "with model `None`" (seen in a real generate run's README.md). The card
    should name the recipe's model (`manifest['recipe']['model']['id']`)."""
    card = dataset_card(_manifest(SMALL_RECIPE), "null", 9)
    assert "model `None`" not in card
    assert "builtin:tiny-random" in card


def test_card_declares_only_view_columns_that_samples_hold():
    """card.py:114 takes the most views from the recipe's top-level `views` as well as the
    classes' and corner cases' own, even when every class and corner case has its own views
    and the top-level count is used by no group: the card then declares image columns
    (view2.png, view3.png) that no sample holds. The count should come from the views each
    class/corner case actually gets (`Recipe.views_for`)."""
    own = {"count": 2, "strategy": "seeds"}
    recipe = merge(SMALL_RECIPE, {"views": {"count": 4, "strategy": "seeds"}})
    recipe["classes"] = [{**spec, "views": own} for spec in recipe["classes"]]
    recipe["corner_cases"] = [{**case, "views": own} for case in recipe["corner_cases"]]
    card = dataset_card(_manifest(recipe), "null", 9)
    header = yaml.safe_load(card.split("---\n")[1])
    names = [feature["name"] for feature in header["dataset_info"]["features"]]
    assert "view0.png" in names and "view1.png" in names
    assert "view2.png" not in names and "view3.png" not in names, names


def test_a_shard_number_too_long_for_int_is_one_clear_message(write_recipe, tmp_path):
    """slices.py:36-37 call int() on the digits of --shards unguarded: past Python's
    4300-digit conversion limit int() raises ValueError, so a huge number gives a traceback
    instead of the 'not in the plan' UserError (exit 2) other out-of-range shards get."""
    huge = "9" * 5000
    with pytest.raises(UserError):
        choose_slice(3, shards=huge)
    with pytest.raises(UserError):
        choose_slice(3, shards=f"0-{huge}")
    result = _invoke("generate", write_recipe(), "--out", tmp_path / "o", "--quiet",
                     "--device", "cpu", "--shards", huge)
    assert result.exit_code == 2, (result.exit_code, result.output, result.exception)


def test_world_size_zero_is_named_as_the_mistake():
    """slices.py:100-103: WORLD_SIZE=0 (or SLURM_ARRAY_TASK_COUNT=0) is reported as
    "rank 0 of world size 0 ...: the rank must be 0 to 0", a message that contradicts itself
    (rank 0 is refused) and hides the real mistake. It should say the world size must be at
    least 1."""
    with pytest.raises(UserError) as caught:
        choose_slice(3, environ={"RANK": "0", "WORLD_SIZE": "0"})
    assert "must be 0 to 0" not in str(caught.value), str(caught.value)


def test_torchrun_inside_a_slurm_array_does_not_build_shards_twice():
    """slices.py:57-58: when torchrun runs inside each task of a Slurm job array, RANK/
    WORLD_SIZE (the rank within one task) win and the array task is ignored silently, so
    every array task builds the same shards: with an array of 2 tasks and 2 ranks each, every
    shard is built twice (each task builds the whole dataset). The slices
    of all (task, rank) pairs should cover every shard exactly once (rank = task x W + RANK
    of COUNT x W), or the conflict should be a UserError."""
    slices = []
    try:
        for task in range(2):
            for rank in range(2):
                environ = {"RANK": str(rank), "WORLD_SIZE": "2",
                           "SLURM_ARRAY_TASK_ID": str(task), "SLURM_ARRAY_TASK_MIN": "0",
                           "SLURM_ARRAY_TASK_COUNT": "2"}
                slices.append(choose_slice(10, environ=environ).shards)
    except UserError:
        return  # refusing the conflict is also correct
    built = sorted(shard for part in slices for shard in part)
    assert built == list(range(10)), f"shards built over all tasks and ranks: {built}"


def test_an_empty_slice_is_not_reported_as_already_done(write_recipe, tmp_path):
    """cli.py:322-327: --rank 5 --world-size 8 on a 3-shard plan picks no shard at all
    (slices.py:50), and generate prints "this slice's 0 shards were already done", which is
    false (nothing of the slice was ever built; the slice is empty) and exits 0. The user
    should be told the slice is empty (world size larger than the plan's shard count), or
    get a UserError, exit 2."""
    result = _invoke("generate", write_recipe(), "--out", tmp_path / "o", "--quiet",
                     "--device", "cpu", "--rank", 5, "--world-size", 8)
    assert "0 shards were already done" not in result.output, result.output


@pytest.mark.parametrize("workers", [0, -2])
def test_api_workers_below_one_is_a_user_error(write_recipe, tmp_path, monkeypatch, workers):
    """api.py:241-299: generate(workers=0 or negative) is not checked (the CLI's IntRange
    does it): engine_name picks the local engine and the run silently goes ahead with one
    worker (ray: `options.workers or capacity` takes the whole cluster). The module promises
    a user's mistake raises UserError with the command line's message, before any work."""
    import synthgen
    import synthgen.engines

    def reached(name, *args):
        raise AssertionError(f"workers={workers} reached the {name} engine unchecked")

    monkeypatch.setattr(synthgen.engines, "run_engine", reached)
    with pytest.raises(UserError, match="--workers"):
        synthgen.generate(write_recipe(), tmp_path / "o", device="cpu", progress=False,
                          workers=workers)
