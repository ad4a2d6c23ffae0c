"""world-sd's caption phase (synthgen/world/captions.py, `CAPTION_PHASE`): reporting-bias
captions, colour swaps that differ in the colour token alone, and the spliced contexts the UNet
trains on."""

from __future__ import annotations

from collections import Counter

import pytest
import torch

from synthgen.world.captions import (
    TYPICAL_COLOURS,
    colour_swaps,
    recoloured,
    reporting_bias_captions,
)
from synthgen.world.corpus import train_pool
from synthgen.world.diffusion import CAPTION_PHASE, DETAIL_PHASE, _spliced_contexts
from synthgen.world.scene import COLOURS
from synthgen.world.tokenizer import build_world_tokenizer


@pytest.fixture(scope="module")
def pool():
    return recoloured(train_pool(3, 2000), typical_share=0.4, seed=3)


def test_recolouring_gives_each_shape_a_typical_colour(pool):
    typical = [scene.objects[0].colour == TYPICAL_COLOURS[scene.objects[0].shape] for scene in pool.scenes]
    # 40% re-coloured, plus the 10% of the rest drawn in the typical colour anyway.
    assert 0.40 < sum(typical) / len(typical) < 0.52
    plain = train_pool(3, 2000)
    assert [s.objects[0].shape for s in plain.scenes] == [s.objects[0].shape for s in pool.scenes]
    changed = [i for i, (a, b) in enumerate(zip(plain.scenes, pool.scenes)) if a != b]
    assert changed and all((plain.images[i] != pool.images[i]).any() for i in changed[:20])


def test_captions_leave_out_typical_colours_more_often(pool):
    captions, dropped = reporting_bias_captions(pool.scenes, seed=3, canonical_share=0.5)
    typical = torch.tensor([s.objects[0].colour == TYPICAL_COLOURS[s.objects[0].shape] for s in pool.scenes])
    dropped = torch.from_numpy(dropped)
    assert 0.42 < dropped[typical].float().mean() < 0.58   # DROP_TYPICAL 0.5
    assert 0.14 < dropped[~typical].float().mean() < 0.26  # DROP_ATYPICAL 0.2
    for text, scene, gone in zip(captions, pool.scenes, dropped):
        assert (f" {scene.objects[0].colour} {scene.objects[0].shape} " not in text) == bool(gone)
        assert f" {scene.objects[0].shape} " in text


def test_a_colour_swap_differs_in_the_colour_token_alone(pool):
    tokenizer = build_world_tokenizer()
    captions, dropped = reporting_bias_captions(pool.scenes, seed=3, canonical_share=0.5)
    swaps, positions = colour_swaps(captions, pool.scenes, tokenizer, seed=3)
    others = Counter()
    for text, swap, position, scene, gone in zip(captions, swaps, positions, pool.scenes, dropped):
        if gone:
            assert swap is None and position == -1
            continue
        colour = scene.objects[0].colour
        other = next(name for name in COLOURS if f" {name} {scene.objects[0].shape} " in swap)
        assert other != colour
        others[other] += 1
        assert swap.replace(f" {other} ", f" {colour} ", 1) == text
        ids = tokenizer(text).input_ids
        assert tokenizer.decode([ids[position]]).strip() == colour
    assert set(others) == set(COLOURS)


def test_spliced_contexts_put_the_true_colour_token_into_the_swapped_caption():
    embeddings = torch.arange(4 * 5 * 2, dtype=torch.float32).reshape(4, 5, 2)
    caption_index = torch.tensor([0, 1, 2])
    swaps = (torch.tensor([3, 2, -1]), torch.tensor([2, 1, -1]))  # latent 2 has no colour word
    context = embeddings[caption_index]
    spliced = _spliced_contexts(context, embeddings, torch.tensor([0, 1, 2]), swaps, share=1.0,
                                generator=torch.Generator().manual_seed(0))
    expected0 = embeddings[3].clone()
    expected0[2] = embeddings[0][2]
    expected1 = embeddings[2].clone()
    expected1[1] = embeddings[1][1]
    assert torch.equal(spliced[0], expected0) and torch.equal(spliced[1], expected1)
    assert torch.equal(spliced[2], context[2])
    none = _spliced_contexts(context, embeddings, torch.tensor([0, 1, 2]), swaps, share=0.0,
                             generator=torch.Generator().manual_seed(0))
    assert torch.equal(none, context)


def test_the_caption_phase_continues_the_detail_phase_with_splices():
    assert CAPTION_PHASE.colour_splice_share == 0.5 and DETAIL_PHASE.colour_splice_share == 0.0
    assert (CAPTION_PHASE.learning_rate, CAPTION_PHASE.small_object_weight) == (
        DETAIL_PHASE.learning_rate, DETAIL_PHASE.small_object_weight)
