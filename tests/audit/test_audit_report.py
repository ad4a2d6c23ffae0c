"""The report as a reader sees it: pictures whose captions are whole, and report.html rendered
in headless Chromium at 1280 px (skipped, saying so, where Chromium is not installed)."""

from __future__ import annotations

import html
import json
import re
import shutil
import subprocess

import numpy as np
import pytest
from audit_fixtures import build_dataset, noise_image
from click.testing import CliRunner
from PIL import Image, ImageDraw

from synthgen.audit import render
from synthgen.audit import report as report_module
from synthgen.audit.command import audit

LONG_CLASS = "a_class_name_long_enough_to_be_cut_in_every_picture"


def _ink_right(image: Image.Image, box: tuple[int, int, int, int]) -> int:
    """The rightmost column inside `box` (left, top, right, bottom) holding dark text pixels."""
    pixels = np.asarray(image.convert("L").crop(box))
    columns = np.nonzero((pixels < 128).any(axis=0))[0]
    return box[0] + int(columns.max()) if len(columns) else -1


def _text_extent(text: str) -> float:
    measure = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    return measure.textlength(text, font=render.font())


def test_long_group_ids_are_whole_on_sheets_worst_views_and_duplicate_pairs():
    key = f"class-{LONG_CLASS}-000001"
    picture = noise_image("red", 1)
    needed = render.PAD + 0.95 * _text_extent(key)
    # Contact sheet: the id in the label column, left of the first thumbnail.
    report = {"attributes": {}, "recorded": {}, "sheet_views": {key: [f"{key}.view0.png"]}}
    rows = report_module._sheet_rows(report, {f"{key}.view0.png": picture}, {}, [key])
    sheet = report_module._contact_sheet(rows)
    label_width = sheet.width - render.CELL
    assert _ink_right(sheet, (0, 0, label_width, render.PAD + render.LINE)) >= needed
    # Worst fidelity: class, group id and file beside each thumbnail.
    lines = render.view_caption(f"{key}.view0.png", f"class:{LONG_CLASS}") + ["CLIP score 0.1"]
    assert lines[:3] == [f"class:{LONG_CLASS}", key, "view0.png"]
    grid = render.captioned_grid([(lines, picture)])
    line_top = render.PAD + render.LINE
    assert _ink_right(grid, (0, line_top, grid.width, line_top + render.LINE)) >= (
        render.CELL + 0.95 * _text_extent(key))
    # Duplicate pairs: both view ids whole.
    pair = {"a": f"{key}.view0.png", "b": f"{key}.view1.png", "cosine": 0.99}
    pairs = render.pair_sheet([(pair, picture, picture)])
    assert _ink_right(pairs, (0, 0, pairs.width, render.PAD + render.LINE)) >= (
        2 * render.CELL + 0.95 * _text_extent(pair["a"]))


def test_sheet_captions_show_what_was_read_and_mark_disagreement_in_red():
    key = "class-circle-000000"
    views = {f"{key}.view{v}.png": noise_image("red", v) for v in range(2)}
    report = {"attributes": {"colour": {}},
              "recorded": {view: {"colour": "red"} for view in views},
              "sheet_views": {key: list(views)}}
    read = {f"{key}.view0.png": {"colour": "red"}, f"{key}.view1.png": {"colour": None}}
    rows = report_module._sheet_rows(report, views, read, [key])
    assert rows == [([key, "colour: red"], [(views[f"{key}.view0.png"], [("red", False)]),
                                            (views[f"{key}.view1.png"], [("unsure", True)])])]
    sheet = np.asarray(report_module._contact_sheet(rows))
    reddish = (sheet[..., 0] > 120) & (sheet[..., 1] < 60) & (sheet[..., 2] < 60)
    below_thumbnails = reddish[render.CELL:]
    assert below_thumbnails.any(), "the disagreeing reading is drawn in red"


CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")

# Appended to a copy of report.html: once every image has loaded or failed, it writes what a
# reader would trip on into the page, which --dump-dom then prints.
_CHECKS = """
<script>
window.addEventListener("load", () => {
  const problems = [];
  const width = window.innerWidth;
  for (const image of document.images) {
    if (!image.complete || image.naturalWidth === 0) problems.push("image did not load: " + image.getAttribute("src"));
    if (image.getBoundingClientRect().right > width + 1) problems.push("image wider than the window: " + image.getAttribute("src"));
    // Captions are drawn at 12 px: shrunk below 80% they are too small to read.
    if (image.naturalWidth && image.width < 0.8 * image.naturalWidth) problems.push("image shrunk to " + image.width + " of " + image.naturalWidth + " px: " + image.getAttribute("src"));
  }
  if (document.documentElement.scrollWidth > width) {
    problems.push("page is " + document.documentElement.scrollWidth + " px wide in a " + width + " px window");
  }
  const tables = document.querySelectorAll("table");
  for (const table of tables) {
    const head = table.rows[0].textContent.slice(0, 50);
    if (table.getBoundingClientRect().right > width + 1) problems.push("table wider than the window: " + head);
    for (const cell of table.querySelectorAll("td, th")) {
      const size = parseFloat(getComputedStyle(cell).fontSize);
      if (size < 12) problems.push("text smaller than 12 px in table " + head);
      if (cell.scrollWidth > cell.clientWidth + 1) problems.push("cell text cut off: " + cell.textContent.slice(0, 50));
    }
  }
  const out = document.createElement("pre");
  out.id = "browser-checks";
  out.textContent = JSON.stringify({width: width, images: document.images.length,
                                    tables: tables.length, problems: problems});
  document.body.appendChild(out);
});
</script>
"""


def _render_checks(page, profile) -> dict:
    checked = page.with_name("browser-checks.html")
    checked.write_text(page.read_text().replace("</body>", _CHECKS + "</body>"))
    command = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
               "--disable-background-networking", "--disable-component-update", "--disable-sync",
               f"--user-data-dir={profile}", "--hide-scrollbars", "--window-size=1280,900",
               "--virtual-time-budget=10000", "--dump-dom", checked.as_uri()]
    done = subprocess.run(command, capture_output=True, text=True, timeout=180)
    found = re.search(r'<pre id="browser-checks">(.*?)</pre>', done.stdout, re.S)
    assert found, f"no checks in Chromium's DOM (exit {done.returncode}): {done.stderr[-2000:]}"
    return json.loads(html.unescape(found.group(1)))


@pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed (Debian: apt-get install "
                    "chromium): report.html is not rendered in a browser")
def test_report_renders_in_chromium_at_1280_px_with_every_image_and_readable_tables(
        tmp_path, fake_encoder):
    from synthgen.cli import SynthgenGroup

    recipe = {"balance": [{"attribute": "colour", "values": {"red": 1, "green": 1, "blue": 1},
                           "applies_to": None}],
              "suppress": [{"concept": "blue", "method": "negative", "threshold": None}]}
    colours = ["red", "green", "blue", "olive", "red", "blue"]
    groups = [{"class": LONG_CLASS, "colours": [c] * 3, "balance": {"colour": "red"},
               "prompt": f"a {c} shape with a prompt long enough to wrap inside its table cell " * 3}
              for c in colours]
    groups[4]["images"] = groups[5]["images"] = [noise_image("red", 99)] * 3   # near-duplicates
    groups.append({"class": "circle", "corner": "a_corner_case_with_a_long_name_too",
                   "colours": ["blue"] * 3})
    dataset = build_dataset(tmp_path / "data", groups, recipe)
    group = SynthgenGroup()
    group.add_command(audit)
    result = CliRunner().invoke(group, ["audit", str(dataset), "--quiet", "--report",
                                        str(tmp_path / "report")])
    assert result.exit_code == 0, result.output
    checks = _render_checks(tmp_path / "report" / "report.html", tmp_path / "chromium-profile")
    assert checks["width"] == 1280
    # Chart, sheets for the class and the corner case, worst fidelity, duplicates.
    assert checks["images"] >= 5 and checks["tables"] >= 6
    assert checks["problems"] == []
