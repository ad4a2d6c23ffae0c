"""Outside readers load synthgen datasets unchanged (issue 16): Hugging Face `datasets`
(through the dataset card, offline) and webdataset's `wids` (through index.json), for both
layouts, on a recipe whose classes have different view counts and whose first shard holds no
corner case; and synthgen's own audit reads the `view` layout as it reads the `group` one."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from synthgen.audit.source import ShardProblems, dataset_shards, iter_views
from synthgen.inspection import count_groups

sys.path.insert(0, str(Path(__file__).parent / "engines"))
from engine_helpers import run  # noqa: E402

MIXED = {
    "classes": [
        {"name": "circle", "templates": ["a {colour} circle"], "groups": 4,
         "views": {"count": 3, "strategy": "seeds"}},
        {"name": "square", "templates": ["a {colour} square"], "groups": 3},
    ],
    "output": {"groups_per_shard": 4, "format": "jpg", "shuffle": False},
}


@pytest.fixture(scope="module")
def datasets_by_layout(tmp_path_factory) -> dict[str, Path]:
    """The mixed recipe built in each layout (corner cases last: shard 0 holds none)."""
    import yaml

    from small_recipe import SMALL_RECIPE, merge

    root = tmp_path_factory.mktemp("readers")
    built = {}
    for layout in ("group", "view"):
        recipe = merge(SMALL_RECIPE, {**MIXED, "output": {**MIXED["output"], "layout": layout}})
        path = root / f"{layout}.yaml"
        path.write_text(yaml.safe_dump(recipe, sort_keys=False))
        run("local", path, root / layout)
        built[layout] = root / layout
    return built


def _expected_rows(dataset: Path, layout: str) -> int:
    totals = json.loads((dataset / "manifest.json").read_text())["totals"]
    return totals["samples"] if layout == "group" else totals["images"]


@pytest.mark.parametrize("layout", ["group", "view"])
def test_hugging_face_datasets_loads_the_directory(datasets_by_layout, layout, monkeypatch,
                                                   tmp_path):
    datasets = pytest.importorskip("datasets")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    dataset = datasets_by_layout[layout]
    loaded = datasets.load_dataset(str(dataset), split="train", cache_dir=str(tmp_path / "cache"))
    assert len(loaded) == _expected_rows(dataset, layout)
    corner = [row["json"]["corner_case"] for row in loaded]
    assert corner[0] == "" and "circle in square" in corner
    if layout == "group":
        views = {sum(row[f"view{v}.jpg"] is not None for v in range(3)) for row in loaded}
        assert views == {2, 3}
    else:
        assert all(row["txt"] == row["json"]["views"][0]["prompt"] for row in loaded)
        assert loaded[0]["jpg"].size == (32, 32)
    # The card's features also serve load_dataset("webdataset", ...) on the shards alone.
    features = datasets.load_dataset_builder(str(dataset), cache_dir=str(tmp_path / "cache")).info.features
    shards = sorted(str(path) for path in dataset.glob("shard-*.tar"))
    again = datasets.load_dataset("webdataset", data_files=shards, split="train",
                                  features=features, cache_dir=str(tmp_path / "cache"))
    assert len(again) == len(loaded)
    # Without them, `datasets` infers the types from the first samples of the first shard,
    # which hold no corner case: the json's keys and types must be the same in every sample.
    inferred = datasets.load_dataset("webdataset", data_files=shards, split="train",
                                     cache_dir=str(tmp_path / "inferred"))
    assert [row["json"] for row in inferred] == _stored_json(shards)
    assert {row["json"]["tags"]["nested"] for row in inferred} == {True, False}


def _stored_json(shards: list[str]) -> list[dict]:
    import tarfile

    found = []
    for shard in shards:
        with tarfile.open(shard) as tar:
            found += [json.load(tar.extractfile(member)) for member in tar.getmembers()
                      if member.name.endswith(".json")]
    return found


def _inferred_schema_problems(samples: list[dict], first: list[dict]) -> list[str]:
    """What a reader typing columns from `first` (Hugging Face's webdataset builder uses the
    first 5 samples of the first shard) gets wrong in `samples`: values it cannot cast, and
    keys it does not know (which it drops without a word)."""
    import pyarrow as pa

    def paths(value, path="") -> set[str]:
        if isinstance(value, dict):
            return set().union(*({f"{path}.{k}"} | paths(v, f"{path}.{k}") for k, v in value.items()))
        if isinstance(value, list):
            return set().union(set(), *(paths(v, f"{path}[]") for v in value))
        return set()

    schema = pa.concat_tables([pa.Table.from_pylist([m]) for m in first],
                              promote_options="default").schema
    known = set().union(*(paths(m) for m in first))
    problems = set()
    for sample in samples:
        try:
            pa.Table.from_pylist([sample], schema=schema)
        except (pa.ArrowInvalid, pa.ArrowTypeError) as error:
            problems.add(f"{sample['group_id']}: {error}")
        problems |= {f"dropped {key}" for key in paths(sample) - known}
    return sorted(problems)


@pytest.mark.parametrize("recipe_path", sorted((Path(__file__).parents[1] / "recipes").glob("*.yaml")),
                         ids=lambda path: path.stem)
def test_every_shipped_recipe_writes_json_a_type_inferring_reader_reads_whole(recipe_path):
    """Every recipe in recipes/ (the README's), from its plan: the sample json of any group,
    read with the types of shard 0's first 5 samples, loses nothing."""
    pytest.importorskip("pyarrow")
    from synthgen.plan import make_plan
    from synthgen.recipe import load_recipe
    from synthgen.write import sample_metadata

    recipe = load_recipe(recipe_path)
    plan = make_plan(recipe)
    model_info = {"pipeline": "StableDiffusionPipeline", "weights": "sha256:0"}
    samples = [sample_metadata(group, recipe, model_info) for group in plan.groups]
    first = [sample for sample, group in zip(samples, plan.groups) if group.shard == 0][:5]
    assert _inferred_schema_problems(samples, first) == []


@pytest.mark.parametrize("layout", ["group", "view"])
def test_wids_reads_the_index(datasets_by_layout, layout, tmp_path):
    wids = pytest.importorskip("wids")
    dataset = datasets_by_layout[layout]
    index = json.loads((dataset / "index.json").read_text())
    assert [shard["url"] for shard in index["shardlist"]] == sorted(
        path.name for path in dataset.glob("shard-*.tar"))
    shards = wids.ShardListDataset(str(dataset / "index.json"), cache_dir=str(tmp_path))
    assert len(shards) == _expected_rows(dataset, layout)
    last = shards[len(shards) - 1]
    assert ".json" in last and (".jpg" in last if layout == "view" else ".view0.jpg" in last)


def test_audit_and_inspection_read_the_view_layout_as_groups(datasets_by_layout):
    seen = {}
    for layout, dataset in datasets_by_layout.items():
        problems = ShardProblems()
        _, shards = dataset_shards(dataset)
        seen[layout] = [(item.view_id, item.scope, item.prompt, item.data)
                        for item in iter_views(dataset, shards, problems)]
        assert problems == ShardProblems()
    assert seen["view"] == seen["group"]
    assert {scope for _, scope, _, _ in seen["view"]} == {
        "class:circle", "class:square", "corner:circle in square"}
    counts = count_groups(datasets_by_layout["view"])
    assert counts == {**count_groups(datasets_by_layout["group"])}
    assert counts["classes"] == {"circle": 4, "square": 3}
    assert counts["corner_cases"] == {"circle in square": 2}
