"""Faults found by walking through README.md as a new user: each test fails on the code the
walkthrough ran (a traceback, or a message that misleads, where the README promises one line
naming the file or option, the bad value and a fix, and `synthgen.UserError` from the API)."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

import synthgen
from cli_checks import assert_no_traceback, invoke
from small_recipe import SMALL_RECIPE, merge

pytestmark = pytest.mark.usefixtures("one_thread")

ONE_GROUP = {"classes": [{"name": "circle", "templates": ["a {colour} circle"], "groups": 1}],
             "corner_cases": []}


@pytest.fixture(scope="module")
def one_group_dataset(tmp_path_factory) -> Path:
    """A finished one-shard dataset (1 group of 2 views, tiny random model)."""
    root = tmp_path_factory.mktemp("walkthrough")
    recipe = root / "recipe.yaml"
    recipe.write_text(yaml.safe_dump(merge(SMALL_RECIPE, ONE_GROUP), sort_keys=False))
    synthgen.generate(recipe, root / "out", device="cpu", batch_size=2, progress=False)
    return root / "out"


# --out s3:// (no bucket): README, Object storage: "Other URL schemes are refused with a
# message"; an s3 URL without a bucket fell through fsspec to the local filesystem as "s3:".
def test_generate_into_s3_url_without_bucket_is_one_line(write_recipe, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    result = invoke("generate", write_recipe(ONE_GROUP), "--out", "s3://", "--device", "cpu",
                    "--quiet")
    assert_no_traceback(result, allowed=(2,))
    assert "names no bucket" in result.output, result.output
    assert not (tmp_path / "s3:").exists()


def test_finalize_s3_url_without_bucket_names_the_url(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    result = invoke("finalize", "s3://")
    assert_no_traceback(result, allowed=(2,))
    # It said "error: s3:: has no recipe.json": the URL read as a local folder named "s3:".
    assert "s3::" not in result.output, result.output


# Python API: "A mistake raises synthgen.UserError with the message the command line prints".
def test_api_generate_unknown_dtype_is_a_user_error(write_recipe, tmp_path):
    with pytest.raises(synthgen.UserError, match="fp16"):
        synthgen.generate(write_recipe(ONE_GROUP), tmp_path / "out", device="cpu",
                          dtype="fp16", batch_size=2, progress=False)


def test_api_generate_shards_as_a_list_is_a_user_error(write_recipe, tmp_path):
    with pytest.raises(synthgen.UserError):
        synthgen.generate(write_recipe(ONE_GROUP), tmp_path / "out", device="cpu", shards=[0],
                          batch_size=2, progress=False)


def test_api_inspect_shard_as_text_is_a_user_error(one_group_dataset):
    with pytest.raises(synthgen.UserError):
        synthgen.inspect(one_group_dataset, shard="0")


# The README's audit example passes lists; one rule as a plain string was read letter by
# letter: "--fail-on 'd': write NAME>NUMBER ...", naming a value the user never wrote.
def test_api_audit_fail_on_as_one_string_names_what_was_passed(tmp_path):
    try:
        synthgen.audit(tmp_path, fail_on="duplicates>0.5", progress=False)
    except synthgen.UserError as error:
        assert "'d'" not in str(error), str(error)


def test_api_audit_attributes_as_one_string_names_what_was_passed(one_group_dataset, tmp_path):
    try:
        synthgen.audit(one_group_dataset, report=tmp_path / "report",
                       attributes="colour=red,green,blue", device="cpu", progress=False)
    except synthgen.UserError as error:
        assert "'c'" not in str(error), str(error)


# `synthgen validate`: "check a recipe, and that every model it names can load as far as can
# be told without loading it"; model.scheduler is a diffusers class name, known without
# loading anything, yet validate said ok and generate refused it as a recipe error.
def test_validate_refuses_an_unknown_scheduler(write_recipe):
    result = invoke("validate", write_recipe({"model": {"scheduler": "EulerScheduler"}}))
    assert_no_traceback(result, allowed=(2,))
    assert "model.scheduler" in result.output


# --fail-on 'KL>0.05' is well-formed but for the name's case; the message said the form was
# wrong ("write NAME>NUMBER") instead of naming the metric and the known ones.
def test_fail_on_upper_case_metric_is_named_as_unknown():
    from synthgen.audit.thresholds import parse_fail_on

    with pytest.raises(synthgen.UserError, match="kl"):
        try:
            parse_fail_on(["KL>0.05"])
        except synthgen.UserError as error:
            assert "write NAME>NUMBER" not in str(error), str(error)
            raise


# README: every mistake "prints one message naming the file"; `synthgen edit` on a recipe
# without erase or debias named no file.
def test_edit_without_edits_names_the_recipe_file(write_recipe, tmp_path):
    recipe = write_recipe(ONE_GROUP)
    result = invoke("edit", recipe, "--out", tmp_path / "edited", "--device", "cpu")
    assert_no_traceback(result, allowed=(2,))
    assert str(recipe) in result.output, result.output


# The audit's CLIP identity ("builtin:world-clip@06f8868b61a9db71" in the README transcript)
# is meant to be the weights, config and preprocessing, so the same weights from "another
# checkout, install or spelling of the folder keep their identity and their cached
# embeddings"; it hashes transformers' `transformers_version` too, so the README's digest
# does not reproduce and a transformers upgrade drops every embeddings.npz.
def test_clip_identity_does_not_depend_on_the_transformers_version(tiny_clip_dir,
                                                                  monkeypatch):
    import transformers.configuration_utils
    from transformers import CLIPModel, CLIPProcessor

    from synthgen.audit.encoder import model_identity

    model = CLIPModel.from_pretrained(tiny_clip_dir)
    processor = CLIPProcessor.from_pretrained(tiny_clip_dir)
    before = model_identity("clip", model, processor)
    # The same weights and config read by another transformers (to_dict stamps its version).
    monkeypatch.setattr(transformers.configuration_utils, "__version__", "4.0.0")
    assert model_identity("clip", model, processor) == before
