"""Problems in today's review fixes (commits 4dca195..77100cf): each test fails on the code as
fixed, for the reason its docstring gives, and says what the correct behaviour is.

Everything is tiny: recipes that only plan, stand-in shard bytes (engine_helpers), and where a
model must run, builtin:tiny-random at 32 px, 2 steps, with the tiny random CLIP detector.
"""

from __future__ import annotations

import json
import sys
from dataclasses import replace
from pathlib import Path

import pytest
import yaml

sys.path.insert(0, str(Path(__file__).parent / "engines"))

from engine_helpers import QUIET, model_info, shard_samples  # noqa: E402
from small_recipe import parse_small, two_shard_reject_plan  # noqa: E402
from synthgen.plan import make_plan  # noqa: E402
from synthgen.recipe import parse_recipe  # noqa: E402
from cli_checks import invoke  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_thread")

MODEL = {"id": "builtin:tiny-random", "steps": 2, "width": 32, "height": 32}





# --- recipe.py OneLineName: names that used to be valid -------------------------------------

@pytest.mark.parametrize("name", [
    "café\u00a0crème",          # a no-break space (French typography, text pasted from a page)
    "نیم\u200cفاصله",            # Persian: the zero-width non-joiner is part of the spelling
    "\U0001F468\u200d\U0001F373 chef",  # an emoji sequence joined by U+200D (ZWJ)
])
def test_a_class_name_on_one_line_with_a_format_or_space_character_is_valid(name):
    """recipe.py `_one_line` refuses every name for which str.isprintable() is False, to keep
    line breaks out of the plan table and the audit captions. But isprintable() is also False
    for characters that break no line: the no-break space (U+00A0, category Zs), the
    zero-width (non-)joiners U+200C/U+200D (Cf), which Persian, Hindi and emoji sequences need
    in their ordinary spelling. Such names were valid before 1688f81 (a recipe using them
    planned and generated) and are now refused with "holds a line break or another control
    character; write the name on one line", which is false: the name is one line. Every
    dataset recorded with such a name also can no longer be finalized or resumed
    (write.finalize_dataset reads recipe.json with Recipe.model_validate: "recipe.json is
    damaged"). Correct: refuse only line and paragraph breaks and C0/C1 control characters
    (categories Cc, Zl, Zp), not format characters or non-ASCII spaces."""
    recipe = parse_small({"classes": [{"name": name, "templates": ["a {colour} circle"],
                                   "groups": 1}], "corner_cases": []})
    assert recipe.classes[0].name == name


# --- generate/identity.py: the weights digest with detectors --------------------------------

def test_a_reject_dataset_made_before_detectors_counted_resumes(tmp_path, tiny_clip_dir):
    """0410848 adds each reject/debias/slots.check detector's digest to the weights digest a
    dataset records (identity.recipe_weights_digest) and refuses, on resume, every done shard
    whose recorded weights differ (write.prepare_output_dir -> _refuse_other_weights). A
    dataset the previous synthgen started with a reject entry recorded the model's digest
    alone (identity.weights_digest(recipe.model), what engine_helpers.model_info still
    records), so with the same model folder and the same detector folder, untouched, its
    resume is now refused: "shards 0 were made by other weights of model.id
    'builtin:tiny-random' (sha256:...; now sha256:... + detector ...)" and the only fix
    offered is --overwrite, deleting the work. The message is also wrong: the model's weights
    are the same; only the digest's format changed. Correct: a shard recorded before
    detectors counted (its digest is exactly the model part of today's) is accepted (at most
    with a note that its detector was not recorded), and the record takes today's digest."""
    from synthgen.write import prepare_output_dir, publish_shard, read_recipe_record
    from synthgen.store import open_store

    plan = two_shard_reject_plan(str(tiny_clip_dir))
    out = tmp_path / "data"
    prepare_output_dir(out, plan, overwrite=False)
    # As the previous synthgen recorded it: recipe.json and the shard carry the model's digest.
    old_weights = model_info(plan)["weights"]
    record = read_recipe_record(open_store(out), "")
    record["weights"] = old_weights
    (out / "recipe.json").write_text(json.dumps(record, indent=2) + "\n")
    assert publish_shard(out, 0, shard_samples(plan, 0), model_info(plan)).published
    assert prepare_output_dir(out, plan, overwrite=False) == {0}


def test_a_hub_detector_the_first_run_downloads_does_not_block_its_resume(tmp_path, tiny_clip_dir,
                                                                          monkeypatch):
    """generate/prepare.py prepare_sampler sets the sampler's weights to
    recipe_weights_digest(recipe) right after loading the pipeline, BEFORE build_rejectors
    (and build_group_checker) load the detectors. For a detector given as a hub id that is not
    in the Hugging Face cache yet, identity._hub_snapshot (local_files_only) finds nothing, the
    whole digest is None, and the first run's shards record no weights at all (not even the
    model's, a local folder). The detector is downloaded during that run, so the next run
    computes a digest, and prepare_output_dir refuses every shard of the first run ("were
    made by other weights ... (not recorded; now ...)"): a dataset whose first run fetched its
    detector can never be resumed or grown, only overwritten. (Before 0410848 the digest was
    the pipeline's, computed after the pipeline was loaded, so the same first run resumed.)
    Correct: take the digest after every detector is loaded (the way load_pipeline digests
    the model after loading it).

    The hub is simulated: `_hub_snapshot` answers as it does for a repo that is or is not in
    the local cache, and the detector "downloads" (is recorded as cached) when loaded."""
    from synthgen.engines.local import generate_dataset
    from synthgen.generate import detector as detector_module
    from synthgen.generate import identity, prepare

    hub_id = "example-org/tiny-clip"
    cached: set[str] = set()

    def hub_snapshot(repo_id, revision):
        return f"hub:{repo_id}@0123abcd" if repo_id in cached else None

    class DownloadingScorer(detector_module.ClipConceptScorer):
        def __init__(self, model_id, device, field="suppress[].detector"):
            if model_id == hub_id:
                cached.add(hub_id)  # from_pretrained fetched the snapshot into the cache
                model_id = str(tiny_clip_dir)
            super().__init__(model_id, device, field)

    monkeypatch.setattr(identity, "_hub_snapshot", hub_snapshot)
    monkeypatch.setattr(prepare, "ClipConceptScorer", DownloadingScorer)
    plan = make_plan(parse_small({
        "model": MODEL, "views": {"count": 1, "strategy": "seeds"},
        "classes": [{"name": "circle", "templates": ["a {colour} circle"], "groups": 2}],
        "corner_cases": [], "output": {"groups_per_shard": 1},
        "suppress": [{"concept": "striped", "method": "reject", "max_retries": 1,
                      "detector": hub_id}]}))
    assert plan.shard_count == 2
    out = tmp_path / "data"
    generate_dataset(plan, out, replace(QUIET, batch_size=1, shards=(0,)))
    assert hub_id in cached
    generate_dataset(plan, out, replace(QUIET, batch_size=1))  # the resume: shard 1
    assert (out / "manifest.json").is_file()


# --- store.py parse_location: the empty --out refusal ---------------------------------------

def test_finalize_with_an_empty_dataset_argument_names_that_argument():
    """1688f81 refuses an empty location in store.parse_location, which every command and API
    call that names a dataset goes through, with the fixed text "--out is empty; name the
    dataset's folder (or URL), e.g. --out out/my-dataset". `synthgen finalize ""` (and
    synthgen.api.finalize("")) has no --out: click prints "Invalid value for 'DATASET_DIR':
    --out is empty; ... e.g. --out out/my-dataset", naming an option the command does not
    take and a fix that fails ("no such option: --out"). Correct: the message names what was
    empty (DATASET_DIR here; parse_location could take the option's name, as
    check_output_folder does)."""
    result = invoke("finalize", "")
    assert result.exit_code == 2, result.output
    assert "--out" not in result.output, result.output


def test_train_with_an_empty_out_is_refused_not_the_current_folder(tmp_path, monkeypatch):
    """1688f81 refuses `synthgen generate R --out ""` (a script's --out "$OUT" with OUT unset)
    instead of writing the dataset into the current folder; the sibling `synthgen train DATA
    --out ""` still reads "" as Path("") == "." (click.Path), passes
    outputs.check_output_folder, and writes checkpoint-last.safetensors, log.jsonl and the
    rest into the current folder among the user's files (and a later run there resumes from
    them). Correct: refuse an empty --out in one line, exit 2, as generate does."""
    from synthgen.data.fixtures import write_solid_dataset

    write_solid_dataset(tmp_path / "data", shards=1, groups_per_shard=4, views=2, size=8)
    work = tmp_path / "work"
    work.mkdir()
    (work / "mine.txt").write_text("mine")
    monkeypatch.chdir(work)
    result = invoke("train", tmp_path / "data", "--out", "", "--views", "2", "--batch-size", "2",
                     "--steps", "1", "--resolution", "8", "--width", "4", "--blocks", "1",
                     "--workers", "0", "--device", "cpu", "--checkpoint-every", "1")
    assert sorted(p.name for p in work.iterdir()) == ["mine.txt"], (
        f"train wrote into the current folder: {sorted(p.name for p in work.iterdir())}; "
        f"exit {result.exit_code}")
    assert result.exit_code == 2, result.output


# --- attributes.py: suppressed-concept warnings for slot values -------------------------------

_SUPPRESS_STRIPED = {"name": "warn", "seed": 1, "model": MODEL,
                     "slots": {"pattern": ["plain", "striped"]},
                     "suppress": [{"concept": "striped", "method": "negative"}]}


def test_a_corner_case_prompt_slot_value_naming_a_suppressed_concept_is_warned_about():
    """0410848 warns about slot values that name a suppressed concept, but
    attributes.prompts_naming_suppressed_concepts counts a recipe slot as reaching prompts only
    when a class template names it (`filled` is built from recipe.classes alone). A corner
    case's prompt is filled from the same recipe slots: here 'a {pattern} circle' draws
    'a striped circle' for 3 of its 8 groups, each with 'striped' as its negative prompt,
    and nothing is warned, while the same slot in a class template is. Correct: slots named
    by corner-case prompts count as filled too (the warning names the value)."""
    from synthgen.attributes import prompts_naming_suppressed_concepts

    recipe = parse_recipe(yaml.safe_dump({
        **_SUPPRESS_STRIPED,
        "classes": [{"name": "circle", "templates": ["a {class}"], "groups": 4}],
        "corner_cases": [{"name": "odd", "prompt": "a {pattern} circle", "label": "circle",
                          "groups": 8}]}))
    assert any("striped" in group.views[0].prompt for group in make_plan(recipe).groups)
    warnings = prompts_naming_suppressed_concepts(recipe)
    assert any("'striped'" in warning and "value" in warning for warning in warnings), warnings


def test_a_recipe_slot_value_every_class_replaces_is_not_warned_about():
    """The same function warns about every value of a recipe slot that some class template
    names, even where each class using the slot has its own values for it (a class's own
    slots replace the recipe's, recipe.py ClassSpec.slots): here no group can draw 'striped'
    (the plan fills 'plain' and 'dotted' only), yet generate/plan/validate print "slot
    'pattern' value 'striped' asks for what it suppresses ... take the words out of the
    prompt", a false alarm sending the user to change a prompt that never holds the words.
    Correct: a recipe slot's values count only for the classes (and corner cases) that draw
    them; a class's own values count as its own (class 'circle' slot 'pattern' value ...)."""
    from synthgen.attributes import prompts_naming_suppressed_concepts

    recipe = parse_recipe(yaml.safe_dump({
        **_SUPPRESS_STRIPED,
        "classes": [{"name": "circle", "templates": ["a {pattern} circle"],
                     "slots": {"pattern": ["plain", "dotted"]}, "groups": 4}]}))
    assert not any("striped" in group.views[0].prompt for group in make_plan(recipe).groups)
    assert prompts_naming_suppressed_concepts(recipe) == []


# --- write.py _written_order_differs: a second plan on every resume ---------------------------

def test_resuming_after_an_audit_only_edit_does_not_plan_the_dataset_a_second_time(tmp_path,
                                                                                   monkeypatch):
    """77100cf lets a dataset resume after an edit the hash leaves out (the audit block) by
    planning the recorded recipe as well and comparing the two plans group by group
    (write._written_order_differs: make_plan(recorded) and _drawn of both, every group's
    to_json). recipe.json is not rewritten afterwards (prepare_output_dir rewrites it only for
    other weights or plan revision), so EVERY later resume, and every slice of a sliced run,
    plans the whole dataset twice and holds both plans and their JSON in memory. make_plan
    takes about 50 microseconds a group here (1 s for 20,000 groups), so a 1M-group recipe
    pays about a minute and gigabytes per run for an audit setting. Correct: an audit-only
    difference is seen without planning (the recorded recipe less its `audit` block equals
    today's), and a difference found harmless is recorded so that it is not planned again;
    here no second plan is made."""
    from synthgen import write
    from synthgen.write import prepare_output_dir, publish_shard

    fields = {"output": {"groups_per_shard": 2}}
    plan = make_plan(parse_small(fields))
    out = tmp_path / "data"
    prepare_output_dir(out, plan, overwrite=False)
    assert publish_shard(out, 0, shard_samples(plan, 0), model_info(plan)).published
    tuned = make_plan(parse_small({**fields, "audit": {"margin": 0.2}}))
    assert tuned.recipe.recipe_hash == plan.recipe.recipe_hash
    planned = []
    real_make_plan = write.make_plan
    monkeypatch.setattr(write, "make_plan",
                        lambda *args, **kwargs: planned.append(1) or real_make_plan(*args, **kwargs))
    for _ in range(2):  # two resumes with the tuned audit block
        assert prepare_output_dir(out, tuned, overwrite=False) == {0}
    assert planned == [], f"the dataset was planned {len(planned)} more times in two resumes"
