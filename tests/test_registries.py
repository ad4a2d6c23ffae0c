"""The view strategy registry: every registered strategy is documented in the README, and the
recipe's `views` block is built from the registry (a strategy's block and name come from its
module, nowhere else)."""

from __future__ import annotations

import re
from pathlib import Path

from markdown_sections import markdown_section

from synthgen.views import STRATEGIES, ViewsSpec

REPOSITORY = Path(__file__).resolve().parents[1]


def _table_rows(section: str) -> set[str]:
    """The first cells of a markdown table's rows, without backticks."""
    return {cells[1].strip().strip("`") for line in section.splitlines()
            if line.startswith("| `") and len(cells := line.split("|")) > 2}


def test_every_view_strategy_has_a_row_in_the_readme_views_table():
    rows = _table_rows(markdown_section(REPOSITORY / "README.md", "Views: how a group's images differ",
                                        level=3))
    # A made-up strategy is reported missing: the check reads the right table.
    assert "no_such_strategy" not in rows and "seeds" in rows
    assert [name for name in STRATEGIES if name not in rows] == [], (
        "README.md's views table has a row per registered strategy, its name in backticks")
    assert rows <= set(STRATEGIES), "the README documents a strategy the registry lacks"


def test_the_readme_recipe_reference_lists_every_strategy():
    listed = re.search(r"strategy: .*# one or several of: (.*)", (REPOSITORY / "README.md").read_text())
    assert listed, "README.md's recipe reference lists the strategies on the views.strategy line"
    assert [name.strip() for name in listed.group(1).split("|")] == list(STRATEGIES)


def test_the_views_block_holds_each_strategy_block_in_registry_order():
    blocks = [name for name, strategy in STRATEGIES.items() if strategy.settings is not None]
    assert list(ViewsSpec.model_fields) == ["count", "strategy", *blocks]
    for name in blocks:
        assert ViewsSpec.model_fields[name].annotation in (
            STRATEGIES[name].settings, STRATEGIES[name].settings | None), name
