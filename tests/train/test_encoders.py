"""Encoders rebuild from their JSON spec alone and train end to end."""

from __future__ import annotations

import json

import pytest
import torch

from synthgen.errors import UserError
from synthgen.train.encoders import ContrastiveModel, EncoderSpec, build_encoder


@pytest.mark.parametrize("spec", [EncoderSpec(width=4, blocks=(1, 1, 1)),
                                  EncoderSpec(arch="vit", width=16, depth=1, heads=2, patch=8)])
def test_spec_round_trip_and_every_parameter_learns(spec):
    rebuilt = EncoderSpec.from_json(json.loads(json.dumps(spec.to_json())))
    assert rebuilt == spec
    torch.manual_seed(0)
    model = ContrastiveModel(rebuilt)
    model(torch.rand(4, 3, 32, 32)).pow(2).sum().backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in model.parameters())
    assert build_encoder(spec)(torch.rand(2, 3, 32, 32)).shape[1] == model.encoder.feature_dim


def test_bad_specs_are_user_errors():
    with pytest.raises(UserError, match="arch: unknown encoder 'mlp'"):
        build_encoder(EncoderSpec(arch="mlp"))
    with pytest.raises(UserError, match="patch: 5 does not divide resolution 32"):
        build_encoder(EncoderSpec(arch="vit", patch=5))
