"""The `synthgen audit DIR` click command (registered in cli.py with `main.add_command(audit)`).

Exit status: 0 when every --fail-on rule holds, 1 when one fails (each failing rule is printed
as `FAILED RULE: value V`, or `not measured`), 2 for a user mistake (raised as UserError, printed by the CLI).
"""

from __future__ import annotations

from pathlib import Path

import click

from synthgen.errors import UserError

FAIL_EXIT = 1


@click.command("audit")
@click.argument("dataset_dir", type=click.Path(path_type=Path, file_okay=False))
@click.option("--report", "report_dir", type=click.Path(path_type=Path, file_okay=False),
              help="Report directory [default: DATASET_DIR/audit].")
@click.option("--clip", help="CLIP to classify with: hub id, local folder or builtin:NAME "
              "[default: the recipe's audit.clip, else builtin:world-clip].")
@click.option("--attribute", "attributes", multiple=True, metavar="NAME=V1,V2,...",
              help="Classify this attribute (repeatable); replaces a recipe attribute of the same name.")
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
def audit(dataset_dir: Path, report_dir: Path | None, clip: str | None, attributes: tuple[str, ...],
          margin: float | None, fidelity_threshold: float | None, duplicate_threshold: float | None,
          fail_on: tuple[str, ...], device: str, dtype: str, batch_size: int, no_cache: bool,
          quiet: bool) -> None:
    """Measure what a dataset holds: attribute balance, suppressed concepts, view diversity,
    prompt fidelity, near-duplicates and integrity; writes report.json and report.html."""
    from synthgen.audit import encoder as encoders
    from synthgen.devices import choose_device
    from synthgen.audit.cache import CACHE_FILE
    from synthgen.audit.report import write_report
    from synthgen.audit.run import AuditSettings, run_audit
    from synthgen.audit.source import dataset_shards
    from synthgen.audit.spec import parse_attribute_option, spec_from_recipe
    from synthgen.audit.thresholds import METRICS, parse_fail_on

    # Every option is checked before a model loads: a typo costs nothing.
    rules = parse_fail_on(fail_on)
    manifest, _ = dataset_shards(dataset_dir)
    spec = spec_from_recipe(manifest.get("recipe") or {}, clip=clip, margin=margin,
                            attributes=[parse_attribute_option(a) for a in attributes],
                            fidelity_threshold=fidelity_threshold,
                            duplicate_threshold=duplicate_threshold)
    chosen_device = choose_device(device)
    if quiet:
        from transformers.utils import logging as transformers_logging

        transformers_logging.disable_progress_bar()  # "Loading weights" bars
    encoder = encoders.load_encoder(spec.clip, chosen_device, dtype)
    report_dir = report_dir or dataset_dir / "audit"
    if report_dir.exists() and not report_dir.is_dir():
        raise UserError(f"--report {report_dir}: exists and is not a directory")
    settings = AuditSettings(batch_size=batch_size, device=chosen_device, progress=not quiet,
                             cache_path=None if no_cache else report_dir / CACHE_FILE)
    outcome = run_audit(dataset_dir, spec, encoder, settings, rules)
    page = write_report(outcome, report_dir)
    click.echo(format_summary(outcome.report))
    click.echo(f"report: {page} (and report.json)")
    failed = [c for c in outcome.checks if c["failed"]]
    for check in failed:
        if check["value"] is None:
            click.echo(f"FAILED {check['rule']}: not measured ({check['metric']}: "
                       f"{METRICS[check['metric']]}; nothing in this dataset to measure it on, "
                       "or every view was unsure)", err=True)
        else:
            click.echo(f"FAILED {check['rule']}: value {check['value']:.6g}", err=True)
    if failed:
        click.get_current_context().exit(FAIL_EXIT)


def format_summary(report: dict) -> str:
    totals = report["totals"]
    lines = [f"{report['dataset']}: {totals['groups']} groups, {totals['listed_views']} views, "
             f"{totals['embedded_views']} embedded ({totals['embeddings_from_cache']} from cache) "
             f"with {report['model']['identity']}"]
    for name, metrics in report["attributes"].items():
        overall = metrics["scopes"]["overall"]
        counts = ", ".join(f"{v} {c}" for v, c in overall["counts"].items())
        lines.append(f"  {name}: {counts}; unsure {overall['unsure']}; KL {_kl_text(overall)}"
                     + ("" if overall["chi2_p"] is None else f", chi2 p {overall['chi2_p']:.3g}"))
    for concept, data in report["suppression"].items():
        lines.append(f"  suppressed {concept!r}: {data['detected']} of {data['views']} views above "
                     f"{data['threshold']}")
    fidelity, duplicates, integrity = report["fidelity"], report["duplicates"], report["integrity"]
    mean = "-" if fidelity["mean"] is None else f"{fidelity['mean']:.4f}"
    lines.append(f"  fidelity: mean {mean}, {fidelity['below']} views below {fidelity['threshold']}")
    lines.append(f"  duplicates: {duplicates['view_pairs']} view pairs, {duplicates['groups_involved']} groups")
    lines.append(f"  integrity: {len(integrity['missing_shards'])} missing shards, "
                 f"{len(integrity['sha256_mismatches'])} sha256 mismatches, "
                 f"{len(integrity['unreadable_shards'])} unreadable shards, "
                 f"{len(integrity['missing_views'])} missing views, "
                 f"{len(integrity['unreadable_views'])} unreadable views, "
                 f"{len(integrity['black_views'])} black views")
    return "\n".join(lines)


def _kl_text(metrics: dict) -> str:
    if metrics["kl"] is not None:
        return f"{metrics['kl']:.4f}"
    return "inf" if metrics["total"] else "-"
