"""Whether `suppress: method: reject` keeps stripes out of what a dataset stores, read by the
world oracle (the embedded world's exact reader, docs/WORLD.md), not by the detector itself.

    python bench/reject_oracle.py out/quickstart-reject              # the stored views
    python bench/reject_oracle.py out/quickstart-reject --roc 360    # and the detector's ROC

1. Every stored view is decoded as a reader gets it and read by the oracle. Counted, with 95%
   Wilson intervals: views the oracle reads as striped (all, and those whose prompt does not
   ask for stripes), and views stored marked `suppression_failed` (their retries ran out).
2. With `--roc N`: N fresh world-sd images (the dataset's steps and guidance, 32x32, prompts
   uniform over the world's words, every third asking for stripes, seeds 50,000 + i) are
   scored the way generation scores a view (`StoredForm`, `ClipConceptScorer`), with the
   recipe's reject entry and with the fixed contrast 'a photo', and compared with the oracle:
   recall on striped images and false-positive rate on the others, per threshold.

Prints one JSON object. The oracle reads 32x32 renders of the procedural world; on other
models or sizes its readings mean little.
"""

from __future__ import annotations

import argparse
import io
import json
import sys
from pathlib import Path

import numpy as np
import torch
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from synthgen.audit.metrics import wilson_interval  # noqa: E402
from synthgen.generate.detector import ClipConceptScorer  # noqa: E402
from synthgen.generate.stored import StoredForm  # noqa: E402
from synthgen.inspection import failed_concepts, iter_samples, load_manifest, shard_paths  # noqa: E402
from synthgen.recipe import Recipe  # noqa: E402
from synthgen.world.evaluate import evaluation_prompts, generate  # noqa: E402
from synthgen.world.oracle import load_oracle  # noqa: E402

CONCEPT = "striped"
THRESHOLDS = (0.5, 0.6, 0.8, 0.9, 0.95)
ROC_SEED = 50_000


def share(hits: int, total: int) -> dict:
    low, high = wilson_interval(hits, total)
    return {"count": hits, "of": total, "share": round(hits / total, 4) if total else None,
            "ci95": [round(low, 4), round(high, 4)]}


def stored_views(dataset_dir: Path) -> list[tuple[dict, np.ndarray]]:
    """(the view's json entry, uint8 RGB pixels as stored) of every view, in shard order."""
    views = []
    for sample in iter_samples(shard_paths(dataset_dir, load_manifest(dataset_dir))):
        for view in json.loads(sample["json"])["views"]:
            with Image.open(io.BytesIO(sample[view["file"]])) as image:
                views.append((view, np.asarray(image.convert("RGB"))))
    return views


def asks_for_stripes(prompt: str) -> bool:
    return CONCEPT in prompt.replace(",", " ").split()


def read_dataset(views, oracle) -> dict:
    readings = oracle.read(np.stack([pixels for _, pixels in views]))
    striped = [reading["striped"] for reading in readings]
    unasked = [is_striped for (view, _), is_striped in zip(views, striped)
               if not asks_for_stripes(view["prompt"])]
    failed = [CONCEPT in failed_concepts(view) for view, _ in views]
    return {"views": len(views), "oracle_striped": share(sum(striped), len(views)),
            "oracle_striped_unasked": share(sum(unasked), len(unasked)),
            "retries_exhausted": share(sum(failed), len(views)),
            "oracle_striped_among_exhausted": sum(s for s, f in zip(striped, failed) if f),
            "redraws": sum(view.get("rejections", {}).get(CONCEPT, 0) for view, _ in views),
            "views_redrawn": sum(view.get("rejections", {}).get(CONCEPT, 0) > 0 for view, _ in views)}


def roc(recipe: Recipe, oracle, count: int) -> dict:
    """The reject entry's detector and the fixed 'a photo' contrast against the oracle."""
    from synthgen.generate.load import choose_dtype, load_pipeline

    entry = next(e for e in recipe.suppress if e.method == "reject" and e.concept == CONCEPT)
    device = torch.device("cpu")
    dtype = choose_dtype(recipe.model.dtype, device)
    pipeline = load_pipeline(recipe.model, device, dtype).pipeline
    pipeline.set_progress_bar_config(disable=True)
    prompts = [p["striped_prompt"] if i % 3 == 0 else p["prompt"]
               for i, p in enumerate(evaluation_prompts(count, seed=ROC_SEED))]
    images = generate(pipeline, prompts, [ROC_SEED + i for i in range(count)],
                      guidance_scale=recipe.model.guidance_scale, steps=recipe.model.steps)
    striped = np.array([reading["striped"] for reading in oracle.read(images)])
    pixels = StoredForm(recipe).pixels(torch.from_numpy(images))
    scorer = ClipConceptScorer(entry.detector, device)
    result = {"images": count, "oracle_striped": int(striped.sum()), "detectors": {}}
    for contrast in dict.fromkeys([entry.contrast, "a photo"]):
        scores = scorer.probabilities(pixels, CONCEPT, contrast, prompts).numpy()
        positive, negative = scores[striped], scores[~striped]
        # P(a striped image scores above a plain one); undefined without both kinds.
        auc = (round(float((positive[:, None] > negative[None]).mean()
                           + 0.5 * (positive[:, None] == negative[None]).mean()), 4)
               if len(positive) and len(negative) else None)
        result["detectors"][f"{CONCEPT!r} vs {contrast!r}"] = {
            "auc": auc,
            "thresholds": {
                str(t): {"recall": share(int((positive > t).sum()), len(positive)),
                         "false_positive": share(int((negative > t).sum()), len(negative))}
                for t in THRESHOLDS}}
    return result


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("dataset", type=Path)
    parser.add_argument("--oracle", type=Path, default=None,
                        help="oracle folder (default: the shipped one)")
    parser.add_argument("--roc", type=int, default=0, metavar="N",
                        help="also score N fresh world-sd images against the oracle")
    args = parser.parse_args(argv)
    torch.manual_seed(0)
    oracle = load_oracle(args.oracle)
    recipe = Recipe.model_validate(load_manifest(args.dataset)["recipe"])
    if (recipe.model.width, recipe.model.height) != (32, 32):
        raise SystemExit(f"{args.dataset}: made at {recipe.model.width}x{recipe.model.height}; "
                         "the world oracle reads 32x32 images")
    settings = {"concept", "method", "detector", "contrast", "threshold", "max_retries"}
    result = {"dataset": str(args.dataset), "recipe": recipe.name,
              "suppress": [entry.model_dump(include=settings) for entry in recipe.suppress],
              "stored": read_dataset(stored_views(args.dataset), oracle)}
    if args.roc:
        result["roc"] = roc(recipe, oracle, args.roc)
    print(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main()
