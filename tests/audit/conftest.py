"""Audit fixtures: a fake encoder the command loads, and a tiny random CLIP model folder.

Helpers live in audit_fixtures.py (a unique module name: tests/conftest.py is also `conftest`).
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from audit_fixtures import MeanColourEncoder


@pytest.fixture
def fake_encoder(monkeypatch):
    """A MeanColourEncoder that `synthgen audit` loads instead of a CLIP."""
    from synthgen.audit import encoder as encoders

    fake = MeanColourEncoder()
    monkeypatch.setattr(encoders, "load_encoder", lambda clip_id, device, dtype="auto": fake)
    return fake


@pytest.fixture(scope="session")
def tiny_clip_dir(tmp_path_factory) -> Path:
    """A tiny random CLIPModel + CLIPProcessor saved as a model folder (safetensors)."""
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel, CLIPProcessor

    from synthgen.generate.tiny_random import byte_level_clip_tokenizer

    tokenizer = byte_level_clip_tokenizer()
    torch.manual_seed(0)
    config = CLIPConfig(
        text_config=dict(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64,
                         num_hidden_layers=2, num_attention_heads=2, max_position_embeddings=77,
                         bos_token_id=0, eos_token_id=1, pad_token_id=1),
        vision_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                           num_attention_heads=2, image_size=32, patch_size=8),
        projection_dim=16)
    directory = tmp_path_factory.mktemp("tiny-clip") / "clip"
    CLIPModel(config).save_pretrained(directory, safe_serialization=True)
    processor = CLIPProcessor(
        image_processor=CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}),
        tokenizer=tokenizer)
    processor.save_pretrained(directory)
    return directory
