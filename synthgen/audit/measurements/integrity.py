"""Integrity (`integrity`): what is damaged or absent, shard by shard, sample by sample and view
by view, as the streaming pass found it. Counts of damage, no sampling."""

from __future__ import annotations

from pathlib import Path

from synthgen.audit.measurements.base import Measurement, MeasurementInputs
from synthgen.audit.render import html_table

# The integrity lists whose lengths add up to the `integrity` figure, in print order.
DAMAGE_KINDS = ("missing_shards", "sha256_mismatches", "unreadable_shards", "unreadable_samples",
                "missing_views", "unreadable_views", "black_views")


def measure(inputs: MeasurementInputs) -> dict:
    table, problems = inputs.table, inputs.problems
    return {
        "shards": len(inputs.shards), "missing_shards": problems.missing,
        "sha256_mismatches": problems.sha256_mismatches, "unreadable_shards": problems.unreadable,
        "unreadable_samples": problems.unreadable_samples,
        "listed_views": table.listed_views, "missing_views": table.missing_views,
        "unreadable_views": table.unreadable_views,
        "black_views": [v for v, black in zip(table.view_ids, table.black) if black],
    }


def damage(section: dict) -> int:
    """How many damaged things the section lists, of every kind."""
    return sum(len(section[kind]) for kind in DAMAGE_KINDS)


def figures(section: dict) -> dict:
    listed = section["listed_views"]
    return {
        "black": len(section["black_views"]) / listed if listed else None,
        "unreadable": len(section["unreadable_views"]) / listed if listed else None,
        "missing_views": len(section["missing_views"]) / listed if listed else None,
        "integrity": damage(section),
    }


def printed(section: dict) -> list[str]:
    found = damage(section)
    return [f"  integrity: {'no damage' if not found else f'{found} damaged'} ("
            + ", ".join(f"{len(section[kind])} {kind.replace('_', ' ')}" for kind in DAMAGE_KINDS) + ")"]


def _example(entry) -> str:
    if isinstance(entry, dict):
        return str(entry.get("sample") or entry.get("shard") or entry)
    return str(entry)


def report_html(section: dict, report_dir: Path, pictures: dict[str, bytes]) -> list[str]:
    return ["<h2>Integrity</h2>",
            f"<p>{damage(section)} damaged things (the <code>integrity</code> figure of --fail-on).</p>",
            html_table(["check", "count", "examples"],
                       [[kind, len(section[kind]), ", ".join(_example(x) for x in section[kind][:5])]
                        for kind in DAMAGE_KINDS])]


MEASUREMENT = Measurement(
    name="integrity", measure=measure, html=report_html, figures=figures, printed=printed,
    fail_on={
        "black": "fraction of views that are all black",
        "unreadable": "fraction of views that do not decode",
        "missing_views": "fraction of listed views absent from their sample",
        "integrity": "number of damaged things: missing/unreadable/mismatched shards, unreadable "
                     "samples, bad or missing views, black views",
    })
