"""Audit faults found in review (2026-12-03), each test failing before its fix: a class row
counting groups that drew no slot value, a view-layout sample without its image made into a
group of its own, charts of non-ASCII attribute names overwriting each other, per-strategy
diversity sampling pairs it could all use, contact sheets ordering view10 after view1."""

from __future__ import annotations

import hashlib
import io
import json
import re
import tarfile
import warnings

import numpy as np
import pytest
from audit_fixtures import MeanColourEncoder, build_dataset

from synthgen.audit.run import AuditOptions, run_audit
from synthgen.audit.spec import parse_attribute_option, spec_from_recipe


def _audit(dataset, spec):
    return run_audit(dataset, spec, MeanColourEncoder(), AuditOptions(progress=False, batch_size=5))


def test_class_scope_leaves_out_groups_that_drew_no_slot_value(tmp_path):
    # One class, two templates: "a {colour} {class}" draws a colour, "a {class}" draws none.
    # Slot weights are the target of the groups that drew a value (docs/AUDIT.md); the
    # overall row honours that, the class row (the only class!) does not.
    recipe = {"slots": {"colour": {"red": 1, "green": 1, "blue": 1}},
              "templates": ["a {colour} {class}", "a {class}"],
              "classes": [{"name": "circle", "groups": 6}],
              "audit": {"attributes": [{"name": "colour", "values": ["red", "green", "blue"]}]}}
    groups = [{"class": "circle", "colours": [c] * 2, "slots": {"colour": c}}
              for c in ("red", "green", "blue")]
    groups += [{"class": "circle", "colours": ["green"] * 2, "prompt": "a circle"} for _ in range(3)]
    outcome = _audit(build_dataset(tmp_path / "data", groups, recipe), spec_from_recipe(recipe))
    scopes = outcome.report["attributes"]["colour"]["scopes"]
    overall, circle = scopes["overall"], scopes["class:circle"]
    assert overall["units"] == 3 and overall["kl"] == pytest.approx(0.0, abs=1e-12)
    # Same class, same groups with a target: the class row must say what the overall row says.
    assert circle["units"] == overall["units"]
    assert circle["counts"] == overall["counts"]
    # kl_any fires on the three groups that never drew a colour.
    assert outcome.summary["kl_any"] == pytest.approx(0.0, abs=1e-12)


def _view_layout_dataset(tmp_path, monkeypatch, groups, recipe):
    import audit_fixtures

    original = audit_fixtures.write_shard
    monkeypatch.setattr(audit_fixtures, "write_shard",
                        lambda *args, **kwargs: original(*args, layout="view", **kwargs))
    return build_dataset(tmp_path / "data", groups, recipe)


def _drop_member(dataset, shard: str, member: str) -> None:
    path = dataset / shard
    with tarfile.open(path) as source:
        members = [(info, source.extractfile(info).read()) for info in source.getmembers()]
    assert member in [info.name for info, _ in members]
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as target:
        for info, data in members:
            if info.name != member:
                target.addfile(info, io.BytesIO(data))
    path.write_bytes(buffer.getvalue())
    manifest = json.loads((dataset / "manifest.json").read_text())
    for entry in manifest["shards"]:
        if entry["name"] == shard:
            entry["sha256"] = hashlib.sha256(buffer.getvalue()).hexdigest()
    (dataset / "manifest.json").write_text(json.dumps(manifest))


def test_view_layout_missing_image_is_a_missing_view_of_its_group(tmp_path, monkeypatch):
    # The same damage the group layout reports as one missing view of class-circle-000001
    # (test_integrity_missing_views_and_sha256_mismatch): in the `view` layout the image-less
    # view sample becomes a group of its own ("class-circle-000001-view1").
    recipe = {"balance": [{"attribute": "colour", "values": {"red": 1, "green": 1, "blue": 1},
                           "applies_to": None}]}
    groups = [{"class": "circle", "colours": [c] * 3, "balance": {"colour": c}}
              for c in ("red", "green", "blue")]
    dataset = _view_layout_dataset(tmp_path, monkeypatch, groups, recipe)
    _drop_member(dataset, "shard-000000.tar", "class-circle-000001-view1.png")
    report = _audit(dataset, spec_from_recipe(recipe)).report
    assert report["integrity"]["missing_views"] == ["class-circle-000001.view1.png"]
    assert report["totals"]["groups"] == 3
    assert report["sheets"]["class:circle"] == [
        "class-circle-000000", "class-circle-000001", "class-circle-000002"]


def test_charts_of_attributes_with_non_ascii_names_do_not_overwrite_each_other(tmp_path):
    from synthgen.audit.report import write_report

    groups = [{"class": "circle", "colours": [c] * 2} for c in ("red", "green", "blue")]
    dataset = build_dataset(tmp_path / "data", groups)
    spec = spec_from_recipe({}, attributes=[parse_attribute_option("颜色=red,green,blue"),
                                            parse_attribute_option("色=red,blue")])
    outcome = _audit(dataset, spec)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # matplotlib: CJK glyphs missing from its font
        page = write_report(outcome, tmp_path / "report")
    charts = re.findall(r"<img src='(charts/[^']*)'", page.read_text())
    # Two attributes, two charts: both names slug to "_", so one chart replaces the other and
    # the report shows the second attribute's chart under the first attribute's heading.
    assert len(charts) == 2 and len(set(charts)) == 2


def test_per_strategy_between_groups_uses_every_pair_when_there_are_few():
    # docs/AUDIT.md: between-group pairs are every pair when there are at most
    # `pairs_per_label` (pairs_sampled = pairs_possible). Per strategy, the budget is shared
    # out over classes by rows, so class a (15 pairs, share 13) is sampled although the
    # label has 18 pairs <= 20.
    from synthgen.audit.similarity import view_similarity_table

    rng = np.random.default_rng(0)
    embeddings = rng.normal(size=(9, 4))
    embeddings /= np.linalg.norm(embeddings, axis=1, keepdims=True)
    groups = np.arange(9)
    classes = ["a"] * 6 + ["b"] * 3
    row = view_similarity_table(embeddings, groups, ["seeds"] * 9, pairs_per_label=20,
                                classes=classes)["seeds"]
    pairs = [(i, j) for i in range(9) for j in range(i + 1, 9) if classes[i] == classes[j]]
    assert row["pairs_possible"] == len(pairs) == 18
    assert row["pairs_sampled"] == row["pairs_possible"]
    assert row["between_groups"] == pytest.approx(
        np.mean([embeddings[i] @ embeddings[j] for i, j in pairs]))


def test_contact_sheet_shows_a_groups_views_in_view_order(tmp_path):
    from synthgen.audit.report import _per_view_lines, _sheet_rows

    colours = ["red", "green", "blue", "red", "green", "blue", "red", "green", "blue", "red", "green"]
    dataset = build_dataset(tmp_path / "data", [{"class": "circle", "colours": colours}])
    spec = spec_from_recipe({}, attributes=[parse_attribute_option("colour=red,green,blue")])
    outcome = _audit(dataset, spec)
    report = json.loads(json.dumps(outcome.report))
    read = {line["view"]: line for line in _per_view_lines(report)}
    (_, cells), = _sheet_rows(report, outcome.pictures, read, ["class-circle-000000"])
    shown = [readings[0][0] for _, readings in cells]
    # Each cell's reading in sheet order must follow views 0..10; sorted(view ids) puts
    # view10 right after view1.
    assert shown == colours


def test_the_clip_identity_does_not_depend_on_where_the_weights_were_read_from(tmp_path, monkeypatch):
    """The identity hashed the config as transformers serialises it, `_name_or_path` (the
    folder it was loaded from) included: the same world-clip had another identity in every
    checkout or install, and a relative --clip DIR another in every working directory, so
    embeddings.npz was thrown away. The weights, config and preprocessing decide it now,
    and the cache reuses rows across spellings of the same model."""
    import shutil

    import torch

    from synthgen.audit.cache import EmbeddingCache, save_cache
    from synthgen.audit.encoder import load_clip_encoder
    from synthgen.builtin import resolve_model_source

    copy = tmp_path / "elsewhere" / "my-clip"
    shutil.copytree(resolve_model_source("builtin:world-clip", "--clip"), copy)
    monkeypatch.chdir(copy.parent)
    builtin = load_clip_encoder("builtin:world-clip", torch.device("cpu"), "float32").identity
    relative = load_clip_encoder("my-clip", torch.device("cpu"), "float32").identity
    absolute = load_clip_encoder(str(copy), torch.device("cpu"), "float32").identity
    assert builtin.startswith("builtin:world-clip@") and relative.startswith("my-clip@")
    digests = {identity.rpartition("@")[2] for identity in (builtin, relative, absolute)}
    assert len(digests) == 1, (builtin, relative, absolute)
    save_cache(tmp_path / "embeddings.npz", builtin, ["view-0"], ["sha1"],
               np.ones((1, 4), np.float32), np.zeros(1, bool))
    assert EmbeddingCache.load(tmp_path / "embeddings.npz", relative).get("view-0", "sha1") is not None
    assert EmbeddingCache.load(tmp_path / "embeddings.npz",
                               builtin.replace("/float32", "/float16")).get("view-0", "sha1") is None
