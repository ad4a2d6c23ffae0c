"""``synthgen dev ...``: tools for working on synthgen and trying recipes offline.

Not a stage of the data flow, so not beside one: these write stand-ins that let the real code
paths run on a CPU with nothing downloaded (the tests build the same ones).
"""

from __future__ import annotations

from pathlib import Path

import click

from synthgen.cli_types import SEED, NamedPath
from synthgen.errors import UserError


@click.group()
def dev() -> None:
    """Tools for working on synthgen: offline stand-ins for real models."""


@dev.command("tiny-random")
@click.argument("out_dir", type=NamedPath(path_type=Path, file_okay=False))
@click.option("--family", type=click.Choice(["sd", "sdxl"]), default="sd", show_default=True,
              help="StableDiffusionPipeline or StableDiffusionXLPipeline.")
@click.option("--seed", type=SEED, default=0, show_default=True, help="The weights depend only on it.")
def tiny_random(out_dir: Path, family: str, seed: int) -> None:
    """Write a tiny random-weight pipeline folder (noise pictures, real code path, milliseconds on
    a CPU); `model.id: OUT_DIR` in a recipe loads it. The defaults write `builtin:tiny-random`'s
    weights."""
    from synthgen.generate.tiny_random import save_tiny_pipeline
    from synthgen.outputs import check_output_folder, folder_written_whole

    check_output_folder(out_dir, "OUT_DIR")
    if out_dir.exists() and any(out_dir.iterdir()):
        raise UserError(f"{out_dir} is not empty; give a new folder (a model folder is written whole)")
    with folder_written_whole(out_dir) as temporary:
        save_tiny_pipeline(temporary, family, seed)
    click.echo(f"wrote a tiny random {family} pipeline (seed {seed}) to {out_dir}")
