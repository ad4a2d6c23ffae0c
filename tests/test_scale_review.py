"""Scale review: what breaks only at the sizes real recipes reach (no timing assertions)."""

from __future__ import annotations

import json

import pytest

from synthgen.data.sources import read_manifest
from synthgen.errors import UserError
from synthgen.recipe import load_recipe
from synthgen.shards import DATASET_FORMAT, MANIFEST, SHARD_FILE, shard_name, stats_name
from synthgen.store import DATASET_TEMPORARY

# 1,000,001 groups of 2 views (2,000,002 images, under MAX_PLAN_IMAGES) at one group a shard:
# a valid recipe of 1,000,001 shards, the last of which is shard 1,000,000.
MILLION_SHARDS = {
    "classes": [{"name": "dot", "templates": ["a {colour} dot"], "groups": 1_000_001}],
    "corner_cases": [],
    "output": {"groups_per_shard": 1},
}


def _last_shard(recipe) -> int:
    per_shard = recipe.output.groups_per_shard
    groups = sum(spec.groups for spec in recipe.classes)
    return (groups + per_shard - 1) // per_shard - 1


def test_recipe_with_a_millionth_shard_is_accepted(write_recipe):
    recipe = load_recipe(write_recipe(MILLION_SHARDS))
    assert _last_shard(recipe) == 1_000_000


def test_the_millionth_shard_name_is_a_synthgen_shard_name(write_recipe):
    """shard_name pads to 6 digits, so shard 1,000,000 is `shard-1000000.tar`; SHARD_FILE (and
    write._OWNED_FILE, store.DATASET_TEMPORARY) accept exactly 6 digits, so the files synthgen
    itself writes for such a recipe are not recognised as its own."""
    last = _last_shard(load_recipe(write_recipe(MILLION_SHARDS)))
    assert SHARD_FILE.match(shard_name(last))
    assert SHARD_FILE.match(stats_name(last))
    assert DATASET_TEMPORARY.match(f".{shard_name(last)}.host.123.tmp")


def test_loader_reads_a_manifest_that_lists_the_millionth_shard(write_recipe, tmp_path):
    """The manifest `finalize` writes for such a dataset lists `shard-1000000.tar`; the loader,
    inspect, audit and edit all read it through `read_manifest`, which refuses that name."""
    last = _last_shard(load_recipe(write_recipe(MILLION_SHARDS)))
    manifest = {"format": DATASET_FORMAT,
                "shards": [{"name": shard_name(shard), "samples": 1, "sha256": "0" * 64}
                           for shard in (0, last)]}
    path = tmp_path / MANIFEST
    path.write_text(json.dumps(manifest))
    try:
        _, shards = read_manifest(path)
    except UserError as error:
        pytest.fail(f"a manifest synthgen writes is refused: {error}")
    assert [shard["name"] for shard in shards] == [shard_name(0), shard_name(last)]


def test_a_folder_of_shards_without_a_manifest_is_read_in_shard_order(tmp_path):
    """data/sources.py listed a folder's shards with sorted(glob), by name: shard-1000000.tar
    came between shard-100000.tar and shard-100001.tar. Correct: by shard number."""
    from synthgen.data import resolve_shards
    from synthgen.shards import shard_name

    numbers = [1_000_000, 100_001, 999_999, 100_000, 0]
    for number in numbers:
        (tmp_path / shard_name(number)).write_bytes(b"")
    source = resolve_shards(tmp_path)
    assert [url.rsplit("/", 1)[-1] for url in source.urls] == [shard_name(n) for n in sorted(numbers)]


def test_a_copied_recipe_hashes_its_own_fields_not_the_cached_hash_of_its_original():
    """recipe_hash is computed once per recipe (every sample's json records it); a copy with
    other fields (world edits makes them) must not keep the original's."""
    from small_recipe import parse_small

    recipe = parse_small({})
    before = recipe.recipe_hash
    changed = recipe.model_copy(update={"seed": recipe.seed + 1})
    assert recipe.recipe_hash == before
    assert changed.recipe_hash != before
    assert changed.recipe_hash == parse_small({"seed": recipe.seed + 1}).recipe_hash


def test_a_prompt_encoding_cache_that_drops_encodings_keeps_the_datasets_bytes(write_recipe,
                                                                              tmp_path,
                                                                              monkeypatch):
    """The families' prompt-encoding cache had no bound: a recipe whose groups mostly have
    prompts of their own filled the device (~4 MB a FLUX prompt). It is a least-recently-used
    cache under EMBEDDING_CACHE_BYTES now; an encoding dropped and made again must give the
    same shards, byte for byte."""
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).parent / "engines"))
    from engine_helpers import dataset_bytes, run

    from synthgen.generate.families import base

    recipe = write_recipe({"classes": [{"name": "circle", "templates": ["a {colour} circle"],
                                        "groups": 4}],
                           "corner_cases": [], "output": {"groups_per_shard": 2}})
    run("local", recipe, tmp_path / "kept")
    kept = []
    real_cached = base.ModelFamily._cached

    def counting(self, key, encode):
        kept.append(len(self._embeddings))
        return real_cached(self, key, encode)

    monkeypatch.setattr(base, "EMBEDDING_CACHE_BYTES", 1)  # every new encoding drops the last
    monkeypatch.setattr(base.ModelFamily, "_cached", counting)
    run("local", recipe, tmp_path / "dropped")
    assert max(kept) <= 1
    assert dataset_bytes(tmp_path / "dropped") == dataset_bytes(tmp_path / "kept")
