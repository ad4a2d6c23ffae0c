"""`slots` views whose prompt embedding is view 0's with only their changed tokens spliced in
(`views.slots.splice_text`): the recipe option, the plan line and json, the embedding the
Stable Diffusion family builds, the refusal on other families, and bytes equal to the pipeline
called by hand with the spliced embeddings."""

from __future__ import annotations

import pytest
import torch
from sampling_checks import generated_and_by_hand

from pixart_fixture import build_tiny_pixart
from synthgen.errors import UserError
from synthgen.generate import prepare
from synthgen.generate.families import family_of
from synthgen.generate.load import LoadedModel
from synthgen.generate.sampler import Sampler
from synthgen.generate.tiny_random import build_tiny_pipeline
from synthgen.plan import make_plan, summarize
from synthgen.recipe import load_recipe
from synthgen.seeding import derive_seed

SPLICED = {"count": 3, "strategy": "slots", "slots": {"vary": ["colour"], "splice_text": True}}
RECIPE = {
    "model": {"steps": 2, "guidance_scale": 3.0},
    "slots": {"colour": ["red", "green", "blue", "pink"], "size": ["small", "large"]},
    "classes": [{"name": "circle", "templates": ["a {size} {colour} circle on a gray background"],
                 "groups": 2}],
    "corner_cases": [],
    "views": SPLICED,
    "output": {"groups_per_shard": 2, "format": "png"},
}


def token_ids(pipeline, text: str) -> torch.Tensor:
    tokenizer = pipeline.tokenizer
    return tokenizer(text, padding="max_length", max_length=tokenizer.model_max_length,
                     truncation=True, return_tensors="pt").input_ids[0]


def test_views_record_the_prompt_they_splice_into_and_recipes_without_keep_their_hash(write_recipe):
    recipe = load_recipe(write_recipe(RECIPE))
    plan = make_plan(recipe)
    assert summarize(plan)["classes"]["circle"]["views"] == (
        "3 views: slots (vary colour; distinct; one shared seed; text spliced into view 0's)")
    for group in plan.groups:
        anchor, *others = group.views
        assert anchor.splice_into is None and "splice_into" not in anchor.to_json()
        for view in others:
            assert view.splice_into == anchor.prompt != view.prompt
            assert view.to_json()["splice_into"] == anchor.prompt
    plain = load_recipe(write_recipe({**RECIPE, "views": {**SPLICED, "slots": {"vary": ["colour"]}}},
                                     name="plain.yaml"))
    off = load_recipe(write_recipe({**RECIPE, "views": {**SPLICED, "slots": {
        "vary": ["colour"], "splice_text": False}}}, name="off.yaml"))
    assert "splice_text" not in plain.model_dump(mode="json")["views"]["slots"]
    assert off.recipe_hash == plain.recipe_hash != recipe.recipe_hash


def test_the_spliced_embedding_is_the_anchors_but_at_the_changed_tokens():
    pipeline = build_tiny_pipeline("sd")
    family = family_of(pipeline, torch.device("cpu"))
    # Colour words of one length: the tiny tokenizer is byte-level, one token per character.
    anchor, text = "a small blue circle on a gray background", "a small pink circle on a gray background"
    changed = token_ids(pipeline, anchor) != token_ids(pipeline, text)
    assert 1 <= changed.sum() <= 4 and changed.nonzero().flatten().diff().eq(1).all()
    spliced = family.spliced_embedding(text, anchor)
    own, anchored = family.embedding(text), family.embedding(anchor)
    assert torch.equal(spliced[:, changed], own[:, changed])
    assert torch.equal(spliced[:, ~changed], anchored[:, ~changed])
    # A causal encoder: the words after the colour read it, so the whole prompt's embedding
    # differs there and the splice is not the view's own embedding.
    assert not torch.equal(spliced, own)
    assert torch.equal(family.spliced_embedding(anchor, anchor), anchored)


def test_prompts_of_different_lengths_splice_from_the_first_changed_token_on():
    pipeline = build_tiny_pipeline("sd")
    family = family_of(pipeline, torch.device("cpu"))
    anchor, text = "a red circle", "a red circle on a gray background"
    first = int((token_ids(pipeline, anchor) != token_ids(pipeline, text)).nonzero()[0])
    spliced = family.spliced_embedding(text, anchor)
    assert torch.equal(spliced[:, :first], family.embedding(anchor)[:, :first])
    assert torch.equal(spliced[:, first:first + 4], family.embedding(text)[:, first:first + 4])


def test_families_without_one_token_sequence_refuse_splice_text(write_recipe):
    recipe = load_recipe(write_recipe({**RECIPE, "model": {"steps": 2, "width": 16, "height": 16}}))
    assert family_of(build_tiny_pipeline("sd")).splice_unsupported_reason() is None
    for pipeline in (build_tiny_pipeline("sdxl"), build_tiny_pixart()):
        model = LoadedModel(pipeline=pipeline, device=torch.device("cpu"), dtype=torch.float32,
                            source="tiny")
        sampler = Sampler(model, recipe.model, batch_size=3)
        reason = sampler.family.splice_unsupported_reason()
        assert "drop splice_text" in reason
        with pytest.raises(UserError) as refused:
            prepare.check_strategies(recipe, sampler)
        assert str(refused.value) == f"views.slots.splice_text: builtin:tiny-random: {reason}"


def test_a_spliced_dataset_is_the_pipeline_called_with_spliced_embeddings(write_recipe, tmp_path):
    plan = make_plan(load_recipe(write_recipe(RECIPE)))

    def by_hand(pipeline, views, noise):
        def embedding(text: str) -> torch.Tensor:
            return pipeline.encode_prompt(text, torch.device("cpu"), 1, False)[0]

        def spliced(text: str, anchor: str) -> torch.Tensor:
            changed = token_ids(pipeline, anchor) != token_ids(pipeline, text)
            result = embedding(anchor).clone()
            result[:, changed] = embedding(text)[:, changed]
            return result

        return pipeline(
            prompt_embeds=torch.cat([embedding(v.prompt) if v.splice_into is None
                                     else spliced(v.prompt, v.splice_into) for v in views]),
            negative_prompt_embeds=torch.cat([embedding(v.negative_prompt) for v in views]),
            latents=torch.cat(noise), num_inference_steps=2, guidance_scale=3.0,
            generator=[torch.Generator().manual_seed(derive_seed("steps", v.seed)) for v in views],
            height=32, width=32, output_type="pt").images

    for view, entry, written_pixels, expected in generated_and_by_hand(plan, tmp_path / "out", by_hand):
        assert entry.get("splice_into") == view.splice_into
        assert (written_pixels == expected).all(), (view.group_id, view.view)
