"""Security review (2026-12-03): each test shows one way a hostile or careless input breaks a
rule of README.md's Security section or its resume/overwrite promises. Every test fails on the
code as reviewed, for the reason its docstring gives.

Rules checked: remote code runs only if a recipe turns `trust_remote_code` on; a user's
files in --out are never deleted or written over; every mistake in a recipe is one message
(a `UserError`), never a traceback.
"""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import pytest
import yaml

from small_recipe import SMALL_RECIPE
from synthgen.builtin import resolve_model_source
from synthgen.errors import UserError


def _tiny_model_copy(folder: Path) -> Path:
    shutil.copytree(resolve_model_source("builtin:tiny-random"), folder)
    return folder


def test_model_index_library_name_runs_python_code_with_trust_remote_code_off(
        tmp_path, monkeypatch):
    """A model folder runs its own Python code although `trust_remote_code` is off.

    generate/load.py hands the folder to `AutoPipelineForText2Image.from_pretrained` without
    checking model_index.json. diffusers refuses a component's `unet/NAME.py` file without
    trust_remote_code, but a *dotted* library name (`"scheduler": ["models.evil.scheduler.hook",
    ...]`) is not looked for as a file: diffusers calls `importlib.import_module` on it, which
    imports and runs `models/evil/scheduler/hook.py` whenever the folder that holds `models/`
    is on sys.path: `python cli.py ...` from a checkout (the README's way to run without
    installing) with the model downloaded to `models/NAME` as the README advises, `python -m`,
    a notebook or a script next to the models. The module can then hand diffusers a working
    scheduler, so the load succeeds and nothing shows.

    Right behaviour: with trust_remote_code off, synthgen refuses (UserError naming the
    component) any model_index.json entry whose library is not diffusers or transformers (or
    null), before diffusers imports anything.
    """
    import torch

    from synthgen.generate.load import load_pipeline
    from synthgen.recipe import ModelSpec

    checkout = tmp_path / "checkout"
    model = _tiny_model_copy(checkout / "models" / "evil")
    marker = tmp_path / "code-ran"
    (model / "scheduler" / "hook.py").write_text(
        "import pathlib\n"
        f"pathlib.Path({str(marker)!r}).write_text('the model folder ran code')\n"
        "from diffusers import EulerDiscreteScheduler, SchedulerMixin  # loading still works\n")
    index = json.loads((model / "model_index.json").read_text())
    index["scheduler"] = ["models.evil.scheduler.hook", "EulerDiscreteScheduler"]
    (model / "model_index.json").write_text(json.dumps(index))

    for name in [name for name in sys.modules if name == "models" or name.startswith("models.")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.chdir(checkout)
    monkeypatch.syspath_prepend(str(checkout))  # what `python cli.py` in the checkout does
    try:
        try:
            load_pipeline(ModelSpec(id="models/evil"), torch.device("cpu"), torch.float32)
        except UserError:
            pass  # refusing the folder is the right outcome
        assert not marker.exists(), (
            "model_index.json made diffusers import models/evil/scheduler/hook.py: code from "
            "the model folder ran with trust_remote_code off")
    finally:
        for name in [name for name in sys.modules if name == "models" or name.startswith("models.")]:
            del sys.modules[name]


def test_overwrite_deletes_the_users_files_inside_the_audit_folder(tmp_path):
    """`generate --overwrite` deletes a user's own files kept in DIR/audit/.

    README: "--overwrite deletes synthgen's own files there (and the old audit/ report; never
    anything else)". write.prepare_output_dir checks only that audit/report.json exists and
    then calls `LocalStore.remove_folder("audit")`, a `shutil.rmtree` of the whole folder:
    notes, notebooks or exports the user saved beside the report go with it.

    Right behaviour: remove only the files an audit writes there (report.json, report.html,
    views.jsonl, embeddings.npz, the PNGs, charts/ and sheets/), and leave the folder when
    anything else remains in it.
    """
    from synthgen.plan import make_plan
    from synthgen.recipe import parse_recipe
    from synthgen.write import prepare_output_dir

    plan = make_plan(parse_recipe(yaml.safe_dump(SMALL_RECIPE)))
    out = tmp_path / "out"
    prepare_output_dir(out, plan, overwrite=False)  # a dataset: recipe.json claims --out
    audit = out / "audit"
    audit.mkdir()
    (audit / "report.json").write_text("{}\n")  # what `synthgen audit DIR` left there
    notes = audit / "my-analysis.md"
    notes.write_text("the user's own notes on the audit\n")

    prepare_output_dir(out, plan, overwrite=True)

    assert notes.is_file(), "--overwrite deleted the user's file audit/my-analysis.md"


def test_world_dataset_deletes_and_overwrites_shards_it_did_not_write(tmp_path):
    """`synthgen world dataset --out DIR` deletes every `shard-NNNNNN.tar` already in DIR/train
    and DIR/test, and writes over shard-000000.tar, whoever made them.

    world/dataset.py refuses a split folder only when it holds recipe.json or manifest.json;
    any other WebDataset whose shards follow the common `shard-%06d.tar` naming (another
    tool's, or the user's own real data kept in DIR/train) is removed without a word
    (`stale.unlink()`), while `generate` refuses exactly this case ("a folder holding files
    named like a dataset's ... but no recipe.json ... is refused rather than written over").

    Right behaviour: remove only shards an earlier `world dataset` run wrote (e.g. recorded
    in a marker file it writes, or shards whose stats file it wrote), and refuse a folder
    holding any other shard-NNNNNN.tar with a UserError.
    """
    from synthgen.world.dataset import write_real_dataset

    out = tmp_path / "data"
    (out / "train").mkdir(parents=True)
    theirs = {name: f"user's own shard {name}\n".encode()
              for name in ("shard-000000.tar", "shard-000003.tar")}
    for name, data in theirs.items():
        (out / "train" / name).write_bytes(data)

    try:
        write_real_dataset(out, train=1, test=0)
    except UserError:
        pass  # refusing is the right outcome

    for name, data in theirs.items():
        path = out / "train" / name
        assert path.is_file() and path.read_bytes() == data, (
            f"world dataset deleted or wrote over the user's {name}")


def test_a_number_too_long_for_python_in_a_recipe_is_a_traceback_not_a_user_error():
    """A recipe holding an integer of more than 4300 digits crashes every command that reads
    it with a ValueError traceback.

    PyYAML's SafeLoader turns the scalar into `int(text)`, which Python refuses past
    `sys.get_int_max_str_digits()` (4300) with ValueError. recipe.parse_recipe catches
    yaml.YAMLError and RecursionError only, so `synthgen validate/plan/generate` print a
    traceback (a 5 KB recipe, far under the 1 MB cap), against the README's rule that every
    mistake is one message with exit status 2.

    Right behaviour: a UserError naming the line and the value ("a number of 5,000 digits;
    write a smaller number").
    """
    from synthgen.recipe import parse_recipe

    text = ("name: huge\nseed: " + "9" * 5000 + "\nmodel: {id: builtin:tiny-random}\n"
            "templates: ['a {class}']\nclasses: [{name: dog, groups: 1}]\n")
    try:
        parse_recipe(text, "huge.yaml")
    except UserError:
        return
    except ValueError as error:
        pytest.fail(f"a 5000-digit number gave a traceback ({type(error).__name__}: "
                    f"{str(error)[:80]}), not a UserError")
    pytest.fail("a 5000-digit seed was accepted")



def test_a_component_from_a_diffusers_pipeline_module_still_loads(tmp_path):
    """The library check lets through what diffusers itself resolves: a pipeline module of
    diffusers (SD 1.5's model_index.json names its safety checker's library
    "stable_diffusion"), and null components; an unknown library is refused by name."""
    import torch

    from synthgen.builtin import refuse_foreign_components
    from synthgen.generate.load import load_pipeline
    from synthgen.recipe import ModelSpec

    model = _tiny_model_copy(tmp_path / "model")
    index = json.loads((model / "model_index.json").read_text())
    index["safety_checker"] = ["stable_diffusion", "StableDiffusionSafetyChecker"]
    (model / "model_index.json").write_text(json.dumps(index))
    refuse_foreign_components(json.loads((model / "model_index.json").read_text()), str(model))  # accepted
    index["safety_checker"] = [None, None]
    (model / "model_index.json").write_text(json.dumps(index))
    load_pipeline(ModelSpec(id=str(model)), torch.device("cpu"), torch.float32)
    index["scheduler"] = ["somewhere_else", "EulerDiscreteScheduler"]
    (model / "model_index.json").write_text(json.dumps(index))
    with pytest.raises(UserError, match="scheduler from 'somewhere_else'"):
        load_pipeline(ModelSpec(id=str(model)), torch.device("cpu"), torch.float32)


def test_validate_refuses_a_foreign_component_library_before_any_load(tmp_path):
    """validate checks a local model folder's component libraries as generate would, unless
    the recipe turns trust_remote_code on."""
    from synthgen.recipe import load_recipe

    model = _tiny_model_copy(tmp_path / "model")
    index = json.loads((model / "model_index.json").read_text())
    index["scheduler"] = ["mylib.models", "EulerDiscreteScheduler"]
    (model / "model_index.json").write_text(json.dumps(index))
    recipe = {**SMALL_RECIPE, "model": {**SMALL_RECIPE["model"], "id": str(model)}}
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(recipe))
    with pytest.raises(UserError, match="loads scheduler from 'mylib.models'"):
        load_recipe(path)
    recipe["model"]["trust_remote_code"] = True
    path.write_text(yaml.safe_dump(recipe))
    load_recipe(path)
