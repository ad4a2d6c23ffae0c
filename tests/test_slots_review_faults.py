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


class _CountingProduct:
    """`itertools.product` that counts the combinations it yields and stops a runaway."""

    def __init__(self, limit: int, calls: int | None = None):
        self.limit, self.yielded = limit, 0
        self.calls_limit, self.calls = calls, 0
        self._product = itertools.product

    def __call__(self, *iterables):
        self.calls += 1  # a view weighing its combinations: a step of the search
        if self.calls_limit is not None and self.calls > self.calls_limit:
            raise AssertionError(f"more than {self.calls_limit} search steps")
        for combination in self._product(*iterables):
            self.yielded += 1
            if self.yielded > self.limit:
                raise AssertionError(f"more than {self.limit} combinations looked at")
            yield combination


def test_arranging_many_varied_slots_looks_at_few_combinations(monkeypatch):
    """Each view looks at no more than count + 1 combinations of the values left (found by
    review: every view built the whole product, d**(k-1) rows for k slots of d values: 7 slots
    of 12 values over 12 views took ~2 s and 540 MB per group, 8 slots would take GBs)."""
    names = [f"s{index}" for index in range(7)]
    plan = make_plan(parse_small({
        "slots": {name: [f"v{value}" for value in range(12)] for name in names},
        "classes": [{"name": "circle",
                     "templates": ["a " + " ".join("{%s}" % name for name in names) + " circle"],
                     "groups": 2}],
        "corner_cases": [],
        "views": {"count": 12, "strategy": ["slots"], "slots": {"vary": names}}}))
    counting = _CountingProduct(limit=2 * 12 * 13)
    monkeypatch.setattr(itertools, "product", counting)
    groups = list(plan.iter_groups())
    assert all(len({view.prompt for view in group.views}) == 12 for group in groups)


def test_the_search_for_fewer_repeats_is_bounded_whatever_the_skew(monkeypatch):
    """Balanced attributes dealt 23 : 1 over 24 views must repeat views in most groups, and
    the search for fewer repeats stops at its budget (`_arrange_distinct`): found by review,
    the search ran 5,000 steps in nearly every group (~125 ms a group) to remove 3 repeated
    views in 50 groups."""
    views, groups, steps = 24, 12, 1_000  # a thousand search steps a group at most
    plan = make_plan(parse_small({
        "slots": {"colour": ["red", "green", "blue"]},
        "classes": [{"name": "circle", "templates": ["a {colour} {tone} {size} circle"],
                     "groups": groups}],
        "corner_cases": [],
        "balance": [{"attribute": "tone", "values": {"light": 23, "dark": 1}},
                    {"attribute": "size", "values": {"small": 23, "big": 1}}],
        "views": {"count": views, "strategy": ["slots"],
                  "slots": {"vary": ["colour", "tone", "size"]}}}))
    # Per group: the greedy pass and the search's steps, each over at most views + 1
    # combinations.
    counting = _CountingProduct(limit=groups * (views + 1) * (2 * views + steps),
                                calls=groups * (2 * views + steps))
    monkeypatch.setattr(itertools, "product", counting)
    drawn = list(plan.iter_groups())
    assert len(drawn) == groups and counting.yielded > 0
