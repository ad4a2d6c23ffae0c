"""Planning cost and repeated prompts of `slots` views that vary several attributes.

Plans recipes whose views vary several attributes with `distinct` (the cases where
`plan._arrange_distinct` arranges the views) under the current plan revision and under
revision 3 (one attribute at a time), and prints per case: milliseconds per group to draw the
plan, groups that repeat a prompt, and repeated views (with shared noise, a repeated prompt is
the same image twice).

    OMP_NUM_THREADS=1 python bench/plan_arrangement.py [--groups 2000]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from synthgen.attributes import PLAN_REVISION  # noqa: E402
from synthgen.plan import make_plan  # noqa: E402
from synthgen.recipe import Recipe  # noqa: E402


def recipe(slots: dict, template: str, vary: list[str], count: int, groups: int,
           balance: list | None = None) -> Recipe:
    return Recipe.model_validate({
        "name": "arrangement", "seed": 7, "model": {"id": "builtin:tiny-random"},
        "slots": slots, "templates": [template], "balance": balance or [],
        "classes": [{"name": "circle", "groups": groups}],
        "views": {"count": count, "strategy": ["slots"], "slots": {"vary": vary}}})


def cases(groups: int) -> dict[str, Recipe]:
    many = [f"s{index}" for index in range(7)]
    return {
        "3 slots x 2 values, 8 views": recipe(
            {"colour": ["red", "blue"], "size": ["small", "large"], "tone": ["light", "dark"]},
            "a {size} {tone} {colour} {class}", ["colour", "size", "tone"], 8, groups),
        "slot + 2 balanced 5:1, 5 views": recipe(
            {"colour": ["red", "green", "blue"]}, "a {colour} {tone} {size} {class}",
            ["colour", "tone", "size"], 5, groups,
            [{"attribute": "tone", "values": {"light": 5, "dark": 1}},
             {"attribute": "size", "values": {"small": 5, "big": 1}}]),
        "slot + 2 balanced 23:1, 24 views": recipe(
            {"colour": ["red", "green", "blue"]}, "a {colour} {tone} {size} {class}",
            ["colour", "tone", "size"], 24, max(1, groups // 10),
            [{"attribute": "tone", "values": {"light": 23, "dark": 1}},
             {"attribute": "size", "values": {"small": 23, "big": 1}}]),
        "2 x 2 weighted values, 8 views (4 combinations)": recipe(
            {"gender": {"a": 3, "b": 1}, "age": {"x": 1, "y": 5}}, "a {gender} {age} {class}",
            ["gender", "age"], 8, groups),
        "3 slots x 3 values, 16 views": recipe(
            {"c": ["1", "2", "3"], "d": ["4", "5", "6"], "e": ["7", "8", "9"]},
            "a {c} {d} {e} {class}", ["c", "d", "e"], 16, max(1, groups // 4)),
        "7 slots x 12 values, 12 views": recipe(
            {name: [f"v{value}" for value in range(12)] for name in many},
            "a " + " ".join("{%s}" % name for name in many) + " {class}", many, 12, max(1, groups // 100)),
    }


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--groups", type=int, default=2000)
    args = parser.parse_args(argv)
    print(f"{'case':48s} {'revision':>8s} {'ms/group':>9s} {'groups repeating':>17s} "
          f"{'repeated views':>15s}")
    for name, made in cases(args.groups).items():
        for revision in (3, PLAN_REVISION):
            plan = make_plan(made, revision=revision)
            started = time.perf_counter()
            groups = list(plan.iter_groups())
            seconds = time.perf_counter() - started
            repeated = [len(g.views) - len({view.prompt for view in g.views}) for g in groups]
            print(f"{name:48s} {revision:8d} {1000 * seconds / len(groups):9.2f} "
                  f"{sum(1 for r in repeated if r):8d} of {len(groups):<6d} {sum(repeated):15d}",
                  flush=True)


if __name__ == "__main__":
    main()
