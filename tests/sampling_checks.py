"""Checks shared by the tests of every pipeline family (SD on tiny-random, PixArt, ...)."""

from __future__ import annotations

import torch

from synthgen.generate.sampler import Sampler
from synthgen.views import ViewPlan


def check_padded_batches_do_not_mix_views(model, spec) -> Sampler:
    """The GPU-shaped path (padded batches of many prompts), run on the CPU: a view's pixels do
    not depend on its neighbours or position, and equal one-view calls to float rounding."""
    views = [ViewPlan(f"g{seed}", 0, prompt, "", seed) for prompt, seed in
             [("a red circle", 1), ("a blue square", 2), ("a green star", 3)]]
    batched = Sampler(model, spec, batch_size=4, one_view_per_call=False)
    together = batched.sample(views).images
    # Same shape, other neighbours and position: the kernel is the same, so the bits are too.
    alone = batched.sample(views[2:]).images
    assert torch.equal(together[2], alone[0])
    # Against one view per call: other kernels, so equal up to float rounding only.
    single = Sampler(model, spec, batch_size=4).sample(views).images
    difference = (together.int() - single.int()).abs()
    assert difference.max() <= 2 and difference.float().mean() < 0.01
    assert not torch.equal(together[0], together[1])
    return batched


def count_prompt_encodings(monkeypatch, pipeline_class) -> list[str]:
    """The texts `pipeline_class.encode_prompt` encodes from now on (the pipelines' own calls
    that pass synthgen's precomputed embeddings through, with prompt None, are not counted)."""
    encoded: list[str] = []
    original = pipeline_class.encode_prompt

    def counting_encode(self, prompt, *args, **kwargs):
        if prompt is not None:
            encoded.append(prompt)
        return original(self, prompt, *args, **kwargs)

    monkeypatch.setattr(pipeline_class, "encode_prompt", counting_encode)
    return encoded
