"""Click commands `train`, `probe` and `experiment`; cli.py registers them on `synthgen`.

    from synthgen.train.commands import experiment, probe, train
    main.add_command(train); main.add_command(probe); main.add_command(experiment)
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import click

from synthgen.cli_types import SEED, NamedPath
from synthgen.errors import UserError

# The probe's largest image side: its encoders are small ResNets and ViTs, and 1,024 px is
# already a thousand times the default 32 px's work per image (a huge value ran out of memory
# inside Pillow).
MAX_RESOLUTION = 1024
# Files a probe reads from an input folder (checkpoints, shards, the dataset's records).
_INPUT_SUFFIXES = (".safetensors", ".tar", ".stats.json")
_INPUT_NAMES = ("manifest.json", "recipe.json")


def _is_or_holds(given: Path, path: Path) -> bool:
    """Whether `path` is the input `given`, or an existing file of the kind a probe reads
    inside the input folder `given`."""
    target = path.resolve()
    if target == given.resolve():
        return True
    return (given.is_dir() and target.is_file() and target.parent == given.resolve()
            and (target.name.endswith(_INPUT_SUFFIXES) or target.name in _INPUT_NAMES))


def _blocks(text: str) -> tuple[int, ...]:
    try:
        blocks = tuple(int(part) for part in text.split(","))
    except ValueError:
        blocks = ()
    if not blocks or min(blocks) < 1:
        raise UserError(f"--blocks: {text!r} is not a list of positive block counts; pass e.g. "
                        "2,2,2,2 (the ResNet-18 layout)")
    return blocks


# synthgen.data.augment.AUGMENTATIONS, spelt out: importing synthgen.data loads torch, and the
# CLI starts without it (tests/train/test_experiment.py checks the two lists agree).
AUGMENT_CHOICES = ("simclr", "simclr-nocolour", "none")


@click.command()
@click.argument("data", type=NamedPath(path_type=Path))
@click.option("--out", type=NamedPath(path_type=Path), required=True,
              help="Checkpoints (checkpoint-last.safetensors) and log.jsonl; resumed if present.")
@click.option("--method", type=click.Choice(["simclr", "supcon", "multipos"]), default="multipos",
              show_default=True)
@click.option("--views", type=int, default=2, show_default=True, help="Views drawn per group.")
@click.option("--crops-per-view", type=int, default=1, show_default=True,
              help="Augmentations per drawn view (simclr on one view: --views 1 --crops-per-view 2).")
@click.option("--batch-size", type=int, default=64, show_default=True, help="Groups per step.")
@click.option("--steps", type=int, default=1000, show_default=True)
@click.option("--lr", type=float, default=1e-3, show_default=True)
@click.option("--weight-decay", type=float, default=1e-4, show_default=True)
@click.option("--warmup-steps", type=int, default=0, show_default=True)
@click.option("--temperature", type=float, default=0.1, show_default=True)
@click.option("--resolution", type=int, default=32, show_default=True)
@click.option("--augment", type=click.Choice(AUGMENT_CHOICES), default="simclr", show_default=True,
              help="simclr-nocolour: without the colour jitter and grayscale, for views that "
                   "already differ in colour (slots)")
@click.option("--crop-scale", type=float, nargs=2, default=(0.08, 1.0), show_default=True)
@click.option("--arch", type=click.Choice(["resnet", "vit"]), default="resnet", show_default=True)
@click.option("--width", type=int, default=32, show_default=True)
@click.option("--blocks", default="2,2,2,2", show_default=True, help="ResNet blocks per stage.")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--workers", "num_workers", type=int, default=2, show_default=True)
@click.option("--epoch-groups", type=int, default=None, help="Groups per epoch (default: dataset size).")
@click.option("--checkpoint-every", type=int, default=100, show_default=True)
@click.option("--device", default="auto", show_default=True)
@click.option("--threads", type=int, default=None,
              help="torch CPU threads (1 is fastest for small models on a shared 2-core CPU).")
@click.option("--no-amp", is_flag=True, help="Full precision on the GPU too.")
def train(data: Path, out: Path, method: str, views: int, crops_per_view: int, batch_size: int,
          steps: int, lr: float, weight_decay: float, warmup_steps: int, temperature: float,
          resolution: int, augment: str, crop_scale: tuple[float, float], arch: str, width: int,
          blocks: str, seed: int, num_workers: int, epoch_groups: int | None,
          checkpoint_every: int, device: str, threads: int | None, no_amp: bool) -> None:
    """Pretrain an encoder contrastively on the shards of DATA: a dataset directory, or shard
    files or URL patterns (those need --epoch-groups: only a directory's manifest counts
    its groups)."""
    from synthgen.train.encoders import EncoderSpec
    from synthgen.train.trainer import TrainOptions
    from synthgen.train.trainer import train as run_training

    config = TrainOptions(
        data=str(data), method=method, views=views, crops_per_view=crops_per_view,
        batch_size=batch_size, steps=steps, lr=lr, weight_decay=weight_decay,
        warmup_steps=warmup_steps, temperature=temperature, resolution=resolution,
        augment=augment, crop_scale=tuple(crop_scale),
        encoder=EncoderSpec(arch=arch, width=width, blocks=_blocks(blocks), resolution=resolution),
        seed=seed, num_workers=num_workers, epoch_groups=epoch_groups,
        checkpoint_every=checkpoint_every)
    result = run_training(config, out, device=device, amp=not no_amp, cpu_threads=threads)
    click.echo(f"trained {result.steps} steps, final loss {result.final_loss:.4f}; "
               f"checkpoint {result.checkpoint}")


@click.command()
@click.option("--checkpoint", type=NamedPath(path_type=Path), default=None,
              help="A synthgen train --out directory or checkpoint file; omit for the random floor only.")
@click.option("--train", "train_data", type=NamedPath(path_type=Path), required=True,
              help="Labelled images to fit the classifier on: shards (one seeded view per group) or an "
              "ImageFolder tree.")
@click.option("--test", "test_data", type=NamedPath(path_type=Path), required=True,
              help="Labelled images to report top-1 on.")
@click.option("--resolution", type=click.IntRange(min=1, max=MAX_RESOLUTION), default=None,
              help="Image size (default: the checkpoint's encoder resolution, else 32).")
@click.option("--weight-decay", type=float, default=1e-4, show_default=True)
@click.option("--seed", type=SEED, default=0, show_default=True, help="Random-init encoder seed.")
@click.option("--device", default="auto", show_default=True)
@click.option("--json", "json_path", type=NamedPath(path_type=Path, dir_okay=False), default=None,
              help="Also write the results to this file.")
def probe(checkpoint: Path | None, train_data: Path, test_data: Path, resolution: int | None,
          weight_decay: float, seed: int, device: str, json_path: Path | None) -> None:
    """Linear probe: frozen encoder features, logistic regression, top-1 on --test; also the
    random-init encoder of the same architecture as the floor."""
    from synthgen.devices import choose_device
    from synthgen.outputs import check_output_file, file_written_whole
    from synthgen.train.encoders import EncoderSpec
    from synthgen.train.probe import load_encoder, random_encoder
    from synthgen.train.probe import probe as run_probe

    if not (math.isfinite(weight_decay) and weight_decay >= 0):
        raise UserError(f"--weight-decay {weight_decay}: the L2 penalty of the logistic "
                        "regression; give a finite number of at least 0 (default 1e-4)")
    if json_path is not None:
        check_output_file(json_path, "--json")  # before the probes run, not after
        for given in (checkpoint, train_data, test_data):
            if given is not None and _is_or_holds(given, json_path):
                raise UserError(f"--json {json_path}: is an input of this probe ({given}); "
                                "write the results to a new file, e.g. probe.json")
    torch_device = str(choose_device(device))
    encoders = {}
    spec = EncoderSpec(resolution=resolution if resolution is not None else 32)
    if checkpoint is not None:
        encoders["checkpoint"], spec = load_encoder(checkpoint)
        if spec.arch == "vit" and resolution not in (None, spec.resolution):
            # A ViT's position embeddings hold its training resolution's number of patches.
            raise UserError(f"--resolution {resolution}: the checkpoint's ViT reads "
                            f"{spec.resolution} px images only; leave --resolution out")
    encoders["random-init"] = random_encoder(spec, seed)
    results = {}
    for name, encoder in encoders.items():
        result = run_probe(encoder, train_data, test_data,
                           resolution if resolution is not None else spec.resolution,
                           device=torch_device, weight_decay=weight_decay)
        results[name] = {"test_top1": result.test_top1, "train_top1": result.train_top1,
                         "train_samples": result.train_samples, "test_samples": result.test_samples,
                         "classes": result.classes,
                         "unlabelled_left_out": result.unlabelled_left_out}
        left_out = (f"; {result.unlabelled_left_out} samples without a class left out"
                    if result.unlabelled_left_out else "")
        click.echo(f"{name}: top-1 {100 * result.test_top1:.2f}% on {result.test_samples} test "
                   f"images ({result.classes} classes; train {100 * result.train_top1:.2f}%"
                   f"{left_out})")
    if json_path is not None:
        with file_written_whole(json_path) as temporary:
            temporary.write_text(json.dumps(results, indent=2) + "\n")


@click.command("experiment")
@click.option("--budget", "budget_name", type=click.Choice(["cpu", "gpu", "smoke"]), default="cpu",
              show_default=True, help="Sizes: smoke (tiny-random, plumbing only, ~2 min on 2 cores), cpu (world-sd, "
              "71 min to ~2 h on 2 cores; docs/EXPERIMENTS.md), gpu.")
@click.option("--work", type=NamedPath(path_type=Path, file_okay=False), default=Path("runs/experiment"),
              show_default=True, help="Where datasets, checkpoints and results go (reused).")
@click.option("--device", default="auto", show_default=True, help="auto | cpu | cuda | cuda:N")
@click.option("--model", "model_id", default=None, help="Override the budget's generator model id.")
@click.option("--seeds", default=None, help="Comma-separated training seeds (default: the budget's).")
@click.option("--conditions", "only", default=None,
              help="Comma-separated condition names to run (default: all), e.g. real-simclr,random-init.")
def experiment(budget_name: str, work: Path, device: str, model_id: str | None,
               seeds: str | None, only: str | None) -> None:
    """Linear-probe accuracy on real renders after pretraining on real vs synthetic data
    (see docs/EXPERIMENTS.md)."""
    from dataclasses import replace

    from synthgen.train.experiment import BUDGETS, run_experiment

    budget = BUDGETS[budget_name]
    if model_id is not None:
        if not model_id.strip():  # an unset $MODEL would quietly run the budget's own model
            raise UserError("--model is empty; name a generator (hub id, folder or builtin:NAME), "
                            "or leave --model out for the budget's")
        budget = replace(budget, model_id=model_id)
    if seeds is not None:
        try:
            chosen = tuple(int(s) for s in seeds.split(","))
        except ValueError:
            chosen = ()
        if (not chosen or len(set(chosen)) != len(chosen)
                or not all(-2 ** 63 <= seed < 2 ** 64 for seed in chosen)):
            # A repeat would count one run twice (std 0); "" would quietly mean the defaults.
            raise UserError(f"--seeds: {seeds!r} is not a comma-separated list of distinct "
                            "integers that fit in 64 bits; pass e.g. 0,1,2") from None
        budget = replace(budget, seeds=chosen)
    names = None
    if only is not None:
        names = tuple(name.strip() for name in only.split(",") if name.strip())
        if not names:  # "" used to run every condition (an hour on the cpu budget)
            raise UserError(f"--conditions: {only!r} names no condition; pass e.g. "
                            "real-simclr,random-init, or leave it out for all")
    run_experiment(budget, work, device, log=lambda line: click.echo(line), only=names)
