"""Closed-form edit faults found in review (2026-12-03), each test failing before its fix: token
pairing of prompts cut at the tokenizer's length, the concept itself in `preserve`."""

from __future__ import annotations

import pytest
import torch

from synthgen.errors import UserError
from synthgen.generate.erase import erase_concept, pair
from synthgen.suppress import EraseSuppression
from test_erase import pooled_text_pipeline


@torch.no_grad()
def test_pairing_stays_aligned_when_a_context_hits_the_tokenizer_max_length():
    # Both prompts are truncated to 12 tokens (byte-level tokenizer: one token per character),
    # so both end in EOS at position 11; pairing from the end then shifts every token after
    # the concept by the concept's length: the context's "a" is mapped onto the plain's "d".
    # Fixed by refusing: a cut prompt has no end to line up from.
    pipeline = pooled_text_pipeline(max_length=12)
    concept_text, plain_text = "xyz dog abcdefghij", "xyz abcdefghij"
    full = pipeline.tokenizer(concept_text).input_ids
    assert len(full) > pipeline.tokenizer.model_max_length, "the context is truncated"
    with pytest.raises(UserError, match="longer than the text encoder reads"):
        pair(pipeline, concept_text, plain_text)
    mapping = pair(pipeline, "xyz dog ab", "xyz ab")  # within the length: paired word by word
    (goal, goal_positions, _), = mapping.goals
    concept_end = len(pipeline.tokenizer.tokenize("xyz dog"))  # position of "dog"s last token
    source, target = mapping.source.ids, goal.ids
    special = {pipeline.tokenizer.bos_token_id, pipeline.tokenizer.eos_token_id}
    words_after = [(c, t) for c, t in zip(mapping.positions, goal_positions)
                   if concept_end < c < len(source) and t < len(target)
                   and source[c] not in special and target[t] not in special]
    assert words_after, "some words after the concept are paired"
    mismatched = [(c, t, source[c], target[t]) for c, t in words_after if source[c] != target[t]]
    assert not mismatched, f"words after the concept paired with other words: {mismatched}"


@torch.no_grad()
def test_a_preserve_list_naming_the_concept_itself_is_refused():
    # Preserving the concept pulls against mapping it: on the tiny pipeline the cross-attention
    # gap left grows from 0.28 to 0.51, silently. It should be refused (recipe or edit).
    pipeline = pooled_text_pipeline()
    with pytest.raises((ValueError, UserError)):  # pydantic's ValidationError is a ValueError
        entry = EraseSuppression(concept="dog", target="cat", preserve=["dog"])
        erase_concept(pipeline, entry.concept, entry.target, entry.preserve)


@torch.no_grad()
def test_debias_pooled_summary_reads_as_the_weighted_mix():
    """Every mapping used to carry the prompt's pooled-text class token, and debias splits a
    prompt into its words' mapping (the weighted mix) and one padding mapping per value (weight
    1 towards that value): the class token was fitted to the average of those goals,
    (0.9 red + 0.1 blue + red + blue) / 3, not to the mix the steering asked for."""
    from synthgen.generate.debias import _debias_mappings
    from synthgen.generate.erase import edit_text_paths, encode_all, text_readers

    pipeline = pooled_text_pipeline()
    prompt, red, blue = encode_all(pipeline, ["a dog", "a red dog",
                                              "a blue dog"])
    weights = {"red": 0.9, "blue": 0.1}
    mappings = _debias_mappings(prompt, {"red": red, "blue": blue}, weights)
    assert len(mappings) > 1, "the padding takes turns: more than one mapping"
    query = next(r for r in text_readers(pipeline) if r.path == "pooled text (query)")
    (_, q_proj), = query.linears
    rows = {name: query.rows(encoded, None)[0] for name, encoded in
            (("prompt", prompt), ("red", red), ("blue", blue))}
    wanted = q_proj.weight.double() @ (rows["prompt"] + 0.9 * (rows["red"] - rows["prompt"])
                                       + 0.1 * (rows["blue"] - rows["prompt"]))
    edit_text_paths(pipeline, mappings, [], preserve_weight=0.0, regularizer=1e-6)
    got = q_proj.weight.double() @ rows["prompt"]
    assert torch.allclose(got, wanted, atol=1e-3 * float(wanted.abs().max())), (got, wanted)
