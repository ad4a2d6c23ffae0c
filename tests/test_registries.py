"""The view strategy and suppression / balance method registries: every registered entry is
documented in the README, and the recipe blocks are built from the registries (a strategy's
block, a method's fields and name come from its module, nowhere else)."""

from __future__ import annotations

import re
from pathlib import Path
from typing import get_args

from markdown_sections import markdown_section

from synthgen import balance, suppress
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


def _method_rows() -> dict[tuple[str, str], set[str]]:
    """{(block, method): its fields} from the README's table of suppression and balance methods."""
    section = markdown_section(REPOSITORY / "README.md", "Suppression", level=3)
    rows = {}
    for line in section.splitlines():
        cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
        if len(cells) == 4 and cells[0] in ("`suppress`", "`balance`"):
            block, method = cells[0].strip("`"), cells[1].split()[0].strip("`")
            rows[block, method] = {field.strip().strip("`") for field in cells[3].split(",")}
    return rows


def test_every_suppression_and_balance_method_is_documented_with_its_fields():
    rows = _method_rows()
    registered = {("suppress", name): model for name, model in suppress.METHODS.items()}
    registered |= {("balance", name): model for name, model in balance.METHODS.items()}
    assert ("suppress", "reject") in rows, "the check reads the README's methods table"
    assert sorted(rows) == sorted(registered), (
        "README.md's Suppression section has a row per registered method, and no other")
    for key, model in registered.items():
        assert rows[key] == set(model.model_fields) - {"method"}, (
            f"the README's row for {key} lists the fields its model takes")


def test_every_suppression_method_has_a_paragraph_in_the_readme():
    section = markdown_section(REPOSITORY / "README.md", "Suppression", level=3)
    described = re.findall(r"^- `(\w+)`:", section, re.M)
    assert described == list(suppress.METHODS)


def test_the_readme_recipe_reference_lists_every_balance_method():
    listed = re.search(r"method: debias +# (.*)", (REPOSITORY / "README.md").read_text())
    assert listed, "README.md's recipe reference lists the methods on a balance method line"
    assert [name.strip().removesuffix(" (default)") for name in listed.group(1).split("|")] == list(
        balance.METHODS)


def test_the_suppress_and_balance_lists_are_unions_of_the_registered_models():
    from synthgen.recipe import Recipe

    for block, methods, entry in (("suppress", suppress.METHODS, suppress.SuppressEntry),
                                  ("balance", balance.METHODS, balance.BalanceEntry)):
        assert Recipe.model_fields[block].annotation == list[entry]
        union = get_args(entry)[0]
        assert [get_args(member)[0] for member in get_args(union)] == list(methods.values())
        for name, model in methods.items():
            assert model.model_fields["method"].default == name, "a model's method is its name"


def test_every_model_family_has_a_row_in_the_readme_families_table():
    from synthgen.generate.families import FAMILIES

    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    rows = {line.split("|")[1].strip().strip("`") for line in readme.splitlines()
            if line.startswith("| `") and line.count("|") == 8}
    assert {family.name for family in FAMILIES} <= rows
