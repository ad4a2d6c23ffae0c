"""What outside readers need beside the shards: a Hugging Face dataset card and a wids index.

- `README.md`, a dataset card whose YAML front matter names the shards (`configs:`) and
  declares their features (`dataset_info.features`), so `datasets.load_dataset(DIR)` reads
  them as webdataset shards without inferring types from the first samples (which failed
  when a field or a view first appears after them).
- `index.json`, webdataset's `wids` shard index (shard names relative to it, tar samples
  per shard), so `wids.ShardListDataset(DIR/index.json)` gives random access.

Both are written by `write.write_manifest` just before `manifest.json`, from the stats
files: each shard's stats record the JSON schema of its samples' json (`json_schema`), and
the dataset's is their union.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable

import yaml

CARD = "README.md"
WIDS_INDEX = "index.json"
# Identifies a card synthgen wrote (`--overwrite` removes only its own files).
CARD_MARKER = "<!-- written by synthgen: rewritten by synthgen finalize -->"

# A JSON schema here is a type: a datasets dtype ("string", "int64", "float64", "bool",
# "null"), {"struct": {name: type}} or {"list": type}.
_SCALAR_TYPES = ((bool, "bool"), (int, "int64"), (float, "float64"), (str, "string"))


def json_schema(values: Iterable) -> object:
    """The one type that every value in `values` has (null where a value is absent or null)."""
    schema: object = "null"
    for value in values:
        schema = merge_schemas(schema, _type_of(value))
    return schema


def _type_of(value) -> object:
    if value is None:
        return "null"
    for python_type, dtype in _SCALAR_TYPES:
        if isinstance(value, python_type):
            return dtype
    if isinstance(value, dict):
        return {"struct": {str(key): _type_of(item) for key, item in value.items()}}
    if isinstance(value, list):
        return {"list": json_schema(value)}
    raise TypeError(f"{type(value).__name__} is not a JSON value")


def merge_schemas(first: object, second: object) -> object:
    """A type both `first` and `second` values fit: null fits anything, int64 widens to float64,
    structs take the union of their fields; anything else mixed is read as a string."""
    if first == "null" or first == second:
        return second
    if second == "null":
        return first
    if sorted(map(str, (first, second))) == ["float64", "int64"]:
        return "float64"
    if isinstance(first, dict) and isinstance(second, dict) and first.keys() == second.keys():
        if "struct" in first:
            fields = dict(first["struct"])
            for name, kind in second["struct"].items():
                fields[name] = merge_schemas(fields.get(name, "null"), kind)
            return {"struct": dict(sorted(fields.items()))}
        return {"list": merge_schemas(first["list"], second["list"])}
    return "string"


def _yaml_feature(kind: object) -> object:
    """A type in the dataset card's YAML form (`datasets.Features._to_yaml_list`'s inner part)."""
    if isinstance(kind, str):
        return kind
    if "struct" in kind:
        return _yaml_fields(kind["struct"])
    return {"list": _yaml_feature(kind["list"])}


def _yaml_fields(fields: dict) -> list[dict]:
    entries = []
    for name, kind in fields.items():
        if isinstance(kind, dict) and kind.get("struct") == {}:
            continue  # an always-empty mapping (no slots): Arrow has no struct without fields
        if isinstance(kind, str):
            entries.append({"name": name, "dtype": kind})
        elif "struct" in kind:
            entries.append({"name": name, "struct": _yaml_fields(kind["struct"])})
        else:
            entries.append({"name": name, "list": _yaml_feature(kind["list"])})
    return entries


def tar_features(layout: str, image_format: str, max_views: int, sample_json: object) -> list[dict]:
    """The features of one tar sample of `layout`, as the card's YAML lists them."""
    if layout == "view":
        images = [{"name": image_format, "dtype": "image"}, {"name": "txt", "dtype": "string"}]
    else:
        images = [{"name": f"view{view}.{image_format}", "dtype": "image"}
                  for view in range(max_views)]
    fields = [{"name": "__key__", "dtype": "string"}, {"name": "__url__", "dtype": "string"},
              {"name": "cls", "dtype": "int64"}, *images]
    if sample_json != "null":
        fields.extend(_yaml_fields({"json": sample_json}))
    return fields


def _code(text: str) -> str:
    """A Markdown code span of `text`, fenced by more backticks than any run inside it."""
    fence = "`" * (max((len(run) for run in re.findall(r"`+", text)), default=0) + 1)
    padding = " " if text.startswith("`") or text.endswith("`") else ""
    return f"{fence}{padding}{text}{padding}{fence}"


def dataset_card(manifest: dict, sample_json: object, tar_samples: int) -> str:
    """`README.md` for the dataset `manifest` describes (its recipe, shards and totals)."""
    recipe = manifest["recipe"]
    output = recipe["output"]
    layout = output.get("layout", "group")
    # The view counts samples really have: a class's own views, else the recipe's (which no
    # sample may use when every class and corner case has its own).
    counts = [(spec.get("views") or recipe["views"])["count"]
              for spec in (recipe.get("classes") or []) + (recipe.get("corner_cases") or [])
              if spec.get("groups") != 0] or [recipe["views"]["count"]]
    header = {
        "configs": [{"config_name": "default",
                     "data_files": [{"split": "train", "path": [s["name"] for s in manifest["shards"]]}]}],
        "dataset_info": {
            "features": tar_features(layout, output["format"], max(counts), sample_json),
            "splits": [{"name": "train", "num_examples": tar_samples,
                        "num_bytes": manifest["totals"]["bytes"]}],
        },
        "tags": ["synthetic", "synthgen", "webdataset"],
    }
    totals = manifest["totals"]
    unit = "one sample per view" if layout == "view" else "one sample per multi-view group"
    return "\n".join([
        "---", yaml.safe_dump(header, sort_keys=False).rstrip(), "---", CARD_MARKER, "",
        f"# {recipe['name']}", "",
        f"A synthetic multi-view dataset made by synthgen from recipe `{recipe['name']}` "
        f"(hash `{manifest['recipe_hash'][:12]}`) with model {_code(recipe['model']['id'])}: "
        f"{totals['samples']} groups, {totals['images']} images in {totals['shards']} "
        f"WebDataset shards, layout `{layout}` ({unit}).", "",
        "`manifest.json` holds the full recipe, the plan summary and each shard's sha256; "
        f"`{WIDS_INDEX}` is a wids shard index.", "",
        "```python",
        "import datasets",
        'dataset = datasets.load_dataset("DIR", split="train")',
        "```", ""])


def wids_index(manifest: dict, tar_samples_per_shard: list[int]) -> dict:
    """`index.json`: wids' shard list, names relative to the index file."""
    return {"__kind__": "wids-shard-index-v1", "wids_version": 1,
            "name": manifest["recipe"]["name"],
            "shardlist": [{"url": shard["name"], "nsamples": count}
                          for shard, count in zip(manifest["shards"], tar_samples_per_shard, strict=True)]}


def index_bytes(index: dict) -> bytes:
    return json.dumps(index, indent=2, sort_keys=True).encode() + b"\n"
