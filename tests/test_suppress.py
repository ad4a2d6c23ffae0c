"""Suppression at generation time: rejection by a detector (erasure: tests/test_erase.py)."""

from __future__ import annotations

import json

import pytest
import torch
import webdataset
from click.testing import CliRunner

from synthgen.cli import main
from synthgen.attributes import detector_texts
from synthgen.engines.local import GenerateOptions, generate_dataset
from synthgen.generate import prepare
from synthgen.generate.detector import ClipConceptScorer
from synthgen.generate.load import load_pipeline
from synthgen.generate.sampler import Rejector
from synthgen.inspection import failed_concepts
from synthgen.plan import make_plan
from synthgen.recipe import ModelSpec, load_recipe
from synthgen.seeding import derive_seed

REJECT = {"suppress": [{"concept": "bright", "method": "reject", "threshold": 0.5,
                        "max_retries": 2}]}


def brightness(images: torch.Tensor) -> torch.Tensor:
    return images.float().mean(dim=(1, 2, 3))


def samples(out_dir):
    urls = sorted(str(p) for p in out_dir.glob("shard-*.tar"))
    return [json.loads(s["json"]) for s in
            webdataset.WebDataset(urls, shardshuffle=False, empty_check=False)]


def plain_views(out_dir) -> dict[tuple[str, int], torch.Tensor]:
    urls = [str(p) for p in sorted(out_dir.glob("shard-*.tar"))]
    images = {}
    for sample in webdataset.WebDataset(urls, shardshuffle=False, empty_check=False).decode("rgb8"):
        for view in sample["json"]["views"]:  # decode() has parsed the json already
            images[(sample["__key__"], view["view"])] = torch.tensor(sample[view["file"]])
    return images


def test_rejection_regenerates_exactly_the_flagged_views(write_recipe, tmp_path, monkeypatch):
    # 1. What the generator makes without suppression; a stand-in detector calls the brighter
    #    half of those views 'bright' (PNG is lossless, so it sees the same pixels).
    #    Bytes are fixed per batch size (calls are padded to it), so every run here uses 5.
    generate_dataset(make_plan(load_recipe(write_recipe(name="plain.yaml"))), tmp_path / "plain",
                     GenerateOptions(progress=False, device="cpu", batch_size=5))
    first_images = plain_views(tmp_path / "plain")
    threshold = float(torch.stack([brightness(i[None]) for i in first_images.values()]).median())

    def fake_rejectors(recipe, device):
        score = lambda images, prompts: (brightness(images) > threshold).float()  # noqa: E731
        return (Rejector(concept="bright", threshold=0.5, max_retries=2, score=score),)

    monkeypatch.setattr(prepare, "build_rejectors", fake_rejectors)
    plan = make_plan(load_recipe(write_recipe(REJECT)))
    # 2. With rejection, twice (one encoding thread the second time): the same bytes, although
    #    redrawn views share their padded calls with other views than at first.
    for encode_workers, name in ((4, "a"), (1, "b")):
        generate_dataset(plan, tmp_path / name,
                         GenerateOptions(progress=False, device="cpu", batch_size=5,
                                         encode_workers=encode_workers))
    assert [p.read_bytes() for p in sorted((tmp_path / "a").glob("*.tar"))] == \
        [p.read_bytes() for p in sorted((tmp_path / "b").glob("*.tar"))], "deterministic"
    # 3. Exactly the views the detector flagged were drawn again, from derived seeds.
    rejected_total = 0
    final_images = plain_views(tmp_path / "a")
    for meta in samples(tmp_path / "a"):
        for view in meta["views"]:
            key = (meta["group_id"], view["view"])
            flagged = bool(brightness(first_images[key][None]) > threshold)
            # Every view of a rejecting recipe records the same keys (stable for readers).
            assert set(view["rejections"]) == set(view["suppression_failed"]) == {"bright"}
            assert (view["rejections"]["bright"] > 0) == flagged, key
            if flagged:
                count = view["rejections"]["bright"]
                rejected_total += count
                expected_seed = view["seed"]
                for attempt in range(1, count + 1):
                    expected_seed = derive_seed("retry", expected_seed, attempt)
                assert view["seed_used"] == expected_seed
                passed = bool(brightness(final_images[key][None]) <= threshold)
                assert passed != view["suppression_failed"]["bright"]
                assert count == 2 or passed
            else:
                assert view["seed_used"] == view["seed"] and not view["suppression_failed"]["bright"]
                assert torch.equal(final_images[key], first_images[key]), "kept as first drawn"
    assert rejected_total > 0
    manifest = json.loads((tmp_path / "a" / "manifest.json").read_text())
    assert manifest["totals"]["rejections"] == {"bright": rejected_total}


def odd_pixel_sum(images: torch.Tensor) -> torch.Tensor:
    """A stand-in detector whose verdict flips with any change of any pixel of a view."""
    return (images.flatten(1).long().sum(dim=1) % 2).float()


@pytest.fixture
def parity_detector(monkeypatch) -> list[torch.Tensor]:
    """Each `reject` entry's CLIP detector becomes `odd_pixel_sum`; returns what it scores."""
    scored: list[torch.Tensor] = []

    class ParityScorer:
        def __init__(self, model_id, device):
            pass

        def probabilities(self, images, concept, contrast, prompts):
            scored.extend(images)
            return odd_pixel_sum(images)

    monkeypatch.setattr(prepare, "ClipConceptScorer", ParityScorer)
    return scored


def test_rejection_judges_the_stored_bytes(write_recipe, tmp_path, parity_detector):
    # JPEG and a stored size other than the generated one: the stored views are not the
    # sampler's pixels, and the detector must judge what is stored.
    recipe = write_recipe({**REJECT, "output": {"format": "jpg", "quality": 60, "resolution": 48}})
    generate_dataset(make_plan(load_recipe(recipe)), tmp_path / "data",
                     GenerateOptions(progress=False, device="cpu"))
    scored = parity_detector
    seen = {image.numpy().tobytes() for image in scored}
    stored = plain_views(tmp_path / "data")
    recorded = {(meta["group_id"], view["view"]): view for meta in samples(tmp_path / "data")
                for view in meta["views"]}
    assert {tuple(image.shape) for image in scored} == {(48, 48, 3)}
    for key, image in stored.items():
        was_scored = image.numpy().tobytes() in seen
        assert was_scored, f"{key}: the stored view is not an image the detector scored"
        # The verdict recorded at generation is the verdict on the stored file.
        assert bool(odd_pixel_sum(image[None])) == bool(failed_concepts(recorded[key])), key
    assert any(sum(view["rejections"].values()) for view in recorded.values())


def test_a_judged_view_is_encoded_once_and_its_file_is_stored(write_recipe, tmp_path,
                                                              parity_detector, monkeypatch):
    """The detector judges the stored file; the writer stores that file rather than encoding
    the view again (a 512 px PNG takes ~50 ms, twice per view on the sampler's and the
    writer's side before), and two concepts judge one encoding of each draw."""
    from PIL import Image

    saved = []
    original_save = Image.Image.save

    def counting_save(self, *args, **kwargs):
        saved.append(self.size)
        return original_save(self, *args, **kwargs)

    monkeypatch.setattr(Image.Image, "save", counting_save)
    recipe = write_recipe({"suppress": [
        {"concept": "odd", "method": "reject", "max_retries": 2},
        {"concept": "uneven", "method": "reject", "max_retries": 2}],
        "output": {"format": "png", "resolution": 48}})
    generate_dataset(make_plan(load_recipe(recipe)), tmp_path / "data",
                     GenerateOptions(progress=False, device="cpu"))
    views = [view for meta in samples(tmp_path / "data") for view in meta["views"]]
    draws = len(views) + sum(max(view["rejections"].values(), default=0) for view in views)
    assert draws > len(views)  # some views were redrawn
    assert len([size for size in saved if size == (48, 48)]) == draws
    assert len(parity_detector) == 2 * draws  # each concept scores every draw once


def test_generate_and_inspect_print_rejections_per_concept(write_recipe, tmp_path, parity_detector):
    recipe = write_recipe({"suppress": [{"concept": "odd", "method": "reject", "max_retries": 1}]})
    out = tmp_path / "data"
    generated = CliRunner().invoke(main, ["generate", str(recipe), "--out", str(out),
                                          "--device", "cpu", "--quiet"])
    assert generated.exit_code == 0, generated.output
    views = [view for meta in samples(out) for view in meta["views"]]
    redraws = sum(view.get("rejections", {}).get("odd", 0) for view in views)
    failed = sum("odd" in failed_concepts(view) for view in views)
    assert redraws > 0 and failed > 0
    line = (f"reject 'odd': {redraws} redraws; {failed} of {len(views)} views "
            f"({failed / len(views):.1%}) still failed after 1 retry")
    assert line in generated.output
    inspected = CliRunner().invoke(main, ["inspect", str(out)])
    assert inspected.exit_code == 0, inspected.output
    assert line in inspected.output


def test_prompts_that_ask_for_a_suppressed_concept_are_warned_about(write_recipe):
    recipe = write_recipe({
        "templates": ["a {colour} {class}"],
        "classes": [{"name": "circle", "groups": 1}, {"name": "Striped heart", "groups": 1},
                    {"name": "square", "templates": ["a {colour} square with text"], "groups": 1}],
        "corner_cases": [{"name": "hearts", "prompt": "a  STRIPED {colour} heart",
                          "label": "circle", "groups": 1}],
        "suppress": [{"concept": "striped", "method": "reject"},
                     {"concept": "text, watermark", "method": "negative"},
                     {"concept": "stripe", "method": "erase"}]})  # not a whole word of 'striped'
    for command in ("validate", "plan"):
        result = CliRunner().invoke(main, [command, str(recipe)])
        assert result.exit_code == 0, result.output
        warned = [line for line in result.output.splitlines()
                  if "asks for what it suppresses" in line]
        assert len(warned) == 3, warned
        assert warned[0].startswith("warning: suppress[0] (reject 'striped'): "
                                    "class 'Striped heart'")
        assert "corner case 'hearts' prompt 'a  STRIPED {colour} heart'" in warned[1]
        assert "redrawn until their retries run out" in warned[1]
        assert warned[2].startswith("warning: suppress[1] (negative 'text, watermark'): class "
                                    "'square' template 'a {colour} square with text'")


def test_each_concept_gets_only_its_own_retries():
    from synthgen.generate.sampler import Sampler
    from synthgen.recipe import ViewsSpec
    from synthgen.views import plan_views

    model = load_pipeline(SPEC, torch.device("cpu"), torch.float32)
    everything = lambda images, prompts: torch.ones(len(images))  # noqa: E731 - flags every view
    nothing = lambda images, prompts: torch.zeros(len(images))  # noqa: E731
    rejectors = (Rejector(concept="logo", threshold=0.5, max_retries=1, score=everything),
                 Rejector(concept="text", threshold=0.5, max_retries=4, score=nothing))
    sampler = Sampler(model, SPEC, batch_size=2, rejectors=rejectors)
    views = list(plan_views(ViewsSpec(count=2, strategy="seeds"), 7, "g", "a red circle", ""))
    records = sampler.sample(views).records
    # 'logo' allows one retry; the larger allowance of 'text' must not lend it more.
    for view, record in zip(views, records):
        assert record["rejections"] == {"logo": 1}
        assert record["suppression_failed"] == ["logo"]
        assert record["seed_used"] == derive_seed("retry", view.seed, 1)


def test_clip_detector_scores_are_probabilities(tiny_clip_dir):
    scorer = ClipConceptScorer(str(tiny_clip_dir), torch.device("cpu"))
    images = torch.randint(0, 256, (3, 32, 32, 3), dtype=torch.uint8,
                           generator=torch.Generator().manual_seed(0))
    prompts = ["a red circle", "a blue square", "a green star"]
    scores = scorer.probabilities(images, "a watermark", "a photo", prompts)
    assert scores.shape == (3,) and bool(((scores > 0) & (scores < 1)).all())
    assert torch.equal(scores[1:2],
                       scorer.probabilities(images[1:2], "a watermark", "a photo", prompts[1:2]))


def test_a_prompt_contrast_compares_each_view_with_its_own_prompt(tiny_clip_dir):
    assert detector_texts("striped", "a photo", "a red star") == (["striped"], "a photo")
    assert detector_texts("striped", "{prompt}, plain", "a red star") == (
        ["striped a red star, plain", "a striped red star, plain", "a red striped star, plain",
         "a red star striped, plain"], "a red star, plain")
    # A prompt that asks for the concept is compared as if it did not: its views get flagged.
    assert detector_texts("striped", "{prompt}", "a  Striped red star") == \
        detector_texts("striped", "{prompt}", "a red star")
    scorer = ClipConceptScorer(str(tiny_clip_dir), torch.device("cpu"))
    image = torch.randint(0, 256, (1, 32, 32, 3), dtype=torch.uint8,
                          generator=torch.Generator().manual_seed(1))
    prompts = ["a red star", "a blue circle on a gray background"]
    scores = scorer.probabilities(image.expand(2, -1, -1, -1), "striped", "{prompt}", prompts)

    # Reference: the two-way softmax of CLIP's own features, the concept side being the unit
    # mean of its texts' unit embeddings.
    def unit_text(texts):
        tokens = scorer.processor.tokenizer(texts, padding=True, return_tensors="pt")
        features = scorer.model.get_text_features(**tokens)
        return torch.nn.functional.normalize(getattr(features, "pooler_output", features), dim=-1)

    with torch.no_grad():
        pixels = scorer.processor.image_processor(images=[image[0].numpy()],
                                                  return_tensors="pt")["pixel_values"]
        features = scorer.model.get_image_features(pixel_values=pixels)
        features = getattr(features, "pooler_output", features)
        unit_image = torch.nn.functional.normalize(features, dim=-1)
        for prompt, score in zip(prompts, scores):
            concept_texts, contrast = detector_texts("striped", "{prompt}", prompt)
            concept_side = torch.nn.functional.normalize(unit_text(concept_texts).mean(0), dim=-1)
            sides = torch.stack([concept_side, unit_text([contrast])[0]])
            expected = (scorer.model.logit_scale.exp() * unit_image @ sides.T).softmax(-1)[0, 0]
            assert float(score) == pytest.approx(float(expected), abs=1e-5), prompt
    assert float(scores[0]) != pytest.approx(float(scores[1]), abs=1e-4), "each view its own texts"


SPEC = ModelSpec(id="builtin:tiny-random", steps=2, width=32, height=32)



def test_reject_oracle_bench_counts_what_the_shards_record(write_recipe, tmp_path):
    import importlib.util
    from pathlib import Path

    recipe = write_recipe({"suppress": [{"concept": "striped", "method": "reject",
                                         "contrast": "{prompt}", "threshold": 0.3,
                                         "max_retries": 1}]})
    generate_dataset(make_plan(load_recipe(recipe)), tmp_path / "out",
                     GenerateOptions(progress=False, device="cpu"))
    path = Path(__file__).resolve().parents[1] / "bench" / "reject_oracle.py"
    spec = importlib.util.spec_from_file_location("reject_oracle", path)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    result = bench.main([str(tmp_path / "out"), "--roc", "6"])
    views = [view for meta in samples(tmp_path / "out") for view in meta["views"]]
    stored = result["stored"]
    assert stored["views"] == len(views) == 18
    assert stored["retries_exhausted"]["count"] == sum("striped" in failed_concepts(v) for v in views)
    assert stored["redraws"] == sum(v.get("rejections", {}).get("striped", 0) for v in views)
    assert stored["oracle_striped_unasked"]["of"] == 18, "no prompt of the recipe asks for stripes"
    roc = result["roc"]
    assert roc["images"] == 6 and set(roc["detectors"]) == {"'striped' vs '{prompt}'",
                                                            "'striped' vs 'a photo'"}
    for detector in roc["detectors"].values():
        for rates in detector["thresholds"].values():
            assert rates["recall"]["of"] == roc["oracle_striped"]
            assert rates["false_positive"]["of"] == 6 - roc["oracle_striped"]


def test_only_reject_entries_give_rejectors_and_each_detector_loads_once(write_recipe, monkeypatch):
    loaded = []

    class CountingScorer:
        def __init__(self, model_id, device):
            loaded.append(model_id)

    monkeypatch.setattr(prepare, "ClipConceptScorer", CountingScorer)
    recipe = load_recipe(write_recipe({"suppress": [
        {"concept": "text", "method": "negative"},
        {"concept": "bright", "method": "reject", "threshold": 0.4},
        {"concept": "logo", "method": "erase"},
        {"concept": "dark", "method": "reject", "max_retries": 5}]}))
    rejectors = prepare.build_rejectors(recipe, torch.device("cpu"))
    assert [(r.concept, r.threshold, r.max_retries) for r in rejectors] == [
        ("bright", 0.4, 3), ("dark", 0.5, 5)]
    assert loaded == ["builtin:world-clip"], "one scorer per distinct detector"
