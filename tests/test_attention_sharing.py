"""Layout sharing (generate/attention_sharing.py) on tiny random SD pipelines: what a view
takes from its anchor, for how many steps, and that the UNet is left as it was found."""

from __future__ import annotations

import pytest
import torch

from synthgen.generate.attention_sharing import LayoutSharing, group_anchors, share_layout
from synthgen.generate.tiny_random import build_tiny_pipeline

STEPS = 4
# Two groups of three views; a group's views share one noise and differ in one word.
PROMPTS = ["a red cube on a table", "a blue cube on a table", "a green cube on a table",
           "a red ball in a box", "a pink ball in a box", "a cyan ball in a box"]
ANCHORS = group_anchors([3, 3])


def tiny_pipeline(pooled_text: bool = False):
    """The tiny SD pipeline; with `pooled_text`, its UNet also pools the prompt into the
    timestep embedding, as world-sd's does (`addition_embed_type: "text"`)."""
    from diffusers import UNet2DConditionModel

    pipeline = build_tiny_pipeline("sd")
    if pooled_text:
        torch.manual_seed(1)
        # The constructor, not from_config: a config remembers which of its values were
        # defaults and from_config would put those back.
        config = {key: value for key, value in pipeline.unet.config.items()
                  if not key.startswith("_")}
        pipeline.unet = UNet2DConditionModel(**{**config, "addition_embed_type": "text",
                                                "addition_embed_type_num_heads": 4})
    pipeline.set_progress_bar_config(disable=True)
    return pipeline


def shared_noise() -> torch.Tensor:
    noise = [torch.randn(1, 4, 16, 16, generator=torch.Generator("cpu").manual_seed(seed))
             for seed in (11, 12)]
    return torch.cat([noise[0]] * 3 + [noise[1]] * 3)


def generate(pipeline, guidance: float, sharing: LayoutSharing | None = None) -> torch.Tensor:
    arguments = dict(prompt=PROMPTS, latents=shared_noise(), num_inference_steps=STEPS,
                     guidance_scale=guidance, height=32, width=32, output_type="pt")
    if sharing is None:
        return pipeline(**arguments).images
    with share_layout(pipeline.unet, ANCHORS, STEPS, sharing):
        return pipeline(**arguments).images


def test_group_anchors_point_each_view_at_its_groups_anchor():
    assert group_anchors([3, 2]) == [0, 0, 0, 3, 3]
    assert group_anchors([3, 2], anchor=1) == [1, 1, 1, 4, 4]
    with pytest.raises(ValueError, match="anchor view 2 is not in a group of 2 views"):
        group_anchors([3, 2], anchor=2)


@pytest.mark.parametrize("guidance", [1.0, 4.0])
def test_sharing_nothing_is_the_plain_call_byte_for_byte(guidance):
    pipeline = tiny_pipeline(pooled_text=True)
    plain = generate(pipeline, guidance)
    assert torch.equal(generate(pipeline, guidance, LayoutSharing()), plain)
    assert not torch.equal(generate(pipeline, guidance, LayoutSharing(0.5, 0.5, 0.5, 0.5)), plain)


def test_processors_and_hooks_are_restored_also_after_an_error():
    pipeline = tiny_pipeline(pooled_text=True)
    unet = pipeline.unet
    before = unet.attn_processors
    with share_layout(unet, ANCHORS, STEPS, LayoutSharing(1, 1, 1, 1)):
        assert all(unet.attn_processors[name] is not before[name] for name in before)
    with pytest.raises(RuntimeError, match="UNet got a batch of 4"):
        with share_layout(unet, ANCHORS, STEPS, LayoutSharing(1, 1, 1, 1)):
            unet(torch.zeros(4, 4, 16, 16), 10, encoder_hidden_states=torch.zeros(4, 77, 32))
    after = unet.attn_processors
    assert all(after[name] is before[name] for name in before)
    hooked = [unet, unet.up_blocks[0], unet.add_embedding]
    assert not any(module._forward_hooks or module._forward_pre_hooks for module in hooked)


def test_anchors_must_be_anchors_and_steps_are_counted():
    unet = tiny_pipeline().unet
    with pytest.raises(ValueError, match=r"anchors\[1\] = 2 is not an anchor"):
        with share_layout(unet, [0, 2, 1], STEPS):
            pass
    # Two pipeline calls in one block: the second one's first step is one too many.
    pipeline = tiny_pipeline()
    with pytest.raises(RuntimeError, match="one share_layout block per pipeline call"):
        with share_layout(pipeline.unet, ANCHORS, STEPS):
            for _ in range(2):
                pipeline(prompt=PROMPTS, num_inference_steps=STEPS, guidance_scale=4.0,
                         height=32, width=32, output_type="pt")


def attention_calls(unet) -> tuple[list, list]:
    """Forward hooks on every attention layer: (its inputs, its output) per call, in order."""
    calls, handles = [], []
    for name, module in unet.named_modules():
        if type(module).__name__ == "Attention":
            def record(module, args, kwargs, output, name=name):
                context = kwargs.get("encoder_hidden_states")
                calls.append((name, module, args[0], context, output))
            handles.append(module.register_forward_hook(record, with_kwargs=True))
    return calls, handles


def attention_output(attn, hidden_states, context, maps_rows: torch.Tensor | None):
    """An attention layer's output recomputed, with each row's maps taken from `maps_rows`."""
    context = hidden_states if context is None else context
    query = attn.head_to_batch_dim(attn.to_q(hidden_states))
    key = attn.head_to_batch_dim(attn.to_k(context))
    value = attn.head_to_batch_dim(attn.to_v(context))
    maps = attn.get_attention_scores(query, key)
    if maps_rows is not None:
        per_view = maps.view(hidden_states.shape[0], attn.heads, *maps.shape[1:])
        maps = per_view[maps_rows].reshape(maps.shape)
    return attn.to_out[0](attn.batch_to_head_dim(torch.bmm(maps, value)))


@pytest.mark.parametrize("guidance", [1.0, 4.0])
def test_views_attend_with_their_anchors_maps_during_the_shared_steps(guidance):
    pipeline = tiny_pipeline()
    sharing = LayoutSharing(self_maps=0.5, cross_maps=0.75)  # 2 and 3 of the 4 steps
    halves = 2 if guidance > 1 else 1
    rows = torch.tensor([half * 6 + anchor for half in range(halves) for anchor in ANCHORS])
    with share_layout(pipeline.unet, ANCHORS, STEPS, sharing):
        calls, handles = attention_calls(pipeline.unet)
        pipeline(prompt=PROMPTS, latents=shared_noise(), num_inference_steps=STEPS,
                 guidance_scale=guidance, height=32, width=32, output_type="pt")
    for handle in handles:
        handle.remove()
    per_step = len(calls) // STEPS
    assert per_step * STEPS == len(calls) and per_step > 0
    checked, maps_differ = set(), set()
    with torch.no_grad():
        for index, (name, attn, hidden_states, context, output) in enumerate(calls):
            step = index // per_step
            shared = step < (2 if context is None else 3)
            own = attention_output(attn, hidden_states, context, None)
            anchors = attention_output(attn, hidden_states, context, rows)
            expected = anchors if shared else own
            torch.testing.assert_close(output, expected, rtol=1e-4, atol=1e-5)
            # Anchors keep their own maps; the other views' maps are really the anchor's.
            torch.testing.assert_close(output[rows], own[rows], rtol=1e-4, atol=1e-5)
            checked.add((context is None, shared))
            if shared and not torch.allclose(own, anchors, rtol=1e-4, atol=1e-5):
                maps_differ.add(context is None)
    assert checked == {(True, True), (True, False), (False, True), (False, False)}
    # The check has teeth: with their own maps, views would have attended otherwise.
    assert maps_differ == {True, False}


@pytest.mark.parametrize("guidance", [1.0, 4.0])
def test_views_take_their_anchors_pooled_text_and_coarse_features(guidance):
    pipeline = tiny_pipeline(pooled_text=True)
    unet = pipeline.unet
    outputs = {"pooled": [], "coarse": []}
    with share_layout(unet, ANCHORS, STEPS, LayoutSharing(pooled_text=0.5, coarse_features=0.75)):
        # Registered after share_layout's own hooks, so they see what the UNet goes on with.
        handles = [unet.add_embedding.register_forward_hook(
                       lambda module, args, output: outputs["pooled"].append(output)),
                   unet.up_blocks[0].register_forward_hook(
                       lambda module, args, output: outputs["coarse"].append(output))]
        pipeline(prompt=PROMPTS, latents=shared_noise(), num_inference_steps=STEPS,
                 guidance_scale=guidance, height=32, width=32, output_type="pt")
    for handle in handles:
        handle.remove()
    halves = 2 if guidance > 1 else 1
    rows = [half * 6 + anchor for half in range(halves) for anchor in ANCHORS]
    for part, shared_steps in (("pooled", 2), ("coarse", 3)):
        assert len(outputs[part]) == STEPS
        for step, output in enumerate(outputs[part]):
            assert torch.equal(output, output[rows]) == (step < shared_steps), (part, step)
