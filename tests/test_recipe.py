"""Recipe loading: valid recipes become frozen objects; every mistake gets one clear message."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from synthgen.errors import UserError
from synthgen.recipe import Recipe, load_recipe, template_slots

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("recipe", sorted((REPO / "recipes").glob("*.yaml")), ids=lambda p: p.name)
def test_shipped_recipes_are_valid(recipe):
    loaded = load_recipe(recipe)
    assert loaded.name
    assert sum(c.groups for c in loaded.classes) + sum(
        loaded.corner_case_groups(c) for c in loaded.corner_cases) > 0


def test_recipe_is_frozen_and_hash_is_stable(write_recipe):
    first, second = load_recipe(write_recipe()), load_recipe(write_recipe(name="copy.yaml"))
    assert first.recipe_hash == second.recipe_hash
    with pytest.raises(ValidationError):
        first.seed = 3
    assert load_recipe(write_recipe({"seed": 8})).recipe_hash != first.recipe_hash


def test_slot_values_accept_lists_and_weights(write_recipe):
    recipe = load_recipe(write_recipe())
    assert recipe.slots["colour"] == {"red": 1.0, "green": 1.0, "blue": 1.0}
    assert recipe.classes[1].slots["size"] == {"small": 1.0, "large": 3.0}


def test_template_slots_are_parsed_in_order():
    assert template_slots("a {colour} {shape} on {background}") == ["colour", "shape", "background"]
    assert template_slots("literal {{braces}} and {slot}") == ["slot"]
    with pytest.raises(ValueError):
        template_slots("a {} thing")


def error_for(write_recipe, overrides) -> str:
    path = write_recipe(overrides)
    with pytest.raises(UserError) as caught:
        load_recipe(path)
    message = str(caught.value)
    assert str(path) in message, "every message names the file"
    return message


def test_unknown_key_names_path_and_allowed_keys(write_recipe):
    message = error_for(write_recipe, {"classes": [{"name": "a", "templates": ["x"], "groups": 1,
                                                     "prompts": ["y"]}]})
    assert "classes[0].prompts" in message
    assert "unknown key 'prompts'" in message
    assert "templates" in message and "groups" in message  # the allowed keys, as the fix


def test_misspelled_top_level_key(write_recipe):
    message = error_for(write_recipe, {"ouput": {"format": "jpg"}})
    assert "ouput" in message and "output" in message


def test_wrong_type_names_value_and_fix(write_recipe):
    message = error_for(write_recipe, {"seed": "lucky"})
    assert "seed" in message and "'lucky'" in message and "whole number" in message


def test_negative_count(write_recipe):
    message = error_for(write_recipe, {"classes": [{"name": "a", "templates": ["x"], "groups": -3}]})
    assert "classes[0].groups" in message and "-3" in message and ">= 0" in message


def test_unknown_slot_in_template(write_recipe):
    message = error_for(write_recipe, {"classes": [
        {"name": "dog", "templates": ["a {breed} dog {context}"], "slots": {"breed": ["pug"]},
         "groups": 1}]})
    assert "classes[0].templates[0]" in message
    assert "{context}" in message and "not defined" in message
    assert "classes[0].slots" in message  # where to define it


def test_corner_case_label_must_be_a_class(write_recipe):
    message = error_for(write_recipe, {"corner_cases": [
        {"name": "odd", "prompt": "an odd thing", "label": "triangle", "groups": 1}]})
    assert "corner_cases[0].label" in message and "'triangle'" in message
    assert "circle" in message and "null" in message


def test_bad_choice_lists_the_choices(write_recipe):
    message = error_for(write_recipe, {"output": {"format": "gif"}})
    assert "output.format" in message and "'gif'" in message
    assert "'jpg'" in message and "'png'" in message and "'webp'" in message


def test_size_must_be_multiple_of_8(write_recipe):
    message = error_for(write_recipe, {"model": {"width": 100}})
    assert "model.width" in message and "100" in message and "96" in message


def test_duplicate_class_names(write_recipe):
    message = error_for(write_recipe, {"classes": [
        {"name": "Golden Retriever", "templates": ["x"], "groups": 1},
        {"name": "golden-retriever", "templates": ["y"], "groups": 1}]})
    assert "classes[1].name" in message and "rename" in message


def test_missing_required_field(write_recipe):
    message = error_for(write_recipe, "name: x\nseed: 1\nclasses: []\n")
    assert "model: required field is missing" in message


def test_bad_slot_weight(write_recipe):
    message = error_for(write_recipe, {"slots": {"colour": {"red": 2, "blue": -1}}})
    assert "slots.colour" in message and "'blue'" in message and "positive" in message


def test_empty_plan(write_recipe):
    message = error_for(write_recipe, {"classes": [{"name": "a", "templates": ["x"], "groups": 0}],
                                       "corner_cases": []})
    assert "no groups" in message


def test_invalid_yaml_names_line(write_recipe):
    message = error_for(write_recipe, "name: x\nseed: 1\nmodel:\n  id: [unclosed\n")
    assert "recipe.yaml:" in message and "not valid YAML" in message


def test_yaml_is_loaded_safely(write_recipe):
    message = error_for(write_recipe, "name: !!python/object/apply:os.system ['true']\n")
    assert "not valid YAML" in message


def test_a_key_given_twice_is_an_error(write_recipe):
    message = error_for(write_recipe, "name: x\nseed: 1\nmodel:\n  id: a\n  steps: 2\n  id: b\n")
    assert "recipe.yaml:6:3: key 'id' is given twice in one mapping (first on line 4)" in message


def test_top_level_must_be_a_mapping(write_recipe):
    assert "YAML mapping" in error_for(write_recipe, "- just\n- a list\n")


def test_missing_file(tmp_path):
    with pytest.raises(UserError, match="recipe file not found"):
        load_recipe(tmp_path / "nope.yaml")


def test_class_without_templates_needs_shared_ones(write_recipe):
    message = error_for(write_recipe, {"classes": [{"name": "cat", "groups": 1}]})
    assert "classes[0]" in message and "no templates" in message and "{class}" in message


def test_class_slot_in_unlabelled_corner_case(write_recipe):
    message = error_for(write_recipe, {"corner_cases": [
        {"name": "odd", "prompt": "a {class} upside down", "groups": 1}]})
    assert "corner_cases[0].prompt" in message and "{class}" in message


# `suppress` and `balance` entries: one model per method (synthgen/suppress/, synthgen/balance/),
# picked by `method`.
# Hashes of recipes with entries of every method, at commit 53627ce, when one flat model held
# every method's fields: the dumped recipe (recipe.json, manifest, hash) must not change, or
# their datasets stop being resumable.
RECORDED_HASHES = {
    "attribute-editing.yaml": "a144a07741fdd32172c4db70d0cf396361ec4303f8702bcc1c1e80a987089a16",
    "quickstart-reject.yaml": "89c56f18a6c29f9c92d535ab1038eb31d388df0f45345b0ebc054e3b4103b92e",
    "wildlife-corner-cases-sd21.yaml":
        "15e1c24a2cb995839ddfeb156dfc3ab077a774d60ef378e461ed8facab7f84c1",
}
SHADE = {"attribute": "shade", "values": {"a": 1, "b": 1}}  # a balance entry's own fields


def test_an_unknown_method_lists_the_methods(write_recipe):
    message = error_for(write_recipe, {"suppress": [{"concept": "x", "method": "blur"}]})
    assert ("suppress[0].method: not one of the allowed values (got 'blur'); use 'negative', "
            "'reject' or 'erase'") in message
    message = error_for(write_recipe, {"balance": [{**SHADE, "method": "sample"}]})
    assert ("balance[0].method: not one of the allowed values (got 'sample'); use 'prompt' or "
            "'debias'") in message


def test_a_missing_suppress_method_lists_the_methods(write_recipe):
    message = error_for(write_recipe, {"suppress": [{"concept": "x"}]})
    assert ("suppress[0].method: required field is missing; use 'negative', 'reject' or "
            "'erase'") in message


def test_a_field_of_another_method_names_the_method_that_takes_it(write_recipe):
    message = error_for(write_recipe, {"suppress": [
        {"concept": "x", "method": "negative"},
        {"concept": "x", "method": "erase", "threshold": 0.7}]})
    assert ("suppress[1].threshold: method erase takes no 'threshold' (method reject does); "
            "drop it, or use method: reject") in message
    assert "method erase takes: concept, method, target, preserve" in message
    message = error_for(write_recipe, {"balance": [{**SHADE, "trials": 4}]})
    assert "balance[0].trials: method prompt takes no 'trials' (method debias does)" in message
    message = error_for(write_recipe, {"balance": [{**SHADE, "method": "debias", "slot": "hue"}]})
    assert ("balance[0].slot: method debias keeps the value out of the prompts, so it fills no "
            "slot; drop slot") in message


def test_a_key_no_method_takes_lists_the_methods_own_keys(write_recipe):
    message = error_for(write_recipe, {"suppress": [{"concept": "x", "method": "reject",
                                                     "treshold": 0.7}]})
    assert ("suppress[0].treshold: unknown key 'treshold'; method reject takes: concept, method, "
            "detector, contrast, threshold, max_retries") in message


def test_problems_inside_an_entry_keep_the_plain_field_path(write_recipe):
    # pydantic locates them under the method's name (suppress.0.reject.threshold).
    message = error_for(write_recipe, {"suppress": [{"concept": "x", "method": "reject",
                                                     "threshold": 2}]})
    assert "suppress[0].threshold: must be < 1.0 (got 2); use a value below 1.0" in message
    message = error_for(write_recipe, {"suppress": [{"method": "erase"}]})
    assert "suppress[0].concept: required field is missing" in message
    message = error_for(write_recipe, {"suppress": ["striped"]})
    assert ("suppress[0]: not a mapping (got 'striped'); write a mapping of key: value lines "
            "with a method: 'negative', 'reject' or 'erase'") in message


def test_a_balance_entry_without_method_balances_by_prompt(write_recipe):
    recipe = load_recipe(write_recipe({"balance": [SHADE]}))
    assert recipe.balance[0].method == "prompt" and recipe.balance[0].slot_name == "shade"


def test_prompt_templates_of_views_and_balance_are_checked_alike(write_recipe):
    message = error_for(write_recipe, {"balance": [{**SHADE, "inject": "{prompt}"}]})
    assert ("balance[0].inject: must use exactly the slots {prompt} and {value}, e.g. "
            "'{prompt}, {value}'") in message
    message = error_for(write_recipe, {"views": {"strategy": ["seeds", "prompt"], "prompt": {
        "modifiers": ["at night"], "template": "{prompt"}}})
    assert ("views.prompt.template: expected '}' before end of string; slots look like "
            "{prompt}") in message


@pytest.mark.parametrize("name", sorted(RECORDED_HASHES))
def test_entries_are_recorded_as_one_flat_model_recorded_them(name):
    recipe = load_recipe(REPO / "recipes" / name)
    assert recipe.recipe_hash == RECORDED_HASHES[name]
    record = recipe.model_dump(mode="json")
    assert {tuple(entry) for entry in record["suppress"]} == {(
        "concept", "method", "detector", "contrast", "threshold", "max_retries", "target",
        "preserve", "contexts", "context_prompts", "preserve_weight", "regularizer")}
    # Read back (finalize reads recipe.json), the record is the same recipe.
    assert Recipe.model_validate(record) == recipe


def test_a_record_read_back_drops_other_methods_fields():
    recipe = load_recipe(REPO / "recipes" / "attribute-editing.yaml")
    record = recipe.model_dump(mode="json")
    erase = record["suppress"][0]
    assert erase["method"] == "erase" and erase["threshold"] == 0.5
    # A recorded value the method would not have recorded (an old recipe's `threshold` on an
    # erase entry, accepted then) is dropped: the recipe read back records 0.5, so its hash is
    # not the one recipe.json records, which finalize reports.
    erase["threshold"] = 0.7
    read_back = Recipe.model_validate(record)
    assert not hasattr(read_back.suppress[0], "threshold")
    assert read_back.model_dump(mode="json")["suppress"][0]["threshold"] == 0.5
