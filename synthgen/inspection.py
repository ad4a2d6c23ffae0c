"""Read a finished dataset back: counts per class and corner case, samples, contact sheets.

Reads shards with the loader's own stages (`synthgen.data`), so what it shows is what a
trainer will see, and it skips what a trainer's loader skips: unreadable tar data, samples
whose json does not parse, that lack views or whose `cls` disagrees with their json. Each
function collects what it skipped, and shards whose sha256 is not the manifest's, as one
line each in a `damaged` list instead of raising.
"""

from __future__ import annotations

import textwrap
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

from PIL import Image, ImageDraw

from synthgen.errors import UserError
from synthgen.shards import MANIFEST, regrouped


def failed_concepts(view: dict) -> list[str]:
    """The concepts a view's json records as still detected after its last retry.

    Written as {concept: bool} for every rejecting concept (stable keys for readers that infer
    column types); datasets written before that list only the failed concepts."""
    failed = view.get("suppression_failed")
    if isinstance(failed, dict):
        return [concept for concept, still in failed.items() if still]
    return [concept for concept in failed if isinstance(concept, str)] if isinstance(failed, list) else []


def view_prompt(view: dict) -> str:
    """A view's prompt as text to show ("-" where its json has none)."""
    prompt = view.get("prompt")
    return prompt if isinstance(prompt, str) else "-"


def load_manifest(dataset_dir: Path, summary: bool = False) -> dict:
    """The dataset's manifest, checked as the loader checks it (`read_manifest`); a directory
    without one is not a finished dataset. With `summary`, also the recipe and totals that
    `synthgen inspect` prints (every manifest synthgen writes has them)."""
    from synthgen.data.sources import read_manifest

    path = dataset_dir / MANIFEST
    if not path.is_file():
        raise UserError(f"{dataset_dir}: no {MANIFEST}, so this is not a finished synthgen dataset; "
                        "run (or rerun) synthgen generate RECIPE --out DIR first")
    manifest, _ = read_manifest(path, label="dataset")
    recipe, totals = manifest.get("recipe"), manifest.get("totals")
    if not isinstance(recipe, dict) or summary and not (
            isinstance(recipe.get("name"), str) and isinstance(recipe.get("model"), dict)
            and isinstance(manifest.get("recipe_hash"), str) and isinstance(totals, dict)
            and all(isinstance(totals.get(key), int) for key in ("shards", "samples", "images", "bytes"))):
        raise UserError(f"dataset {path}: lacks the recipe or totals synthgen records (its name, "
                        f"model, hash and counts); rewrite it with synthgen finalize {dataset_dir}")
    return manifest


def shard_paths(dataset_dir: Path, manifest: dict) -> list[str]:
    return [str(dataset_dir / shard["name"]) for shard in manifest["shards"]]


def iter_samples(paths: list[str]):
    """Yields group samples (dicts of bytes keyed by member name, either layout read as the
    `group` one), in shard order; raises on unreadable tar data (see `readable_samples` for a
    reader that goes on)."""
    import webdataset

    dataset = webdataset.WebDataset(paths, shardshuffle=False, empty_check=False)
    yield from regrouped(dataset)


def readable_samples(paths: list[str], damaged: list[str]) -> Iterator[tuple[dict, dict]]:
    """Yields (raw webdataset sample, its json metadata) in shard order, for every sample the
    loader would read; appends a line to `damaged` for each unreadable shard or sample."""
    from synthgen.data.pipeline import DamagedSample, checked_metadata, tar_samples

    def note(error: Exception) -> bool:
        damaged.append(str(error))
        return True

    for sample in regrouped(tar_samples(({"url": path} for path in paths), note)):
        try:
            metadata, _, _ = checked_metadata(sample)
        except DamagedSample as error:
            note(error)
            continue
        if not metadata.get("views"):  # the loader reads files without a list; a synthgen sample has one
            note(DamagedSample("json", f"group {sample['__key__']} in {sample.get('__url__', '?')}: "
                                       "its json lists no views"))
            continue
        yield sample, metadata


def verify_shards(dataset_dir: Path, manifest: dict, damaged: list[str]) -> None:
    """Appends a line to `damaged` for each shard whose sha256 is not the manifest's (bytes
    flipped inside an image still decode, so only the digest shows them)."""
    from synthgen.data.sources import ShardSource, verified_source

    source = ShardSource(tuple(shard_paths(dataset_dir, manifest)),
                         sha256=tuple(shard["sha256"] for shard in manifest["shards"]))
    verified_source(source, lambda error: damaged.append(str(error)) or True)


def count_groups(dataset_dir: Path) -> dict:
    """Groups and images per class and per corner case, counted from the shards themselves;
    per suppressed concept, the redraws (`rejections`) and the views stored although they
    still failed (`suppression_failed`); for `slots.check` groups, the groups checked, their
    redraws and those stored still disagreeing (`group_checks`); `damaged` lists the shards and samples that could not
    be counted or differ from the manifest's digest (empty for an intact dataset)."""
    manifest = load_manifest(dataset_dir)
    classes: Counter = Counter()
    corner_cases: Counter = Counter()
    rejections: Counter = Counter()
    suppression_failed: Counter = Counter()
    group_checks: Counter = Counter()
    images = 0
    damaged: list[str] = []
    verify_shards(dataset_dir, manifest, damaged)
    for sample, metadata in readable_samples(shard_paths(dataset_dir, manifest), damaged):
        # None in datasets written before corner_case became "" for "none".
        if not metadata.get("corner_case"):
            classes[metadata.get("class_name") or None] += 1
        else:
            corner_cases[metadata["corner_case"]] += 1
        images += sum(1 for key in sample if key.startswith("view"))
        for view in metadata.get("views") or ():
            redrawn = view.get("rejections")
            if isinstance(redrawn, dict):
                rejections.update({c: n for c, n in redrawn.items()
                                   if isinstance(n, int) and not isinstance(n, bool) and n > 0})
            suppression_failed.update(failed_concepts(view))
        views = metadata.get("views")
        checked = views[0].get("held_check") if views and isinstance(views[0], dict) else None
        if isinstance(checked, dict):  # `slots.check`: one count per group
            redraws = checked.get("redraws")
            group_checks.update(
                groups=1, failed=int(checked.get("passed") is not True),
                redraws=redraws if isinstance(redraws, int) and not isinstance(redraws, bool)
                else 0)
    return {"groups": sum(classes.values()) + sum(corner_cases.values()), "images": images,
            "classes": dict(classes), "corner_cases": dict(corner_cases),
            "rejections": dict(rejections), "suppression_failed": dict(suppression_failed),
            "group_checks": dict(group_checks), "damaged": damaged}


def shard_samples(dataset_dir: Path, shard: int, damaged: list[str]) -> list[dict]:
    """The metadata of every readable sample in one shard (the rest goes to `damaged`)."""
    manifest = load_manifest(dataset_dir)
    if not 0 <= shard < len(manifest["shards"]):
        raise UserError(f"--shard {shard}: the dataset has shards 0 to {len(manifest['shards']) - 1}")
    return [metadata for _, metadata in
            readable_samples([str(dataset_dir / manifest["shards"][shard]["name"])], damaged)]


def contact_sheet(dataset_dir: Path, damaged: list[str], groups: int = 8,
                  cell: int = 128) -> Image.Image:
    """A grid, one row per group (first `groups` readable groups of the dataset), one column
    per view; groups with a view that does not decode go to `damaged`."""
    from synthgen.data.pipeline import DamagedSample, decoded_view

    manifest = load_manifest(dataset_dir)
    rows = []
    for sample, metadata in readable_samples(shard_paths(dataset_dir, manifest), damaged):
        try:
            views = [decoded_view(sample, view["file"]) for view in metadata["views"]]
        except DamagedSample as error:
            damaged.append(str(error))
            continue
        rows.append((metadata, views))
        if len(rows) == groups:
            break
    if not rows:
        raise UserError(f"--contact-sheet: {dataset_dir} has no readable group to show")
    label_width = 200
    columns = max(len(views) for _, views in rows)
    sheet = Image.new("RGB", (label_width + columns * cell, len(rows) * cell), "white")
    draw = ImageDraw.Draw(sheet)
    for row, (metadata, views) in enumerate(rows):
        label = str(metadata.get("corner_case") or metadata.get("class_name") or "-")
        draw.text((4, row * cell + 4), label[:30], fill="black")
        draw.text((4, row * cell + 18), str(metadata.get("group_id", "-"))[:30], fill="gray")
        prompt_lines = textwrap.wrap(view_prompt(metadata["views"][0]), 30)[: (cell - 40) // 12]
        for line, text in enumerate(prompt_lines):
            draw.text((4, row * cell + 36 + 12 * line), text, fill="black")
        for column, view in enumerate(views):
            sheet.paste(view.resize((cell, cell), Image.Resampling.LANCZOS),
                        (label_width + column * cell, row * cell))
    return sheet
