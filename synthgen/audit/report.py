"""Write an audit: report.json for machines, report.html + PNGs for people.

Layout of the report directory (all written atomically, each file whole or absent):

    report.json            the report dict (per-view results moved to views.jsonl)
    views.jsonl            one line per view: view id, each attribute's value, its CLIP score
    report.html            tables and the pictures below, relative links only
    charts/ATTR.png        each attribute's measured distribution (95% CI) against its target,
                           overall and per class / corner case
    sheets/SCOPE.png       contact sheets: the first groups of each class and corner case
    worst-fidelity.png     the views least like their own prompt
    duplicates.png         the most similar near-duplicate pairs
    embeddings.npz         the embedding cache (written by run.py)
"""

from __future__ import annotations

import html
import io
import json
import re
from pathlib import Path

from PIL import Image, ImageDraw

from synthgen.audit.decode import decode_pil
from synthgen.audit.run import OVERALL, AuditOutcome
from synthgen.store import write_atomically

CELL = 96
MAX_SCOPES_PER_CHART = 24


def write_report(outcome: AuditOutcome, report_dir: Path) -> Path:
    """Writes every file of the layout above; returns the path of report.html."""
    report_dir.mkdir(parents=True, exist_ok=True)
    report = json.loads(json.dumps(outcome.report))  # a copy we may reshape
    view_lines = _per_view_lines(report)
    write_atomically(report_dir / "views.jsonl", "".join(json.dumps(line) + "\n" for line in view_lines).encode())
    write_atomically(report_dir / "report.json", json.dumps(report, indent=2, sort_keys=True).encode() + b"\n")
    charts = {name: _write_png(report_dir, f"charts/{_slug(name)}.png", _attribute_chart(name, metrics))
              for name, metrics in report["attributes"].items()}
    sheets = {}
    for scope, keys in sorted(report["sheets"].items()):
        rows = [(key, [(view_id, outcome.pictures[view_id]) for view_id in sorted(outcome.pictures)
                       if view_id.split(".", 1)[0] == key]) for key in keys]
        sheets[scope] = _write_png(report_dir, f"sheets/{_slug(scope)}.png", _contact_sheet(rows))
    worst = [(w["view"], f"{w['score']:.3f}") for w in report["fidelity"]["worst"]]
    worst_png = _write_png(report_dir, "worst-fidelity.png",
                           _labelled_strip([(v, label, outcome.pictures.get(v)) for v, label in worst]))
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
    """Bars of measured proportions with 95% Wilson intervals beside target markers, per scope."""
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
        axis.set_title(f"{scope}\nn={data['total']} unsure={data['unsure']} "
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


def _contact_sheet(rows: list[tuple[str, list[tuple[str, bytes]]]]) -> Image.Image:
    label = 180
    columns = max([len(views) for _, views in rows] + [1])
    sheet = Image.new("RGB", (label + columns * CELL, max(1, len(rows)) * CELL), "white")
    draw = ImageDraw.Draw(sheet)
    for row, (key, views) in enumerate(rows):
        draw.text((4, row * CELL + 4), key[:28], fill="black")
        for column, (_, data) in enumerate(views):
            sheet.paste(_thumbnail(data), (label + column * CELL, row * CELL))
    return sheet


def _labelled_strip(cells: list[tuple[str, str, bytes | None]], per_row: int = 8) -> Image.Image:
    rows = max(1, (len(cells) + per_row - 1) // per_row)
    text = 28
    sheet = Image.new("RGB", (per_row * CELL, rows * (CELL + text)), "white")
    draw = ImageDraw.Draw(sheet)
    for index, (view_id, label, data) in enumerate(cells):
        x, y = (index % per_row) * CELL, (index // per_row) * (CELL + text)
        sheet.paste(_thumbnail(data), (x, y))
        draw.text((x + 2, y + CELL + 1), view_id[-16:], fill="black")
        draw.text((x + 2, y + CELL + 14), label, fill="gray")
    return sheet


def _pair_sheet(pairs: list[tuple[dict, bytes | None, bytes | None]]) -> Image.Image:
    label = 260
    sheet = Image.new("RGB", (2 * CELL + label, len(pairs) * CELL), "white")
    draw = ImageDraw.Draw(sheet)
    for row, (pair, a, b) in enumerate(pairs):
        sheet.paste(_thumbnail(a), (0, row * CELL))
        sheet.paste(_thumbnail(b), (CELL, row * CELL))
        draw.text((2 * CELL + 6, row * CELL + 4), pair["a"][:40], fill="black")
        draw.text((2 * CELL + 6, row * CELL + 20), pair["b"][:40], fill="black")
        draw.text((2 * CELL + 6, row * CELL + 36), f"cosine {pair['cosine']:.4f}", fill="gray")
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


def _html(report: dict, charts: dict, sheets: dict, worst_png: str | None, duplicate_png: str | None) -> str:
    e = html.escape
    parts = [
        "<!DOCTYPE html><html><head><meta charset='utf-8'><title>synthgen audit</title>",
        "<style>body{font-family:sans-serif;margin:2em}table{border-collapse:collapse;margin:1em 0}"
        "td,th{border:1px solid #ccc;padding:2px 8px;font-size:13px}.fail{color:#b00}"
        "img{max-width:100%}</style></head><body>",
        f"<h1>Audit of {e(report['dataset'])}</h1>",
        f"<p>recipe {e(str(report['recipe']['name']))} ({e(str(report['recipe']['hash'])[:12])}), "
        f"CLIP {e(report['model']['identity'])}; {report['totals']['groups']} groups, "
        f"{report['totals']['listed_views']} views listed, {report['totals']['embedded_views']} embedded "
        f"({report['totals']['embeddings_from_cache']} from cache).</p>",
        "<h2>Summary</h2>",
        _table(["metric", "value"], [[k, v] for k, v in report["summary"].items()]),
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
        parts.append(f"<h3>{e(name)}</h3><p>values {e(', '.join(metrics['values']))}; templates "
                     f"{e(' | '.join(metrics['templates']))} ({e(metrics['source'])})</p>")
        rows = []
        for scope, data in metrics["scopes"].items():
            rows.append([scope, data["views"], data["unsure"], data["unsure_rate"],
                         " ".join(f"{v}:{c}" for v, c in data["counts"].items()), data["kl"],
                         data["normalised_entropy"], data["max_min_ratio"], data["chi2"],
                         data["chi2_p"], data["target_source"]])
        parts.append(_table(["scope", "views", "unsure", "unsure rate", "counts", "KL", "norm. entropy",
                             "max/min", "chi2", "p", "target"], rows))
        if metrics.get("agreement"):
            a = metrics["agreement"]
            parts.append(f"<p>assigned vs measured: {a['agree']} of {a['sure']} sure views agree "
                         f"({_fmt(a['agreement'])}), {a['unsure']} unsure.</p>")
        parts.append(f"<img src='{e(charts[name])}' alt='{e(name)} distribution'>")
    parts.append("<h2>Suppression</h2>")
    parts.append(_table(["concept", "method", "threshold", "views", "detected", "rate"],
                        [[c, d["method"], d["threshold"], d["views"], d["detected"], d["rate"]]
                         for c, d in report["suppression"].items()]) if report["suppression"]
                 else "<p>No suppressed concepts in the recipe.</p>")
    similarity = report["similarity"]
    parts.append("<h2>Views and groups</h2><p>Mean cosine between views of one group (alike) and "
                 "between random views of different groups of the same class (diversity).</p>")
    for title, table in (("per class / corner case", similarity["per_class"]),
                         ("per view strategy", similarity["per_strategy"])):
        parts.append(f"<h3>{e(title)}</h3>")
        parts.append(_table(["label", "groups", "views", "within group", "between groups", "pairs"],
                            [[k, v["groups"], v["views"], v["within_group"], v["between_groups"],
                              v["pairs_sampled"]] for k, v in table.items()]))
    fidelity = report["fidelity"]
    parts.append(f"<h2>Fidelity</h2><p>CLIP score = cosine of a view and its own prompt. Mean "
                 f"{_fmt(fidelity['mean'])}; {fidelity['below']} views below {fidelity['threshold']}.</p>")
    if worst_png:
        parts.append(_table(["view", "score", "prompt"],
                            [[w["view"], w["score"], w["prompt"]] for w in fidelity["worst"]]))
        parts.append(f"<img src='{e(worst_png)}' alt='worst fidelity views'>")
    duplicates = report["duplicates"]
    parts.append(f"<h2>Near-duplicates</h2><p>{duplicates['view_pairs']} view pairs in "
                 f"{duplicates['group_pairs']} group pairs above cosine {duplicates['threshold']}; "
                 f"{duplicates['groups_involved']} groups involved (rate {_fmt(duplicates['rate'])}).</p>")
    if duplicate_png:
        parts.append(f"<img src='{e(duplicate_png)}' alt='duplicate pairs'>")
    integrity = report["integrity"]
    parts.append("<h2>Integrity</h2>")
    parts.append(_table(["check", "count", "examples"], [
        [k, len(integrity[k]), ", ".join(str(x) for x in integrity[k][:5])]
        for k in ("missing_shards", "sha256_mismatches", "unreadable_shards", "missing_views",
                  "unreadable_views", "black_views")]))
    parts.append("<h2>Contact sheets</h2>")
    for scope, path in sheets.items():
        parts.append(f"<h3>{e(scope)}</h3><img src='{e(path)}' alt='{e(scope)}'>")
    parts.append("</body></html>")
    return "\n".join(parts)
