"""Write an audit: report.json for machines, report.html + PNGs for people.

Layout of the report directory (all written atomically, each file whole or absent):

    report.json            the report dict (per-view results moved to views.jsonl)
    views.jsonl            one line per view: view id, each attribute's value, its CLIP score
    report.html            tables and the pictures below, relative links only
    charts/ATTR.png        each attribute's measured distribution (95% CI) against its target,
                           overall and per class / corner case
    sheets/SCOPE.png       contact sheets: the first groups of each class and corner case, each
                           view's reading under it (red where it differs from the recorded value)
    worst-fidelity.png     the views least like their own prompt, with class, group and file
    duplicates.png         the most similar near-duplicate pairs, with both view ids
    embeddings.npz         the embedding cache (written by run.py)

Each measurement (measurements/) writes its own part of report.html and the pictures that part
shows (charts, worst fidelity, duplicates); this module writes the rest: report.json,
views.jsonl, the page's head, summary and checks, and the contact sheets. Captions are measured
in the caption font and the pictures sized to fit them: ids are never cut.
"""

from __future__ import annotations

import html
import json
import re
from pathlib import Path

from PIL import Image, ImageDraw

from synthgen.audit.measurements import MEASUREMENTS
from synthgen.audit.render import CELL, LINE, PAD, font, html_table, slug, text_width, thumbnail, write_png
from synthgen.audit.run import AuditOutcome
from synthgen.audit.thresholds import METRICS
from synthgen.errors import UserError
from synthgen.store import write_atomically
from synthgen.write import AUDIT_FILES, AUDIT_PICTURE_FOLDERS, AUDIT_REPORT

WRONG = "#b00000"  # a reading that differs from the recorded value


def write_report(outcome: AuditOutcome, report_dir: Path) -> Path:
    """Writes every file of the layout above; returns the path of report.html."""
    report_dir.mkdir(parents=True, exist_ok=True)
    # The page goes first and comes back last: an audit stopped part-way (a full disk, Ctrl-C)
    # leaves its own report.json and no page, never the previous audit's page beside it.
    (report_dir / "report.html").unlink(missing_ok=True)
    _remove_earlier_pictures(report_dir)
    report = json.loads(json.dumps(outcome.report))  # a copy we may reshape
    view_lines = _per_view_lines(report)
    write_atomically(report_dir / "views.jsonl", "".join(json.dumps(line) + "\n" for line in view_lines).encode())
    write_atomically(report_dir / "report.json", json.dumps(report, indent=2, sort_keys=True).encode() + b"\n")
    read = {line["view"]: line for line in view_lines}
    sheets = {scope: write_png(report_dir, f"sheets/{slug(scope.replace(':', '-', 1))}.png",
                               _contact_sheet(_sheet_rows(report, outcome.pictures, read, keys)))
              for scope, keys in sorted(report["sheets"].items())}
    sections = [part for name, measurement in MEASUREMENTS.items()
                for part in measurement.html(report[name], report_dir, outcome.pictures)]
    write_atomically(report_dir / "report.html", _html(report, sections, sheets, outcome.summary).encode())
    return report_dir / "report.html"


def _remove_earlier_pictures(report_dir: Path) -> None:
    """The pictures an earlier audit wrote into this folder go before this one writes its
    own: one this report does not make (no near-duplicates this time, an attribute not read
    again) would show what the report beside it says is not there. Only in a folder an
    audit wrote (its report.json), and only the names an audit writes."""
    for folder in AUDIT_PICTURE_FOLDERS:
        place = report_dir / folder
        if place.exists() and not place.is_dir():
            raise UserError(f"--report {report_dir}: holds a file named {folder}, where the "
                            "report's pictures go; move it, or choose another --report")
    if not (report_dir / AUDIT_REPORT).is_file():
        return
    for name in AUDIT_FILES:
        if name.endswith(".png"):
            (report_dir / name).unlink(missing_ok=True)
    for folder in AUDIT_PICTURE_FOLDERS:
        place = report_dir / folder
        # Not through a link: what it points at is the user's (as --overwrite leaves it).
        if place.is_dir() and not place.is_symlink():
            for picture in place.glob("*.png"):
                picture.unlink()


def _per_view_lines(report: dict) -> list[dict]:
    """One line per view, each measurement's per-view columns (moved out of `report`)."""
    lines: dict[str, dict] = {}
    for name, measurement in MEASUREMENTS.items():
        for view_id, columns in measurement.per_view(report[name]).items():
            lines.setdefault(view_id, {"view": view_id}).update(columns)
    return list(lines.values())


SheetRow = tuple[list[str], list[tuple[bytes | None, list[tuple[str, bool]]]]]


def _sheet_rows(report: dict, pictures: dict[str, bytes], read: dict[str, dict],
                keys: list[str]) -> list[SheetRow]:
    """Per group: label lines (group id, recorded values) and its views, each with the value
    read per attribute and whether that differs from the view's recorded value."""
    names = list(report["attributes"])
    recorded = report["recorded"]
    rows = []
    for key in keys:
        views = sorted(report["sheet_views"].get(key, ()), key=_in_view_order)
        first = recorded.get(views[0], {}) if views else {}
        label = [key] + [f"{name}: {first[name]}" for name in names if name in first]
        cells = []
        for view_id in views:
            readings = []
            for name in names:
                value = read.get(view_id, {}).get(name, "-")  # "-": not embedded (unreadable)
                wrong = name in recorded.get(view_id, {}) and value != recorded[view_id][name]
                readings.append((value if value is not None else "unsure", wrong))
            cells.append((pictures.get(view_id), readings))  # None: drawn as "missing"
        rows.append((label, cells))
    return rows


def _in_view_order(view_id: str) -> list:
    """Sort key: numbers compared as numbers, so view10 comes after view9, not after view1."""
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", view_id)]


def _contact_sheet(rows: list[SheetRow]) -> Image.Image:
    """One row per group: its label (never cut), then its views with what was read under each
    (in red where it differs from the recorded value)."""
    label = text_width([line for lines, _ in rows for line in lines])
    captions = [text for _, cells in rows for _, readings in cells for text, _ in readings]
    cell = max(CELL, text_width(captions))
    lines_under = max([len(readings) for _, cells in rows for _, readings in cells] + [0])
    height = max([CELL + PAD + LINE * lines_under] + [PAD + LINE * len(lines) for lines, _ in rows])
    columns = max([len(cells) for _, cells in rows] + [1])
    sheet = Image.new("RGB", (label + columns * cell, max(1, len(rows)) * height), "white")
    draw = ImageDraw.Draw(sheet)
    for row, (lines, cells) in enumerate(rows):
        top = row * height
        for number, line in enumerate(lines):
            draw.text((PAD, top + PAD + number * LINE), line, fill="black" if number == 0 else "gray",
                      font=font())
        for column, (data, readings) in enumerate(cells):
            x = label + column * cell
            sheet.paste(thumbnail(data), (x, top))
            for number, (text, wrong) in enumerate(readings):
                draw.text((x + 2, top + CELL + 2 + number * LINE), text,
                          fill=WRONG if wrong else "black", font=font())
    return sheet


def _html(report: dict, sections: list[str], sheets: dict[str, str], summary: dict) -> str:
    """The page: head, summary, checks, each measurement's `sections`, then the contact sheets.
    `summary` is the outcome's, before JSON turned an infinite KL into None ("not measured")."""
    e = html.escape
    parts = [
        "<!DOCTYPE html><html><head><meta charset='utf-8'><title>synthgen audit</title>",
        # Long ids and prompts wrap inside their cell rather than widen the page.
        "<style>body{font-family:sans-serif;margin:2em;max-width:1400px}"
        "table{border-collapse:collapse;margin:1em 0;max-width:100%}"
        "td,th{border:1px solid #ccc;padding:2px 8px;font-size:13px;overflow-wrap:anywhere;"
        "text-align:left;vertical-align:top}.fail{color:#b00}"
        "img{max-width:100%;height:auto}</style></head><body>",
        f"<h1>Audit of {e(report['dataset'])}</h1>",
        f"<p>recipe {e(str(report['recipe']['name']))} ({e(str(report['recipe']['hash'])[:12])}), "
        f"CLIP {e(report['model']['identity'])}; {report['totals']['groups']} groups, "
        f"{report['totals']['listed_views']} views listed, {report['totals']['embedded_views']} embedded "
        f"({report['totals']['embeddings_from_cache']} from cache).</p>",
        "<h2>Summary</h2>",
        html_table(["metric (--fail-on name)", "value", "what it is"],
                   [[k, v, METRICS.get(k, "")] for k, v in summary.items()]),
    ]
    if report["checks"]:
        parts.append("<h2>Checks (--fail-on)</h2>")
        parts.append(html_table(["rule", "value", "result"],
                                [[c["rule"], c["value"], "FAILED" if c["failed"] else "ok"]
                                 for c in report["checks"]]))
    parts.extend(sections)
    parts.append("<h2>Contact sheets</h2>")
    for scope, path in sheets.items():
        parts.append(f"<h3>{e(scope)}</h3><img src='{e(path)}' alt='{e(scope)}'>")
    parts.append("</body></html>")
    return "\n".join(parts)
