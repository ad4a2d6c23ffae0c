"""Shared fixtures: small recipes on tiny random pipelines, built offline on the CPU."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest
import yaml

from small_recipe import SMALL_RECIPE, merge



@pytest.fixture
def one_thread():
    """Tiny models on a shared CPU: one intra-op thread is faster than fighting for two
    (modules that want it: `pytestmark = pytest.mark.usefixtures("one_thread")`)."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def write_recipe(tmp_path: Path):
    """Writes SMALL_RECIPE (with overrides) as YAML, or raw YAML text, and returns its path."""

    def write(overrides: dict | str | None = None, name: str = "recipe.yaml") -> Path:
        path = tmp_path / name
        if isinstance(overrides, str):
            path.write_text(textwrap.dedent(overrides))
        else:
            path.write_text(yaml.safe_dump(merge(SMALL_RECIPE, overrides or {}), sort_keys=False))
        return path

    return write


@pytest.fixture(scope="session")
def tiny_sdxl_dir(tmp_path_factory) -> Path:
    """A tiny random SDXL pipeline saved as a model folder."""
    from synthgen.generate.tiny_random import save_tiny_pipeline

    return save_tiny_pipeline(tmp_path_factory.mktemp("tiny-sdxl") / "model", family="sdxl")


@pytest.fixture(scope="session")
def tiny_clip_dir(tmp_path_factory) -> Path:
    """A tiny random CLIP model with processor, saved as a folder (safetensors)."""
    import torch
    from transformers import (CLIPConfig, CLIPImageProcessor, CLIPModel, CLIPProcessor,
                              CLIPTextConfig, CLIPVisionConfig)

    from synthgen.generate.tiny_random import byte_level_clip_tokenizer

    torch.manual_seed(0)
    tokenizer = byte_level_clip_tokenizer()
    config = CLIPConfig(
        text_config=CLIPTextConfig(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64,
                                   num_hidden_layers=2, num_attention_heads=2, bos_token_id=0,
                                   eos_token_id=1, pad_token_id=1).to_dict(),
        vision_config=CLIPVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                       num_attention_heads=2, image_size=32, patch_size=8).to_dict(),
        projection_dim=16)
    directory = tmp_path_factory.mktemp("tiny-clip") / "clip"
    CLIPModel(config).save_pretrained(directory, safe_serialization=True)
    processor = CLIPProcessor(
        image_processor=CLIPImageProcessor(size={"shortest_edge": 32},
                                           crop_size={"height": 32, "width": 32}),
        tokenizer=tokenizer)
    processor.save_pretrained(directory)
    return directory


@pytest.fixture
def experiment_without_training(monkeypatch) -> list:
    """`synthgen experiment` with training and probing stood in for: a run "trains" by making
    its folder, and probes at top-1 0.5. Returns the run folders trained, in order (the tests
    patch `prepare_data` to their own data)."""
    from synthgen.train import probe as probe_module
    from synthgen.train import trainer as trainer_module

    trained: list[Path] = []

    def make_folder(config, run_dir, **kwargs):
        Path(run_dir).mkdir(parents=True, exist_ok=True)
        trained.append(Path(run_dir))

    monkeypatch.setattr(trainer_module, "train", make_folder)
    monkeypatch.setattr(probe_module, "load_encoder", lambda run_dir: (None, None))
    monkeypatch.setattr(probe_module, "probe",
                        lambda *args, **kwargs: type("Result", (), {"test_top1": 0.5})())
    return trained


@pytest.fixture(scope="module")
def real_data(tmp_path_factory):
    """Labelled real renders of the world (24 train, 12 test, 32 px), as `synthgen probe`
    reads them."""
    from synthgen.world.dataset import write_real_dataset

    out = tmp_path_factory.mktemp("real")
    write_real_dataset(out, train=24, test=12, resolution=32)
    return out
