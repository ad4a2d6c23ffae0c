"""`synthgen inspect` on damaged `view`-layout datasets (review, 2026-12-03; the view cases
failed before their fix): the same damage gives the same counts as in the `group` layout (a
damaged group is left out, not counted twice; a lost image is reported, not counted)."""

from __future__ import annotations

import io
import json
import shutil
import sys
import tarfile
from pathlib import Path

import pytest

from synthgen.inspection import count_groups

sys.path.insert(0, str(Path(__file__).parent / "engines"))
from engine_helpers import run  # noqa: E402


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> dict[str, Path]:
    import yaml

    from small_recipe import SMALL_RECIPE, merge

    root = tmp_path_factory.mktemp("inspect_review")
    out = {}
    for layout in ("group", "view"):
        recipe = merge(SMALL_RECIPE, {"views": {"count": 3, "strategy": "seeds"},
                                      "output": {"layout": layout, "shuffle": False}})
        path = root / f"{layout}.yaml"
        path.write_text(yaml.safe_dump(recipe, sort_keys=False))
        run("local", path, root / layout)
        out[layout] = root / layout
    return out


def _rewrite_tar(shard: Path, change) -> None:
    """Rewrite `shard` member by member; `change(name, data)` returns new bytes or None to drop."""
    members = []
    with tarfile.open(shard) as tar:
        for info in tar.getmembers():
            data = tar.extractfile(info).read()
            members.append((info, change(info.name, data)))
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        for info, data in members:
            if data is None:
                continue
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    shard.write_bytes(buffer.getvalue())


def _damaged_copy(built, layout, tmp_path, target) -> Path:
    dataset = tmp_path / layout
    shutil.copytree(built[layout], dataset)
    _rewrite_tar(dataset / "shard-000000.tar", target)
    return dataset


def _first_group(dataset: Path) -> str:
    with tarfile.open(dataset / "shard-000000.tar") as tar:
        return tar.getnames()[0].split(".")[0].split("-view")[0]


@pytest.mark.parametrize("layout", ["group", "view"])
def test_a_group_whose_middle_view_json_is_damaged_is_not_counted_twice(built, layout, tmp_path):
    group = _first_group(built[layout])
    middle = f"{group}-view1.json" if layout == "view" else f"{group}.json"
    dataset = _damaged_copy(built, layout, tmp_path,
                            lambda name, data: b"{not json" if name == middle else data)
    counts = count_groups(dataset)
    total = json.loads((dataset / "manifest.json").read_text())["totals"]["samples"]
    assert any("does not parse" in line for line in counts["damaged"])
    # The group layout leaves the damaged group out (total - 1); the view layout split the
    # group around its damaged view into two groups with the same id (total + 1).
    assert counts["groups"] == total - 1


@pytest.mark.parametrize("layout", ["group", "view"])
def test_a_view_whose_image_is_missing_is_not_counted(built, layout, tmp_path):
    group = _first_group(built[layout])
    image = f"{group}-view1.png" if layout == "view" else f"{group}.view1.png"
    dataset = _damaged_copy(built, layout, tmp_path,
                            lambda name, data: None if name == image else data)
    counts = count_groups(dataset)
    totals = json.loads((dataset / "manifest.json").read_text())["totals"]
    # The group layout reports "lacks view1.png" and skips the group; the view layout fills
    # the missing view with None, counts it as an image and reports nothing for the sample.
    assert any("lacks view1.png" in line for line in counts["damaged"])
    assert counts["groups"] == totals["samples"] - 1
    assert counts["images"] == totals["images"] - 3


@pytest.mark.parametrize("command", ["inspect", "audit"])
def test_inspect_and_audit_of_a_url_say_they_read_a_local_folder(command):
    """`synthgen inspect s3://bucket/x` spoke of `s3:/bucket/x` (a path folded the URL) having
    no manifest and told the user to rerun generate; they read local folders only."""
    from click.testing import CliRunner

    from synthgen.cli import main

    result = CliRunner().invoke(main, [command, "s3://bucket/data"])
    assert result.exit_code == 2, result.output
    assert "s3://bucket/data: synthgen " + command + " reads a dataset in a local folder" in result.output


@pytest.mark.parametrize("entry", [{"name": "../elsewhere/shard-000000.tar"},
                                   {"name": "shard-000000.tar", "samples": 2}])
@pytest.mark.parametrize("command", ["inspect", "audit"])
def test_inspect_and_audit_check_the_manifest_as_the_loader_does(built, tmp_path, command, entry):
    """inspect and audit checked a manifest more loosely than the loader (any shard name,
    no count or digest needed), so a shard entry pointing outside the dataset directory was
    read there; one check (`sources.read_manifest`) now serves every reader."""
    from click.testing import CliRunner

    from synthgen.cli import main

    dataset = tmp_path / "group"
    shutil.copytree(built["group"], dataset)
    manifest = json.loads((dataset / "manifest.json").read_text())
    manifest["shards"][0] = entry
    (dataset / "manifest.json").write_text(json.dumps(manifest))
    result = CliRunner().invoke(main, [command, str(dataset)])
    assert result.exit_code == 2, result.output
    assert "manifest.json" in result.output and "synthgen finalize" in result.output, result.output
    assert "Traceback" not in result.output
