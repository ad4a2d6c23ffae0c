"""Faults in the `slots` view strategy's plan (distinct views over several varied attributes),
found in review; each test fails on the code it was written against, for the reason its
docstring gives. Plan-only (`parse_small` + `make_plan`): no model is loaded.
"""

from __future__ import annotations

import itertools

import pytest

from small_recipe import parse_small
from synthgen.plan import make_plan

pytestmark = pytest.mark.usefixtures("one_thread")


def _repeated(rows: list[tuple]) -> bool:
    return len(set(rows)) < len(rows)


def _can_be_distinct(columns: list[list[str]]) -> bool:
    """Whether some re-pairing of the columns (each attribute keeping its values, as
    `plan._distinct_views` allows) gives every view its own combination."""
    first, rest = columns[0], columns[1:]
    for arrangement in itertools.product(*(set(itertools.permutations(c)) for c in rest)):
        if not _repeated(list(zip(first, *arrangement))):
            return True
    return False


def test_three_varied_slots_fill_every_combination_when_the_views_are_as_many():
    """README (Views, `slots`): "with `distinct`, different values across the group's views
    ..., and where several are varied, no two views with the same values of all of them";
    `plan._distinct_views`: "no two share them all, where its values allow".

    Three varied slots of two values each and 8 views: each slot is drawn 4 + 4 (without
    replacement, twice round), so the 8 views can always be the 8 combinations, one each.
    `_distinct_views` re-pairs one attribute at a time against the ones before it and, where
    a column cannot separate the earlier ones on its own (size cannot split 4 reds from each
    other), returns that column unchanged, so the third column is left too little to work
    with: 5 of these 12 groups repeat a prompt, i.e. with shared noise the same
    image twice."""
    names = ["colour", "size", "tone"]
    plan = make_plan(parse_small({
        "slots": {"colour": ["red", "blue"], "size": ["small", "large"],
                  "tone": ["light", "dark"]},
        "classes": [{"name": "circle", "templates": ["a {size} {tone} {colour} circle"],
                     "groups": 12}],
        "corner_cases": [],
        "views": {"count": 8, "strategy": ["slots"], "slots": {"vary": names}},
    }))
    repeating = []
    for group in plan.groups:
        rows = [tuple(view.slots[name] for name in names) for view in group.views]
        for name, column in zip(names, zip(*rows)):
            assert sorted(column).count(column[0]) == 4, (name, column)  # 4 + 4 as drawn
        if _repeated(rows):
            repeating.append((group.group_id, rows))
    assert not repeating, f"{len(repeating)} of 12 groups repeat a prompt: {repeating[0]}"


def test_a_varied_slot_with_two_balanced_attributes_gets_distinct_views_where_possible():
    """The same with balanced attributes the views vary (quotas over views): `colour` drawn
    per view, `tone` and `size` dealt from their quotas (5 : 1 each). A group dealt one
    `dark` and one `big` among red, red, green, green, blue can give each view its own
    combination (dark on one red, big on one green), but the plan re-pairs `tone` against
    `colour` alone, cannot separate both pairs with one `dark`, keeps `tone` as dealt (dark
    on blue), and `size` then separates one pair only: group 7 at seed 7 has two
    (green, light, small) views."""
    plan = make_plan(parse_small({
        "slots": {"colour": ["red", "green", "blue"]},
        "classes": [{"name": "circle", "templates": ["a {colour} {tone} {size} circle"],
                     "groups": 12}],
        "corner_cases": [],
        "balance": [{"attribute": "tone", "values": {"light": 5, "dark": 1}},
                    {"attribute": "size", "values": {"small": 5, "big": 1}}],
        "views": {"count": 5, "strategy": ["slots"],
                  "slots": {"vary": ["colour", "tone", "size"]}},
    }))
    avoidable = []
    for group in plan.groups:
        rows = [(view.slots["colour"], view.balance["tone"], view.balance["size"])
                for view in group.views]
        if _repeated(rows) and _can_be_distinct([list(c) for c in zip(*rows)]):
            avoidable.append((group.group_id, rows))
    assert not avoidable, f"{len(avoidable)} groups repeat a prompt they need not: {avoidable[0]}"


def test_a_dataset_of_plan_revision_3_is_resumed_only_where_its_recipe_arranges_alike(tmp_path):
    """Revision 4 arranges views over all varied attributes at once: a revision-3 dataset of
    the recipe above (whose groups revision 4 re-arranges) is refused for resume, one whose
    views vary one attribute plans the same and is resumed."""
    from synthgen.errors import UserError
    from synthgen.write import check_plan_revision

    class Store:
        location = tmp_path

        def names(self):
            return ["shard-000000.tar"]

    def recipe(vary):
        return parse_small({
            "slots": {"colour": ["red", "blue"], "size": ["small", "large"],
                      "tone": ["light", "dark"]},
            "classes": [{"name": "circle", "templates": ["a {size} {tone} {colour} circle"],
                         "groups": 12}],
            "corner_cases": [],
            "views": {"count": 8, "strategy": ["slots"], "slots": {"vary": vary}}})

    with pytest.raises(UserError, match="plan revision 3"):
        check_plan_revision(Store(), {"plan_revision": 3},
                            make_plan(recipe(["colour", "size", "tone"])))
    check_plan_revision(Store(), {"plan_revision": 3}, make_plan(recipe(["colour"])))
