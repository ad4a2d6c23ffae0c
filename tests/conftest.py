"""Shared fixtures: small recipes on tiny random pipelines, built offline on the CPU."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest
import yaml

SMALL_RECIPE = {
    "name": "small",
    "seed": 7,
    "model": {"id": "builtin:tiny-random", "steps": 2, "width": 32, "height": 32},
    "slots": {"colour": ["red", "green", "blue"]},
    "classes": [
        {"name": "circle", "templates": ["a {colour} circle"], "groups": 4},
        {"name": "square", "templates": ["a {colour} square", "a {size} {colour} square"],
         "slots": {"size": {"small": 1, "large": 3}}, "groups": 3},
    ],
    "corner_cases": [
        {"name": "circle in square", "prompt": "a {colour} circle inside a square",
         "label": "circle", "groups": 2, "tags": ["nested"]},
    ],
    "views": {"count": 2, "strategy": "seeds"},
    "output": {"groups_per_shard": 4, "format": "png"},
}


def merge(base: dict, overrides: dict) -> dict:
    """`base` with `overrides` merged in, recursively for nested mappings."""
    merged = dict(base)
    for key, value in overrides.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = merge(merged[key], value)
        else:
            merged[key] = value
    return merged


@pytest.fixture
def write_recipe(tmp_path: Path):
    """Writes SMALL_RECIPE (with overrides) as YAML, or raw YAML text, and returns its path."""

    def write(overrides: dict | str | None = None, name: str = "recipe.yaml") -> Path:
        path = tmp_path / name
        if isinstance(overrides, str):
            path.write_text(textwrap.dedent(overrides))
        else:
            path.write_text(yaml.safe_dump(merge(SMALL_RECIPE, overrides or {}), sort_keys=False))
        return path

    return write


@pytest.fixture(scope="session")
def tiny_sdxl_dir(tmp_path_factory) -> Path:
    """A tiny random SDXL pipeline saved as a model folder."""
    from synthgen.generate.tiny_random import save_tiny_pipeline

    return save_tiny_pipeline(tmp_path_factory.mktemp("tiny-sdxl") / "model", family="sdxl")
