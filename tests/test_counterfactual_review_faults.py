"""Review of the `slots` view strategy, group checks and counterfactual audit: each test
failed on the code before its fix (eef7dda)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from small_recipe import parse_small

from synthgen.errors import UserError


def _samples(out: Path) -> list[dict]:
    import tarfile

    found = []
    for shard in sorted(out.glob("shard-*.tar")):
        with tarfile.open(shard) as tar:
            for member in tar.getmembers():
                if member.name.endswith(".json"):
                    found.append(json.load(tar.extractfile(member)))
    return found


WORLD_CHECKED = {
    "name": "checked-and-rejected",
    "seed": 11,
    "model": {"id": "builtin:world-sd", "steps": 2, "guidance_scale": 4.0,
              "width": 32, "height": 32},
    "templates": ["a {colour} {class} on a gray background"],
    "slots": {"colour": ["red", "green", "blue"]},
    "classes": [{"name": "circle", "groups": 1}],
    "views": {"count": 2, "strategy": ["slots"],
              "slots": {"vary": ["colour"], "check": {"layout": 0.01, "max_retries": 1}}},
    # Flags every view (threshold below any score): each view is drawn again once after
    # its group's check, with a new seed.
    "suppress": [{"concept": "a circle", "method": "reject", "detector": "builtin:world-clip",
                  "contrast": "a photo", "threshold": 1e-9, "max_retries": 1}],
    "output": {"groups_per_shard": 1, "format": "png"},
}


def test_held_check_seed_used_is_the_stored_views_seed_after_a_rejection_redraw(tmp_path):
    """README: each view's `held_check` says `seed_used`, and `passed` is about the stored
    views once `reject` drew a view again. After such a redraw the view's top-level `seed_used`
    is the new seed, while `held_check.seed_used` still names the checked draw's seed, so a
    loader (or a filter reproducing a view) reading `held_check` gets a seed the stored image
    was not drawn from."""
    import yaml

    from synthgen import api

    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(WORLD_CHECKED, sort_keys=False))
    api.generate(str(path), tmp_path / "out", device="cpu", cpu_threads=1, batch_size=2,
                 progress=False)
    (sample,) = _samples(tmp_path / "out")
    for view in sample["views"]:
        assert "seed_used" in view  # the rejection drew it again
        assert view["held_check"]["seed_used"] == view["seed_used"], view


def test_slots_views_with_one_view_per_group_are_refused():
    """A varied slot with one value is refused because "its views could not differ"; one view
    per group gives the same: every group is a single image, no counterfactual (the audit then
    finds no counterfactual group), `check.layout` compares view 0 with itself. Accepted
    silently today."""
    with pytest.raises(UserError, match="count"):
        parse_small({"views": {"count": 1, "strategy": ["slots"],
                               "slots": {"vary": ["colour"]}}})
