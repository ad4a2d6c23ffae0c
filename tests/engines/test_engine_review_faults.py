"""Engine, writer and store faults found in review, each test failing on the code it was
written against: a refused or failed run that deletes another live run's claim, user files
removed from a folder that is not a dataset, stats files whose flipped bytes the manifest
vouches for, a slice run's manifest vouching for a damaged shard, and an --overwrite that
keeps a shard of the run it replaces.

Most tests build no model: shards hold stand-in image bytes (as engine_helpers.py does).
"""

from __future__ import annotations

import json
import tarfile
from dataclasses import replace

import pytest

from engine_helpers import QUIET, finished_dataset, model_info, shard_samples
from synthgen.engines import run_engine
from synthgen.errors import UserError
from synthgen.plan import make_plan
from synthgen.recipe import parse_recipe
from synthgen.store import LocalStore
from synthgen.write import finalize_dataset, prepare_output_dir, publish_shard


def _recipe(**fields):
    base = {"name": "review", "seed": 1,
            "model": {"id": "builtin:tiny-random", "steps": 1, "width": 32, "height": 32},
            "classes": [{"name": "circle", "templates": ["a circle"], "groups": 3},
                        {"name": "square", "templates": ["a square"], "groups": 3}],
            "views": {"count": 2, "strategy": "seeds"},
            "output": {"groups_per_shard": 2, "format": "png"}}
    return parse_recipe(json.dumps({**base, **fields}))


def _balanced(values: dict):
    """Recipes with the same hash whose plans differ by the written order of `values`."""
    return _recipe(classes=[{"name": "dog", "templates": ["a {g} dog"], "groups": 5}],
                   balance=[{"attribute": "g", "values": values}])


# --- release_unused_claim removes a claim this run never made --------------------------------

def test_a_refused_reordered_recipe_does_not_delete_a_live_runs_claim(tmp_path):
    """engines/__init__.py:run_engine wraps every run in `releasing_unused_claim`, which on
    any failure removes recipe.json when it names the failing recipe's *hash* and no shard
    exists yet. A recipe with its balance values reordered has the same hash, so when it is
    refused ("another order") it deletes the claim of the run that is really building there
    (still loading its model). Its rerun then claims the folder with its own order, and the
    first run's shards (other plan, same hash) pass `check_claim`: one dataset, two plans.
    A refused run must leave another run's claim alone."""
    first, reordered = _balanced({"woman": 1, "man": 1}), _balanced({"man": 1, "woman": 1})
    assert first.recipe_hash == reordered.recipe_hash
    out = tmp_path / "out"
    running = make_plan(first)
    prepare_output_dir(out, running, overwrite=False)  # a run of `first` has started
    claim = (out / "recipe.json").read_bytes()
    with pytest.raises(UserError, match="another order"):
        run_engine("local", make_plan(reordered), out, QUIET)
    assert (out / "recipe.json").exists(), "the refused run deleted the live run's claim"
    assert (out / "recipe.json").read_bytes() == claim


def test_a_run_with_a_bad_slice_does_not_delete_a_running_slices_claim(tmp_path):
    """The same `releasing_unused_claim`: a run of the same recipe that fails before doing
    anything (here `--shards` outside the plan) removes recipe.json while another slice of
    that recipe is running and has not published yet. Another recipe can then claim the
    folder as empty, and the running slice dies on its next publish ("another run replaced
    this dataset"). Only a claim the failing run itself created may be released."""
    recipe = _recipe()
    plan = make_plan(recipe)
    out = tmp_path / "out"
    prepare_output_dir(out, plan, overwrite=False, shards=(0,))  # rank 0 is loading its model
    with pytest.raises(UserError, match="not in the plan"):
        run_engine("local", plan, out, replace(QUIET, shards=(99,)))
    assert (out / "recipe.json").exists(), "a failed run released a live slice's claim"
    # What that costs: another recipe now takes the folder, and the slice's shard is refused.
    with pytest.raises(UserError):
        prepare_output_dir(out, make_plan(_recipe(seed=2)), overwrite=False)


# --- temporaries: only synthgen's own ------------------------------------------------------

def test_a_run_into_a_folder_without_recipe_json_keeps_the_users_dot_tmp_files(tmp_path):
    """write.py:prepare_output_dir says a folder without recipe.json "holds the user's own
    files, whatever their names", and refuses dataset-like names there; but it lets `.*.tmp`
    names through and then `LocalStore.remove_stale_temporaries` (store.py:253-263) deletes
    every dot-file ending in .tmp whose name carries no writer tag, whatever it is
    (`--out ~/work` holding `.session.tmp`). `--overwrite` (`_OWNED_FILE`, write.py:57) does
    the same in a dataset folder. Only temporaries synthgen names for its own files
    (`.shard-NNNNNN.tar.HOST-PID-RANDOM.tmp` and the like) may be removed."""
    out = tmp_path / "work"
    out.mkdir()
    (out / ".session.tmp").write_text("the user's notes")
    (out / "notes.txt").write_text("more notes")
    plan = make_plan(_recipe())
    prepare_output_dir(out, plan, overwrite=False)
    assert (out / ".session.tmp").exists(), "a user's file was deleted from --out"


def test_overwrite_keeps_the_users_dot_tmp_files(tmp_path):
    """`--overwrite` deletes "synthgen's own files there ... never anything else" (README),
    but `_OWNED_FILE` (write.py:57) counts every `.*.tmp` as synthgen's."""
    plan = make_plan(_recipe())
    out = tmp_path / "out"
    finished_dataset(out, plan)
    (out / ".my-edits.tmp").write_text("not synthgen's")
    prepare_output_dir(out, plan, overwrite=True)
    assert (out / ".my-edits.tmp").exists(), "--overwrite deleted a file that is not the dataset's"


# --- stats files: one flipped bit the manifest vouches for ---------------------------------

def test_a_flipped_bit_in_a_stats_files_name_is_not_vouched_for(tmp_path):
    """write.py:read_stats checks that each field has the right type, not that the stats
    are this shard's: one flipped bit ('0' -> '1') turns shard 0's `name` into
    "shard-000001.tar", and finalize writes a manifest, wids index and dataset card that
    list shard-000001.tar twice and shard-000000.tar never (readers of the card or the index
    read shard 1 twice and lose shard 0), with shard 0's sha256 under shard 1's name. Stats
    whose `name`/`shard` are not the shard's must count as damaged (rebuilt, or named by
    finalize)."""
    plan = make_plan(_recipe())
    out = tmp_path / "out"
    finished_dataset(out, plan)
    stats = out / "shard-000000.stats.json"
    data = stats.read_bytes()
    assert data.count(b'"shard-000000.tar"') == 1
    stats.write_bytes(data.replace(b'"shard-000000.tar"', b'"shard-000001.tar"'))  # 0x30^0x31
    (out / "manifest.json").unlink()
    try:
        manifest = finalize_dataset(out)
    except UserError:
        return  # correct: the damaged stats are named
    names = [entry["name"] for entry in manifest["shards"]]
    assert names == ["shard-000000.tar", "shard-000001.tar", "shard-000002.tar"], names


def test_a_flipped_bit_in_a_stats_files_sample_count_is_not_vouched_for(tmp_path):
    """The same gap: `samples` 2 -> 3 (0x32 ^ 0x01, one bit) still parses as an int, the tar
    still has the recorded size and sha256, so resume keeps the shard and finalize writes a
    manifest whose totals and wids index (`nsamples`, which wids uses to address samples)
    claim a sample the shard does not hold. The stats must be checked against the tar they
    describe (or carry a digest of their own) before a manifest vouches for them."""
    plan = make_plan(_recipe())
    out = tmp_path / "out"
    finished_dataset(out, plan)
    stats = out / "shard-000000.stats.json"
    data = stats.read_bytes()
    assert data.count(b'"samples":2') == 1
    stats.write_bytes(data.replace(b'"samples":2', b'"samples":3'))
    (out / "manifest.json").unlink()
    try:
        manifest = finalize_dataset(out)
    except UserError:
        return  # correct
    with tarfile.open(out / "shard-000000.tar") as tar:
        held = len({member.name.split(".", 1)[0] for member in tar.getmembers()})
    index = json.loads((out / "index.json").read_text())
    assert index["shardlist"][0]["nsamples"] == held == manifest["shards"][0]["samples"], (
        f"the tar holds {held} samples, the manifest says {manifest['shards'][0]['samples']}")


# --- a slice's manifest ---------------------------------------------------------------------

def test_the_slice_that_finishes_last_does_not_vouch_for_another_slices_damaged_shard(tmp_path):
    """engines/local.py:finish_run writes manifest.json when `missing_shards` (a *size*
    check, write.py:missing_shards) finds every shard done: the shards of other slices are
    never checked against their sha256, although `synthgen finalize` does exactly that check
    because "a manifest vouches for them" (write.py:570). A byte flipped in rank 0's shard
    before rank 1 finishes gives a manifest listing a sha256 the tar no longer has. The last
    slice must check the other shards' digests (as finalize does) before writing it."""
    plan = make_plan(_recipe())
    out = tmp_path / "out"
    # Ranks 0 and 2 are done (stand-in bytes), then a byte of shard 0 flips in place.
    prepare_output_dir(out, plan, overwrite=False, shards=(0, 2))
    for shard in (0, 2):
        assert publish_shard(out, shard, shard_samples(plan, shard), model_info(plan)).published
    tar = out / "shard-000000.tar"
    data = bytearray(tar.read_bytes())
    data[700] ^= 0x01  # inside the first member's bytes: same size
    tar.write_bytes(bytes(data))
    # Rank 1 builds its shard with the tiny model and, being last, writes the manifest.
    with pytest.raises(UserError, match="other slices. shards 0 do not match the sha256"):
        run_engine("local", plan, out, replace(QUIET, shards=(1,)))
    assert (out / "shard-000001.stats.json").exists(), "the slice's own shard is kept"
    assert not (out / "manifest.json").exists(), "manifest.json vouches for a damaged shard"


# --- --overwrite racing the run it replaces --------------------------------------------------

def test_overwrite_keeps_no_shard_the_replaced_run_publishes_while_it_deletes(tmp_path,
                                                                               monkeypatch):
    """write.py:prepare_output_dir with `overwrite` lists the folder, then deletes in sorted
    order, recipe.json before the shards. A worker of the replaced run (recipe A) that
    publishes shard 0 between the listing and the deletion of recipe.json passes both
    `check_claim`s (recipe.json still names A) and writes its stats; the file was not in the
    listing, so it survives, and the new run (recipe B) then counts it as done: its sha256
    matches its own stats, and stats do not record a recipe. Dataset B keeps a shard of
    recipe A. Remove recipe.json first (so every later publish of A fails its check), then
    list and delete; and record the recipe hash in the stats."""
    old, new = make_plan(_recipe()), make_plan(_recipe(seed=2))
    assert old.recipe.recipe_hash != new.recipe.recipe_hash
    out = tmp_path / "out"
    prepare_output_dir(out, old, overwrite=False)  # run A is building
    listing = LocalStore.names
    raced = []

    def names_then_a_publishes(self):
        found = listing(self)
        if not raced:  # the overwrite's listing: run A's worker publishes right after it
            try:
                raced.append(publish_shard(out, 0, shard_samples(old, 0),
                                           model_info(old)).published)
            except UserError:  # refused: the claim was already gone (the fixed order)
                raced.append(False)
        return found

    monkeypatch.setattr(LocalStore, "names", names_then_a_publishes)
    done = prepare_output_dir(out, new, overwrite=True)
    monkeypatch.setattr(LocalStore, "names", listing)
    assert raced
    assert 0 not in done, "the --overwrite run counts run A's shard 0 as its own"
    kept = out / "shard-000000.tar"
    if kept.exists():
        with tarfile.open(kept) as tar:
            member = next(m for m in tar.getmembers() if m.name.endswith(".json"))
            hashes = json.loads(tar.extractfile(member).read())["recipe"]["hash"]
        assert hashes == new.recipe.recipe_hash, "dataset B holds a shard of recipe A"
