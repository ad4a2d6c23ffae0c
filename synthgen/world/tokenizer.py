"""The world's CLIP tokenizer: one token per vocabulary word, bytes for anything else.

Built offline (nothing downloaded): BPE merges are learned from the world's own
word list, so every caption word ("star", "checkerboard", "striped") is a single
``word</w>`` token, and any other text falls back to byte-level characters.
"""

from __future__ import annotations

import string

from synthgen.world import scene as world_scene

MODEL_MAX_LENGTH = 32
"""Longest world caption is ~24 tokens with start/end; 32 keeps the UNet's cross-attention short."""


def world_words() -> list[str]:
    """Every word any world caption or evaluation prompt can contain, sorted."""
    words = {"a", "an", "inside", "next", "to", "with", "logo", "mark", "striped", "of"}
    for template in world_scene._SCENE_TEMPLATES:
        words |= set(template.replace("{subject}", " ").replace("{background}", " ").split())
    words |= set(world_scene.SHAPES) | set(world_scene.COLOURS) | set(world_scene.SIZES)
    words |= set(world_scene.BACKGROUNDS)
    return sorted(words)


def build_world_tokenizer():
    """A ``CLIPTokenizer`` whose vocabulary holds every world word as one token.

    Ids 0 and 1 are ``<|startoftext|>`` and ``<|endoftext|>`` (also padding);
    ``model_max_length`` is :data:`MODEL_MAX_LENGTH`. Deterministic: the same
    library versions give the same vocabulary.
    """
    from synthgen.generate.tiny_random import byte_level_clip_tokenizer

    base = byte_level_clip_tokenizer(model_max_length=MODEL_MAX_LENGTH)
    # Repeating each word makes it frequent enough to be merged all the way to
    # one token; single printable characters give every "c</w>" ending a token.
    corpus = [" ".join(world_words())] * 8
    corpus.append(" ".join(character for character in string.printable if not character.isspace()))
    tokenizer = base.train_new_from_iterator(corpus, vocab_size=len(base) + 4096)
    tokenizer.model_max_length = MODEL_MAX_LENGTH
    unsplit = [w for w in world_words() if len(tokenizer(w, add_special_tokens=False).input_ids) != 1]
    if unsplit:
        raise RuntimeError(f"world words that are not single tokens: {unsplit}")
    return tokenizer
