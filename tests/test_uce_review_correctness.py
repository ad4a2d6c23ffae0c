"""Correctness review of the closed-form edits (generate/erase.py, generate/debias.py).

Each test fails on the code as reviewed. What was checked and found right is in the review's
report: the readers' rows equal what the UNet's linear maps actually read (forward hooks, SD
cross-attention, world-sd-style attention pooling k/v/q, SDXL add_embedding's pooled columns);
erase_concept's W' equals an independent least-squares solve of the stated objective; token
pairing invariants; on_simplex against a brute-force projection; kl_divergence by hand.
"""

from __future__ import annotations

import torch

from synthgen.errors import UserError
from synthgen.generate import debias as debias_module
from synthgen.generate.debias import DebiasTarget, debias, value_prompt
from synthgen.generate.erase import edit_text_paths, encode_all, text_weights
from synthgen.generate.tiny_random import build_tiny_pipeline
from test_erase import pooled_text_pipeline


@torch.no_grad()
def test_debias_does_not_pair_words_of_a_value_prompt_cut_at_the_tokenizer_length(monkeypatch):
    """debias pairs a prompt's tokens with its value-named versions by `token_pairs`, which
    lines the two up from their end tokens. A version longer than the text encoder reads is
    cut, so its end token no longer marks its end and every word after the value is mapped
    onto the token before its own ("star" onto "red"'s last letter, "cd" onto "star"...).
    erase refuses exactly this (`pair_encoded`, fixed earlier: tests/test_edit_faults.py), but
    `_debias_mappings` calls `token_pairs` directly and never looks at `Encoded.truncated`, so
    debias edits the model towards misaligned tokens without a word. On world-sd the text
    encoder reads only 32 tokens (synthgen/world/tokenizer.py), so a template near that length
    plus a value word hits this. Where: synthgen/generate/debias.py, `_debias_mappings` /
    `debias`. Right: refuse (UserError naming the prompt, as erase does) or pair word with word.
    """
    pipeline = pooled_text_pipeline(max_length=12)  # byte-level tokenizer: a token per letter
    prompt = "ab star cd"                           # 10 tokens: fits
    versions = {v: value_prompt(prompt, "star", v, "{prompt}, {value}") for v in ("red", "blue")}
    assert versions["red"] == "ab red star cd"      # 14 tokens: cut to 12
    encoded = encode_all(pipeline, [prompt, *versions.values()])
    assert not encoded[0].truncated and encoded[1].truncated, "the setting: only the version is cut"
    target = DebiasTarget("star", (prompt,), {v: (text,) for v, text in versions.items()})
    captured = []
    real_edit = debias_module.edit_text_paths

    def capturing_edit(pipeline, mappings, *args, **kwargs):
        captured.extend(mappings)
        return real_edit(pipeline, mappings, *args, **kwargs)

    monkeypatch.setattr(debias_module, "edit_text_paths", capturing_edit)
    try:
        debias(pipeline, [target], {"red": 1, "blue": 1}, lambda t: {"red": 0.5, "blue": 0.5},
               iterations=1, tolerance=0.1)
    except UserError:
        return  # refusing a cut prompt is right
    words = captured[0]  # the words' mapping: the prompt's tokens from "star" to its end token
    prompt_ids = words.source.ids
    special = {pipeline.tokenizer.bos_token_id, pipeline.tokenizer.eos_token_id}
    mismatched = []
    for goal, positions, _ in words.goals:
        if goal.text != versions["red"]:
            continue
        for source_position, goal_position in zip(words.positions, positions):
            if goal_position >= len(goal.ids) or {prompt_ids[source_position], goal.ids[goal_position]} & special:
                continue  # padding and start/end tokens: no word to compare
            if prompt_ids[source_position] != goal.ids[goal_position]:
                mismatched.append((pipeline.tokenizer.convert_ids_to_tokens(prompt_ids[source_position]),
                                   pipeline.tokenizer.convert_ids_to_tokens(goal.ids[goal_position])))
    # Every prompt word token from "star" on is the same token in "ab red star cd" (only "red "
    # was inserted before it; the cut removed its "d"), so a right pairing maps each onto its
    # own copy.
    assert not mismatched, f"prompt tokens paired with other tokens of the cut version: {mismatched}"


@torch.no_grad()
def test_an_edit_with_nothing_to_map_leaves_the_weights_unchanged():
    """With no mapped text the stated objective, sum_p ps |W' c_p - W c_p|^2 + lam |W' - W|^2,
    is minimised by W' = W (the closed form: (lam W + ps W K^T K)(lam I + ps K^T K)^-1 = W).
    `edit_text_paths` instead dies in `torch.cat` ("expected a non-empty list of Tensors")
    building the mapped rows. Minor: erase always maps its concept and the recipe refuses a
    debias entry that applies to nothing (applies_to: []), so no recipe reaches it; a direct
    caller of this public function does. Where: synthgen/generate/erase.py, `edit_text_paths`.
    Right: W unchanged (to rounding: the weights written back equal the originals) and a record.
    """
    pipeline = build_tiny_pipeline("sd")
    before = text_weights(pipeline)
    record = edit_text_paths(pipeline, [], encode_all(pipeline, ["a", "a sun"]))
    after = text_weights(pipeline)
    for name, weight in before.items():
        assert torch.allclose(after[name], weight, atol=1e-6), name
    assert record["layers"] == len(before)
