"""Faults in attribute editing and balance (suppress: negative/reject/erase, balance:
prompt/debias, `synthgen edit`, their records and audit) found in review; each test fails on
the code it was written against, for the reason its docstring gives.

Plan-only where possible (`parse_recipe` + `make_plan`, the edit helpers called directly);
the few that run a model use the tiny random pipeline at 32 px, 2 steps, and stand-in or tiny
random CLIP detectors.
"""

from __future__ import annotations

import json
import shutil
import sys
from dataclasses import replace
from pathlib import Path

import pytest
import torch
import yaml

sys.path.insert(0, str(Path(__file__).parent / "engines"))
from engine_helpers import QUIET  # noqa: E402

from synthgen.errors import UserError  # noqa: E402
from synthgen.plan import make_plan, recipe_warnings  # noqa: E402
from synthgen.recipe import parse_recipe  # noqa: E402
from cli_checks import assert_no_traceback, invoke  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_thread")

MODEL = {"id": "builtin:tiny-random", "steps": 2, "width": 32, "height": 32}


def _fields(**fields) -> dict:
    base = {"name": "review", "seed": 1, "model": dict(MODEL), "templates": ["a {class}"],
            "classes": [{"name": "circle", "groups": 4}, {"name": "square", "groups": 4}]}
    return {**base, **fields}


def _recipe(**fields):
    return parse_recipe(yaml.safe_dump(_fields(**fields), sort_keys=False))


def _write(path: Path, **fields) -> Path:
    path.write_text(yaml.safe_dump(_fields(**fields), sort_keys=False))
    return path




class _FixedReader:
    """Stands in for debias's CLIP reader (no model): every target reads as the wanted mix."""

    def __init__(self, detector, device, trials, seed, draw):
        pass

    def __call__(self, target):
        return {value: 1 / len(target.value_prompts) for value in target.value_prompts}


# --- balance: applies_to -------------------------------------------------------------------

def test_a_balance_entry_applying_to_no_class_is_not_audited_as_applying_to_all():
    """`applies_to: []` validates. The plan reads it literally (attributes.balance_applies:
    `name in []` is False), so no group is balanced and no prompt names a value; but the audit
    (audit/spec.py spec_from_recipe: `tuple(applies_to) if applies_to else None`) turns the
    empty list into None, "every class and corner case", and measures every class against
    50/50 targets the plan never set, flagging a dataset that is exactly what it asked for.
    An empty applies_to should be refused at validate (balance[0].applies_to, name a class or
    leave it out), or read alike by plan and audit (no targets)."""
    from synthgen.audit.spec import spec_from_recipe

    fields = dict(balance=[{"attribute": "colour", "values": {"red": 1, "blue": 1},
                            "applies_to": []}])
    try:
        recipe = _recipe(**fields)
    except UserError as error:
        assert "applies_to" in str(error), error
        return
    assert all(group.balance == {} for group in make_plan(recipe).groups), "plan: balances none"
    (attribute,) = spec_from_recipe(recipe.model_dump(mode="json")).attributes
    assert attribute.target_for("circle", None) is None, (
        f"the audit holds circle to {attribute.target_for('circle', None)}, which the plan "
        "never balanced")


def test_debias_applying_to_no_class_is_a_user_error_not_a_traceback(tmp_path, monkeypatch):
    """A debias entry with `applies_to: []` validates and plans (it names no value in any
    prompt), then `synthgen edit` (and every generate worker) reaches generate/debias.py's
    debias() with no targets: edit_text_paths calls torch.cat([]) and the run dies with
    'ValueError: torch.cat(): expected a non-empty list of Tensors', a traceback and exit 1.
    It should be one user error naming balance[0].applies_to (exit 2), ideally at validate."""
    from synthgen.generate import debias as debias_module

    monkeypatch.setattr(debias_module, "ClipValueReader", _FixedReader)
    recipe = _write(tmp_path / "debias.yaml", balance=[
        {"attribute": "colour", "values": {"red": 1, "blue": 1}, "method": "debias",
         "applies_to": [], "trials": 2, "iterations": 1, "prompts": 1}])
    result = invoke("edit", recipe, "--out", tmp_path / "edited", "--device", "cpu")
    assert_no_traceback(result, allowed=(2,))
    assert "applies_to" in result.output, result.output


def test_a_balance_entry_with_one_value_is_told_how_many_it_needs(tmp_path):
    """`values: {red: 1}` is refused (Balance.values has min_length=2), but recipe.py's fix
    for pydantic's 'too_short' is the fixed text 'give at least one entry' (_FIXES), so the
    message reads 'Dictionary should have at least 2 items after validation, not 1; give at
    least one entry': the fix asks for what the user already wrote. The fix should say how
    many are needed (at least 2 values), from the problem's own min_length."""
    recipe = _write(tmp_path / "one.yaml",
                    balance=[{"attribute": "colour", "values": {"red": 1}}])
    result = invoke("validate", recipe)
    assert_no_traceback(result, allowed=(2,))
    assert "balance[0].values" in result.output, result.output
    assert "at least one entry" not in result.output, result.output


# --- debias: which prompts it edits --------------------------------------------------------

def test_debias_edits_the_prompts_the_dataset_uses_with_injected_balance_values():
    """debias_targets' prompts are documented as 'prompts as the dataset will use them'
    (DebiasTarget) and 'the values of prompt-balanced attributes too' (_recipe_prompts). But
    _recipe_prompts passes prompt-balanced values only as slots to fill_templates: a balanced
    attribute that the templates do not name is `inject`ed by the plan ('a circle, large'),
    and debias never injects it, so it edits and measures 'a circle', a prompt no group
    uses. Every debias prompt should be one the plan gives a group (injected values too)."""
    from synthgen.generate.debias import debias_targets

    recipe = _recipe(balance=[
        {"attribute": "size", "values": {"small": 1, "large": 1}},
        {"attribute": "colour", "values": {"red": 1, "blue": 1}, "method": "debias",
         "prompts": 6}])
    planned = {view.prompt for group in make_plan(recipe).groups for view in group.views}
    edited = {prompt for target in debias_targets(recipe, 1) for prompt in target.prompts}
    assert edited <= planned, f"debias edits {sorted(edited - planned)}; the dataset uses {sorted(planned)}"


def test_literal_braces_in_contexts_and_templates_fill_as_braces():
    """The plan renders '{{' and '}}' in a template as literal braces, and validate accepts
    them in erase `contexts` and class templates. generate/erase.py fill_templates formats a
    text again while it still names slots ('slot values may name slots'), so the braces the
    first pass produced are read as a slot the second time: a context 'a {concept} {class}
    {{brand}}' raises KeyError('brand') when the erase edit is made (EraseSuppression.
    filled_contexts), and a debias class template 'a {class} {{tm}}' raises KeyError('tm')
    in debias_targets: tracebacks at generate / edit time for a recipe validate passed. Both
    should fill as the plan does, braces kept literal."""
    from synthgen.generate.debias import debias_targets

    erase = _recipe(suppress=[{"concept": "logo", "method": "erase", "context_prompts": 3,
                               "contexts": ["a {concept} {class} {{brand}}"]}])
    filled = erase.suppress[0].filled_contexts(erase, 0)
    assert filled and all(prompt.endswith("{brand}") for prompt in filled), filled

    debiased = _recipe(templates=["a {class} {{tm}}"], balance=[
        {"attribute": "colour", "values": {"red": 1, "blue": 1}, "method": "debias",
         "prompts": 2}])
    planned = {view.prompt for group in make_plan(debiased).groups for view in group.views}
    assert planned == {"a circle {tm}", "a square {tm}"}
    targets = debias_targets(debiased, 0)
    assert {p for target in targets for p in target.prompts} == planned


# --- erase: the context prompts' target versions -------------------------------------------

def test_an_erase_target_is_literal_text_in_the_context_prompts():
    """generate/erase.py replace_concept builds each context's goal prompt with
    re.sub(pattern, target, prompt): the target is read as a regex replacement template, so a
    target with a backslash (a path, 'AC\\DC') raises re.error 'bad escape' when the edit is
    made (a traceback at generate / edit time for a recipe validate passed), and '\\g<0>'
    pastes the concept back in. The target should be put in as written."""
    from synthgen.generate.erase import replace_concept

    assert replace_concept("a dog on grass", "dog", r"AC\DC") == r"a AC\DC on grass"
    assert replace_concept("a dog on grass", "dog", r"cat\g<0>") == r"a cat\g<0> on grass"


def test_an_erase_concept_ending_in_punctuation_is_replaced_in_its_contexts():
    """replace_concept matches the concept between \\b word boundaries, which do not exist
    after a non-word character: for concept 'C++' the context 'a C++ book' is left as it is,
    so the context is 'mapped' onto itself and the edit silently learns nothing from it (and
    preserves the concept's own context prompt). The rest of synthgen finds a concept as a
    whole phrase with (?<!\\w)...(?!\\w) (attributes.concept_words), which does match; the
    edit should find it the same way."""
    from synthgen.generate.erase import replace_concept

    assert replace_concept("a C++ book", "C++", "python") == "a python book"


# --- warnings --------------------------------------------------------------------------------

def test_a_balance_value_naming_a_suppressed_concept_is_warned_about():
    """README (Suppression, reject): 'validate and plan warn when a template, class name or
    corner case asks for a suppressed concept (its views cannot pass)'. A prompt-balance value
    puts its word into an exact quota of the prompts just as a template does ('a circle,
    striped' for half the groups), and those views are redrawn until their retries run out
    and stored marked suppression_failed; attributes.prompts_naming_suppressed_concepts looks
    at templates, class names and corner-case prompts only, so this recipe plans silently. It
    should warn, naming the balance entry and the concept."""
    recipe = _recipe(balance=[{"attribute": "pattern", "values": {"striped": 1, "plain": 1}}],
                     suppress=[{"concept": "striped", "method": "reject"}])
    prompts = [view.prompt for group in make_plan(recipe).groups for view in group.views]
    assert any("striped" in prompt for prompt in prompts), "the plan asks for the concept"
    warnings = [w for w in recipe_warnings(recipe) if "striped" in w]
    assert warnings and any("balance" in w for w in warnings), recipe_warnings(recipe)


def test_a_debias_already_in_the_model_folder_is_warned_about(tmp_path):
    """README (Balance): 'run synthgen edit once and point model.id at the folder to give
    [the workers] one' edit. A recipe that keeps its debias entry (the audit reads the
    attribute's proportions from it) then debiases the debiased folder again in every worker,
    on top of the saved edit. For erase, plan._erased_twice_warnings warns in this case
    ('already erased'); it compares only `concept`, which debias records lack, so a debias
    of the same attribute is silent. It should warn as for erase, naming balance[0]."""
    from synthgen.builtin import EDITS_FILE, resolve_model_source

    edited = tmp_path / "debiased-model"
    shutil.copytree(resolve_model_source("builtin:tiny-random"), edited)
    (edited / EDITS_FILE).write_text(json.dumps({"base_model": "builtin:tiny-random", "edits": [
        {"method": "debias", "attribute": "colour", "targets": ["circle"],
         "wanted": {"red": 0.5, "blue": 0.5}}]}))
    recipe = _recipe(model={**MODEL, "id": str(edited)}, balance=[
        {"attribute": "colour", "values": {"red": 1, "blue": 1}, "method": "debias",
         "applies_to": ["circle"]}])
    warnings = recipe_warnings(recipe)
    assert any("balance[0]" in w and "colour" in w for w in warnings), warnings


# --- synthgen edit ---------------------------------------------------------------------------

def test_edit_with_a_decoder_saves_the_models_own_vae(tmp_path):
    """`synthgen edit` loads the recipe's model as generation does, with model.decoder
    swapped in as pipeline.vae (load._tiny_decoder), and prepare.write_edited_model saves
    that pipeline: the folder's model_index.json says vae: AutoencoderTiny and holds the fast
    preview decoder instead of the model's VAE. The edit changes only text paths of the UNet;
    the folder it writes 'to reuse as model.id' should be the base model with that edit (its
    own VAE), not a different model (without model.decoder the folder now decodes with TAESD;
    align_noise, refused with a decoder because colours are encoded with the model's own VAE,
    is no longer refused)."""
    from synthgen.builtin import resolve_model_source
    from synthgen.generate.tiny_random import build_tiny_decoder

    decoder = tmp_path / "taesd"
    build_tiny_decoder().save_pretrained(decoder, safe_serialization=True)
    recipe = _write(tmp_path / "erase.yaml", model={**MODEL, "decoder": str(decoder)},
                    suppress=[{"concept": "logo", "method": "erase"}])
    result = invoke("edit", recipe, "--out", tmp_path / "edited", "--device", "cpu")
    assert_no_traceback(result, allowed=(0,))
    base = json.loads((Path(resolve_model_source("builtin:tiny-random"))
                       / "model_index.json").read_text())
    saved = json.loads((tmp_path / "edited" / "model_index.json").read_text())
    assert saved["vae"] == base["vae"], f"edited folder's vae is {saved['vae']}, base {base['vae']}"


# --- identity and resume ---------------------------------------------------------------------

def test_resume_with_other_reject_detector_weights_is_refused(tmp_path, tiny_clip_dir):
    """A reject detector decides which draw of each view a shard stores, so its weights make
    the dataset's bytes as much as the pipeline's do. README (Resume): other weights under
    the same model.id ('a folder retrained in place') are refused, 'a dataset is never resumed
    or finalized with two of them'; but only the pipeline (and decoder) is digested
    (generate/identity.weights_digest, write.prepare_output_dir): a detector folder changed
    between a run and its resume is not noticed, and the dataset mixes shards filtered by two
    detectors under one recipe hash, one manifest. The resume should be refused (or the
    detector's digest recorded and checked like the model's)."""
    from transformers import CLIPModel

    from synthgen.engines.local import generate_dataset

    detector = tmp_path / "detector"
    shutil.copytree(tiny_clip_dir, detector)
    recipe = _recipe(classes=[{"name": "circle", "groups": 2}],
                     views={"count": 1, "strategy": "seeds"},
                     output={"groups_per_shard": 1, "format": "png"},
                     suppress=[{"concept": "striped", "method": "reject", "max_retries": 1,
                                "detector": str(detector)}])
    plan = make_plan(recipe)
    assert plan.shard_count == 2
    out = tmp_path / "data"
    generate_dataset(plan, out, replace(QUIET, batch_size=1, shards=(0,)))
    # The detector folder is retrained in place between the run and its resume.
    torch.manual_seed(123)
    model = CLIPModel.from_pretrained(detector)
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.add_(torch.randn_like(parameter))
    model.save_pretrained(detector, safe_serialization=True)
    with pytest.raises(UserError):
        generate_dataset(plan, out, replace(QUIET, batch_size=1))
