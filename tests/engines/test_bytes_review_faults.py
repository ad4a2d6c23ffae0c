""""Same recipe, same bytes": faults found in a review of that promise (each test fails on the
code it was written against).

Compared byte for byte (sha256 of every file) on builtin:tiny-random, CPU, batch size 3.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

from engine_helpers import run

from synthgen.recipe import load_recipe


def shard_files(out_dir: Path) -> dict[str, str]:
    """sha256 of every shard tar and stats file (what a shard's bytes are)."""
    files = sorted(out_dir.glob("shard-*.tar")) + sorted(out_dir.glob("shard-*.stats.json"))
    return {f.name: hashlib.sha256(f.read_bytes()).hexdigest() for f in files}


def test_a_run_resumed_after_changing_only_the_audit_block_gives_the_bytes_of_one_run(
        write_recipe, tmp_path):
    """What differs: a dataset started from a recipe and resumed (or a failed job-array task
    rerun with `--rank`) from the same recipe whose `audit:` block alone was edited cannot be
    finished at all: the resume stops with "holds a dataset made from this recipe with its
    slot or balance values in another order, which plans other groups", which is false: no
    value was reordered, and the plan and every shard byte are those of the unedited recipe.

    Why the docs promise otherwise: README's recipe reference says the `audit:` block holds
    "settings for synthgen audit (not part of the recipe hash)", and `Recipe.recipe_hash`
    leaves it out because "it changes how a dataset is measured, not its bytes"; README's
    Resume says rerunning `generate` into the same `--out` skips the finished shards and
    rebuilds the others, refusing only another recipe (another hash), other weights, an
    earlier plan revision, or "the same recipe with its slot or balance values reordered (the
    same hash, another plan)". An audit-only edit is none of these.

    Where: `synthgen/write.py`, `_written_order_differs` (called by `prepare_output_dir`)
    compares the whole `model_dump` of the recipe with the one recorded in recipe.json
    (`json.dumps` of both), so any difference the hash ignores on purpose (the audit block;
    likewise slot *names* listed in another order, which plan identically) is taken for
    reordered values. It should compare only the orders that change the plan.
    """
    recipe = write_recipe()
    tweaked = write_recipe({"audit": {"margin": 0.2, "duplicate_threshold": 0.9}},
                           name="tweaked.yaml")
    assert load_recipe(recipe).recipe_hash == load_recipe(tweaked).recipe_hash, \
        "the audit block is not part of the recipe hash"

    run("local", recipe, tmp_path / "one", cpu_threads=1)
    # The first run built shard 0 only (a slice, or a run killed after its first shard) ...
    run("local", recipe, tmp_path / "resumed", shards=(0,), cpu_threads=1)
    # ... and the rerun, after the audit settings were tuned, finishes the dataset.
    summary = run("local", tweaked, tmp_path / "resumed", cpu_threads=1)[1]

    assert summary.shards_skipped == 1 and summary.manifest_written
    assert shard_files(tmp_path / "resumed") == shard_files(tmp_path / "one")
