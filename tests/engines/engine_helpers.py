"""Helpers for the engine tests: run a recipe with an engine, compare datasets byte for byte.

(Not in conftest.py: two conftest modules cannot both be imported by that name.)
"""

from __future__ import annotations

import hashlib
from dataclasses import replace
from pathlib import Path

from synthgen.engines import run_engine
from synthgen.engines.local import GenerateOptions
from synthgen.plan import make_plan
from synthgen.recipe import load_recipe

QUIET = GenerateOptions(progress=False, device="cpu", batch_size=3)


def run(engine: str, recipe_path: Path, out_dir: Path, **options):
    plan = make_plan(load_recipe(recipe_path))
    return plan, run_engine(engine, plan, out_dir, replace(QUIET, **options))


def dataset_bytes(out_dir: Path, manifest: bool = True) -> dict[str, str]:
    """sha256 of every shard (and of the manifest)."""
    files = sorted(out_dir.glob("shard-*.tar"))
    if manifest:
        files.append(out_dir / "manifest.json")
    return {f.name: hashlib.sha256(f.read_bytes()).hexdigest() for f in files}
