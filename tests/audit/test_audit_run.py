"""The audit pipeline on hand-built datasets with the deterministic fake encoder."""

from __future__ import annotations

import json
from collections import Counter

import numpy as np
import pytest
from audit_fixtures import COLOURS, MeanColourEncoder, build_dataset, expected_label, noise_image

from synthgen.audit.classify import UNSURE, TextEmbeddings, ZeroShotAttribute
from synthgen.audit.decode import ImageDecoder
from synthgen.audit.run import AuditOptions, run_audit
from synthgen.audit.spec import parse_attribute_option, spec_from_recipe
from synthgen.audit.similarity import near_duplicates, within_group_means

RECIPE = {
    "balance": [{"attribute": "colour", "values": {"red": 1, "green": 1, "blue": 1}, "applies_to": None}],
    "suppress": [{"concept": "blue", "method": "reject", "threshold": 0.5, "contrast": "a photo"}],
    "audit": {"margin": 0.1, "duplicate_threshold": 0.95, "fidelity_threshold": 0.3},
}


def _groups():
    """Three classes, mixed colours, two ambiguous (olive) views; views of a group share a colour."""
    plan = [("circle", "red"), ("circle", "green"), ("circle", "blue"), ("circle", "red"),
            ("square", "green"), ("square", "green"), ("square", "olive"), ("square", "blue"),
            ("star", "blue"), ("star", "red")]
    groups = [{"class": name, "colours": [colour] * 3, "balance": {"colour": colour}} for name, colour in plan]
    groups[0]["strategy"] = "seeds"  # older datasets store view_strategy as a string, newer as a list
    return groups


def _audit(dataset, recipe=RECIPE, **settings):
    spec = spec_from_recipe(recipe)
    return run_audit(dataset, spec, MeanColourEncoder(), AuditOptions(progress=False, batch_size=7, **settings))


def test_counts_equal_a_counter_over_the_same_classifications(tmp_path):
    groups = _groups()
    dataset = build_dataset(tmp_path / "data", groups)
    outcome = _audit(dataset)
    colour = outcome.report["attributes"]["colour"]
    # Views of a group record one colour: counted per group, per-view counts kept beside.
    assert colour["unit"] == "group"
    # What the fake says, classified view by view and group by group outside the audit.
    encoder = MeanColourEncoder()
    classifier = ZeroShotAttribute(spec_from_recipe(RECIPE).attributes[0], TextEmbeddings(encoder),
                                   encoder.logit_scale, margin=0.1)
    decoder = ImageDecoder(__import__("torch").device("cpu"))
    by_view = {"overall": Counter()}
    by_group = {"overall": Counter()}
    for index, group in enumerate(groups):
        images = decoder.decode_batch([noise_image(c, index * 100 + v) for v, c in enumerate(group["colours"])])
        choices, probabilities = classifier.classify(encoder.encode_images(images))
        scope = f"class:{group['class']}"
        group_choice = classifier.decide(probabilities.mean(axis=0, keepdims=True))[0]
        for counters, found in ((by_view, choices), (by_group, [group_choice])):
            for choice in found:
                value = "unsure" if choice == UNSURE else classifier.spec.values[choice]
                counters.setdefault(scope, Counter())[value] += 1
                counters["overall"][value] += 1
    decoder.close()
    for scope, counter in by_group.items():
        measured = colour["scopes"][scope]
        assert {v: c for v, c in measured["counts"].items() if c} == {
            v: c for v, c in counter.items() if v != "unsure"}, scope
        assert measured["unsure"] == counter["unsure"] and measured["units"] == sum(counter.values())
        per_view = measured["per_view"]
        assert {v: c for v, c in per_view["counts"].items() if c} == {
            v: c for v, c in by_view[scope].items() if v != "unsure"}, scope
        assert per_view["unsure"] == by_view[scope]["unsure"]
    # And the fake classifies as intended: olive is unsure, the rest by colour.
    intended = Counter(expected_label(g["colours"][0]) for g in groups)
    assert colour["scopes"]["overall"]["counts"] == {v: intended[v] for v in COLOURS}
    assert colour["scopes"]["overall"]["unsure"] == intended[None] == 1
    assert colour["scopes"]["overall"]["per_view"]["unsure"] == 3
    assert outcome.summary["unsure"] == pytest.approx(1 / 10)


def test_metrics_agreement_suppression_fidelity_and_similarity(tmp_path):
    dataset = build_dataset(tmp_path / "data", _groups())
    report = _audit(dataset).report
    overall = report["attributes"]["colour"]["scopes"]["overall"]
    # 3 red, 3 green, 3 blue sure groups (9 views each) against a uniform target.
    assert overall["counts"] == {"red": 3, "green": 3, "blue": 3}
    assert overall["per_view"]["counts"] == {"red": 9, "green": 9, "blue": 9}
    assert overall["kl"] == pytest.approx(0.0, abs=1e-12) and overall["chi2_p"] == pytest.approx(1.0)
    agreement = report["attributes"]["colour"]["agreement"]
    # The olive group records a value the audit does not read: in the confusion table only.
    assert (agreement["agree"], agreement["sure"], agreement["unsure"], agreement["not_read"]) == (9, 9, 0, 1)
    assert agreement["confusion"] == {"red": {"red": 3}, "green": {"green": 3}, "blue": {"blue": 3},
                                      "olive": {"unsure": 1}}
    assert agreement["per_view"] == {"units": 30, "sure": 27, "agree": 27, "agreement": 1.0}
    blue = report["suppression"]["blue"]
    assert (blue["detected"], blue["views"], blue["threshold"]) == (9, 30, 0.5)
    # A group's views share a colour and differ in noise: alike within, less so between colours.
    similarity = report["similarity"]["per_class"]["class:circle"]
    assert similarity["within_group"] > similarity["between_groups"]
    assert report["similarity"]["per_strategy"]["seeds"]["groups"] == 10
    # Prompts name the colour; olive views ("a olive square") match no colour word.
    fidelity = report["fidelity"]
    assert fidelity["below"] == 3 and all("olive" in w["prompt"] for w in fidelity["worst"][:3])
    assert report["duplicates"]["view_pairs"] == 0


def test_planted_imbalance_duplicate_and_black_image_are_found(tmp_path):
    groups = [{"class": "circle", "colours": ["red"] * 2} for _ in range(8)]
    groups += [{"class": "circle", "colours": ["green"] * 2}, {"class": "circle", "colours": ["blue"] * 2}]
    copied = noise_image("red", seed=12345)
    groups[1]["images"] = [copied, noise_image("red", 777)]
    groups[5]["images"] = [noise_image("red", 778), copied]           # duplicate of group 1's view 0
    groups[9]["colours"] = ["blue", "black"]                           # a black view
    dataset = build_dataset(tmp_path / "data", groups)
    outcome = _audit(dataset)
    summary, report = outcome.summary, outcome.report
    overall = report["attributes"]["colour"]["scopes"]["overall"]
    # 8 red groups of 10 against a uniform target; counting views would claim 20 draws.
    assert summary["kl"] > 0.3 and 1e-3 < overall["chi2_p"] < 0.01
    assert overall["per_view"]["chi2_p"] < 1e-3
    assert report["duplicates"]["view_pairs"] == 1 and report["duplicates"]["group_pairs"] == 1
    pair = report["duplicates"]["examples"][0]
    assert {pair["a"], pair["b"]} == {"class-circle-000001.view0.png", "class-circle-000005.view1.png"}
    assert summary["duplicates"] == pytest.approx(2 / 10)
    assert report["integrity"]["black_views"] == ["class-circle-000009.view1.png"]
    assert summary["black"] == pytest.approx(1 / 20)


def test_integrity_missing_views_and_sha256_mismatch(tmp_path):
    groups = _groups()
    groups[2]["drop_view"] = 1
    dataset = build_dataset(tmp_path / "data", groups)
    manifest = json.loads((dataset / "manifest.json").read_text())
    manifest["shards"][1]["sha256"] = "0" * 64
    manifest["shards"].append({"name": "shard-000099.tar", "sha256": "", "samples": 0, "images": 0})
    (dataset / "manifest.json").write_text(json.dumps(manifest))
    outcome = _audit(dataset)
    integrity = outcome.report["integrity"]
    assert integrity["missing_views"] == ["class-circle-000002.view1.png"]
    assert [m["shard"] for m in integrity["sha256_mismatches"]] == ["shard-000001.tar"]
    assert integrity["missing_shards"] == ["shard-000099.tar"]
    assert outcome.summary["integrity"] == 3
    assert outcome.report["totals"]["embedded_views"] == 29


def test_embedding_cache_is_reused_and_invalidated(tmp_path):
    dataset = build_dataset(tmp_path / "data", _groups())
    cache = tmp_path / "report" / "embeddings.npz"
    first = _audit(dataset, cache_path=cache)
    assert cache.is_file() and first.report["totals"]["embeddings_from_cache"] == 0
    encoder = MeanColourEncoder()
    spec = spec_from_recipe(RECIPE, attributes=[parse_attribute_option("hue=red,blue")])
    second = run_audit(dataset, spec, encoder, AuditOptions(progress=False, cache_path=cache))
    assert encoder.image_calls == 0 and second.report["totals"]["embeddings_from_cache"] == 30
    assert second.report["attributes"]["colour"] == first.report["attributes"]["colour"]

    class OtherModel(MeanColourEncoder):
        identity = "fake-mean-colour/2"

    other = OtherModel()
    run_audit(dataset, spec, other, AuditOptions(progress=False, cache_path=cache))
    assert other.image_calls == 30


def test_blockwise_duplicates_match_brute_force():
    rng = np.random.default_rng(0)
    embeddings = rng.normal(size=(300, 8)).astype(np.float32)
    embeddings[150] = embeddings[3]
    embeddings[299] = embeddings[3] + 0.01
    embeddings /= np.linalg.norm(embeddings, axis=1, keepdims=True)
    groups = np.arange(300) // 3
    found = near_duplicates(embeddings, groups, 0.9, block=64)
    full = embeddings @ embeddings.T
    brute = {(i, j) for i in range(300) for j in range(i + 1, 300)
             if full[i, j] > 0.9 and groups[i] != groups[j]}
    assert found["view_pairs"] == len(brute) and {(a, b) for a, b, _ in found["top"]} == brute
    within = within_group_means(embeddings, groups)
    assert within[0] == pytest.approx(np.mean([full[0, 1], full[0, 2], full[1, 2]]), abs=1e-5)


def test_batched_jpeg_decode_matches_pillow_and_survives_a_corrupt_jpeg():
    import torch

    jpegs = [noise_image("red", seed, fmt="jpg") for seed in range(3)]
    batched = ImageDecoder(torch.device("cpu"), batched_jpeg=True)
    plain = ImageDecoder(torch.device("cpu"))
    try:
        for got, want in zip(batched.decode_batch(jpegs), plain.decode_batch(jpegs)):
            assert got.shape == want.shape == (3, 16, 16)
            assert (got.int() - want.int()).abs().max() <= 2   # libjpeg versions may round apart
        broken = batched.decode_batch([jpegs[0], b"\xff\xd8not a jpeg", None])
        assert broken[0] is not None and broken[1] is None and broken[2] is None
    finally:
        batched.close()
        plain.close()


def test_read_ahead_stage_keeps_order_and_reraises_errors():
    from synthgen.audit.run import _ahead

    assert list(_ahead(iter(range(50)), 3)) == list(range(50))

    def failing():
        yield 1
        raise ValueError("broken shard reader")

    results = _ahead(failing(), 2)
    assert next(results) == 1
    with pytest.raises(ValueError, match="broken shard reader"):
        next(results)
    early = _ahead(iter(range(1000)), 2)
    assert next(early) == 0
    early.close()  # the producer thread stops instead of blocking on a full queue


def test_targets_follow_applies_to_and_corner_cases_are_their_own_scope(tmp_path):
    groups = [{"class": "circle", "colours": ["red"] * 2} for _ in range(3)]
    groups += [{"class": "square", "colours": [c] * 2} for c in ("red", "green", "green", "blue")]
    groups += [{"class": "circle", "corner": "ring", "colours": ["blue"] * 2}]
    recipe = {"balance": [{"attribute": "colour", "values": {"red": 1, "green": 2, "blue": 1},
                           "applies_to": ["square"]}]}
    scopes = _audit(build_dataset(tmp_path / "data", groups), recipe).report["attributes"]["colour"]["scopes"]
    assert scopes["class:square"]["target"] == {"red": 0.25, "green": 0.5, "blue": 0.25}
    assert scopes["class:square"]["kl"] == pytest.approx(0.0, abs=1e-12)
    assert scopes["class:circle"]["target_source"] == "uniform (no recipe target)"
    assert scopes["corner:ring"]["counts"] == {"red": 0, "green": 0, "blue": 1}
    # The overall row covers the groups the recipe balanced: the squares.
    assert (scopes["overall"]["units"], scopes["overall"]["views"]) == (4, 8)
    assert scopes["overall"]["target_source"] == "recipe balance"


def test_per_strategy_diversity_pairs_groups_of_one_class_only():
    from synthgen.audit.similarity import view_similarity_table

    # Class a: every view the same vector; class b: each group along its own axis.
    groups = np.repeat(np.arange(6), 2)  # two views per group, three groups per class
    classes = ["a"] * 6 + ["b"] * 6
    a_views = np.tile(np.eye(8)[0], (6, 1))
    b_views = np.vstack([np.eye(8)[1 + g] for g in groups[6:] - 3])
    embeddings = np.vstack([a_views, b_views])
    per_class = view_similarity_table(embeddings, groups, classes, pairs_per_label=400)
    assert per_class["a"]["between_groups"] == pytest.approx(1.0)
    assert per_class["b"]["between_groups"] == pytest.approx(0.0)
    strategy = view_similarity_table(embeddings, groups, ["seeds"] * 12, pairs_per_label=400,
                                     classes=classes)
    # Pairs within a class only: half from a (1.0), half from b (0.0); never a-with-b (0.0).
    assert strategy["seeds"]["between_groups"] == pytest.approx(0.5, abs=0.01)
    mixed = view_similarity_table(embeddings, groups, ["seeds"] * 12, pairs_per_label=400)
    assert mixed["seeds"]["between_groups"] < 0.4, "without classes, pairs cross classes"


@pytest.mark.parametrize("recorded_as", ["balance", "slots"])
def test_an_attribute_recorded_per_view_is_counted_per_view(tmp_path, recorded_as):
    # The slots view strategy re-draws a slot per view (the json's views[i].slots), and a view
    # may record its own balanced value: each view is then one draw.
    groups = [{"class": "circle", "colours": ["red", "green", "blue"],
               "prompt": ["a red circle", "a green circle", "a blue circle"],
               "view_fields": [{recorded_as: {"colour": c}} for c in ("red", "green", "blue")]}
              for _ in range(4)]
    colour = _audit(build_dataset(tmp_path / "data", groups)).report["attributes"]["colour"]
    overall = colour["scopes"]["overall"]
    assert colour["unit"] == "view" and "per_view" not in overall
    assert overall["counts"] == {"red": 4, "green": 4, "blue": 4} and overall["units"] == 12
    assert colour["agreement"]["agree"] == 12 and colour["agreement"]["sure"] == 12


def test_groups_that_hold_an_attribute_count_once_beside_groups_that_vary_it(tmp_path):
    """One class varies colour per view, another holds it per group (`classes[].views`): the
    varying class's views are each a draw, the holding class's groups one draw each. Counting
    every view of a holding group (as when the unit was chosen for the whole attribute) made
    4 blue squares read as 12 draws."""
    varying = [{"class": "circle", "colours": ["red", "green", "blue"],
                "prompt": ["a red circle", "a green circle", "a blue circle"],
                "view_fields": [{"slots": {"colour": c}} for c in ("red", "green", "blue")]}
               for _ in range(2)]
    holding = [{"class": "square", "colours": ["blue"] * 3, "slots": {"colour": "blue"}}
               for _ in range(4)]
    colour = _audit(build_dataset(tmp_path / "data", varying + holding)).report["attributes"]["colour"]
    overall = colour["scopes"]["overall"]
    assert colour["unit"] == "draw"
    assert overall["counts"] == {"red": 2, "green": 2, "blue": 6}, overall["counts"]
    assert overall["units"] == 10 and overall["views"] == 18
    assert overall["per_view"]["counts"] == {"red": 2, "green": 2, "blue": 14}
    assert colour["scopes"]["class:square"]["units"] == 4
    assert colour["scopes"]["class:circle"]["units"] == 6
    assert colour["agreement"]["agree"] == 10


def test_unrecorded_attribute_unit_follows_the_prompts():
    from synthgen.audit.measurements.attributes import attribute_unit
    from synthgen.audit.source import ViewItem

    def item(prompt, assigned=None):
        return ViewItem(key="k", view=0, file="view0.png", shard="s", data=None, class_name="c",
                        corner_case=None, strategy="prompt", prompt=prompt, assigned=assigned or {})

    same = [item("a red circle"), item("a red circle")]
    differ = [item("a circle at night"), item("a circle by day")]
    groups = np.array([0, 0])
    assert attribute_unit("light", same, groups) == "group"
    assert attribute_unit("light", differ, groups) == "view"
    recorded = [item("a circle at night", {"colour": "red"}), item("a circle by day", {"colour": "red"})]
    assert attribute_unit("colour", recorded, groups) == "group"


def test_slot_weights_are_the_target_and_recorded_slots_are_compared(tmp_path):
    # colour is a sampled slot with weights 2:1:1 for circles; squares' template has no colour.
    recipe = {"slots": {"colour": {"red": 2, "green": 1, "blue": 1}},
              "classes": [{"name": "circle", "groups": 4}, {"name": "square", "groups": 2,
                                                            "templates": ["a {class}"]}],
              "audit": {"attributes": [{"name": "colour", "values": ["red", "green", "blue"]}]}}
    groups = [{"class": "circle", "colours": [c] * 2, "slots": {"colour": recorded}}
              for c, recorded in (("red", "red"), ("red", "red"), ("green", "green"), ("blue", "red"))]
    groups += [{"class": "square", "colours": ["green"] * 2} for _ in range(2)]
    colour = _audit(build_dataset(tmp_path / "data", groups), recipe).report["attributes"]["colour"]
    assert colour["target_from"] == "slot weights"
    circle, overall = colour["scopes"]["class:circle"], colour["scopes"]["overall"]
    assert circle["target"] == pytest.approx({"red": 0.5, "green": 0.25, "blue": 0.25})
    assert circle["target_source"] == "recipe slot weights"
    # The squares drew no colour: no target, and outside the overall test.
    assert colour["scopes"]["class:square"]["target_source"] == "uniform (no recipe target)"
    assert overall["units"] == 4 and overall["counts"] == {"red": 2, "green": 1, "blue": 1}
    agreement = colour["agreement"]
    assert (agreement["agree"], agreement["sure"]) == (3, 4)
    assert agreement["confusion"]["red"] == {"red": 2, "blue": 1}


def test_damaged_samples_count_in_integrity_and_the_rest_of_the_shard_is_read(tmp_path):
    groups = [{"class": "circle", "colours": ["red"] * 2} for _ in range(4)]
    groups[1]["json"] = b"{not json"
    groups[2]["json"] = json.dumps({"class_name": "circle", "views": [7]}).encode()  # a view is no dict
    outcome = _audit(build_dataset(tmp_path / "data", groups))
    integrity = outcome.report["integrity"]
    assert [entry["sample"] for entry in integrity["unreadable_samples"]] == [
        "class-circle-000001", "class-circle-000002"]
    assert integrity["unreadable_shards"] == []
    assert outcome.report["totals"]["groups"] == 2 and outcome.summary["integrity"] == 2


def test_between_group_similarity_uses_each_pair_once_when_there_are_few():
    from synthgen.audit.similarity import view_similarity_table

    rng = np.random.default_rng(3)
    embeddings = rng.normal(size=(10, 4))
    embeddings /= np.linalg.norm(embeddings, axis=1, keepdims=True)
    groups = np.repeat(np.arange(5), 2)
    row = view_similarity_table(embeddings, groups, ["c"] * 10, pairs_per_label=2000)["c"]
    pairs = [(i, j) for i in range(10) for j in range(i + 1, 10) if groups[i] != groups[j]]
    assert row["pairs_sampled"] == row["pairs_possible"] == len(pairs) == 40
    assert row["between_groups"] == pytest.approx(np.mean([embeddings[i] @ embeddings[j] for i, j in pairs]))
    many = view_similarity_table(embeddings, groups, ["c"] * 10, pairs_per_label=25)["c"]
    assert many["pairs_sampled"] <= 25 and many["pairs_possible"] == 40


def test_the_class_is_the_recorded_value_of_an_attribute_named_class(tmp_path):
    # Templates fill {class} with the class name: reading "class" is checked against it.
    groups = [{"class": "red", "colours": ["red"] * 2}, {"class": "green", "colours": ["green"] * 2},
              {"class": "blue", "colours": ["red"] * 2}]
    recipe = {"audit": {"attributes": [{"name": "class", "values": ["red", "green", "blue"]}]}}
    reading = _audit(build_dataset(tmp_path / "data", groups), recipe).report["attributes"]["class"]
    assert reading["unit"] == "group"
    assert reading["agreement"]["confusion"] == {"red": {"red": 1}, "green": {"green": 1}, "blue": {"red": 1}}


def test_a_prompt_contrast_scores_each_view_against_its_own_prompt(tmp_path):
    """With `contrast: "{prompt}"` the audit scores a view as generation's `reject` does
    (`attributes.detector_texts` on the view's prompt), not against the literal text."""
    from synthgen.attributes import detector_texts

    groups = [{"class": "circle", "colours": [colour] * 2, "prompt": f"a {colour} circle"}
              for colour in ("red", "green", "blue", "red", "blue")]
    dataset = build_dataset(tmp_path / "data", groups)
    recipe = {"suppress": [{"concept": "blue", "method": "reject", "threshold": 0.5,
                            "contrast": "{prompt}"}]}
    found = _audit(dataset, recipe=recipe).report["suppression"]["blue"]

    encoder = MeanColourEncoder()
    expected = {}
    for index, group in enumerate(groups):
        concept_texts, contrast = detector_texts("blue", "{prompt}", group["prompt"])
        concept_side = encoder.encode_texts(concept_texts).mean(axis=0)
        pair = np.stack([concept_side / np.linalg.norm(concept_side), encoder.encode_texts([contrast])[0]])
        for view in range(2):
            image = encoder.encode_images([_decoded(noise_image(group["colours"][view], seed=index * 100 + view))])[0]
            logits = MeanColourEncoder.logit_scale * pair @ image
            expected[f"class-circle-{index:06d}.view{view}.png"] = float(
                np.exp(logits[0]) / np.exp(logits).sum())
    assert found["detected"] == sum(p > 0.5 for p in expected.values()) == 4
    for strongest in found["strongest"]:
        assert strongest["probability"] == pytest.approx(expected[strongest["view"]], rel=1e-3, abs=1e-6)
    assert found["texts_per_view"] is True


def _decoded(png: bytes):
    import io

    import torch
    from PIL import Image

    with Image.open(io.BytesIO(png)) as image:
        return torch.from_numpy(np.asarray(image.convert("RGB")).copy()).permute(2, 0, 1)
