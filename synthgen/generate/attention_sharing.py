"""Counterfactual views that hold the layout: every view of a group denoises with parts of its
anchor view's computation for the first steps (after prompt-to-prompt's word swap, Hertz et
al. 2022, and plug-and-play feature injection, Tumanyan et al. 2023).

A group's views share one starting noise and differ in one word (the `slots` view strategy).
Shared noise alone does not pin the layout on every model (docs/WORLD.md, "Counterfactual
views"): a changed word changes every attention map and, in a model that pools the prompt
into its timestep embedding (world-sd, `addition_embed_type: "text"`), every block's
conditioning. While a step shares them, each view takes from its anchor

- `self_maps`, `cross_maps`: the anchor's self- and cross-attention maps (where things are,
  which token each pixel reads), applied to the view's *own* values, so its own words (its
  colour) still act through the tokens the anchor's maps point at (prompt-to-prompt);
- `pooled_text`: the anchor's pooled-text embedding (`unet.add_embedding`'s output), so the
  changed word does not reach the resnets through the timestep embedding;
- `coarse_features`: the output of the UNet's first (coarsest) decoder block,
  `unet.up_blocks[0]`. On world-sd the attention maps alone do not hold the layout (its
  highest-resolution blocks have no attention, and the colour word's cross-attention map is
  nearly flat over the image); the coarse decoder features carry where the object is, and
  the finer blocks, fed with the view's own skip connections, text and values, still redraw
  its colour.

After its shared steps every part runs as the model's own (the original attention processors,
untouched), so details follow the view's own prompt. The changed word must take the same
token positions in every view (true of a one-token word swap; a longer word would need
prompt-to-prompt's token alignment, which this module does not do).

    anchors = group_anchors([4] * groups)                 # 4 views per group, view 0 anchors
    with share_layout(pipeline.unet, anchors, steps=20):
        images = pipeline(prompt_embeds=..., latents=..., num_inference_steps=20, ...).images

Contract of one `share_layout` block: exactly one pipeline call inside it, whose UNet is
called once per denoising step (DPM-Solver++, DDIM, Euler, UniPC: yes; Heun, DPM2: no) with
the batch `anchors` describes, either as is or doubled for classifier-free guidance (diffusers
concatenates [unconditional, conditional]; each half is shared within itself: an
unconditional row takes its anchor's unconditional row). Deterministic: nothing is drawn, and
a view's picture depends only on itself and its anchor, never on the other groups in the batch
(up to the float rounding that a batch's shape brings anyway). An anchor's own picture is its
plain one up to float rounding.
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass, fields
from typing import Iterator, Sequence

import torch


@dataclass(frozen=True)
class LayoutSharing:
    """For how many of the denoising steps views take each part from their anchor, as
    fractions of the steps (the first ``int(fraction * steps)`` steps, as prompt-to-prompt
    counts them). A part a UNet lacks (`add_embedding`) is ignored. All 0: the plain pipeline,
    byte for byte."""

    self_maps: float = 0.0
    cross_maps: float = 0.0
    pooled_text: float = 0.0
    coarse_features: float = 0.0

    def __post_init__(self) -> None:
        for part in fields(self):
            value = getattr(self, part.name)
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"LayoutSharing.{part.name} is a fraction of the steps, 0 to 1; "
                                 f"got {value}")

    def shared_steps(self, steps: int) -> dict[str, int]:
        """How many leading steps share each part, at `steps` denoising steps."""
        return {part.name: int(getattr(self, part.name) * steps) for part in fields(self)}


# Chosen on builtin:world-sd with bench/counterfactual_layout.py (recipes/counterfactual-colours
# .yaml, 110 groups, DPM-Solver++ 20 steps, guidance 4): views hold position within 2 px in
# 87% of groups (plain shared noise: 0%), colour as prompted in 98.6% of views; shape agrees
# in 74% of groups (plain: 81%), so the 90% gate is not met on shape or position.
LAYOUT_SHARING = LayoutSharing(self_maps=0.85, cross_maps=0.85, pooled_text=0.0,
                               coarse_features=0.85)


def group_anchors(group_sizes: Sequence[int], anchor: int = 0) -> list[int]:
    """The `anchors` of a batch of whole groups laid out one after another (a group's views
    contiguous, in view order): position i -> the batch position of its group's view `anchor`.

    >>> group_anchors([3, 2])
    [0, 0, 0, 3, 3]
    """
    anchors: list[int] = []
    for size in group_sizes:
        if not 0 <= anchor < size:
            raise ValueError(f"anchor view {anchor} is not in a group of {size} views")
        anchors += [len(anchors) + anchor] * size
    return anchors


@contextmanager
def share_layout(unet, anchors: Sequence[int], steps: int,
                 sharing: LayoutSharing = LAYOUT_SHARING) -> Iterator[None]:
    """Install layout sharing on `unet` (a diffusers `UNet2DConditionModel`) for one pipeline
    call; restore it after.

    `anchors[i]` is the batch position of view i's anchor (an anchor points at itself);
    positions count the pipeline's batch of views, before any classifier-free guidance
    doubling. A view that shares with nothing (e.g. batch padding) is its own anchor. `steps`:
    the call's `num_inference_steps`. On exit, also after an error, the UNet has the attention
    processors it had and none of the hooks this installs.
    """
    anchors = [int(a) for a in anchors]
    for position, anchor in enumerate(anchors):
        if not 0 <= anchor < len(anchors) or anchors[anchor] != anchor:
            raise ValueError(f"anchors[{position}] = {anchor} is not an anchor of this batch "
                             f"(one of its positions that is its own anchor); anchors: {anchors}")
    if steps < 1:
        raise ValueError(f"steps must be at least 1, got {steps}")
    state = _SharingState(anchors, steps, sharing.shared_steps(steps))
    originals = unet.attn_processors
    hooks = [unet.register_forward_pre_hook(state.start_step, with_kwargs=True),
             unet.up_blocks[0].register_forward_hook(state.share_coarse_features)]
    if getattr(unet, "add_embedding", None) is not None:
        hooks.append(unet.add_embedding.register_forward_hook(state.share_pooled_text))
    try:
        unet.set_attn_processor({name: _SharedMapsProcessor(processor, state)
                                 for name, processor in originals.items()})
        yield
    finally:
        unet.set_attn_processor(originals)
        for hook in hooks:
            hook.remove()


class _SharingState:
    """The step the UNet is at, and which batch row takes what from which."""

    def __init__(self, anchors: list[int], steps: int, shared_steps: dict[str, int]):
        self.anchors = anchors
        self.steps = steps
        self.shared_steps = shared_steps
        self.step = -1
        self.rows: torch.Tensor | None = None  # per UNet batch row: the row of its anchor
        self.active = {part: False for part in shared_steps}

    def sharing(self, part: str) -> bool:
        # Decided once a step, in the pre-hook: a compiled UNet then sees a few booleans (a
        # graph or two per combination), not the step count, which changes every call and
        # would be a new graph each step until dynamo's recompile limit left it uncompiled.
        return self.active[part]

    def start_step(self, unet, args, kwargs) -> None:
        """UNet forward pre-hook: one call per denoising step."""
        self.step += 1
        self.active = {part: self.step < shared for part, shared in self.shared_steps.items()}
        if self.step >= self.steps:
            raise RuntimeError(f"share_layout was set up for {self.steps} UNet calls (one per "
                               "step) and the UNet was called again: use one share_layout block "
                               "per pipeline call, and a scheduler that calls the UNet once a step")
        sample = args[0] if args else kwargs["sample"]
        views = len(self.anchors)
        halves, remainder = divmod(sample.shape[0], views)
        if remainder or halves not in (1, 2):
            raise RuntimeError(f"share_layout was given anchors for {views} views, but the UNet "
                               f"got a batch of {sample.shape[0]} (expected {views}, or "
                               f"{2 * views} with classifier-free guidance)")
        # With guidance the batch is [unconditional views, conditional views]: each half's
        # rows point at their anchor in the same half.
        rows = [half * views + anchor for half in range(halves) for anchor in self.anchors]
        self.rows = torch.tensor(rows, device=sample.device)

    def share_coarse_features(self, module, inputs, output: torch.Tensor) -> torch.Tensor:
        """`unet.up_blocks[0]` forward hook: rows take their anchor's output."""
        return output[self.rows] if self.sharing("coarse_features") else output

    def share_pooled_text(self, module, inputs, output: torch.Tensor) -> torch.Tensor:
        """`unet.add_embedding` forward hook: rows take their anchor's pooled text."""
        return output[self.rows] if self.sharing("pooled_text") else output


class _SharedMapsProcessor:
    """Wraps one attention layer's processor: on a shared step, attention with the anchor's
    maps over the view's own values (diffusers' `AttnProcessor` arithmetic); otherwise the
    original processor, untouched."""

    def __init__(self, original, state: _SharingState):
        self.original = original
        self.state = state

    def __call__(self, attn, hidden_states: torch.Tensor,
                 encoder_hidden_states: torch.Tensor | None = None,
                 attention_mask: torch.Tensor | None = None,
                 temb: torch.Tensor | None = None, **kwargs) -> torch.Tensor:
        part = "self_maps" if encoder_hidden_states is None else "cross_maps"
        if not self.state.sharing(part):
            return self.original(attn, hidden_states, encoder_hidden_states=encoder_hidden_states,
                                 attention_mask=attention_mask, temb=temb, **kwargs)
        residual = hidden_states
        if attn.spatial_norm is not None:
            hidden_states = attn.spatial_norm(hidden_states, temb)
        input_ndim = hidden_states.ndim
        if input_ndim == 4:
            batch_size, channel, height, width = hidden_states.shape
            hidden_states = hidden_states.view(batch_size, channel, height * width).transpose(1, 2)
        batch_size, sequence_length, _ = (
            hidden_states.shape if encoder_hidden_states is None else encoder_hidden_states.shape)
        attention_mask = attn.prepare_attention_mask(attention_mask, sequence_length, batch_size)
        if attn.group_norm is not None:
            hidden_states = attn.group_norm(hidden_states.transpose(1, 2)).transpose(1, 2)
        query = attn.to_q(hidden_states)
        if encoder_hidden_states is None:
            encoder_hidden_states = hidden_states
        elif attn.norm_cross:
            encoder_hidden_states = attn.norm_encoder_hidden_states(encoder_hidden_states)
        key = attn.head_to_batch_dim(attn.to_k(encoder_hidden_states))
        value = attn.head_to_batch_dim(attn.to_v(encoder_hidden_states))
        probabilities = attn.get_attention_scores(attn.head_to_batch_dim(query), key,
                                                  attention_mask)
        # (batch * heads, queries, keys), batch-major: every row takes its anchor's maps.
        per_view = probabilities.view(batch_size, attn.heads, *probabilities.shape[1:])
        probabilities = per_view[self.state.rows].reshape(probabilities.shape)
        hidden_states = attn.batch_to_head_dim(torch.bmm(probabilities, value))
        hidden_states = attn.to_out[1](attn.to_out[0](hidden_states))
        if input_ndim == 4:
            hidden_states = hidden_states.transpose(-1, -2).reshape(
                batch_size, channel, height, width)
        if attn.residual_connection:
            hidden_states = hidden_states + residual
        return hidden_states / attn.rescale_output_factor
