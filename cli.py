"""The `synthgen` command line: the only place that strings the stages together.

    synthgen validate RECIPE
    synthgen plan RECIPE [--jsonl FILE]
    synthgen generate RECIPE --out DIR [--batch-size N] [--device auto|cpu|cuda] [--overwrite]
                     [--gpus all|N | --workers N] [--engine local|ray [--address A]]
                     [--shards 0-99 | --rank R --world-size W]
    synthgen finalize DIR
    synthgen inspect DIR [--shard N] [--contact-sheet FILE.png]

A user's mistake prints one message and exits with status 2; no traceback.
"""

from __future__ import annotations

import contextlib
import json
import sys
from pathlib import Path

import click

from synthgen.errors import UserError

USER_ERROR_EXIT = 2


class SynthgenGroup(click.Group):
    """Turns `UserError` into one line on stderr and exit status 2."""

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except UserError as error:
            click.echo(f"error: {error}", err=True)
            ctx.exit(USER_ERROR_EXIT)


@click.group(cls=SynthgenGroup)
@click.version_option(package_name="synthgen")
def main() -> None:
    """Multi-view synthetic image datasets from diffusers text-to-image models."""


recipe_argument = click.argument("recipe", type=click.Path(path_type=Path))
# Messages about recipe fields that only loading the model can find (an unknown model id, a
# detector that is not a CLIP) name the field; the CLI adds the file, as for schema errors.
_RECIPE_FIELDS = ("model.", "suppress[")


@contextlib.contextmanager
def naming_the_recipe_file(recipe: Path):
    try:
        yield
    except UserError as error:
        if str(error).startswith(_RECIPE_FIELDS):
            raise UserError(f"{recipe}: {error}") from None
        raise


@main.command()
@recipe_argument
def validate(recipe: Path) -> None:
    """Check a recipe without planning or loading a model."""
    from synthgen.recipe import load_recipe

    loaded = load_recipe(recipe)
    groups = sum(c.groups for c in loaded.classes) + sum(
        loaded.corner_case_groups(c) for c in loaded.corner_cases)
    click.echo(f"{recipe}: ok ({loaded.name}: {len(loaded.classes)} classes, "
               f"{len(loaded.corner_cases)} corner cases, {groups} groups of "
               f"{loaded.views.count} views, model {loaded.model.id})")


@main.command()
@recipe_argument
@click.option("--jsonl", type=click.Path(path_type=Path, dir_okay=False),
              help="Also write the plan, one group per line, to this file.")
@click.option("--json", "as_json", is_flag=True, help="Print the summary as JSON.")
def plan(recipe: Path, jsonl: Path | None, as_json: bool) -> None:
    """Show what a recipe will generate, without touching a GPU."""
    from synthgen.plan import make_plan, summarize
    from synthgen.recipe import load_recipe

    the_plan = make_plan(load_recipe(recipe))
    summary = summarize(the_plan)
    if jsonl is not None:
        check_output_file(jsonl, "--jsonl")
        with open(jsonl, "w", encoding="utf-8") as stream:
            the_plan.write_jsonl(stream)
    if as_json:
        click.echo(json.dumps(summary, indent=2))
    else:
        click.echo(format_plan_summary(summary))
    if jsonl is not None:
        click.echo(f"plan written to {jsonl} ({summary['groups']} lines)")


def format_plan_summary(summary: dict) -> str:
    width, height = summary["stored_size"]
    lines = [
        f"recipe {summary['recipe']} ({summary['recipe_hash'][:12]}), model {summary['model']}",
        f"{summary['groups']} groups, {summary['images']} images at {width}x{height}, "
        f"{summary['shards']} shards of {summary['groups_per_shard']} groups, "
        f"~{_human_bytes(summary['estimated_bytes'])} (estimate), "
        f"{summary['unique_prompts']} unique prompts",
        "",
        f"{'class / corner case':40} {'groups':>8} {'images':>8}  views",
    ]
    for name, counts in summary["classes"].items():
        lines.append(f"{name[:40]:40} {counts['groups']:>8} {counts['images']:>8}  {counts['views']}")
    for name, counts in summary["corner_cases"].items():
        label = f"{name} -> {counts['label'] or 'no label'}"
        tags = f"  [{', '.join(counts['tags'])}]" if counts["tags"] else ""
        lines.append(f"{('* ' + label)[:40]:40} {counts['groups']:>8} {counts['images']:>8}  "
                     f"{counts['views']}{tags}")
    for attribute, per_target in summary["balance"].items():
        lines += ["", f"balance of {attribute!r} (groups):"]
        values = list(next(iter(per_target.values()), {}))
        lines.append(f"  {'':38} " + " ".join(f"{value[:12]:>12}" for value in values))
        for target, counts in per_target.items():
            lines.append(f"  {target[:38]:38} "
                         + " ".join(f"{counts.get(value, 0):>12}" for value in values))
    if summary["suppress"]:
        lines += ["", "suppress: " + "; ".join(f"{e['concept']!r} by {e['method']}"
                                               for e in summary["suppress"])]
    if summary["negative_prompt"]:
        lines.append(f"negative prompt: {summary['negative_prompt']!r}")
    for warning in summary["warnings"]:
        lines.append(f"warning: {warning}")
    return "\n".join(lines)


def _human_bytes(count: float) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if count < 1000:
            return f"{count:.0f} {unit}"
        count /= 1000
    return f"{count:.1f} TB"


def check_output_file(path: Path, option: str, suffixes: tuple[str, ...] | None = None) -> None:
    """A file the user asked for can be written there, or one UserError that says why."""
    if suffixes is not None and path.suffix.lower() not in suffixes:
        raise UserError(f"{option} {path}: the file name must end in one of {', '.join(suffixes)} "
                        "(it sets the image format)")
    parent = path.parent if str(path.parent) else Path(".")
    if not parent.is_dir():
        raise UserError(f"{option} {path}: the folder {parent} does not exist; create it first "
                        "or choose another path")


class DatasetLocation(click.ParamType):
    """A dataset directory (a Path), or an object-store URL such as s3://bucket/prefix (a str)."""

    name = "DIR|URL"

    def convert(self, value, param, ctx):
        if isinstance(value, Path):
            return value
        from synthgen.store import OBJECT_STORE_PROTOCOLS, parse_location

        try:
            # memory:// and the like are for the Python API only: workers would not share them.
            return parse_location(str(value), OBJECT_STORE_PROTOCOLS)
        except UserError as error:
            self.fail(str(error), param, ctx)


class BatchSize(click.ParamType):
    """A positive whole number, or "auto"."""

    name = "N|auto"

    def convert(self, value, param, ctx):
        if isinstance(value, int) or value == "auto":
            return value
        try:
            number = int(value)
        except ValueError:
            number = 0
        if number < 1:
            self.fail(f"{value!r} is neither a positive whole number nor auto", param, ctx)
        return number


@main.command()
@recipe_argument
@click.option("--out", "out_dir", required=True, type=DatasetLocation(),
              help="Dataset directory, or s3://bucket/prefix (pip install 'synthgen[s3]'); "
                   "rerunning into it resumes. Several workers or slices may write into one "
                   "location (a shared filesystem or a bucket for several machines).")
@click.option("--batch-size", default="8", show_default=True, type=BatchSize(),
              help="Views per pipeline call (views of several groups share a batch), or auto: "
                   "the largest that fits the GPU (8 on the CPU).")
@click.option("--compile", "compile_model", is_flag=True,
              help="torch.compile the UNet and decoder (GPU; the first shard pays the compile).")
@click.option("--channels-last", is_flag=True, help="NHWC memory layout for the convolutions (GPU).")
@click.option("--device", default="auto", show_default=True, help="auto, cpu, cuda or cuda:N.")
@click.option("--dtype", type=click.Choice(["float32", "float16", "bfloat16"]),
              help="Override the recipe's model.dtype.")
@click.option("--overwrite", is_flag=True, help="Delete the dataset in --out and start over.")
@click.option("--encode-workers", default=4, show_default=True, type=click.IntRange(min=1),
              help="Threads that encode images while the model samples.")
@click.option("--engine", default="local", show_default=True, type=click.Choice(["local", "ray"]),
              help="local: worker processes on this machine; ray: actors on a Ray cluster "
                   "(pip install 'synthgen[ray]').")
@click.option("--workers", type=click.IntRange(min=1),
              help="Worker processes (local) or Ray actors, each with one device and one loaded "
                   "model. Default: 1 (local), every GPU or CPU of the cluster (ray).")
@click.option("--gpus", help="all or N: one worker per GPU, on this machine (or, with --engine "
                             "ray, on the cluster); --workers N --device cuda.")
@click.option("--address", help="Ray cluster to join (auto, or ray://HOST:10001); default: "
                                "start a local Ray. Only with --engine ray.")
@click.option("--shards", "shard_ranges",
              help="Build only these shards, e.g. 0-99 or 0-9,20 (a slice of the dataset).")
@click.option("--rank", type=click.IntRange(min=0),
              help="Build slice RANK of --world-size: shards RANK, RANK+W, RANK+2W, ... "
                   "Default: $RANK/$WORLD_SIZE (torchrun) or $SLURM_ARRAY_TASK_ID/_COUNT.")
@click.option("--world-size", type=click.IntRange(min=1), help="Number of slices (see --rank).")
@click.option("--cpu-threads", default=1, show_default=True, type=click.IntRange(min=1),
              help="PyTorch threads per CPU worker; part of what fixes the bytes on the CPU.")
@click.option("--quiet", is_flag=True, help="No progress bar.")
def generate(recipe: Path, out_dir: Path | str, batch_size: int | str, compile_model: bool,
             channels_last: bool, device: str, dtype: str | None, overwrite: bool, encode_workers: int, engine: str, workers: int | None,
             gpus: str | None, address: str | None, shard_ranges: str | None, rank: int | None,
             world_size: int | None, cpu_threads: int, quiet: bool) -> None:
    """Generate the dataset a recipe describes, as WebDataset shards in --out."""
    from synthgen.engines import engine_name, run_engine
    from synthgen.engines.local import GenerateOptions
    from synthgen.engines.slices import choose_slice
    from synthgen.plan import make_plan, recipe_warnings
    from synthgen.recipe import load_recipe
    from synthgen.write import format_shard_ranges

    the_plan = make_plan(load_recipe(recipe))
    for warning in recipe_warnings(the_plan.recipe):
        click.echo(f"warning: {warning}", err=True)
    if address is not None and engine != "ray":
        raise UserError(f"--address {address}: only the ray engine joins a cluster; add "
                        "--engine ray, or drop --address")
    if gpus is not None:
        from synthgen.engines.processes import resolve_gpus

        workers, device = resolve_gpus(gpus, workers, device, engine), "cuda"
    chosen = choose_slice(the_plan.shard_count, shard_ranges, rank, world_size)
    if chosen.shards is not None:
        listed = format_shard_ranges(chosen.shards) or "none"
        click.echo(f"{chosen.source}: building shards {listed} "
                   f"({len(chosen.shards)} of {the_plan.shard_count})")
    options = GenerateOptions(batch_size=batch_size, compile_model=compile_model,
                              channels_last=channels_last, device=device, dtype=dtype,
                              overwrite=overwrite, encode_workers=encode_workers,
                              progress=not quiet, workers=workers, shards=chosen.shards,
                              address=address, cpu_threads=cpu_threads)
    with naming_the_recipe_file(recipe):
        summary = run_engine(engine_name(engine, workers), the_plan, out_dir, options)
    if summary.shards_written == 0 and summary.shards_skipped == summary.shards_selected:
        which = "all" if chosen.shards is None else "this slice's"
        click.echo(f"{out_dir}: {which} {summary.shards_selected} shards were already done"
                   + ("; manifest.json is up to date" if summary.manifest_written else ""))
    else:
        workers_text = f" with {summary.workers} workers" if summary.workers > 1 else ""
        click.echo(
            f"{out_dir}: wrote {summary.shards_written} shards ({summary.images_generated} images) "
            f"in {summary.seconds:.1f} s, {summary.images_per_second:.1f} images/s on "
            f"{summary.model.get('device_type', '?')} ({summary.model.get('dtype', '?')})"
            f"{workers_text}; {summary.shards_skipped} shards were already done")
    if summary.shards_lost:
        click.echo(f"note: {summary.shards_lost} shards were published by another worker "
                   "first; this run's copies were discarded")
    if not summary.manifest_written:
        click.echo(f"{out_dir}: {len(summary.missing)} of {summary.shards_total} shards are "
                   f"still to build (shards {format_shard_ranges(summary.missing)}); the run "
                   "that finishes the last one writes manifest.json, or run synthgen finalize "
                   f"{out_dir} once they are done")
    if summary.model_variants > 1:
        click.echo(f"warning: the shards of {out_dir} were made with {summary.model_variants} "
                   "different model settings (device type, dtype or edits: runs resumed or sliced "
                   "with other options); manifest.json lists them under model_variants", err=True)
    if summary.nonfinite_views:
        click.echo(f"warning: {summary.nonfinite_views} views had NaN/inf model output and were "
                   "stored black; see nonfinite_views in the shard stats files (try bfloat16 or "
                   "float32)", err=True)


@main.command()
@click.argument("dataset_dir", type=DatasetLocation())
def finalize(dataset_dir: Path | str) -> None:
    """Write manifest.json for a dataset built in slices, once every shard is done.

    The plan is rebuilt from DATASET_DIR/recipe.json; missing shards are listed otherwise.
    """
    from synthgen.write import finalize_dataset

    manifest = finalize_dataset(dataset_dir)
    totals = manifest["totals"]
    click.echo(f"{dataset_dir}: manifest.json written ({totals['shards']} shards, "
               f"{totals['samples']} groups, {totals['images']} images, "
               f"{_human_bytes(totals['bytes'])})")


@main.command()
@recipe_argument
@click.option("--out", "out_dir", required=True, type=click.Path(path_type=Path, file_okay=False),
              help="New folder for the edited model.")
@click.option("--device", default="auto", show_default=True, help="auto, cpu, cuda or cuda:N.")
def edit(recipe: Path, out_dir: Path, device: str) -> None:
    """Erase the recipe's `suppress: method: erase` concepts from its model; save the result."""
    from synthgen.devices import choose_device
    from synthgen.generate.prepare import write_edited_model
    from synthgen.recipe import load_recipe

    with naming_the_recipe_file(recipe):
        edits = write_edited_model(load_recipe(recipe), out_dir, choose_device(device))
    for record in edits:
        click.echo(f"erased {record['concept']!r} -> {record['target']!r} in "
                   f"{record['layers']} projections (keeping {record['preserve']}), "
                   f"weights {record['weights_sha256'][:12]}")
    click.echo(f"edited model written to {out_dir}; use it as model.id")


@main.command("inspect")
@click.argument("dataset_dir", type=click.Path(path_type=Path, file_okay=False))
@click.option("--shard", type=int, help="List the samples of this shard.")
@click.option("--contact-sheet", type=click.Path(path_type=Path, dir_okay=False),
              help="Write a PNG grid of the first groups (one row per group) here.")
@click.option("--groups", default=8, show_default=True, type=click.IntRange(min=1),
              help="Rows of the contact sheet.")
def inspect_command(dataset_dir: Path, shard: int | None, contact_sheet: Path | None,
                    groups: int) -> None:
    """Show what a dataset holds."""
    from synthgen import inspection

    manifest = inspection.load_manifest(dataset_dir)
    counts = inspection.count_groups(dataset_dir)
    totals = manifest["totals"]
    click.echo(f"{dataset_dir}: recipe {manifest['recipe']['name']} "
               f"({manifest['recipe_hash'][:12]}), model {manifest['recipe']['model']['id']}")
    click.echo(f"{totals['shards']} shards, {counts['groups']} groups, {counts['images']} images, "
               f"{_human_bytes(totals['bytes'])}")
    for name, count in sorted(counts["classes"].items()):
        click.echo(f"  class {name}: {count} groups")
    for name, count in sorted(counts["corner_cases"].items()):
        click.echo(f"  corner case {name}: {count} groups")
    if shard is not None:
        click.echo(f"shard {shard}:")
        for sample in inspection.shard_samples(dataset_dir, shard):
            label = sample["corner_case"] or sample["class_name"]
            click.echo(f"  {sample['group_id']}  cls={sample['class_index']}  {label}  "
                       f"{sample['views'][0]['prompt']!r}  seeds="
                       + ",".join(str(v["seed"]) for v in sample["views"]))
    if contact_sheet is not None:
        check_output_file(contact_sheet, "--contact-sheet", suffixes=(".png", ".jpg", ".jpeg", ".webp"))
        inspection.contact_sheet(dataset_dir, groups).save(contact_sheet)
        click.echo(f"contact sheet written to {contact_sheet}")


def _register_stage_commands() -> None:
    """Commands whose stages keep their click definitions beside their code."""
    from synthgen.audit.command import audit
    from synthgen.train.commands import experiment, probe, train
    from synthgen.world.commands import world

    for command in (audit, train, probe, experiment, world):
        main.add_command(command)


_register_stage_commands()


if __name__ == "__main__":
    sys.exit(main())
