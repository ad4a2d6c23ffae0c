"""Suppression at generation time: rejection by a detector, and erasure by a model edit."""

from __future__ import annotations

import json

import pytest
import torch
import webdataset
from click.testing import CliRunner

from cli import main
from synthgen.engines.local import GenerateOptions, generate_dataset
from synthgen.errors import UserError
from synthgen.generate import prepare
from synthgen.generate.detector import ClipConceptScorer
from synthgen.generate.erase import cross_attention_projections, erase_concept, text_embeddings
from synthgen.generate.load import load_pipeline
from synthgen.generate.sampler import Rejector
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
    generate_dataset(make_plan(load_recipe(write_recipe(name="plain.yaml"))), tmp_path / "plain",
                     GenerateOptions(progress=False, device="cpu"))
    first_images = plain_views(tmp_path / "plain")
    threshold = float(torch.stack([brightness(i[None]) for i in first_images.values()]).median())

    def fake_rejectors(recipe, device):
        score = lambda images: (brightness(images) > threshold).float()  # noqa: E731
        return (Rejector(concept="bright", threshold=0.5, max_retries=2, score=score),)

    monkeypatch.setattr(prepare, "build_rejectors", fake_rejectors)
    plan = make_plan(load_recipe(write_recipe(REJECT)))
    # 2. With rejection, at two batch sizes: the same bytes.
    for batch_size, name in ((1, "a"), (5, "b")):
        generate_dataset(plan, tmp_path / name,
                         GenerateOptions(progress=False, device="cpu", batch_size=batch_size))
    assert [p.read_bytes() for p in sorted((tmp_path / "a").glob("*.tar"))] == \
        [p.read_bytes() for p in sorted((tmp_path / "b").glob("*.tar"))], "deterministic"
    # 3. Exactly the views the detector flagged were drawn again, from derived seeds.
    rejected_total = 0
    final_images = plain_views(tmp_path / "a")
    for meta in samples(tmp_path / "a"):
        for view in meta["views"]:
            key = (meta["group_id"], view["view"])
            flagged = bool(brightness(first_images[key][None]) > threshold)
            assert ("rejections" in view) == flagged, key
            if flagged:
                count = view["rejections"]["bright"]
                rejected_total += count
                expected_seed = view["seed"]
                for attempt in range(1, count + 1):
                    expected_seed = derive_seed("retry", expected_seed, attempt)
                assert view["seed_used"] == expected_seed
                passed = bool(brightness(final_images[key][None]) <= threshold)
                assert passed != ("suppression_failed" in view)
                assert count == 2 or passed
            else:
                assert "seed_used" not in view
                assert torch.equal(final_images[key], first_images[key]), "kept as first drawn"
    assert rejected_total > 0
    manifest = json.loads((tmp_path / "a" / "manifest.json").read_text())
    assert manifest["totals"]["rejections"] == {"bright": rejected_total}


def test_each_concept_gets_only_its_own_retries():
    from synthgen.generate.sampler import Sampler
    from synthgen.recipe import ViewsSpec
    from synthgen.views import plan_views

    model = load_pipeline(SPEC, torch.device("cpu"), torch.float32)
    everything = lambda images: torch.ones(len(images))  # noqa: E731 - flags every view
    nothing = lambda images: torch.zeros(len(images))  # noqa: E731
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
    scores = scorer.probabilities(images, "a watermark", "a photo")
    assert scores.shape == (3,) and bool(((scores > 0) & (scores < 1)).all())
    assert torch.equal(scores[1:2], scorer.probabilities(images[1:2], "a watermark", "a photo"))


SPEC = ModelSpec(id="builtin:tiny-random", steps=2, width=32, height=32)


def test_erase_maps_concept_to_target_and_keeps_preserved():
    model = load_pipeline(SPEC, torch.device("cpu"), torch.float32)
    pipeline = model.pipeline
    before = {name: linear.weight.detach().clone().double()
              for name, linear in cross_attention_projections(pipeline.unet)}
    concept, target, kept = "logo", "", ["cat", "dog"]
    erased = text_embeddings(pipeline, concept)
    from synthgen.generate.erase import paired_embeddings
    _, targets = paired_embeddings(pipeline, concept, target)
    preserved = torch.cat([text_embeddings(pipeline, text) for text in kept])
    record = erase_concept(pipeline, concept, target, kept)
    assert record["layers"] == len(before) > 0 and len(record["weights_sha256"]) == 64
    for name, linear in cross_attention_projections(pipeline.unet):
        new, old = linear.weight.detach().double(), before[name]
        mapped, wanted = erased @ new.T, targets @ old.T
        assert float((mapped - wanted).norm() / wanted.norm()) < 0.02, name
        kept_new, kept_old = preserved @ new.T, preserved @ old.T
        assert float((kept_new - kept_old).norm() / kept_old.norm()) < 0.02, name
        assert not torch.allclose(new, old), "the layer was edited"


def test_erase_is_recorded_and_edit_command_writes_a_loadable_model(write_recipe, tmp_path):
    recipe = write_recipe({"suppress": [{"concept": "logo", "method": "erase", "preserve": ["circle"]}],
                           "classes": [{"name": "circle", "templates": ["a {colour} circle"],
                                        "groups": 2}], "corner_cases": []})
    generate_dataset(make_plan(load_recipe(recipe)), tmp_path / "data",
                     GenerateOptions(progress=False, device="cpu"))
    manifest = json.loads((tmp_path / "data" / "manifest.json").read_text())
    (edit,) = manifest["model"]["edits"]
    assert edit["concept"] == "logo" and edit["preserve"] == ["circle"]
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


def test_erase_on_a_model_without_a_unet_is_a_user_error(write_recipe):
    from types import SimpleNamespace

    recipe = load_recipe(write_recipe({"suppress": [{"concept": "a logo", "method": "erase"}]}))
    transformer_model = SimpleNamespace(pipeline=SimpleNamespace(transformer=object()), edits=())
    with pytest.raises(UserError, match=r"suppress\[0\].method erase: .* has no UNet.*use method: "
                                        "reject or negative"):
        prepare.apply_erasures(recipe, transformer_model)
