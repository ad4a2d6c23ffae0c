"""Fault injection on `views.slots.check` (groups whose views disagree on what they hold are
redrawn whole), from a review on 2026-12-03: each test failed before its fix and says what
was wrong and why it matters. Runs on the CPU with the tiny random pipeline (32 px, 2 steps);
the CLIP detector and the suppression detector are stand-ins wherever the real ones are not
the point."""

from __future__ import annotations

import io
import json
import shutil
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch

from sampling_checks import written_views
from small_recipe import SMALL_RECIPE, merge
from synthgen.engines.local import GenerateOptions, generate_dataset
from synthgen.errors import UserError
from synthgen.generate import group_check, prepare
from synthgen.generate.group_check import layout_agreement
from synthgen.generate.sampler import Rejector
from synthgen.inspection import count_groups
from synthgen.plan import make_plan
from synthgen.recipe import load_recipe

BASE = {
    "model": {"steps": 2},
    "slots": {"colour": ["red", "green", "blue", "pink"], "size": ["small", "large"]},
    "templates": ["a {size} {colour} {class}"],
    "classes": [{"name": "circle", "groups": 4}, {"name": "square", "groups": 3}],
    "corner_cases": [],
    "views": {"count": 2, "strategy": "slots",
              "slots": {"vary": ["colour"], "check": {"layout": 0.5, "max_retries": 1}}},
    "output": {"groups_per_shard": 8, "format": "png", "shuffle": False},
}
OPTIONS = GenerateOptions(progress=False, device="cpu", batch_size=4)


def _write(folder: Path, overrides: dict, name: str = "recipe.yaml") -> Path:
    import yaml

    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    path.write_text(yaml.safe_dump(merge(SMALL_RECIPE, overrides), sort_keys=False))
    return path


def _image_key(pixels) -> bytes:
    return np.ascontiguousarray(np.asarray(pixels)).tobytes()


# --- the layout score -------------------------------------------------------------------


def test_identical_flat_views_agree_on_their_layout():
    """`layout_agreement` standardises each edge map by its own spread (+1e-6); a view with no
    edges at all (a flat background, or a view stored black because the model gave NaN)
    has an all-zero map, so its correlation with view 0 is 0, even when the views are
    pixel-identical, and view 0 itself scores 0 instead of the documented 1. A group of
    identical flat views then fails `layout` on every draw: it is redrawn max_retries times
    and stored as disagreeing (`held_check.passed: false`) although its views agree
    perfectly. Identical views must agree (score 1, or at least pass any threshold)."""
    flat = np.full((32, 32, 3), 128, np.uint8)
    black = np.zeros((32, 32, 3), np.uint8)
    for picture in (flat, black):
        agreement = layout_agreement(torch.from_numpy(np.stack([picture, picture, picture])))
        assert not torch.isnan(agreement).any()
        assert agreement[0] == pytest.approx(1.0, abs=1e-3), "view 0 agrees with itself"
        assert agreement[1] >= 0.99 and agreement[2] >= 0.99, agreement


# --- what the plan gives the detector ---------------------------------------------------


def test_a_labelled_corner_case_holding_its_class_has_another_class_to_compare(tmp_path):
    """`Recipe._check_held_names` refuses `hold: [class]` when the recipe has one class, by
    counting `{class names} | {name}`; for a corner case `name` is the corner case's *name*
    ("boxed"), not its label, so one class plus a labelled corner case passes the check.
    The plan (`plan._held_alternatives`) then compares the view's class ("circle") with the
    recipe's classes only: a single candidate, which always wins. The check reads nothing
    and every group "passes": a recipe that asks for a check silently gets none. Either the
    recipe is refused (as the one-class recipe is) or the detector is given something to
    compare with."""
    plain = {"count": 2, "strategy": "slots", "slots": {"vary": ["colour"]}}
    checked = {"count": 2, "strategy": "slots",
               "slots": {"vary": ["colour"], "check": {"hold": ["class"]}}}
    path = _write(tmp_path, {
        "classes": [{"name": "circle", "templates": ["a {colour} {class}"], "groups": 1}],
        "views": plain,
        "corner_cases": [{"name": "boxed", "prompt": "a {colour} {class} in a box",
                          "label": "circle", "groups": 2, "views": checked}]})
    try:
        recipe = load_recipe(path)
    except UserError:
        return  # refused, as a one-class recipe holding its class is
    corner = [group for group in make_plan(recipe).groups if group.corner_case == "boxed"]
    for view in (view for group in corner for view in group.views):
        for name, own, compared in view.held_check.readings:
            assert len(compared) >= 2, (
                f"held {name!r} ({own!r}) is compared with nothing else: {compared}")


def test_the_held_word_is_inside_what_the_detector_reads(tmp_path):
    """The detector reads each compared prompt through its tokenizer with truncation
    (`ClipConceptScorer.text_features`: `truncation=True`); the default detector,
    builtin:world-clip, keeps 32 tokens. Where a template puts the held slot or {class}
    after that, every compared prompt embeds to the same vector: `choose_by_features`
    ties, argmax picks the first candidate, and every view whose own value is not the
    first ("large", "square" here) fails on every draw, is redrawn max_retries times and
    stored as disagreeing, while views holding the first value always pass. The check is
    then a fixed function of the plan, not of the images. A recipe whose held word the
    detector cannot see should be refused or warned about (or the compared text made to
    contain it)."""
    prefix = ("a clean studio photograph with soft even lighting, sharp focus and high "
              "detail, centred in the frame on a plain grey background, showing ")
    path = _write(tmp_path, {
        **BASE, "templates": [prefix + "a {size} {colour} {class}"],
        "views": {"count": 2, "strategy": "slots",
                  "slots": {"vary": ["colour"], "check": {"hold": ["class", "size"]}}}})
    plan = make_plan(load_recipe(path))
    with pytest.raises(UserError, match=r"views\.slots\.check\.hold: 'class': the detector "
                                        r"builtin:world-clip reads .* \(it reads at most 32 "
                                        r"tokens, or the two values read alike\)"):
        generate_dataset(plan, tmp_path / "out", OPTIONS)


# --- errors -------------------------------------------------------------------------------


def test_a_check_detector_that_does_not_load_is_named_as_the_check_detector(tmp_path):
    """`build_group_checker` loads the check's detector with `ClipConceptScorer`, whose load
    error names `suppress[].detector`: a recipe with no `suppress` at all, whose
    `views.slots.check.detector` is a folder with a CLIP config but no weights, is told to
    fix a field it does not have. The message must point at the check's detector."""
    folder = tmp_path / "broken-clip"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({"model_type": "clip"}))
    path = _write(tmp_path, {**BASE, "views": {
        "count": 2, "strategy": "slots",
        "slots": {"vary": ["colour"], "check": {"hold": ["class"], "detector": str(folder)}}}})
    plan = make_plan(load_recipe(path))
    with pytest.raises(UserError) as raised:
        generate_dataset(plan, tmp_path / "out", OPTIONS)
    message = str(raised.value)
    assert "check" in message and "suppress" not in message, message


# --- with `suppress: method: reject` in the same batch ---------------------------------

REJECTING = {**BASE, "suppress": [{"concept": "bright", "method": "reject", "threshold": 0.5,
                                   "max_retries": 1}]}


@pytest.fixture(scope="module")
def rejecting_run(tmp_path_factory):
    """A recipe that checks groups (layout) and rejects a concept. Stand-ins: the checker
    fails group 1 on its first draw only and records every image it judged; the rejector
    flags view 1 of group 0 as the checker saw it (so that view is redrawn once after the
    check). Returns (plan, written views, images the checker saw per (group, view))."""
    root = tmp_path_factory.mktemp("rejecting")
    plan = make_plan(load_recipe(_write(root, REJECTING)))
    first, second = plan.groups[0].group_id, plan.groups[1].group_id
    seen: dict[tuple[str, int], list[bytes]] = {}
    draws: dict[str, int] = {}

    def disagreements(self, views, images):
        draws[views[0].group_id] = draws.get(views[0].group_id, 0) + 1
        for view, pixels in zip(views, images):
            seen.setdefault((view.group_id, view.view), []).append(_image_key(pixels))
        failing = [[] for _ in views]
        if views[0].group_id == second and draws[second] == 1:
            failing[1].append("layout")
        return failing

    def rejectors(recipe, device):
        def score(images, prompts):
            flagged = set(seen.get((first, 1), ()))
            return torch.tensor([float(_image_key(image) in flagged) for image in images])

        return (Rejector(concept="bright", threshold=0.5, max_retries=1, score=score),)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(group_check.GroupChecker, "disagreements", disagreements)
        patch.setattr(prepare, "build_rejectors", rejectors)
        generate_dataset(plan, root / "out", OPTIONS)
    return plan, written_views(root / "out"), seen


def test_a_view_redrawn_by_rejection_is_not_recorded_as_checked(rejecting_run):
    """`Sampler._generate_checked` checks the groups first, then lets the rejector redraw
    single views (`retry_view`: its own new seed, no layout anchor, no noise turn) and never
    reads the group again. The redrawn view's json still says `held_check.passed: true`,
    for pixels the checker never saw: the counterfactual group is broken (the view no
    longer shares its group's noise or layout) exactly where the json, which a loader is
    told to filter on, says it holds. A view recorded as passing must be one the checker
    passed (check again after rejection, or record the group as not passing)."""
    plan, written, seen = rejecting_run
    first = plan.groups[0].group_id
    entry, _ = written[(first, 1)]
    assert entry["rejections"]["bright"] == 1, "setup: the rejector redrew view 1 of group 0"
    for (group_id, view), (entry, pixels) in written.items():
        if entry["held_check"]["passed"]:
            assert _image_key(pixels) in seen[(group_id, view)], (
                f"{group_id} view {view}: stored pixels the checker never judged, recorded "
                f"as passing: {entry['held_check']}")


def test_seed_used_is_the_seed_a_checked_view_was_drawn_from(rejecting_run):
    """In a recipe that rejects, every view's json records `seed_used`, "the seeds finally
    used (the planned ones when no retry)" (write._stable_record, README). A group the
    check redrew (and the rejector left alone) was drawn from the check's new shared seed,
    which `held_check.seed_used` records, but the top-level `seed_used` still says the
    planned seed: the sampler only sets it where rejection changed the seed, comparing with
    the views as the check left them. One view's json then names two different seeds it
    was "finally" drawn from, and anyone reproducing the view from `seed_used` gets
    another image."""
    plan, written, _ = rejecting_run
    second = plan.groups[1].group_id
    for view in range(2):
        entry, _ = written[(second, view)]
        assert entry["held_check"]["redraws"] == 1 and entry["rejections"]["bright"] == 0
        assert entry["seed_used"] == entry["held_check"]["seed_used"], entry


# --- what readers and inspect read ---------------------------------------------------------


@pytest.fixture(scope="module")
def checked_dataset(tmp_path_factory) -> tuple:
    """7 groups in one shard, in plan order; the checker fails view 1 of the last group on
    every draw (layout), so only that group is stored disagreeing."""
    root = tmp_path_factory.mktemp("checked")
    plan = make_plan(load_recipe(_write(root, BASE)))
    last = plan.groups[-1].group_id

    def disagreements(self, views, images):
        failing = [[] for _ in views]
        if views[0].group_id == last:
            failing[1].append("layout")
        return failing

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(group_check.GroupChecker, "disagreements", disagreements)
        generate_dataset(plan, root / "out", OPTIONS)
    return plan, root / "out"


def _stored_json(out: Path) -> list[dict]:
    found = []
    for shard in sorted(out.glob("shard-*.tar")):
        with tarfile.open(shard) as tar:
            found += [json.load(tar.extractfile(member)) for member in tar.getmembers()
                      if member.name.endswith(".json")]
    return found


def test_held_check_types_are_what_a_type_inferring_reader_infers_first(checked_dataset):
    """The README promises sample json of one set of keys *and types* in every sample, so
    that readers typing columns from the first samples (Hugging Face's webdataset builder:
    the first 5 of shard 0) read the dataset whole; `tags` is a {tag: bool} map because
    "a list would be empty in the first samples and typed as a list of nulls". The check's
    `disagree` is such a list: [] in every group that passed, ["layout"] where one did not.
    With the passing groups first, the reader types it list<null> and cannot cast the
    failing group's json, the very one a loader must see to filter it out."""
    import pyarrow as pa

    plan, out = checked_dataset
    samples = _stored_json(out)
    assert samples[-1]["views"][1]["held_check"]["disagree"] == {"layout": True}, "setup"
    first = samples[:5]
    schema = pa.concat_tables([pa.Table.from_pylist([s]) for s in first],
                              promote_options="default").schema
    problems = []
    for sample in samples:
        try:
            pa.Table.from_pylist([sample], schema=schema)
        except (pa.ArrowInvalid, pa.ArrowTypeError, pa.ArrowNotImplementedError) as error:
            problems.append(f"{sample['group_id']}: {error}")
    assert problems == []


def test_inspect_counts_a_sample_whose_held_check_is_odd_without_a_traceback(
        checked_dataset, tmp_path):
    """`count_groups` guards `held_check` with `isinstance(checked, dict)` and then calls
    `int(checked.get("redraws", 0))`: a readable json whose `redraws` is null (or any
    non-number: a hand-edited or damaged sample, another writer) raises TypeError or
    ValueError out of `synthgen inspect`, a traceback instead of a count and a line in
    `damaged`. A malformed value must not end the inspection."""
    _, out = checked_dataset
    dataset = tmp_path / "odd"
    shutil.copytree(out, dataset)
    shard = next(iter(sorted(dataset.glob("shard-*.tar"))))
    members, edited = [], False
    with tarfile.open(shard) as tar:
        for info in tar.getmembers():
            data = tar.extractfile(info).read()
            if info.name.endswith(".json") and not edited:
                edited = True
                metadata = json.loads(data)
                metadata["views"][0]["held_check"]["redraws"] = None
                data = json.dumps(metadata).encode()
            members.append((info, data))
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        for info, data in members:
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    shard.write_bytes(buffer.getvalue())
    counts = count_groups(dataset)
    assert counts["damaged"], "the edited shard no longer matches its digest"


def test_a_redrawn_latent_group_records_the_anchor_it_was_drawn_from(tmp_path, monkeypatch):
    """`retry_group` gives a `latent` group a new anchor seed as well as new view seeds, but
    `held_check` records only `seed_used`, and the top-level `anchor_seed_used` is written
    only by rejection in rejecting recipes. The json of a redrawn latent group keeps the
    planned `anchor_seed`, which its pixels were not drawn from (view 0, at sigma 0, is
    the anchor's noise alone): the group cannot be reproduced or audited from its json,
    as every other redraw in synthgen can."""
    from synthgen.generate.group_check import retry_group

    path = _write(tmp_path, {**BASE, "views": {
        "count": 2, "strategy": ["slots", "latent"], "latent": {"sigma": 0.3},
        "slots": {"vary": ["colour"], "hold_layout": False,
                  "check": {"layout": 0.5, "max_retries": 1}}},
        "classes": [{"name": "circle", "groups": 2}]})
    plan = make_plan(load_recipe(path))
    first = plan.groups[0]
    draws: list[str] = []

    def disagreements(self, views, images):
        draws.append(views[0].group_id)
        failing = [[] for _ in views]
        if draws.count(first.group_id) == 1 and views[0].group_id == first.group_id:
            failing[1].append("layout")
        return failing

    monkeypatch.setattr(group_check.GroupChecker, "disagreements", disagreements)
    generate_dataset(plan, tmp_path / "out", OPTIONS)
    written = written_views(tmp_path / "out")
    redrawn = retry_group(list(first.views), 1)
    for view in redrawn:
        entry, _ = written[(first.group_id, view.view)]
        assert entry["held_check"]["redraws"] == 1, "setup: the group was redrawn once"
        assert view.anchor_seed != entry["anchor_seed"]
        assert str(view.anchor_seed) in json.dumps(entry), (
            f"view {view.view}: drawn from anchor {view.anchor_seed}, json says {entry}")
