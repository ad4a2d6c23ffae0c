"""Reading a section of a markdown document, for the tests that check every registered entry is
documented."""

from __future__ import annotations

import re
from pathlib import Path


def markdown_section(path: Path, heading: str, level: int = 2) -> str:
    """The text under the `level`-deep `heading` of a markdown file, up to the next heading of
    level 2 to `level` (a `###` section ends at the next `##` or `###`)."""
    text = path.read_text()
    marks = "#" * level
    found = re.search(rf"^{marks} {re.escape(heading)}\n(.*?)(?=^#{{2,{level}}} |\Z)", text,
                      re.M | re.S)
    assert found, f"{path.name} has no '{marks} {heading}' section"
    return found.group(1)
