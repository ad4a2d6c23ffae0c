"""The `synthgen` command line (console script `synthgen`, or `python cli.py` in a checkout).

Each command parses its options, calls its function in synthgen/api.py (which strings the
stages together) and prints the result:

    synthgen validate RECIPE
    synthgen plan RECIPE [--jsonl FILE]
    synthgen generate RECIPE --out DIR [--batch-size N] [--device auto|cpu|cuda] [--overwrite]
                     [--gpus all|N | --workers N] [--engine local|ray [--address A]]
                     [--shards 0-99 | --rank R --world-size W]
    synthgen finalize DIR
    synthgen inspect DIR [--shard N] [--contact-sheet FILE.png]

A user's mistake prints one message and exits with status 2; no traceback. So does a full
disk or a place that cannot be written. Ctrl-C exits with status 130.
"""

from __future__ import annotations

import contextlib
import errno
import json
import logging
import sys
from pathlib import Path

import click

from synthgen import api
from synthgen.cli_types import NamedPath
from synthgen.errors import UserError, user_message

USER_ERROR_EXIT = 2
INTERRUPTED_EXIT = 130  # 128 + SIGINT, what a shell reports for Ctrl-C

# OSErrors that are the machine's state, not a synthgen bug, and how to get past each; any
# other OSError keeps its traceback.
_MACHINE_ERRORS = {
    errno.ENOSPC: "free some space, or choose another place",
    errno.EDQUOT: "free some space (the disk quota is used up), or choose another place",
    errno.EROFS: "choose a place you can write to",
    errno.EACCES: "check its permissions, or choose another place",
    errno.EPERM: "check its permissions, or choose another place",
}


class SynthgenGroup(click.Group):
    """Turns `UserError` (and a full disk or unwritable place) into one line on stderr and
    exit status 2, and Ctrl-C into one line and status 130."""

    def invoke(self, ctx):
        try:
            with _echoing_api_log():
                return super().invoke(ctx)
        except UserError as error:
            click.echo(f"error: {user_message(error)}", err=True)
            ctx.exit(USER_ERROR_EXIT)
        except OSError as error:
            if error.errno not in _MACHINE_ERRORS:
                raise
            where = f" ({error.filename})" if error.filename else ""
            click.echo(f"error: {error.strerror}{where}; {_MACHINE_ERRORS[error.errno]}"
                       f"{_rerun_note(ctx)}", err=True)
            ctx.exit(USER_ERROR_EXIT)
        except KeyboardInterrupt:
            # click would print "Aborted!" and exit 1, which a script cannot tell from a failure.
            click.echo(f"\ninterrupted{_rerun_note(ctx)}", err=True)
            ctx.exit(INTERRUPTED_EXIT)


class _EchoHandler(logging.Handler):
    """What the API logs while it works: warnings as `warning: ...` on stderr, notes on stdout."""

    def emit(self, record: logging.LogRecord) -> None:
        if record.levelno >= logging.WARNING:
            click.echo(f"warning: {record.getMessage()}", err=True)
        else:
            click.echo(record.getMessage())


@contextlib.contextmanager
def _echoing_api_log():
    """The API's log (recipe warnings, the slice a run builds) printed as a command prints,
    when it happens: before a long generate run, not after it."""
    handler, previous = _EchoHandler(), (api.logger.level, api.logger.propagate)
    api.logger.addHandler(handler)
    api.logger.setLevel(logging.INFO)
    api.logger.propagate = False  # printed once, whatever the root logger does
    try:
        yield
    finally:
        api.logger.removeHandler(handler)
        api.logger.level, api.logger.propagate = previous


def _rerun_note(ctx: click.Context) -> str:
    """What a rerun of a stopped generate does with the work already done."""
    if ctx.invoked_subcommand == "generate":
        return ("; finished shards are kept (an unfinished one is never published), and "
                "rerunning the same command resumes from them")
    return ""


def _count(number: int, noun: str, plural: str | None = None) -> str:
    """'1 shard', '3 shards'."""
    return f"{number} {noun}" if number == 1 else f"{number} {plural or noun + 's'}"


def _group_check_lines(checks: dict) -> list[str]:
    """`slots.check`'s groups, redraws and groups stored still disagreeing, for generate and
    inspect; nothing when no group was checked."""
    if not checks.get("groups"):
        return []
    return [f"check: {_count(checks['groups'], 'group')} checked, "
            f"{_count(checks.get('redraws', 0), 'redraw')}; "
            f"{_count(checks.get('failed', 0), 'group')} stored although their views still "
            "disagree after the last retry (held_check.passed false in their json)"]


def _rejection_lines(suppress: list[dict], rejections: dict, failed: dict, views: int) -> list[str]:
    """One line per `reject` entry of a recipe's `suppress`: its redraws, and the views stored
    although their last retry still failed, of `views`."""
    lines = []
    for entry in suppress:
        if entry["method"] != "reject" or not views:
            continue
        concept, failing = entry["concept"], failed.get(entry["concept"], 0)
        lines.append(f"  reject {concept!r}: {_count(rejections.get(concept, 0), 'redraw')}; "
                     f"{failing} of {_count(views, 'view')} ({failing / views:.1%}) still failed "
                     f"after {_count(entry['max_retries'], 'retry', 'retries')} and are stored "
                     "marked suppression_failed")
    return lines


@click.group(cls=SynthgenGroup)
@click.version_option(package_name="synthgen")
def main() -> None:
    """Multi-view synthetic image datasets from diffusers text-to-image models."""


recipe_argument = click.argument("recipe", type=NamedPath(path_type=Path))


@main.command()
@recipe_argument
def validate(recipe: Path) -> None:
    """Check a recipe without planning or loading a model."""
    result = api.validate(recipe)
    loaded = result.recipe
    click.echo(f"{recipe}: ok ({loaded.name}: {_count(len(loaded.classes), 'class', 'classes')}, "
               f"{_count(len(loaded.corner_cases), 'corner case')}, "
               f"{_count(result.groups, 'group')}, {_count(result.images, 'image')}, "
               f"model {loaded.model.id})")
    for warning in result.warnings:
        click.echo(f"warning: {warning}", err=True)


@main.command()
@recipe_argument
@click.option("--jsonl", type=NamedPath(path_type=Path, dir_okay=False),
              help="Also write the plan, one group per line, to this file.")
@click.option("--json", "as_json", is_flag=True, help="Print the summary as JSON.")
def plan(recipe: Path, jsonl: Path | None, as_json: bool) -> None:
    """Show what a recipe will generate, without touching a GPU."""
    summary = api.plan(recipe, jsonl).summary
    if as_json:
        click.echo(json.dumps(summary, indent=2))
    else:
        click.echo(format_plan_summary(summary))
    if jsonl is not None:
        # With --json, stdout is the JSON alone (a script parses it); the note goes to stderr.
        click.echo(f"plan written to {jsonl} ({_count(summary['groups'], 'line')})", err=as_json)


def format_plan_summary(summary: dict) -> str:
    width, height = summary["stored_size"]
    lines = [
        f"recipe {summary['recipe']} ({summary['recipe_hash'][:12]}), model {summary['model']}",
        f"{_count(summary['groups'], 'group')}, {_count(summary['images'], 'image')} at "
        f"{width}x{height}, {_count(summary['shards'], 'shard')} of "
        f"{_count(summary['groups_per_shard'], 'group')}, "
        f"~{_human_bytes(summary['estimated_bytes'])} (estimate), "
        f"{_count(summary['unique_prompts'], 'unique prompt')}",
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
        lines += ["", f"balance of {attribute!r} ({_balance_unit(summary, attribute)}):"]
        values = list(next(iter(per_target.values()), {}))
        lines.append(f"  {'':38} " + " ".join(f"{value[:12]:>12}" for value in values))
        for target, counts in per_target.items():
            lines.append(f"  {target[:38]:38} "
                         + " ".join(f"{counts.get(value, 0):>12}" for value in values))
    for edit in summary.get("balance_edits", []):
        total = sum(edit["values"].values())
        shares = ", ".join(f"{value} {share / total:.0%}" for value, share in edit["values"].items())
        lines += ["", f"balance of {edit['attribute']!r} by {edit['method']} "
                      f"({', '.join(edit['applies_to']) if edit['applies_to'] else 'every class'}): "
                      f"prompts name no value; the model is edited toward {shares}, "
                      f"as {edit['detector']} reads {edit['trials']} trial images per class"]
    if summary["suppress"]:
        lines += ["", "suppress: " + "; ".join(f"{e['concept']!r} by {e['method']}"
                                               for e in summary["suppress"])]
    if summary["negative_prompt"]:
        lines.append(f"negative prompt: {summary['negative_prompt']!r}")
    for warning in summary["warnings"]:
        lines.append(f"warning: {warning}")
    return "\n".join(lines)


def _balance_unit(summary: dict, attribute: str) -> str:
    """What the balance table counts: groups, or views where the `slots` strategy varies the
    attribute (its quotas are then over views)."""
    units = summary["balance_counts"].get(attribute, {})
    by_views = [target for target, unit in units.items() if unit == "views"]
    if not by_views:
        return "groups"
    if len(by_views) == len(units):
        return "views: varied per view, quotas over all views"
    return f"groups; views, varied per view, for {', '.join(by_views)}"


def _human_bytes(count: float) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if count < 1000:
            return f"{count:.0f} {unit}"
        count /= 1000
    return f"{count:.1f} TB"


class DatasetLocation(click.ParamType):
    """A dataset directory (a Path), or an object-store URL such as s3://bucket/prefix (a str)."""

    name = "DIR|URL"

    def convert(self, value, param, ctx):
        if isinstance(value, Path):
            return value
        from synthgen.store import OBJECT_STORE_PROTOCOLS, parse_location

        try:
            # memory:// and the like are for the Python API only: workers would not share them.
            # Named as the command names it: --out for generate, DATASET_DIR for finalize.
            option = param.opts[0] if param is not None and param.param_type_name == "option" \
                else (param.human_readable_name if param is not None else "--out")
            return parse_location(str(value), OBJECT_STORE_PROTOCOLS, option)
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
@click.option("--batch-size", type=BatchSize(),
              help="Views per pipeline call (views of several groups share a batch; every call "
                   "is padded to it, so bytes are fixed per batch size), or auto: the largest "
                   "that fits the GPU. Default: 16 on the CPU, 8 on a GPU.")
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
@click.option("--cpu-threads", default=2, show_default=True, type=click.IntRange(min=1),
              help="PyTorch threads per CPU worker (2: both cores of a small machine); a fixed "
                   "number, since with --batch-size it fixes the bytes on the CPU.")
@click.option("--quiet", is_flag=True, help="No progress bar.")
def generate(recipe: Path, out_dir: Path | str, batch_size: int | str | None, compile_model: bool,
             channels_last: bool, device: str, dtype: str | None, overwrite: bool, encode_workers: int, engine: str, workers: int | None,
             gpus: str | None, address: str | None, shard_ranges: str | None, rank: int | None,
             world_size: int | None, cpu_threads: int, quiet: bool) -> None:
    """Generate the dataset a recipe describes, as WebDataset shards in --out."""
    from synthgen.write import format_shard_ranges

    result = api.generate(
        recipe, out_dir, batch_size=batch_size, compile_model=compile_model,
        channels_last=channels_last, device=device, dtype=dtype, overwrite=overwrite,
        encode_workers=encode_workers, engine=engine, workers=workers, gpus=gpus,
        address=address, shards=shard_ranges, rank=rank, world_size=world_size,
        cpu_threads=cpu_threads, progress=not quiet)
    if result.shards_selected == 0:
        # A rank beyond the shard count (a job array larger than the plan) has nothing to do.
        click.echo(f"{out_dir}: this slice holds no shard (the plan has "
                   f"{_count(result.shards_total, 'shard')}, fewer than the world size)")
    elif result.shards_written == 0 and result.shards_skipped == result.shards_selected:
        which = "all" if result.shards is None else "this slice's"
        if result.shards_selected == 1:
            which = "its" if result.shards is None else "this slice's"
        click.echo(f"{out_dir}: {which} {_count(result.shards_selected, 'shard')} "
                   f"{'was' if result.shards_selected == 1 else 'were'} already done"
                   + ("; manifest.json is up to date" if result.manifest_path else ""))
    else:
        workers_text = f" with {result.workers} workers" if result.workers > 1 else ""
        click.echo(
            f"{out_dir}: wrote {_count(result.shards_written, 'shard')} "
            f"({_count(result.images, 'image')}) "
            f"in {result.seconds:.1f} s, {result.images_per_second:.1f} images/s on "
            f"{result.model.get('device_type', '?')} ({result.model.get('dtype', '?')})"
            f"{workers_text}; {_count(result.shards_skipped, 'shard')} "
            f"{'was' if result.shards_skipped == 1 else 'were'} already done")
    if result.shards_lost:
        click.echo(f"note: {_count(result.shards_lost, 'shard')} published by another worker "
                   "first; this run's copies were discarded")
    if result.manifest_path is None:
        click.echo(f"{out_dir}: {len(result.missing)} of {_count(result.shards_total, 'shard')} "
                   f"{'is' if len(result.missing) == 1 else 'are'} still to build (shards "
                   f"{format_shard_ranges(result.missing)}); the run that finishes the last one "
                   f"writes manifest.json, or run synthgen finalize {out_dir} once they are done")
    if result.model_variants > 1:
        click.echo(f"warning: the shards of {out_dir} were made with {result.model_variants} "
                   "different model settings (device type, dtype or edits: runs resumed or sliced "
                   "with other options); manifest.json lists them under model_variants", err=True)
    suppress = [entry.model_dump() for entry in result.recipe.suppress]
    for line in _rejection_lines(suppress, result.rejections, result.suppression_failed,
                                 result.images):
        click.echo(line)
    for line in _group_check_lines(result.group_checks):
        click.echo(line)
    if result.nonfinite_views:
        click.echo(f"warning: {_count(result.nonfinite_views, 'view')} had NaN/inf model output "
                   "and were stored black; see nonfinite_views in the shard stats files (try "
                   "bfloat16 or float32)", err=True)


@main.command()
@click.argument("dataset_dir", type=DatasetLocation())
def finalize(dataset_dir: Path | str) -> None:
    """Write manifest.json for a dataset built in slices, once every shard is done.

    The plan is rebuilt from DATASET_DIR/recipe.json; missing shards are listed otherwise.
    """
    totals = api.finalize(dataset_dir).totals
    click.echo(f"{dataset_dir}: manifest.json written ({_count(totals['shards'], 'shard')}, "
               f"{_count(totals['samples'], 'group')}, {_count(totals['images'], 'image')}, "
               f"{_human_bytes(totals['bytes'])})")


@main.command()
@recipe_argument
# Files and folders alike: the api says what is wrong in one line (click prints a usage block).
@click.option("--out", "out_dir", required=True, type=NamedPath(path_type=Path),
              help="New folder for the edited model.")
@click.option("--device", default="auto", show_default=True, help="auto, cpu, cuda or cuda:N.")
def edit(recipe: Path, out_dir: Path, device: str) -> None:
    """Apply the recipe's erase and debias edits to its model; save the result."""
    from synthgen.generate.erase import describe_edit

    for record in api.edit(recipe, out_dir, device=device).edits:
        click.echo(describe_edit(record))
    click.echo(f"edited model written to {out_dir}; use it as model.id")


@main.command("inspect")
@click.argument("dataset_dir", type=NamedPath())
@click.option("--shard", type=int, help="List the samples of this shard.")
@click.option("--contact-sheet", type=NamedPath(path_type=Path, dir_okay=False),
              help="Write a PNG grid of the first groups (one row per group) here.")
@click.option("--groups", default=8, show_default=True, type=click.IntRange(min=1),
              help="Rows of the contact sheet.")
def inspect_command(dataset_dir: str, shard: int | None, contact_sheet: Path | None,
                    groups: int) -> None:
    """Show what a dataset holds; exits 1 when shards or samples are damaged (listed)."""
    from synthgen.inspection import view_prompt

    result = api.inspect(dataset_dir, shard=shard, contact_sheet=contact_sheet, groups=groups)
    manifest, totals = result.manifest, result.manifest["totals"]
    click.echo(f"{dataset_dir}: recipe {manifest['recipe']['name']} "
               f"({manifest['recipe_hash'][:12]}), model {manifest['recipe']['model']['id']}")
    click.echo(f"{_count(totals['shards'], 'shard')}, {_count(result.groups, 'group')}, "
               f"{_count(result.images, 'image')}, {_human_bytes(totals['bytes'])}")
    for name, count in sorted(result.classes.items()):
        click.echo(f"  class {name}: {_count(count, 'group')}")
    for name, count in sorted(result.corner_cases.items()):
        click.echo(f"  corner case {name}: {_count(count, 'group')}")
    for line in _rejection_lines(manifest["recipe"].get("suppress") or [], result.rejections,
                                 result.suppression_failed, result.images):
        click.echo(line)
    for line in _group_check_lines(result.group_checks):
        click.echo(line)
    if shard is not None:
        click.echo(f"shard {shard}:")
        for sample in result.samples:
            label = sample.get("corner_case") or sample.get("class_name") or "-"
            click.echo(f"  {sample.get('group_id', '-')}  cls={sample.get('class_index', '-')}  {label}  "
                       f"{view_prompt(sample['views'][0])!r}  seeds="
                       + ",".join(str(v.get("seed", "-")) for v in sample["views"]))
    if contact_sheet is not None:
        click.echo(f"contact sheet written to {contact_sheet}")
    if result.damaged:
        for line in result.damaged:
            click.echo(f"damaged: {line}", err=True)
        damage = _count(len(result.damaged), "damaged shard or sample",
                        "damaged shards or samples")
        click.echo(f"error: {dataset_dir}: {damage}, left out above; rerun synthgen generate "
                   f"with its recipe and --out {dataset_dir} to rebuild the shards", err=True)
        click.get_current_context().exit(DAMAGED_DATASET_EXIT)


# `synthgen inspect` on a dataset with damaged shards or samples (2 stays a user's mistake).
DAMAGED_DATASET_EXIT = 1


def _register_stage_commands() -> None:
    """Commands whose stages keep their click definitions beside their code (and `dev`, tools
    for working on synthgen: synthgen/dev.py)."""
    from synthgen.audit.command import audit
    from synthgen.dev import dev
    from synthgen.train.commands import experiment, probe, train
    from synthgen.world.commands import world

    for command in (audit, train, probe, experiment, world, dev):
        main.add_command(command)


_register_stage_commands()


if __name__ == "__main__":
    sys.exit(main())
