"""Problems left or introduced by the review fixes 40ba91f..081561f: each test fails on the
code as fixed, for the reason its docstring gives, and says what the correct behaviour is.

Everything is tiny: recipes that only plan, stand-in shard bytes (engine_helpers), and
monkeypatched stand-ins where a model would otherwise load.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent / "engines"))

from engine_helpers import model_info, shard_samples  # noqa: E402
from small_recipe import parse_small, two_shard_reject_plan  # noqa: E402
from synthgen.errors import UserError  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_thread")




class _Reached(Exception):
    """Raised by a stand-in: the call got past the point where it should have been refused."""


# --- api.py vs NamedPath: an empty path ----------------------------------------------------

def test_api_audit_refuses_an_empty_report_folder_as_the_cli_does(tmp_path, monkeypatch):
    """729311b made every CLI path option refuse an empty value (cli_types.NamedPath: Path("")
    is the current folder, so `--report "$REPORT"` with REPORT unset would write there), and
    `synthgen audit DS --report ""` is refused. The Python API, which README says raises "the
    message the command line prints", does not share the check: api.audit(ds, report="")
    turns "" into Path("") = ".", check_output_folder accepts the current folder, and the
    audit goes on to write report.json, report.html, views.jsonl, embeddings.npz, charts/ and
    sheets/ among the user's files in the current folder. (api.audit("") likewise audits the
    current folder, and api.edit(recipe, "") saves the model into it.) Correct: api.audit
    refuses an empty `report` (and `dataset`) with a UserError before any work, as the CLI."""
    from synthgen import api
    from synthgen.audit import source

    def reached(*args, **kwargs):
        raise _Reached("api.audit went on to read the dataset with report=''")

    monkeypatch.setattr(source, "dataset_shards", reached)
    (tmp_path / "dataset").mkdir()
    monkeypatch.chdir(tmp_path)
    with pytest.raises(UserError, match="empty"):
        api.audit(str(tmp_path / "dataset"), report="")


def test_api_edit_refuses_an_empty_out_folder_as_the_cli_does(tmp_path, monkeypatch):
    """Same gap as above for `synthgen edit RECIPE --out ""` (refused by NamedPath since
    729311b) and api.edit(recipe, out=""): api.edit takes Path("") (the current folder),
    check_output_folder accepts it, and in an empty current folder the edited model is saved
    there (os.path.abspath("") is the current folder). Correct: a UserError saying the
    folder is empty, before the model loads."""
    from synthgen import api
    from synthgen.generate import prepare

    def reached(*args, **kwargs):
        raise _Reached("api.edit went on to edit the model with out=''")

    monkeypatch.setattr(prepare, "write_edited_model", reached)
    recipe = parse_small({"suppress": [{"concept": "striped", "method": "erase"}]})
    empty = tmp_path / "empty"
    empty.mkdir()
    monkeypatch.chdir(empty)
    with pytest.raises(UserError, match="empty"):
        api.edit(recipe, "")


# --- write.py: model.detectors and datasets made before it was recorded --------------------

def test_a_resumed_dataset_from_before_model_detectors_is_not_reported_as_mixing_models(
        tmp_path, tiny_clip_dir):
    """729311b records the CLIP detectors' digest beside the model's (stats model.detectors)
    so that a reject dataset started by the previous synthgen, whose shards record no
    detectors, resumes. It does resume, but the shards it then builds record `detectors` and
    the old ones do not, so write_manifest's `_model_variants` (which groups shards by their
    whole `model` description) lists two variants, and `synthgen generate` / api.generate
    report "the shards of OUT were made with 2 different model settings (device type, dtype or
    edits: runs resumed or sliced with other options)": false, the same model, device, dtype
    and detectors made every shard; only what was recorded differs. The manifest's `model` is
    also shard 0's, without the detectors the later shards record. Correct: a shard that does
    not record detectors (made before they were recorded) does not count as another model
    setting: one variant here."""
    from synthgen.write import finalize_dataset, prepare_output_dir, publish_shard

    plan = two_shard_reject_plan(str(tiny_clip_dir))
    from synthgen.generate.identity import detectors_digest

    out = tmp_path / "data"
    prepare_output_dir(out, plan, overwrite=False)
    old = model_info(plan)  # what the previous synthgen recorded: no detectors
    assert publish_shard(out, 0, shard_samples(plan, 0), old).published
    # The resume: the same model, and now the detectors' digest recorded beside it.
    assert prepare_output_dir(out, plan, overwrite=False) == {0}
    new = {**old, "detectors": detectors_digest(plan.recipe)}
    assert publish_shard(out, 1, shard_samples(plan, 1), new).published
    manifest = finalize_dataset(out)
    assert len(manifest["model_variants"]) == 1, manifest["model_variants"]


# --- recipe.py _one_line: a name that prints as nothing -------------------------------------

@pytest.mark.parametrize("name", ["\u200b", "\u2060\ufeff", "\u200d"])
def test_a_name_of_only_invisible_format_characters_is_refused_as_blank(name):
    """729311b replaced `name.isprintable()` in recipe.py `_one_line` by a refusal of
    categories Cc/Zl/Zp only, so that names *containing* a zero-width joiner or a no-break
    space are valid. But the blank check beside it is `not name.strip()`, and str.strip()
    does not remove format characters, so a name made only of them (a zero-width space
    U+200B, a word joiner U+2060, a BOM U+FEFF) is now accepted: the class prints as an
    empty cell in the plan and inspect tables and is drawn as an empty caption in the audit,
    which is what the check exists to prevent (before 729311b it was refused). Correct: a
    name with no visible character is refused ("is blank; give a name")."""
    with pytest.raises(UserError, match="blank"):
        parse_small({"classes": [{"name": name, "templates": ["a {colour} circle"], "groups": 1}],
                 "corner_cases": []})


# --- builtin.py: the model_index.json library check has a sibling it does not cover ---------

def test_world_evaluate_refuses_a_foreign_component_library_as_model_id_does(tmp_path,
                                                                           monkeypatch):
    """7f91b11 refuses a model_index.json component whose library is not diffusers, one of
    its pipeline modules or transformers (a dotted name such as "models.evil.scheduler" makes
    diffusers import and run that module), unless trust_remote_code is on; 59303a8 runs the
    check for validate and load_pipeline. `synthgen world evaluate --models DIR` (a world-sd
    "trained elsewhere") loads DIR/world-sd with StableDiffusionPipeline.from_pretrained
    without it (world/evaluate.py; world/train.py's continue phases likewise), so the same
    model_index.json imports and runs the named module there. Correct: the world commands
    that load a user-given pipeline folder refuse it with builtin.refuse_foreign_components
    (a UserError) before diffusers imports anything.

    The expensive stages before the pipeline loads (CLIP, oracle, held-out renders) are
    stand-ins; the imported module only writes a marker file."""
    import transformers

    from synthgen.world import clip as world_clip
    from synthgen.world import corpus, oracle
    from synthgen.world.evaluate import evaluate_world_models
    from synthgen.world.model_folders import CLIP_FOLDER, ORACLE_FOLDER, SD_FOLDER

    marker = tmp_path / "imported"
    package = tmp_path / "code" / "rf3_foreign_component"
    package.mkdir(parents=True)
    (package / "__init__.py").write_text(
        f"open({str(marker)!r}, 'w').close()\nclass Evil:\n    pass\n")
    monkeypatch.syspath_prepend(str(tmp_path / "code"))

    root = tmp_path / "models"
    (root / CLIP_FOLDER).mkdir(parents=True)
    (root / CLIP_FOLDER / "config.json").write_text("{}")
    (root / ORACLE_FOLDER).mkdir()
    (root / ORACLE_FOLDER / "model.safetensors").write_bytes(b"")
    (root / SD_FOLDER).mkdir()
    (root / SD_FOLDER / "model_index.json").write_text(json.dumps({
        "_class_name": "StableDiffusionPipeline", "_diffusers_version": "0.42.0",
        "scheduler": ["rf3_foreign_component", "Evil"]}))

    class Stub:
        def to(self, *args, **kwargs):
            return self

    monkeypatch.setattr(transformers.CLIPModel, "from_pretrained", classmethod(lambda *a, **k: Stub()))
    monkeypatch.setattr(transformers.CLIPTokenizer, "from_pretrained", classmethod(lambda *a, **k: Stub()))
    monkeypatch.setattr(corpus, "held_out_pool", lambda *a, **k: [])
    monkeypatch.setattr(world_clip, "zero_shot_attribute_accuracy", lambda *a, **k: {})
    monkeypatch.setattr(oracle, "load_oracle", lambda *a, **k: Stub())
    monkeypatch.setattr(oracle, "oracle_accuracy", lambda *a, **k: {})

    try:
        evaluate_world_models(root, device="cpu", scale=0.01, log=lambda message: None)
    except UserError as error:
        assert "rf3_foreign_component" in str(error)
    except Exception:  # noqa: BLE001 - diffusers' own error once the class was imported
        pass
    assert not marker.exists(), ("world evaluate let diffusers import and run the module "
                                 "model_index.json names")
