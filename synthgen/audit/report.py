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

Captions are measured in the caption font and the pictures sized to fit them: ids are never cut.
    embeddings.npz         the embedding cache (written by run.py)
"""

from __future__ import annotations

import html
import io
import json
import math
import re
from pathlib import Path

from PIL import Image, ImageDraw, ImageFont

from synthgen.audit.decode import decode_pil
from synthgen.audit.run import DAMAGE_KINDS, OVERALL, AuditOutcome
from synthgen.audit.thresholds import METRICS
from synthgen.store import write_atomically

CELL = 96
MAX_SCOPES_PER_CHART = 24
FONT_SIZE = 12
LINE = 15          # pixels per caption line
PAD = 6
WRONG = "#b00000"  # a reading that differs from the recorded value


def write_report(outcome: AuditOutcome, report_dir: Path) -> Path:
    """Writes every file of the layout above; returns the path of report.html."""
    report_dir.mkdir(parents=True, exist_ok=True)
    report = json.loads(json.dumps(outcome.report))  # a copy we may reshape
    view_lines = _per_view_lines(report)
    write_atomically(report_dir / "views.jsonl", "".join(json.dumps(line) + "\n" for line in view_lines).encode())
    write_atomically(report_dir / "report.json", json.dumps(report, indent=2, sort_keys=True).encode() + b"\n")
    charts = {name: _write_png(report_dir, f"charts/{_slug(name)}.png", _attribute_chart(name, metrics))
              for name, metrics in report["attributes"].items()}
    read = {line["view"]: line for line in view_lines}
    sheets = {scope: _write_png(report_dir, f"sheets/{_slug(scope)}.png",
                                _contact_sheet(_sheet_rows(report, outcome.pictures, read, keys)))
              for scope, keys in sorted(report["sheets"].items())}
    worst = report["fidelity"]["worst"]
    worst_png = _write_png(report_dir, "worst-fidelity.png", _captioned_grid(
        [(_view_caption(w["view"], w["scope"]) + [f"CLIP score {w['score']:.3f}"],
          outcome.pictures.get(w["view"])) for w in worst]))
    pairs = report["duplicates"]["examples"][:8]
    duplicate_png = None
    if pairs:
        duplicate_png = _write_png(report_dir, "duplicates.png", _pair_sheet(
            [(p, outcome.pictures.get(p["a"]), outcome.pictures.get(p["b"])) for p in pairs]))
    page = _html(report, charts, sheets, worst_png if worst else None, duplicate_png)
    write_atomically(report_dir / "report.html", page.encode())
    return report_dir / "report.html"


def _per_view_lines(report: dict) -> list[dict]:
    lines: dict[str, dict] = {}
    for name, metrics in report["attributes"].items():
        for view_id, value in metrics.pop("classified", {}).items():
            lines.setdefault(view_id, {"view": view_id})[name] = value
    for view_id, score in report["fidelity"].pop("per_view", {}).items():
        lines.setdefault(view_id, {"view": view_id})["clip_score"] = score
    return list(lines.values())


def _slug(text: str) -> str:
    return re.sub(r"[^a-zA-Z0-9_-]+", "_", text).strip("_") or "_"


def _write_png(report_dir: Path, relative: str, figure_or_image) -> str:
    path = report_dir / relative
    path.parent.mkdir(parents=True, exist_ok=True)
    buffer = io.BytesIO()
    if isinstance(figure_or_image, Image.Image):
        figure_or_image.save(buffer, "PNG")
    else:
        import matplotlib.pyplot as plt

        figure_or_image.savefig(buffer, format="png", dpi=90, bbox_inches="tight")
        plt.close(figure_or_image)
    write_atomically(path, buffer.getvalue())
    return relative


def _attribute_chart(name: str, metrics: dict):
    """Bars of measured proportions with 95% Wilson intervals (over the attribute's unit)
    beside target markers, per scope."""
    import matplotlib

    matplotlib.use("Agg")  # no display: charts are files
    import matplotlib.pyplot as plt
    import numpy as np

    scopes = [OVERALL] + sorted((s for s in metrics["scopes"] if s != OVERALL),
                                key=lambda s: -(metrics["scopes"][s]["kl"] or 0))[:MAX_SCOPES_PER_CHART - 1]
    columns = min(4, len(scopes))
    rows = (len(scopes) + columns - 1) // columns
    figure, axes = plt.subplots(rows, columns, figsize=(3.6 * columns, 2.6 * rows), squeeze=False)
    values = metrics["values"]
    x = np.arange(len(values))
    for axis, scope in zip(axes.flat, scopes):
        data = metrics["scopes"][scope]
        proportions = [data["proportions"].get(v, {}).get("p", 0.0) for v in values]
        # max(0, ...): rounding can put p a hair outside its own interval.
        low = [max(0.0, p - data["proportions"].get(v, {}).get("ci95", [p, p])[0]) for v, p in zip(values, proportions)]
        high = [max(0.0, data["proportions"].get(v, {}).get("ci95", [p, p])[1] - p) for v, p in zip(values, proportions)]
        axis.bar(x, proportions, color="#4c78a8", yerr=[low, high], capsize=2, label="measured")
        axis.scatter(x, [data["target"].get(v, 0.0) for v in values], color="#e45756", marker="_",
                     s=400, linewidths=2, label="target", zorder=3)
        kl = data["kl"]
        axis.set_title(f"{scope}\n{data['total']} {metrics['unit']}s, unsure={data['unsure']} "
                       f"KL={'inf' if kl is None and data['total'] else (f'{kl:.3f}' if kl is not None else '-')}",
                       fontsize=8)
        axis.set_xticks(x, values, rotation=30, fontsize=7)
        axis.set_ylim(0, 1)
    for axis in list(axes.flat)[len(scopes):]:
        axis.axis("off")
    axes.flat[0].legend(fontsize=7)
    figure.suptitle(f"attribute: {name}", fontsize=10)
    figure.tight_layout()
    return figure


def _thumbnail(data: bytes | None) -> Image.Image:
    image = decode_pil(data) if data is not None else None
    if image is None:
        cell = Image.new("RGB", (CELL, CELL), "#bbbbbb")
        ImageDraw.Draw(cell).text((4, CELL // 2 - 6), "unreadable" if data else "missing", fill="black")
        return cell
    return image.resize((CELL, CELL), Image.Resampling.BILINEAR)


def _font() -> ImageFont.ImageFont:
    return ImageFont.load_default(size=FONT_SIZE)


def _text_width(lines: list[str]) -> int:
    """Pixels the widest of `lines` takes in the caption font, plus padding on both sides."""
    measure = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    return 2 * PAD + max([0] + [math.ceil(measure.textlength(line, font=_font())) for line in lines])


def _view_caption(view_id: str, scope: str) -> list[str]:
    """Class or corner case, group id and view file of a view id `KEY.FILE`, one per line."""
    key, _, file = view_id.partition(".")
    return [scope, key, file]


SheetRow = tuple[list[str], list[tuple[bytes, list[tuple[str, bool]]]]]


def _sheet_rows(report: dict, pictures: dict[str, bytes], read: dict[str, dict],
                keys: list[str]) -> list[SheetRow]:
    """Per group: label lines (group id, recorded values) and its views, each with the value
    read per attribute and whether that differs from the view's recorded value."""
    names = list(report["attributes"])
    recorded = report["recorded"]
    rows = []
    for key in keys:
        views = [view_id for view_id in sorted(pictures) if view_id.split(".", 1)[0] == key]
        first = recorded.get(views[0], {}) if views else {}
        label = [key] + [f"{name}: {first[name]}" for name in names if name in first]
        cells = []
        for view_id in views:
            readings = []
            for name in names:
                value = read.get(view_id, {}).get(name, "-")  # "-": not embedded (unreadable)
                wrong = name in recorded.get(view_id, {}) and value != recorded[view_id][name]
                readings.append((value if value is not None else "unsure", wrong))
            cells.append((pictures[view_id], readings))
        rows.append((label, cells))
    return rows


def _contact_sheet(rows: list[SheetRow]) -> Image.Image:
    """One row per group: its label (never cut), then its views with what was read under each
    (in red where it differs from the recorded value)."""
    label = _text_width([line for lines, _ in rows for line in lines])
    captions = [text for _, cells in rows for _, readings in cells for text, _ in readings]
    cell = max(CELL, _text_width(captions))
    lines_under = max([len(readings) for _, cells in rows for _, readings in cells] + [0])
    height = max([CELL + PAD + LINE * lines_under] + [PAD + LINE * len(lines) for lines, _ in rows])
    columns = max([len(cells) for _, cells in rows] + [1])
    sheet = Image.new("RGB", (label + columns * cell, max(1, len(rows)) * height), "white")
    draw = ImageDraw.Draw(sheet)
    for row, (lines, cells) in enumerate(rows):
        top = row * height
        for number, line in enumerate(lines):
            draw.text((PAD, top + PAD + number * LINE), line, fill="black" if number == 0 else "gray",
                      font=_font())
        for column, (data, readings) in enumerate(cells):
            x = label + column * cell
            sheet.paste(_thumbnail(data), (x, top))
            for number, (text, wrong) in enumerate(readings):
                draw.text((x + 2, top + CELL + 2 + number * LINE), text,
                          fill=WRONG if wrong else "black", font=_font())
    return sheet


def _captioned_grid(cells: list[tuple[list[str], bytes | None]], per_row: int = 3) -> Image.Image:
    """Thumbnails with their caption lines beside them, `per_row` to a row; captions uncut."""
    text = _text_width([line for lines, _ in cells for line in lines])
    height = max([CELL] + [PAD + LINE * len(lines) for lines, _ in cells])
    rows = max(1, (len(cells) + per_row - 1) // per_row)
    width = CELL + text
    sheet = Image.new("RGB", (min(per_row, max(1, len(cells))) * width, rows * height), "white")
    draw = ImageDraw.Draw(sheet)
    for index, (lines, data) in enumerate(cells):
        x, y = (index % per_row) * width, (index // per_row) * height
        sheet.paste(_thumbnail(data), (x, y))
        for number, line in enumerate(lines):
            draw.text((x + CELL + PAD, y + PAD + number * LINE), line,
                      fill="black" if number < len(lines) - 1 else "gray", font=_font())
    return sheet


def _pair_sheet(pairs: list[tuple[dict, bytes | None, bytes | None]]) -> Image.Image:
    captions = [[pair["a"], pair["b"], f"cosine {pair['cosine']:.4f}"] for pair, _, _ in pairs]
    label = _text_width([line for lines in captions for line in lines])
    sheet = Image.new("RGB", (2 * CELL + label, len(pairs) * CELL), "white")
    draw = ImageDraw.Draw(sheet)
    for row, ((_, a, b), lines) in enumerate(zip(pairs, captions)):
        sheet.paste(_thumbnail(a), (0, row * CELL))
        sheet.paste(_thumbnail(b), (CELL, row * CELL))
        for number, line in enumerate(lines):
            draw.text((2 * CELL + PAD, row * CELL + PAD + number * LINE), line,
                      fill="black" if number < 2 else "gray", font=_font())
    return sheet


def _fmt(value) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.4g}"
    return html.escape(str(value))


def _table(header: list[str], rows: list[list]) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{_fmt(c)}</td>" for c in row) + "</tr>" for row in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


UNIT_REASONS = {
    "group": "all views of a group carry one value (recorded per group, or one prompt for all), "
             "so a group is one draw; its reading is the margin rule on the mean of its views' "
             "probabilities. Intervals and p-values count groups.",
    "view": "a group's views can differ (recorded per view, or prompts that differ between "
            "views), so each view is one draw.",
}


def _agreement_html(name: str, unit: str, metrics: dict) -> str:
    """Agreement with the recorded values and the confusion table, recorded rows x read columns."""
    agreement = metrics["agreement"]
    columns = list(metrics["values"]) + ["unsure"]
    rows = [[recorded] + [counts.get(c, 0) for c in columns] + [sum(counts.values())]
            for recorded, counts in sorted(agreement["confusion"].items())]
    low, high = agreement["ci95"]
    text = (f"<p>Read vs recorded {html.escape(name)}: {agreement['agree']} of {agreement['sure']} "
            f"sure {unit}s agree ({_fmt(agreement['agreement'])}, 95% CI {_fmt(low)}-{_fmt(high)}); "
            f"{agreement['unsure']} unsure, {agreement['not_read']} recorded a value the audit "
            "does not read.")
    if agreement.get("per_view"):
        view = agreement["per_view"]
        text += f" Per view: {view['agree']} of {view['sure']} ({_fmt(view['agreement'])})."
    text += (" Where the recorded value is not what is read, either the images or the classifier "
             "is wrong: look at the sheets before blaming the data.</p>")
    return text + _table(["recorded \u2193 / read \u2192"] + columns + ["total"], rows)


def _example(entry) -> str:
    if isinstance(entry, dict):
        return str(entry.get("sample") or entry.get("shard") or entry)
    return str(entry)


def _html(report: dict, charts: dict, sheets: dict, worst_png: str | None, duplicate_png: str | None) -> str:
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
        _table(["metric (--fail-on name)", "value", "what it is"],
               [[k, v, METRICS.get(k, "")] for k, v in report["summary"].items()]),
    ]
    if report["checks"]:
        parts.append("<h2>Checks (--fail-on)</h2>")
        parts.append(_table(["rule", "value", "result"],
                            [[c["rule"], c["value"], "FAILED" if c["failed"] else "ok"] for c in report["checks"]]))
    parts.append("<h2>Attributes</h2>")
    if not report["attributes"]:
        parts.append("<p>No attributes: the recipe has no balance or audit.attributes, and no "
                     "--attribute was given.</p>")
    for name, metrics in report["attributes"].items():
        unit = metrics["unit"]
        parts.append(f"<h3>{e(name)}</h3><p>values {e(', '.join(metrics['values']))}; templates "
                     f"{e(' | '.join(metrics['templates']))} ({e(metrics['source'])}). Counted per "
                     f"<b>{e(unit)}</b>: " + e(UNIT_REASONS[unit]) + "</p>")
        rows = []
        for scope, data in metrics["scopes"].items():
            per_view = data.get("per_view")
            rows.append([scope, data["units"], data["views"], data["unsure"], data["unsure_rate"],
                         " ".join(f"{v}:{c}" for v, c in data["counts"].items()), data["kl"],
                         data["normalised_entropy"], data["max_min_ratio"], data["chi2"],
                         data["chi2_p"], per_view["chi2_p"] if per_view else None,
                         data["target_source"]])
        parts.append(_table(["scope", f"{unit}s", "views", "unsure", "unsure rate", "counts", "KL",
                             "norm. entropy", "max/min", "chi2", "p", "p if views counted", "target"],
                            rows))
        if metrics.get("agreement"):
            parts.append(_agreement_html(name, unit, metrics))
        parts.append(f"<img src='{e(charts[name])}' alt='{e(name)} distribution'>")
    parts.append("<h2>Suppression</h2>")
    parts.append(_table(["concept", "method", "threshold", "views", "detected", "rate", "groups",
                         "groups with a detected view"],
                        [[c, d["method"], d["threshold"], d["views"], d["detected"], d["rate"],
                          d["groups"], d["groups_detected"]]
                         for c, d in report["suppression"].items()]) if report["suppression"]
                 else "<p>No suppressed concepts in the recipe.</p>")
    similarity = report["similarity"]
    parts.append("<h2>Views and groups</h2><p>Mean cosine between views of one group (alike) and "
                 "between random views of different groups of the same class (diversity).</p>")
    for title, table in (("per class / corner case", similarity["per_class"]),
                         ("per view strategy", similarity["per_strategy"])):
        parts.append(f"<h3>{e(title)}</h3>")
        parts.append(_table(["label", "groups", "views", "within group", "between groups",
                             "pairs used", "pairs there are"],
                            [[k, v["groups"], v["views"], v["within_group"], v["between_groups"],
                              v["pairs_sampled"], v["pairs_possible"]] for k, v in table.items()]))
    fidelity = report["fidelity"]
    parts.append(f"<h2>Fidelity</h2><p>CLIP score = cosine of a view and its own prompt. Mean "
                 f"{_fmt(fidelity['mean'])}; {fidelity['below']} views below {fidelity['threshold']}.</p>")
    if worst_png:
        parts.append(_table(["view", "class / corner case", "score", "prompt"],
                            [[w["view"], w["scope"], w["score"], w["prompt"]] for w in fidelity["worst"]]))
        parts.append(f"<img src='{e(worst_png)}' alt='worst fidelity views'>")
    duplicates = report["duplicates"]
    parts.append(f"<h2>Near-duplicates</h2><p>{duplicates['view_pairs']} view pairs in "
                 f"{duplicates['group_pairs']} group pairs above cosine {duplicates['threshold']}; "
                 f"{duplicates['groups_involved']} groups involved (rate {_fmt(duplicates['rate'])}).</p>")
    if duplicate_png:
        parts.append(f"<img src='{e(duplicate_png)}' alt='duplicate pairs'>")
    integrity = report["integrity"]
    parts.append("<h2>Integrity</h2>")
    parts.append(f"<p>{report['summary']['integrity']} damaged things (the <code>integrity</code> "
                 "figure of --fail-on).</p>")
    parts.append(_table(["check", "count", "examples"], [
        [k, len(integrity[k]), ", ".join(_example(x) for x in integrity[k][:5])]
        for k in DAMAGE_KINDS]))
    parts.append("<h2>Contact sheets</h2>")
    for scope, path in sheets.items():
        parts.append(f"<h3>{e(scope)}</h3><img src='{e(path)}' alt='{e(scope)}'>")
    parts.append("</body></html>")
    return "\n".join(parts)
