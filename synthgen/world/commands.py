"""``synthgen world ...``: train the embedded world models and write real world datasets.

These commands are the only command line of world/ (attached to the `synthgen` group in
synthgen/cli.py); each parses its options and calls one library function.
"""

from __future__ import annotations

from pathlib import Path

import click

from synthgen.cli_types import NamedPath
from synthgen.world.model_folders import SD_FOLDER, SHIPPED_MODELS_ROOT


@click.group()
def world() -> None:
    """The procedural world: its embedded models and labelled real datasets."""


# The defaults below are `train_world_models`' own (tests/world/test_training.py checks they agree):
# world/train.py imports torch, which the command line loads only when a command runs.
@world.command()
# No default: it was the package's own models folder, and a run (a smoke run, one stopped
# midway) replaced the shipped models there, model by model. Train elsewhere, then copy.
@click.option("--out", type=NamedPath(path_type=Path, file_okay=False), required=True,
              help="Folder that receives world-clip/, world-sd/ and world-oracle/ (to ship them, "
                   "copy them into synthgen/models afterwards).")
@click.option("--device", default="auto", show_default=True, help="auto, cpu, cuda or cuda:N.")
@click.option("--seed", type=click.IntRange(0, 99), default=0, show_default=True,
              help="Seed of the whole run (0-99: from 100 on the training scenes are the held-out ones).")
@click.option("--scale", type=float, default=1.0, show_default=True,
              help="Multiplies step counts and data sizes; 0.02 is a quick smoke run.")
@click.option("--models", default="clip,sd,oracle", show_default=True,
              help="Which of clip, sd, oracle, clip-refine, sd-detail, sd-captions to train, comma-separated; "
                   "world-sd without clip loads OUT/world-clip. Separate "
                   "runs (e.g. sd and oracle at once, one per core) give what one run gives. "
                   "clip-refine continues OUT/world-clip's vision refinement (text tower kept); "
                   "sd-detail runs world-sd's second UNet phase on a world-sd trained without it, "
                   "sd-captions an optional third (a trial the shipped world-sd did not get; docs/WORLD.md).")
@click.option("--reuse-clip", is_flag=True,
              help="Load OUT/world-clip instead of training it (the same as leaving clip out of --models).")
@click.option("--threads", type=click.IntRange(min=1), default=1, show_default=True,
              help="CPU threads per run: 1 is robust when other jobs share the cores; on a quiet "
                   "machine 2 is ~1.5x faster (docs/WORLD.md).")
@click.option("--evaluate/--no-evaluate", default=True, show_default=True,
              help="Then measure the models in OUT and rewrite their model cards, as `synthgen world "
                   "evaluate --models OUT --scale SCALE` does.")
def train(out: Path, device: str, seed: int, scale: float, models: str, reuse_clip: bool, threads: int,
          evaluate: bool) -> None:
    """Train the world CLIP, text-to-image model and oracle, then evaluate them and write model cards."""
    from synthgen.world.train import train_world_models

    chosen = tuple(name.strip() for name in models.split(",") if name.strip())
    summary = train_world_models(out, device=device, seed=seed, scale=scale, models=chosen,
                                 reuse_clip=reuse_clip, threads=threads, evaluate=evaluate,
                                 log=lambda message: click.echo(message))
    click.echo(f"trained {', '.join(summary['models'])} in {summary['training_wall_seconds']:.0f}s; "
               f"models in {out}")


@world.command()
@click.option("--out", type=NamedPath(path_type=Path, file_okay=False), required=True)
@click.option("--train", "train_count", type=click.IntRange(min=0), default=1000, show_default=True)
@click.option("--test", "test_count", type=click.IntRange(min=0), default=200, show_default=True)
@click.option("--resolution", type=click.Choice(["32", "64"]), default="32", show_default=True)
@click.option("--seed", type=click.IntRange(0, 99), default=0, show_default=True,
              help="Run seed of the training split (0-99).")
def dataset(out: Path, train_count: int, test_count: int, resolution: str, seed: int) -> None:
    """Render labelled real scenes as WebDataset shards in OUT/train and OUT/test."""
    from synthgen.world.dataset import write_real_dataset

    written = write_real_dataset(out, train_count, test_count, int(resolution), seed)
    click.echo(f"wrote {written['train']} train and {written['test']} test samples to {out}")


@world.command()
@click.option("--models", type=NamedPath(path_type=Path, file_okay=False), default=SHIPPED_MODELS_ROOT,
              show_default=True, help="Folder holding world-clip/, world-sd/ and world-oracle/.")
@click.option("--device", default="auto", show_default=True, help="auto, cpu, cuda or cuda:N.")
@click.option("--scale", type=float, default=1.0, show_default=True,
              help="Multiplies the image counts; the model cards' numbers use 1.0, 0.01 is a smoke run.")
def evaluate(models: Path, device: str, scale: float) -> None:
    """Measure the world models (CLIP zero-shot, oracle-judged generations) and rewrite model cards."""
    from synthgen.world.evaluate import evaluate_world_models, write_model_cards

    evaluate_world_models(models, device=device, scale=scale, log=lambda message: click.echo(message))
    write_model_cards(models)


@world.command()
@click.option("--recipe", "recipe_path", type=NamedPath(path_type=Path, dir_okay=False, exists=True),
              default=Path(__file__).resolve().parents[2] / "recipes" / "attribute-editing.yaml",
              show_default=True, help="A builtin:world-sd recipe with an erase of 'striped' and/or a "
                                      "balance entry of method debias.")
@click.option("--prompts", "prompt_count", type=click.IntRange(min=10), default=400, show_default=True,
              help="Held-out prompts for erase (each drawn asking for stripes and not), and images per "
                   "class for debias (at most 100,000).")
@click.option("--device", default="auto", show_default=True)
@click.option("--out", type=NamedPath(path_type=Path, dir_okay=False), default=None,
              help="Write the figures as JSON here.")
@click.option("--model", type=NamedPath(path_type=Path, file_okay=False, exists=True), default=None,
              help="A world-sd folder trained elsewhere (OUT/world-sd of `synthgen world train`) "
                   "instead of the shipped one.")
def edits(recipe_path: Path, prompt_count: int, device: str, out: Path | None,
          model: Path | None) -> None:
    """Judge a recipe's erase and debias edits on world-sd with the oracle (docs/WORLD.md)."""
    import json

    from synthgen.errors import UserError
    from synthgen.outputs import check_output_file, file_written_whole
    from synthgen.world.edits import debias_gates, erase_gates, measure_edits

    if out is not None:
        check_output_file(out, "--out")  # before minutes of measuring, not after
        # The figures are written over --out: the recipe or a file of the model would be lost.
        if out.exists() and out.samefile(recipe_path):
            raise UserError(f"--out {out}: is the recipe itself, which the figures would replace; "
                            "give another file, e.g. edits.json")
        folder = model if model is not None else SHIPPED_MODELS_ROOT / SD_FOLDER
        if out.resolve().is_relative_to(folder.resolve()):
            raise UserError(f"--out {out}: is inside the world-sd folder {folder}, whose files the figures "
                            "could replace; give a file outside it, e.g. edits.json")
    result = measure_edits(recipe_path, prompt_count, device, log=lambda message: click.echo(message),
                           model_folder=model)
    gates = {**(erase_gates(result) if "erase" in result else {}),
             **(debias_gates(result) if "debias" in result else {})}
    result["gates"] = gates
    for name, held in gates.items():
        click.echo(f"{'PASS' if held else 'FAIL'}  {name}")
    if out is not None:
        with file_written_whole(out) as temporary:
            temporary.write_text(json.dumps(result, indent=2) + "\n")
        click.echo(f"figures written to {out}")
