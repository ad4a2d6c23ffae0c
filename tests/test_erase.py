"""UCE edits on tiny random pipelines: erase reaches every text path, tokens pair as the
reference pairs them, the closed form is the least-squares solution, debias follows a prior."""

from __future__ import annotations

import copy
import json
from types import SimpleNamespace

import pytest
import torch
from click.testing import CliRunner

from synthgen.cli import main
from synthgen.engines.local import GenerateOptions, generate_dataset
from synthgen.errors import UserError
from synthgen.generate import prepare
from synthgen.generate.debias import DebiasTarget, debias, kl_divergence, on_simplex, value_prompt
from synthgen.generate.erase import (closed_form, context_prompts, cross_attention_projections,
                                     encode, erase_concept, pair, text_readers, token_pairs,
                                     unsupported_reason)
from synthgen.generate.load import load_pipeline
from synthgen.generate.tiny_random import build_tiny_pipeline, byte_level_clip_tokenizer
from synthgen.plan import make_plan
from synthgen.recipe import ModelSpec, load_recipe

SPEC = ModelSpec(id="builtin:tiny-random", steps=2, width=32, height=32)


def pooled_text_pipeline(max_length: int = 12):
    """The tiny SD pipeline with a UNet that also pools the prompt into its timestep embedding
    (addition_embed_type "text", as builtin:world-sd), and prompts of `max_length` tokens."""
    from diffusers import UNet2DConditionModel

    pipeline = build_tiny_pipeline("sd")
    torch.manual_seed(1)
    unet = UNet2DConditionModel(
        block_out_channels=(16, 32), layers_per_block=1, sample_size=32, in_channels=4,
        out_channels=4, down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"), cross_attention_dim=32,
        attention_head_dim=4, norm_num_groups=8, addition_embed_type="text",
        addition_embed_type_num_heads=2)
    pipeline.register_modules(unet=unet, tokenizer=byte_level_clip_tokenizer(max_length))
    return pipeline


def relative_gap(after: torch.Tensor, wanted: torch.Tensor, before: torch.Tensor) -> float:
    """How much of the distance from `before` to `wanted` is left in `after` (0: all gone)."""
    return float((after - wanted).norm() / (before - wanted).norm())


@torch.no_grad()
def test_erase_edits_every_text_path_so_the_concept_reads_as_the_target():
    pipeline = pooled_text_pipeline()
    original = copy.deepcopy(pipeline.unet)
    concept, target = encode(pipeline, "a dog"), encode(pipeline, "a cat")
    # "a" holds the tokens both prompts open with (the text encoder is causal), so the edit
    # must keep them; everything from "d"/"c" on, padding included, is mapped.
    erase_concept(pipeline, "a dog", "a cat", preserve=["a"])
    pooled = lambda unet, encoded: unet.add_embedding(encoded.tokens.float()[None])  # noqa: E731
    assert relative_gap(pooled(pipeline.unet, concept), pooled(original, target),
                        pooled(original, concept)) < 0.05, "the pooled text path reads the target"


@torch.no_grad()
def test_with_a_vanishing_regularizer_the_edit_is_exact():
    pipeline = pooled_text_pipeline()
    original = copy.deepcopy(pipeline.unet)
    record = erase_concept(pipeline, "a dog", "a cat", preserve=["a"], regularizer=1e-9)
    assert record["paths"] == {"cross-attention": 8, "pooled text (keys, values)": 2,
                               "pooled text (query)": 1}
    concept, target = encode(pipeline, "a dog"), encode(pipeline, "a cat")
    wanted = original.add_embedding(target.tokens.float()[None])
    got = pipeline.unet.add_embedding(concept.tokens.float()[None])
    assert torch.allclose(got, wanted, atol=1e-4)
    kept = encode(pipeline, "a")
    assert torch.allclose(pipeline.unet.add_embedding(kept.tokens.float()[None]),
                          original.add_embedding(kept.tokens.float()[None]), atol=1e-4)
    for (name, edited), (_, linear) in zip(cross_attention_projections(pipeline.unet),
                                           cross_attention_projections(original)):
        assert torch.allclose(edited(concept.tokens.float()), linear(target.tokens.float()),
                              atol=1e-4), name
        assert torch.allclose(edited(kept.tokens.float()), linear(kept.tokens.float()), atol=1e-4)


@torch.no_grad()
def test_sdxl_pooled_embedding_columns_are_edited_and_the_size_columns_kept(tiny_sdxl_dir):
    pipeline = load_pipeline(SPEC.model_copy(update={"id": str(tiny_sdxl_dir)}),
                             torch.device("cpu"), torch.float32).pipeline
    before = pipeline.unet.add_embedding.linear_1.weight.detach().clone()
    record = erase_concept(pipeline, "a dog", "a cat", regularizer=1e-9)
    assert record["paths"]["pooled text embedding"] == 1
    after = pipeline.unet.add_embedding.linear_1.weight.detach()
    pooled_size = pipeline.text_encoder_2.config.projection_dim
    concept, target = encode(pipeline, "a dog").pooled, encode(pipeline, "a cat").pooled
    assert torch.allclose(after[:, :pooled_size].double() @ concept,
                          before[:, :pooled_size].double() @ target, atol=1e-4)
    assert torch.equal(after[:, pooled_size:], before[:, pooled_size:]), "time ids untouched"


def test_tokens_pair_from_the_last_word_aligned_at_the_end_with_padding():
    # concept: BOS x y EOS; target: BOS x p q r EOS (different lengths), padded to 10.
    pairs = token_pairs([0, 5, 6, 1], [0, 5, 7, 8, 9, 1], 10)
    assert pairs == [(2, 4), (3, 5), (4, 6), (5, 7), (6, 8), (7, 9)]
    # The reference's concept alone against an empty target: the word onto the start token.
    assert token_pairs([0, 5, 1], [0, 1], 6) == [(1, 0), (2, 1), (3, 2), (4, 3), (5, 4)]
    # A concept inside a context: the inserted word and every token after it are mapped.
    assert token_pairs([0, 4, 9, 5, 6, 1], [0, 4, 5, 6, 1], 8) == [
        (2, 1), (3, 2), (4, 3), (5, 4), (6, 5), (7, 6)]


def test_a_short_concept_pairs_its_end_token_with_a_long_targets_end_token():
    pipeline = build_tiny_pipeline("sd")
    mapping = pair(pipeline, "a dog", "a man in a suit")
    (goal, target_positions, _), = mapping.goals
    eos = pipeline.tokenizer.eos_token_id
    pairs = dict(zip(mapping.positions, target_positions))
    concept_end, target_end = len(mapping.source.ids) - 1, len(goal.ids) - 1
    assert mapping.source.ids[concept_end] == goal.ids[target_end] == eos
    assert pairs[concept_end] == target_end
    assert pairs[concept_end - 1] == target_end - 1, "last word with last word"
    assert max(target_positions) == len(goal.tokens) - 1, "padding up to the full length"


def test_closed_form_is_the_least_squares_solution():
    generator = torch.Generator().manual_seed(0)
    weight, mapped, goals, kept = (torch.randn(shape, generator=generator, dtype=torch.float64)
                                   for shape in ((6, 5), (3, 5), (3, 5), (4, 5)))
    lam, ps = 0.3, 2.0
    solved = weight @ closed_form(mapped, goals, kept, preserve_weight=ps, regularizer=lam)
    # min |W' M^T - W G^T|^2 + ps |W' K^T - W K^T|^2 + lam |W' - W|^2 as one stacked lstsq.
    design = torch.cat([mapped, ps ** 0.5 * kept, lam ** 0.5 * torch.eye(5, dtype=torch.float64)])
    goal = torch.cat([goals @ weight.T, ps ** 0.5 * kept @ weight.T, lam ** 0.5 * weight.T])
    assert torch.allclose(solved, torch.linalg.lstsq(design, goal).solution.T, atol=1e-10)


def test_pipelines_with_text_paths_erase_cannot_reach_are_refused(write_recipe):
    unet = SimpleNamespace(config=SimpleNamespace(addition_embed_type="image",
                                                  encoder_hid_dim_type=None),
                           encoder_hid_proj=None, modules=lambda: [])
    reason = unsupported_reason(SimpleNamespace(unet=unet))
    assert "'image'" in reason and "erase does not edit" in reason
    with pytest.raises(ValueError, match="'image'"):
        text_readers(SimpleNamespace(unet=unet))
    recipe = load_recipe(write_recipe({"suppress": [{"concept": "a logo", "method": "erase"}]}))
    for pipeline in (SimpleNamespace(unet=unet), SimpleNamespace(transformer=object())):
        with pytest.raises(UserError, match=r"suppress\[0\].method erase: .*(image|transformer)"
                                            r".*use method: reject or negative"):
            prepare.apply_erasures(recipe, SimpleNamespace(pipeline=pipeline, edits=()))


def test_context_prompts_fill_slots_uniformly_and_deterministically():
    slots = {"colour": {"red": 9.0, "blue": 1.0}}
    prompts = context_prompts(["a {concept} {colour} {class}"], "striped", 40, seed=3,
                              slots=slots, class_names=["star", "ring"])
    assert prompts == context_prompts(["a {concept} {colour} {class}"], "striped", 40, seed=3,
                                      slots=slots, class_names=["star", "ring"])
    assert set(prompts) == {f"a striped {c} {s}" for c in ("red", "blue") for s in ("star", "ring")}


def test_erase_contexts_must_name_the_concept_and_known_slots(write_recipe):
    with pytest.raises(UserError, match=r"does not use \{concept\}"):
        load_recipe(write_recipe({"suppress": [{"concept": "logo", "method": "erase",
                                                "contexts": ["a {colour} circle"]}]}))
    with pytest.raises(UserError, match=r"contexts\[0\].*\{shade\}, which is not defined"):
        load_recipe(write_recipe({"suppress": [{"concept": "logo", "method": "erase",
                                                "contexts": ["a {concept} {shade} {class}"]}]}))


def test_erase_is_recorded_and_edit_command_writes_a_loadable_model(write_recipe, tmp_path):
    recipe = write_recipe({"suppress": [{"concept": "logo", "method": "erase", "preserve": ["circle"],
                                         "contexts": ["a {colour} {class} with a {concept}"],
                                         "context_prompts": 4, "preserve_weight": 2.0}],
                           "classes": [{"name": "circle", "templates": ["a {colour} circle"],
                                        "groups": 2}], "corner_cases": []})
    generate_dataset(make_plan(load_recipe(recipe)), tmp_path / "data",
                     GenerateOptions(progress=False, device="cpu"))
    manifest = json.loads((tmp_path / "data" / "manifest.json").read_text())
    (edit,) = manifest["model"]["edits"]
    assert edit["concept"] == "logo" and edit["preserve"] == ["circle"]
    assert edit["contexts"] == 3 and edit["preserve_weight"] == 2.0 and edit["regularizer"] == 0.5
    result = CliRunner().invoke(main, ["edit", str(recipe), "--out", str(tmp_path / "edited"),
                                       "--device", "cpu"])
    assert result.exit_code == 0, result.output
    assert edit["weights_sha256"][:12] in result.output
    reloaded = load_pipeline(SPEC.model_copy(update={"id": str(tmp_path / "edited")}),
                             torch.device("cpu"), torch.float32)
    original = load_pipeline(SPEC, torch.device("cpu"), torch.float32)
    edited_layers = dict(cross_attention_projections(reloaded.pipeline.unet))
    for name, linear in cross_attention_projections(original.pipeline.unet):
        assert not torch.equal(linear.weight, edited_layers[name].weight)
    # A model made by synthgen edit brings its edit record into what datasets record.
    (carried,) = reloaded.describe()["edits"]
    assert carried["weights_sha256"] == edit["weights_sha256"]
    assert carried["applied_by"] == "synthgen edit" and carried["base_model"] == SPEC.id
    again = CliRunner().invoke(main, ["edit", str(recipe), "--out", str(tmp_path / "edited")])
    assert again.exit_code == 2 and "not empty" in again.output


def test_value_prompts_name_the_value_before_the_class_word():
    assert value_prompt("a large star on a gray background", "star", "red", "{prompt}, {value}") \
        == "a large red star on a gray background"
    assert value_prompt("a starry sky", "star", "red", "{prompt}, {value}") == "a starry sky, red"
    assert value_prompt("a dog", None, "red", "{value} {prompt}") == "red a dog"


@torch.no_grad()
def test_debias_moves_a_biased_toy_prior_to_the_wanted_proportions():
    # The toy "model" draws value v with probability softmax over how close the edited
    # cross-attention values of the class prompt are to the original ones of "<v> circle":
    # what a diffusion model does with a text mix, made measurable without sampling.
    pipeline = build_tiny_pipeline("sd")
    values = ["red", "blue", "green"]
    layer = cross_attention_projections(pipeline.unet)[1][1]  # a value projection
    original = layer.weight.detach().clone()
    target = DebiasTarget(name="circle", prompts=("a circle",),
                          value_prompts={v: (f"a {v} circle",) for v in values})

    def mean_read(weight, text):
        return (encode(pipeline, text).tokens.float() @ weight.T).mean(dim=0)

    def measure(debias_target):
        read = mean_read(layer.weight, debias_target.prompts[0])
        closeness = torch.stack([-(read - mean_read(original, f"a {v} circle")).norm() for v in values])
        return dict(zip(values, (closeness * 4).softmax(0).tolist()))

    wanted = {"red": 1.0, "blue": 1.0, "green": 2.0}
    shares = {v: w / 4 for v, w in wanted.items()}
    before = measure(target)
    record = debias(pipeline, [target], wanted, measure, iterations=8, tolerance=0.02)
    after = measure(target)
    assert record["before"]["circle"] == pytest.approx(before)
    assert kl_divergence(after, shares) < kl_divergence(before, shares) / 2
    kept = record["iterations"][record["kept_iteration"] - 1]
    assert kept["max_error"] == min(it["max_error"] for it in record["iterations"])
    assert max(abs(after[v] - shares[v]) for v in values) == pytest.approx(kept["max_error"], abs=1e-3)


def test_on_simplex_is_the_nearest_nonnegative_mix():
    assert on_simplex({"a": 0.25, "b": -1.3, "c": 2.05}) == pytest.approx({"a": 0.0, "b": 0.0, "c": 1.0})
    assert on_simplex({"a": 0.5, "b": 0.3, "c": 0.2}) == pytest.approx({"a": 0.5, "b": 0.3, "c": 0.2})
    projected = on_simplex({"a": 0.6, "b": 0.6, "c": -0.2})
    assert projected == pytest.approx({"a": 0.5, "b": 0.5, "c": 0.0})


@torch.no_grad()
def test_nonnegative_debias_keeps_every_steered_weight_on_the_simplex():
    pipeline = build_tiny_pipeline("sd")
    target = DebiasTarget(name="circle", prompts=("a circle",),
                          value_prompts={v: (f"a {v} circle",) for v in ("red", "blue")})
    # A prior the edit cannot move: steering alone would push blue's weight below zero.
    stubborn = lambda debias_target: {"red": 0.0, "blue": 1.0}  # noqa: E731
    free = debias(pipeline, [target], {"red": 1, "blue": 1}, stubborn, iterations=3, tolerance=0.01)
    assert min(it["weights"]["circle"]["blue"] for it in free["iterations"]) < 0
    kept = debias(pipeline, [target], {"red": 1, "blue": 1}, stubborn, iterations=3, tolerance=0.01,
                  nonnegative=True)
    for iteration in kept["iterations"]:
        shares = iteration["weights"]["circle"]
        assert min(shares.values()) >= 0 and sum(shares.values()) == pytest.approx(1.0)
    assert kept["iterations"][-1]["weights"]["circle"] == pytest.approx({"red": 1.0, "blue": 0.0})


DEBIAS = {"balance": [{"attribute": "colour", "values": {"red": 1, "blue": 1}, "method": "debias",
                       "applies_to": ["circle"], "trials": 4, "iterations": 2, "prompts": 3}],
          "classes": [{"name": "circle", "templates": ["a {size} circle"], "groups": 2,
                       "slots": {"size": ["small", "large"]}}],
          "corner_cases": []}


def test_debias_entries_put_nothing_in_prompts_and_fill_no_slot(write_recipe):
    plan = make_plan(load_recipe(write_recipe(DEBIAS)))
    for group in plan.groups:
        assert group.balance == {}
        assert not any(word in view.prompt for view in group.views for word in ("red", "blue"))
    with pytest.raises(UserError, match="method debias keeps the value out of the prompts"):
        load_recipe(write_recipe({**DEBIAS, "balance": [{**DEBIAS["balance"][0], "slot": "hue"}]}))


def test_debias_targets_name_each_value_before_the_class_word(write_recipe):
    from synthgen.generate.debias import debias_targets

    (target,) = debias_targets(load_recipe(write_recipe(DEBIAS)), 0)
    assert target.name == "circle" and set(target.prompts) == {"a small circle", "a large circle"}
    assert [p.replace("red ", "") for p in target.value_prompts["red"]] == list(target.prompts)
    assert all(" blue circle" in p for p in target.value_prompts["blue"])


def test_debias_is_measured_on_drawn_images_and_recorded(write_recipe, tmp_path, monkeypatch):
    drawn = []

    class BrightnessReader:
        """Stands in for the CLIP reader: draws trials through the recipe's pipeline and calls
        the brighter half of them 'red'."""

        def __init__(self, detector, device, trials, seed, draw):
            self.trials, self.draw = trials, draw

        def __call__(self, target):
            images = self.draw(list(target.prompts)[:1] * self.trials, list(range(self.trials)))
            drawn.append(images)
            bright = images.reshape(len(images), -1).mean(axis=1)
            red = float((bright > bright.mean()).mean())
            return {"red": red, "blue": 1 - red}

    from synthgen.generate import debias as debias_module  # the debias method reads it there

    monkeypatch.setattr(debias_module, "ClipValueReader", BrightnessReader)
    generate_dataset(make_plan(load_recipe(write_recipe(DEBIAS))), tmp_path / "data",
                     GenerateOptions(progress=False, device="cpu"))
    manifest = json.loads((tmp_path / "data" / "manifest.json").read_text())
    (edit,) = manifest["model"]["edits"]
    assert edit["method"] == "debias" and edit["attribute"] == "colour"
    assert edit["targets"] == ["circle"] and edit["wanted"] == {"red": 0.5, "blue": 0.5}
    assert set(edit["before"]["circle"]) == {"red", "blue"} and 1 <= len(edit["iterations"]) <= 2
    assert drawn[0].shape == (4, 32, 32, 3) and drawn[0].dtype == "uint8"
    assert len(drawn) == 1 + len(edit["iterations"]), "the prior, then once per edit"


def test_debias_preserves_the_prompts_of_the_classes_it_leaves_alone(write_recipe):
    from synthgen.generate.debias import debias_targets, untouched_prompts

    recipe = load_recipe(write_recipe({**DEBIAS, "classes": [
        *DEBIAS["classes"], {"name": "square", "templates": ["a {colour} square"], "groups": 1}]}))
    assert [target.name for target in debias_targets(recipe, 0)] == ["circle"]
    kept = untouched_prompts(recipe, 0)
    assert kept and all(p.endswith(" square") for p in kept) and len(set(kept)) == len(kept)
