"""Output layouts (synthgen/shards.py): the default writes the bytes it always did, the `view`
layout reads back as the same groups through the loader, inspection and the audit."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
import webdataset as wds

from synthgen.data import group_loader
from synthgen.data.fixtures import solid_sample, write_solid_dataset
from synthgen.inspection import iter_samples
from synthgen.recipe import Recipe, load_recipe
from synthgen.shards import regrouped
from synthgen.write import write_shard

REPO = Path(__file__).resolve().parents[1]
# recipes/quickstart.yaml's hash before `output.layout` existed (commit 77f4fea): datasets made
# then must stay resumable and finalizable.
QUICKSTART_HASH = "306cb09387d45a6f5f4642776eac446d4a357424449eb2ca36880d3d312cfd16"
# sha256 of `_mixed_samples()` written by write_shard at commit 77f4fea (before the layout
# seam): the default layout keeps every byte.
GROUP_SHARD_SHA256 = "d74cd94b497c38e0d6e009fd5e3ce8a279f9fcdd95da25a6096d21362fc46f45"


def _mixed_samples() -> list[dict]:
    """Five groups of three classes, with 2 or 3 views."""
    return [solid_sample(g, g % 3, 2 + g % 2) for g in range(5)]


def test_recipes_without_layout_keep_their_hash():
    recipe = load_recipe(REPO / "recipes" / "quickstart.yaml")
    assert recipe.output.layout == "group"
    assert recipe.recipe_hash == QUICKSTART_HASH
    data = recipe.model_dump(mode="json")
    data["output"]["layout"] = "view"
    assert Recipe.model_validate(data).recipe_hash != QUICKSTART_HASH


def test_default_layout_writes_the_bytes_it_did(tmp_path):
    write_shard(tmp_path, 0, _mixed_samples(), {"id": "solid"})
    data = (tmp_path / "shard-000000.tar").read_bytes()
    assert hashlib.sha256(data).hexdigest() == GROUP_SHARD_SHA256


def test_view_layout_has_one_clip_style_sample_per_view(tmp_path):
    samples = _mixed_samples()
    stats = write_shard(tmp_path, 0, samples, {"id": "solid"}, layout="view")
    written = list(wds.WebDataset(str(tmp_path / "shard-000000.tar"), shardshuffle=False,
                                  empty_check=False))
    assert stats.samples == 5 and stats.images == len(written) == 2 + 3 + 2 + 3 + 2
    first = written[0]
    assert set(first) - {"__key__", "__url__", "__local_path__"} == {"png", "txt", "json", "cls"}
    assert first["__key__"] == "class-a-000000-view0"
    assert first["txt"] == b"a solid a"
    metadata = json.loads(first["json"])
    assert (metadata["group_id"], metadata["view"], metadata["class_name"]) == ("class-a-000000", 0, "a")
    assert first["png"] == samples[0]["view0.png"]


def test_view_layout_regroups_to_the_group_samples(tmp_path):
    samples = _mixed_samples()
    write_shard(tmp_path, 0, samples, {"id": "solid"}, layout="view")
    read = list(regrouped(wds.WebDataset(str(tmp_path / "shard-000000.tar"), shardshuffle=False,
                                         empty_check=False)))
    assert [sample["__key__"] for sample in read] == [sample["__key__"] for sample in samples]
    for original, back in zip(samples, read):
        assert json.loads(back["json"]) == json.loads(original["json"])
        assert back["cls"] == original["cls"]
        views = {key for key in original if key.startswith("view")}
        assert {key: back[key] for key in views} == {key: original[key] for key in views}
    assert [s["__key__"] for s in iter_samples([str(tmp_path / "shard-000000.tar")])] == \
        [s["__key__"] for s in samples]


@pytest.mark.parametrize("mode", ["eval", "train"])
def test_loader_reads_both_layouts_alike(tmp_path, mode):
    batches = {}
    for layout in ("group", "view"):
        write_solid_dataset(tmp_path / layout, shards=2, groups_per_shard=6, views=3,
                            layout=layout)
        loader = group_loader(tmp_path / layout, views=2, batch_size=4, resolution=8,
                              augment="none", mode=mode, seed=3)
        batches[layout] = [(batch.group_id, batch.view_index.tolist(), batch.views)
                           for batch in loader.epoch(0)]
    assert len(batches["group"]) == len(batches["view"]) > 0
    for (ids, index, views), (ids2, index2, views2) in zip(batches["group"], batches["view"]):
        assert ids == ids2 and index == index2
        assert views.equal(views2)
