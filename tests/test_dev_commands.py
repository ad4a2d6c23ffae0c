"""`synthgen dev tiny-random`: writes the shipped tiny pipeline's weights, and refuses to write
into a folder that holds something."""

from __future__ import annotations

from pathlib import Path

from click.testing import CliRunner

from synthgen.builtin import resolve_model_source
from synthgen.cli import main


def test_tiny_random_with_the_defaults_writes_the_builtin_weights(tmp_path):
    result = CliRunner().invoke(main, ["dev", "tiny-random", str(tmp_path / "tiny")])
    assert result.exit_code == 0, result.output
    assert f"wrote a tiny random sd pipeline (seed 0) to {tmp_path / 'tiny'}" in result.output
    shipped = Path(resolve_model_source("builtin:tiny-random"))
    weights = sorted(path.relative_to(shipped) for path in shipped.rglob("*.safetensors"))
    assert len(weights) == 3
    for name in weights:
        assert (tmp_path / "tiny" / name).read_bytes() == (shipped / name).read_bytes(), name


def test_tiny_random_refuses_a_folder_that_is_not_empty(tmp_path):
    (tmp_path / "notes.txt").write_text("mine")
    result = CliRunner().invoke(main, ["dev", "tiny-random", str(tmp_path), "--family", "sdxl"])
    assert result.exit_code == 2 and "Traceback" not in result.output
    assert "is not empty; give a new folder" in result.output
    assert [path.name for path in tmp_path.iterdir()] == ["notes.txt"]
