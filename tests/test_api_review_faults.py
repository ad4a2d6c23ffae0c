"""The Python API used as a notebook or pipeline script uses it: many calls in one process.
What one call changes in the process (torch's settings, libraries' switches) must be given back,
also when the call fails."""

from __future__ import annotations

import pytest
import torch
import yaml

import synthgen
from small_recipe import SMALL_RECIPE, merge

ONE_CIRCLE_GROUP = {"classes": [{"name": "circle", "templates": ["a {colour} circle"], "groups": 1}],
                    "corner_cases": [], "model": {"steps": 1}}


def _recipe(tmp_path, overrides: dict):
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(merge(merge(SMALL_RECIPE, ONE_CIRCLE_GROUP), overrides),
                                   sort_keys=False))
    return path


@pytest.fixture
def three_threads():
    """The caller's own torch thread setting, which no synthgen call should leave changed."""
    before = torch.get_num_threads()
    torch.set_num_threads(3)
    yield 3
    torch.set_num_threads(before)


def test_a_generate_whose_model_fails_to_load_gives_back_the_callers_thread_count(
        tmp_path, three_threads, monkeypatch):
    """A mistyped model id raises UserError (as it should); the notebook's torch is then left
    at --cpu-threads (2) instead of its own setting: ShardWorker sets the thread count before
    loading the model, and only `close()` (never reached) restores it."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    recipe = _recipe(tmp_path, {"model": {"id": "nobody/no-such-model"}})
    with pytest.raises(synthgen.UserError, match="model.id"):
        synthgen.generate(recipe, tmp_path / "out", device="cpu", progress=False)
    assert torch.get_num_threads() == three_threads


def test_a_ctrl_c_while_the_model_loads_gives_back_the_callers_thread_count(
        tmp_path, three_threads, monkeypatch):
    """The same with Ctrl-C during the (long, for a real model) load."""
    import synthgen.generate.prepare  # noqa: F401
    import sys

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(sys.modules["synthgen.generate.prepare"], "prepare_sampler", interrupted)
    with pytest.raises(KeyboardInterrupt):
        synthgen.generate(_recipe(tmp_path, {}), tmp_path / "out", device="cpu", progress=False,
                          cpu_threads=1)
    assert torch.get_num_threads() == three_threads


def test_generate_gives_back_the_libraries_progress_bar_switches(tmp_path, one_thread):
    """load_pipeline turns off diffusers' and transformers' progress bars process-wide and never
    turns them on again: after one api.generate, the notebook's own from_pretrained calls (and
    a later audit(progress=True)'s "Loading weights" bars) show no progress."""
    from diffusers.utils import logging as diffusers_logging
    from transformers.utils import logging as transformers_logging

    diffusers_logging.enable_progress_bar()
    transformers_logging.enable_progress_bar()
    try:
        synthgen.generate(_recipe(tmp_path, {}), tmp_path / "out", device="cpu", progress=False)
        assert diffusers_logging.is_progress_bar_enabled()
        assert transformers_logging.is_progress_bar_enabled()
    finally:
        diffusers_logging.enable_progress_bar()
        transformers_logging.enable_progress_bar()


def test_a_model_folder_replaced_between_two_calls_is_not_taken_for_the_old_one(
        tmp_path, one_thread):
    """Shard 0 is built from a model folder; the folder is then replaced by other weights
    whose files have the same sizes and modification times (as `cp -p`, `rsync -a`, or a tar
    with second-resolution times leave them). In a fresh process the weights digest changes and
    resuming refuses; in the same process `identity._file_sha256`'s cache (keyed on path, size
    and mtime only) returns the old hashes, so shard 1 is built from the new weights and a
    manifest vouches for one model."""
    import os
    import shutil

    from synthgen.generate.tiny_random import save_tiny_pipeline

    model = save_tiny_pipeline(tmp_path / "model", seed=0)
    recipe = _recipe(tmp_path, {"model": {"id": str(model)}, "output": {"groups_per_shard": 1},
                                "classes": [{"name": "circle", "templates": ["a {colour} circle"],
                                             "groups": 2}]})
    first = synthgen.generate(recipe, tmp_path / "out", device="cpu", progress=False, shards="0")
    other = save_tiny_pipeline(tmp_path / "other", seed=1)
    for path in other.rglob("*"):
        if path.is_file():
            old = (model / path.relative_to(other)).stat()
            assert path.stat().st_size == old.st_size
            os.utime(path, ns=(old.st_atime_ns, old.st_mtime_ns))
    shutil.rmtree(model)
    os.rename(other, model)
    try:
        second = synthgen.generate(recipe, tmp_path / "out", device="cpu", progress=False,
                                   shards="1")
    except synthgen.UserError:
        return  # refused, as a fresh process refuses
    assert second.model["weights"] != first.model["weights"], (
        "other weights recorded under the first model's digest; the dataset was finished")
