"""The pieces report.html is built from: HTML tables, and PNG pictures of views with captions.

Captions are measured in the caption font and the pictures sized to fit them: ids are never
cut. Every file is written atomically (whole or absent).
"""

from __future__ import annotations

import hashlib
import html
import io
import math
import re
from pathlib import Path

from PIL import Image, ImageDraw, ImageFont

from synthgen.store import write_atomically

CELL = 96
FONT_SIZE = 12
LINE = 15          # pixels per caption line
PAD = 6


def fmt(value) -> str:
    """A table cell's text: "-" for None, 4 significant digits for floats, HTML-escaped."""
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.4g}"
    return html.escape(str(value))


def html_table(header: list[str], rows: list[list]) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{fmt(c)}</td>" for c in row) + "</tr>" for row in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def slug(text: str) -> str:
    """`text` as a file name: runs of anything but letters, digits, _ and - become _, and where
    anything was replaced a digest of `text` is appended, so that two names never share a file
    ("颜色" and "色" would both be "_")."""
    readable = re.sub(r"[^a-zA-Z0-9_-]+", "_", text).strip("_") or "_"
    if readable == text:
        return readable
    return f"{readable}-{hashlib.sha1(text.encode()).hexdigest()[:8]}"


def write_png(report_dir: Path, relative: str, figure_or_image) -> str:
    """Writes a PIL image or a matplotlib figure (closing it) as PNG; returns `relative`."""
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


def thumbnail(data: bytes | None) -> Image.Image:
    # Imported here: decode.py imports torch, and the measurements that draw pictures are
    # imported (for their --fail-on names) before `synthgen audit` loads anything heavy.
    from synthgen.audit.decode import decode_pil

    image = decode_pil(data) if data is not None else None
    if image is None:
        cell = Image.new("RGB", (CELL, CELL), "#bbbbbb")
        ImageDraw.Draw(cell).text((4, CELL // 2 - 6), "unreadable" if data else "missing", fill="black")
        return cell
    return image.resize((CELL, CELL), Image.Resampling.BILINEAR)


def font() -> ImageFont.ImageFont:
    return ImageFont.load_default(size=FONT_SIZE)


def text_width(lines: list[str]) -> int:
    """Pixels the widest of `lines` takes in the caption font, plus padding on both sides."""
    measure = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    return 2 * PAD + max([0] + [math.ceil(measure.textlength(line, font=font())) for line in lines])


def view_caption(view_id: str, scope: str) -> list[str]:
    """Class or corner case, group id and view file of a view id `KEY.FILE`, one per line."""
    key, _, file = view_id.partition(".")
    return [scope, key, file]


def captioned_grid(cells: list[tuple[list[str], bytes | None]], per_row: int = 3) -> Image.Image:
    """Thumbnails with their caption lines beside them, `per_row` to a row; captions uncut."""
    text = text_width([line for lines, _ in cells for line in lines])
    height = max([CELL] + [PAD + LINE * len(lines) for lines, _ in cells])
    rows = max(1, (len(cells) + per_row - 1) // per_row)
    width = CELL + text
    sheet = Image.new("RGB", (min(per_row, max(1, len(cells))) * width, rows * height), "white")
    draw = ImageDraw.Draw(sheet)
    for index, (lines, data) in enumerate(cells):
        x, y = (index % per_row) * width, (index // per_row) * height
        sheet.paste(thumbnail(data), (x, y))
        for number, line in enumerate(lines):
            draw.text((x + CELL + PAD, y + PAD + number * LINE), line,
                      fill="black" if number < len(lines) - 1 else "gray", font=font())
    return sheet


def pair_sheet(pairs: list[tuple[dict, bytes | None, bytes | None]]) -> Image.Image:
    """One row per pair {"a", "b", "cosine"}: both thumbnails, then both view ids and the cosine."""
    captions = [[pair["a"], pair["b"], f"cosine {pair['cosine']:.4f}"] for pair, _, _ in pairs]
    label = text_width([line for lines in captions for line in lines])
    sheet = Image.new("RGB", (2 * CELL + label, len(pairs) * CELL), "white")
    draw = ImageDraw.Draw(sheet)
    for row, ((_, a, b), lines) in enumerate(zip(pairs, captions)):
        sheet.paste(thumbnail(a), (0, row * CELL))
        sheet.paste(thumbnail(b), (CELL, row * CELL))
        for number, line in enumerate(lines):
            draw.text((2 * CELL + PAD, row * CELL + PAD + number * LINE), line,
                      fill="black" if number < 2 else "gray", font=font())
    return sheet
