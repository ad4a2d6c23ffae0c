"""The `synthgen audit DIR` click command (registered in synthgen/cli.py with
`main.add_command(audit)`); it calls `synthgen.api.audit` and prints the result.

Exit status: 0 when every --fail-on rule holds, 1 when one fails (each failing rule is printed
as `FAILED RULE: value V`, or `not measured`), 2 for a user mistake (raised as UserError, printed by the CLI).
"""

from __future__ import annotations

from pathlib import Path

import click

from synthgen.cli_types import NamedPath

FAIL_EXIT = 1


@click.command("audit")
# Files and folders alike: the api says what is wrong in one line (click prints a usage block).
@click.argument("dataset_dir", type=NamedPath())
@click.option("--report", "report_dir", type=NamedPath(path_type=Path),
              help="Report directory [default: DATASET_DIR/audit].")
@click.option("--clip", help="CLIP to classify with: hub id, local folder or builtin:NAME "
              "[default: the recipe's audit.clip, else builtin:world-clip].")
@click.option("--attribute", "attributes", multiple=True, metavar="NAME=V1,V2,...",
              help="Classify this attribute (repeatable); replaces a recipe attribute of the same name.")
@click.option("--template", "templates", multiple=True, metavar="NAME=TEMPLATE",
              help="A prompt template for reading attribute NAME, with {value} where the value "
              "goes (repeatable; together they replace NAME's templates), e.g. "
              "--template 'shape=a {value} on a gray background'.")
@click.option("--recipe", "recipe_file", type=NamedPath(path_type=Path, dir_okay=False),
              help="Read attributes, templates, margin, CLIP and thresholds from this recipe "
              "file's audit: block instead of the dataset's own (targets still come from the "
              "recipe that made the dataset).")
@click.option("--margin", type=float, help="Top-1 minus top-2 probability below which a view is "
              "'unsure' [default: recipe audit.margin, else 0.1].")
@click.option("--fidelity-threshold", type=float, help="CLIP score below which a view is low "
              "fidelity [default: recipe, else 0.2].")
@click.option("--duplicate-threshold", type=float, help="Cosine above which two views of "
              "different groups are near-duplicates [default: recipe, else 0.95].")
@click.option("--fail-on", "fail_on", multiple=True, metavar="RULES",
              help="Exit 1 if a rule holds, e.g. 'kl>0.05,suppressed>0.01,duplicates>0.001,unsure>0.2'.")
@click.option("--device", default="auto", show_default=True, help="auto, cpu, cuda or cuda:N.")
@click.option("--dtype", default="auto", show_default=True,
              type=click.Choice(["auto", "float32", "float16", "bfloat16"]),
              help="CLIP weights dtype (auto: float16 on a GPU, float32 on the CPU).")
@click.option("--batch-size", default=64, show_default=True, type=click.IntRange(min=1),
              help="Images per vision-tower call.")
@click.option("--no-cache", is_flag=True, help="Neither read nor write embeddings.npz.")
@click.option("--quiet", is_flag=True, help="No progress bar.")
def audit(dataset_dir: str, report_dir: Path | None, clip: str | None, attributes: tuple[str, ...],
          templates: tuple[str, ...], recipe_file: Path | None, margin: float | None,
          fidelity_threshold: float | None, duplicate_threshold: float | None,
          fail_on: tuple[str, ...], device: str, dtype: str, batch_size: int, no_cache: bool,
          quiet: bool) -> None:
    """Measure what a dataset holds: attribute balance, edits in counterfactual groups,
    suppressed concepts, view diversity, prompt fidelity, near-duplicates and integrity; writes
    report.json and report.html."""
    from synthgen import api
    from synthgen.audit.thresholds import METRICS

    result = api.audit(dataset_dir, report=report_dir, clip=clip, attributes=attributes,
                       templates=templates, recipe=recipe_file, margin=margin,
                       fidelity_threshold=fidelity_threshold,
                       duplicate_threshold=duplicate_threshold, fail_on=fail_on, device=device,
                       dtype=dtype, batch_size=batch_size, cache=not no_cache, progress=not quiet)
    click.echo(format_summary(result.report))
    click.echo(f"report: {result.report_page} (and report.json)")
    for check in result.failed:
        if check["value"] is None:
            click.echo(f"FAILED {check['rule']}: not measured ({check['metric']}: "
                       f"{METRICS[check['metric']]}; nothing in this dataset to measure it on, "
                       "or every unit was unsure)", err=True)
        else:
            click.echo(f"FAILED {check['rule']}: value {check['value']:.6g}", err=True)
    if result.failed:
        click.get_current_context().exit(FAIL_EXIT)


def format_summary(report: dict) -> str:
    """The lines `synthgen audit` prints: totals, then each measurement's own lines."""
    from synthgen.audit.measurements import MEASUREMENTS

    totals = report["totals"]
    lines = [f"{report['dataset']}: {totals['groups']} groups, {totals['listed_views']} views, "
             f"{totals['embedded_views']} embedded ({totals['embeddings_from_cache']} from cache) "
             f"with {report['model']['identity']}"]
    for name, measurement in MEASUREMENTS.items():
        lines.extend(measurement.printed(report[name]))
    return "\n".join(lines)
