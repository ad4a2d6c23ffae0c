"""The `synthgen` command line: the only place that strings the stages together.

    synthgen validate RECIPE
    synthgen plan RECIPE [--jsonl FILE]
    synthgen generate RECIPE --out DIR [--batch-size N] [--device auto|cpu|cuda] [--overwrite]
    synthgen inspect DIR [--shard N] [--contact-sheet FILE.png]

A user's mistake prints one message and exits with status 2; no traceback.
"""

from __future__ import annotations

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


@main.command()
@recipe_argument
def validate(recipe: Path) -> None:
    """Check a recipe without planning or loading a model."""
    from synthgen.recipe import load_recipe

    loaded = load_recipe(recipe)
    groups = sum(c.groups for c in loaded.classes) + sum(c.groups for c in loaded.corner_cases)
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
        f"{summary['groups']} groups x {summary['views_per_group']} views "
        f"({summary['view_strategy']}) = {summary['images']} images at {width}x{height}, "
        f"{summary['shards']} shards of {summary['groups_per_shard']} groups, "
        f"~{_human_bytes(summary['estimated_bytes'])} (estimate), "
        f"{summary['unique_prompts']} unique prompts",
        "",
        f"{'class / corner case':40} {'groups':>8} {'images':>8}",
    ]
    for name, counts in summary["classes"].items():
        lines.append(f"{name[:40]:40} {counts['groups']:>8} {counts['images']:>8}")
    for name, counts in summary["corner_cases"].items():
        label = f"{name} -> {counts['label'] or 'no label'}"
        tags = f"  [{', '.join(counts['tags'])}]" if counts["tags"] else ""
        lines.append(f"{('* ' + label)[:40]:40} {counts['groups']:>8} {counts['images']:>8}{tags}")
    return "\n".join(lines)


def _human_bytes(count: float) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if count < 1000:
            return f"{count:.0f} {unit}"
        count /= 1000
    return f"{count:.1f} TB"


@main.command()
@recipe_argument
@click.option("--out", "out_dir", required=True, type=click.Path(path_type=Path, file_okay=False),
              help="Dataset directory; rerunning into it resumes.")
@click.option("--batch-size", default=8, show_default=True, type=click.IntRange(min=1),
              help="Views per pipeline call (views of several groups share a batch).")
@click.option("--device", default="auto", show_default=True, help="auto, cpu, cuda or cuda:N.")
@click.option("--dtype", type=click.Choice(["float32", "float16", "bfloat16"]),
              help="Override the recipe's model.dtype.")
@click.option("--overwrite", is_flag=True, help="Delete the dataset in --out and start over.")
@click.option("--encode-workers", default=4, show_default=True, type=click.IntRange(min=1),
              help="Threads that encode images while the model samples.")
@click.option("--quiet", is_flag=True, help="No progress bar.")
def generate(recipe: Path, out_dir: Path, batch_size: int, device: str, dtype: str | None,
             overwrite: bool, encode_workers: int, quiet: bool) -> None:
    """Generate the dataset a recipe describes, as WebDataset shards in --out."""
    from synthgen.engines.local import GenerateOptions, generate_dataset
    from synthgen.plan import make_plan
    from synthgen.recipe import load_recipe

    the_plan = make_plan(load_recipe(recipe))
    options = GenerateOptions(batch_size=batch_size, device=device, dtype=dtype,
                              overwrite=overwrite, encode_workers=encode_workers,
                              progress=not quiet)
    summary = generate_dataset(the_plan, out_dir, options)
    if summary.shards_written == 0:
        click.echo(f"{out_dir}: all {summary.shards_total} shards were already done; "
                   "manifest.json is up to date")
        return
    click.echo(
        f"{out_dir}: wrote {summary.shards_written} shards ({summary.images_generated} images) in "
        f"{summary.seconds:.1f} s, {summary.images_per_second:.1f} images/s on "
        f"{summary.model['device_type']} ({summary.model['dtype']}); "
        f"{summary.shards_skipped} shards were already done")
    if summary.nonfinite_views:
        click.echo(f"warning: {summary.nonfinite_views} views had NaN/inf model output and were "
                   "stored black; see nonfinite_views in the shard stats files (try bfloat16 or "
                   "float32)", err=True)


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
        inspection.contact_sheet(dataset_dir, groups).save(contact_sheet)
        click.echo(f"contact sheet written to {contact_sheet}")


if __name__ == "__main__":
    sys.exit(main())
