"""Problems in today's review fixes (commits after c77e087): each test fails on the code as
fixed, for the reason its docstring gives, and says what the correct behaviour is.

Everything is tiny: builtin:tiny-random loaded on the CPU, stand-in shard bytes, a few tar
members.
"""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import tarfile
import textwrap
from pathlib import Path

import pytest
import yaml

sys.path.insert(0, str(Path(__file__).parent / "engines"))

from engine_helpers import finished_dataset, model_info, shard_samples  # noqa: E402
from small_recipe import SMALL_RECIPE, merge  # noqa: E402
from synthgen.errors import UserError  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_thread")


def _write(tmp_path: Path, overrides: dict) -> Path:
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(merge(SMALL_RECIPE, overrides), sort_keys=False))
    return path


# --- generate/load.py: the scheduler compatibility check ------------------------------------


@pytest.mark.parametrize("scheduler", ["LCMScheduler", "TCDScheduler"])
def test_a_consistency_scheduler_on_a_stable_diffusion_model_is_not_refused(scheduler):
    """load.py load_pipeline now refuses any model.scheduler outside the pipeline scheduler's
    `compatibles` (diffusers' KarrasDiffusionSchedulers list for SD pipelines). That list does
    not name LCMScheduler or TCDScheduler, which are made for exactly these pipelines (LCM-LoRA,
    TCD-LoRA on SD 1.5 / SDXL) and which synthgen loaded and sampled with before the fix (a
    tiny-random dataset with model.scheduler: LCMScheduler generates on c77e087). The message
    then says the scheduler "does not work with this model", which is false. Correct: accept
    them (refuse only what really cannot run, e.g. a flow-matching scheduler on an
    epsilon/v-prediction pipeline or the reverse)."""
    import torch

    from synthgen.generate.load import load_pipeline
    from synthgen.recipe import ModelSpec

    spec = ModelSpec(id="builtin:tiny-random", scheduler=scheduler, steps=2, width=32, height=32)
    loaded = load_pipeline(spec, torch.device("cpu"), torch.float32)
    assert type(loaded.pipeline.scheduler).__name__ == scheduler


# --- write.py finalize_dataset: what the refusal says ---------------------------------------


def test_finalize_does_not_blame_the_sha256_when_only_the_counts_do_not_fit(tmp_path):
    """write.py finalize_dataset puts a shard whose stats do not fit the plan
    (`stats_fit_plan`: a flipped digit in `samples`) in `damaged`, whose message says the
    shards "do not match the sha256 their stats file records (damaged since they were
    written)". Here the tar's sha256 is exactly the recorded one; only the stats file's count
    is wrong, so the message sends the user after a damaged tar that is not damaged.
    (engines/local.py finish_run words the same case the same way.) Correct: say what was
    found, e.g. that the stats file's counts do not fit the recipe's plan."""
    from synthgen.plan import make_plan
    from synthgen.recipe import load_recipe
    from synthgen.write import finalize_dataset

    plan = make_plan(load_recipe(_write(tmp_path, {})))
    out = tmp_path / "out"
    finished_dataset(out, plan)
    stats_path = out / "shard-000000.stats.json"
    stats = json.loads(stats_path.read_text())
    stats["samples"] += 1
    stats_path.write_text(json.dumps(stats))
    import hashlib
    assert hashlib.sha256((out / "shard-000000.tar").read_bytes()).hexdigest() == stats["sha256"]
    with pytest.raises(UserError) as raised:
        finalize_dataset(out)
    assert "do not match the sha256" not in str(raised.value), str(raised.value)


# --- plan.py _distinct_views: resuming a dataset planned before the re-pairing ----------------


def test_resuming_a_dataset_planned_before_the_re_pairing_does_not_mix_two_plans(
        tmp_path, monkeypatch):
    """plan.py `_view_texts` now re-pairs varied attributes among a group's views
    (`_distinct_views`), which changes the plan of groups whose views repeated a prompt, while
    the recipe hash stays the same. A dataset an earlier synthgen built part of (here shard 0,
    planned without the re-pairing, which is exactly the old code path) is resumed by the new
    code without a word: shard 1 follows the new plan, shard 0 keeps the old one, and
    finalize writes a manifest vouching for a dataset no single plan describes (the project
    keeps old datasets resumable elsewhere: recipe_hash leaves out the later `output.layout`
    default for that reason; `_written_order_differs` refuses a resume whose plan would
    differ). Correct: the resume refuses (or rebuilds the shards planned otherwise, or plans
    an old dataset as it was planned), so that every finished group is the current plan's."""
    import importlib

    planning = importlib.import_module("synthgen.plan")
    from synthgen.recipe import load_recipe
    from synthgen.write import finalize_dataset, prepare_output_dir, publish_shard

    recipe_path = _write(tmp_path, {
        "templates": ["a photo of a {age} {gender} {class}"],
        "classes": [{"name": "doctor", "groups": 8}], "corner_cases": [],
        "balance": [{"attribute": "gender", "slot": "gender", "values": {"woman": 1, "man": 1}},
                    {"attribute": "age", "slot": "age",
                     "values": {"young": 1, "middle-aged": 1, "elderly": 1}}],
        "views": {"count": 4, "strategy": ["slots"], "slots": {"vary": ["gender", "age"]}},
        "output": {"groups_per_shard": 4}})
    out = tmp_path / "out"
    with monkeypatch.context() as patch:  # the plan as c77e087 made it
        patch.setattr(planning, "_distinct_views", lambda drawn, balance: (drawn, balance))
        old_plan = planning.make_plan(load_recipe(recipe_path))
        old_plan.groups  # drawn (and kept) while the old pairing is in place
    new_plan = planning.make_plan(load_recipe(recipe_path))
    changed = [g.group_id for g, h in zip(old_plan.shard_groups(0), new_plan.shard_groups(0))
               if [v.prompt for v in g.views] != [v.prompt for v in h.views]]
    assert changed, "the recipe must be one whose plan the re-pairing changes"
    prepare_output_dir(out, old_plan, overwrite=False)
    record = json.loads((out / "recipe.json").read_text())
    del record["plan_revision"]  # as the earlier version wrote it
    (out / "recipe.json").write_text(json.dumps(record, indent=2) + "\n")
    publish_shard(out, 0, shard_samples(old_plan, 0), model_info(old_plan))
    try:
        # The new synthgen resumes: shard 0 is done, shard 1 is built from the new plan.
        done = prepare_output_dir(out, new_plan, overwrite=False)
        for shard in range(new_plan.shard_count):
            if shard not in done:
                publish_shard(out, shard, shard_samples(new_plan, shard), model_info(new_plan))
        finalize_dataset(out)
    except UserError:
        return  # refused: correct
    planned = {g.group_id: [v.prompt for v in g.views] for g in new_plan.groups}
    with tarfile.open(out / "shard-000000.tar") as archive:
        for member in archive.getmembers():
            if member.name.endswith(".json"):
                metadata = json.loads(archive.extractfile(member).read())
                stored = [view["prompt"] for view in metadata["views"]]
                assert stored == planned[metadata["group_id"]], (
                    f"{metadata['group_id']} holds the old plan's prompts {stored}, the "
                    f"manifest's plan says {planned[metadata['group_id']]}")


# --- data/pipeline.py tar_samples: the train loader's give-up -------------------------------


def test_a_train_loader_over_readable_shards_of_only_damaged_samples_ends_instead_of_hanging(
        tmp_path):
    """pipeline.py tar_samples counts a shard as "barren" only when its tar yields no member
    at all; the group stage then skips damaged samples with warn_and_continue. Shards whose
    tar reads but whose every sample is damaged (json that does not parse: here a folder of
    tars from elsewhere, which the loader reads whole) yield members, so the give-up never
    counts, no group ever comes, and the train loader loops for ever drawing shards, the hang
    the fix was meant to end. Correct: give up (a UserError) when the shards drawn yield no
    usable group, counted after the damaged samples are skipped."""
    directory = tmp_path / "foreign"
    directory.mkdir()
    with tarfile.open(directory / "shard-000000.tar", "w") as archive:
        for index in range(4):
            for suffix, data in (("json", b"{not json"), ("view0.png", b"x"), ("view1.png", b"y")):
                info = tarfile.TarInfo(f"g{index}.{suffix}")
                info.size = len(data)
                archive.addfile(info, io.BytesIO(data))
    code = textwrap.dedent(f"""
        import warnings
        warnings.simplefilter("ignore")
        from synthgen.data import group_loader
        loader = group_loader({str(directory)!r}, views=2, batch_size=2, resolution=8,
                              augment="none", epoch_groups=8)
        next(iter(loader))
    """)
    try:
        subprocess.run([sys.executable, "-c", code], capture_output=True, timeout=30,
                       env={**os.environ, "OMP_NUM_THREADS": "1"})
    except subprocess.TimeoutExpired:
        pytest.fail("the train loader was still drawing shards of only damaged samples after "
                    "30 s (hang)")


def test_a_dataset_of_an_earlier_plan_revision_resumes_where_its_recipe_plans_the_same(tmp_path):
    """The refusal above is only for recipes the revision plans differently: a dataset recorded
    without a revision whose plan is today's resumes, and its record takes today's revision."""
    from synthgen.plan import make_plan
    from synthgen.recipe import load_recipe
    from synthgen.write import finalize_dataset, prepare_output_dir, publish_shard

    plan = make_plan(load_recipe(_write(tmp_path, {"output": {"groups_per_shard": 2}})))
    out = tmp_path / "out"
    prepare_output_dir(out, plan, overwrite=False)
    record = json.loads((out / "recipe.json").read_text())
    del record["plan_revision"]
    (out / "recipe.json").write_text(json.dumps(record, indent=2) + "\n")
    publish_shard(out, 0, shard_samples(plan, 0), model_info(plan))
    done = prepare_output_dir(out, plan, overwrite=False)
    assert done == {0}
    from synthgen.attributes import PLAN_REVISION

    assert json.loads((out / "recipe.json").read_text())["plan_revision"] == PLAN_REVISION
    for shard in range(1, plan.shard_count):
        publish_shard(out, shard, shard_samples(plan, shard), model_info(plan))
    finalize_dataset(out)
