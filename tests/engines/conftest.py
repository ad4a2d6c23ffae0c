"""Fixtures for the engine tests."""

from __future__ import annotations

import pytest

from engine_helpers import dataset_bytes, run


@pytest.fixture
def reference(write_recipe, tmp_path):
    """The small recipe, and the bytes of its dataset built by the local engine."""
    recipe = write_recipe()
    run("local", recipe, tmp_path / "reference")
    return recipe, dataset_bytes(tmp_path / "reference")
