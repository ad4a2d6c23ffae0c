"""Recipe -> a deterministic list of work items. Pure: no model, no GPU, no file output.

The plan fixes every group's id, class, corner case, slot values, balanced attribute values,
per-view prompt, seed and strategy parameters, and shard index before any image is made, so a
dry run is free, any worker can build any shard, and resuming is "skip the shards that are done".
"""

from __future__ import annotations

import itertools
import json
import math
import random
import re
import string
import threading
from collections import Counter, OrderedDict
from dataclasses import dataclass, field, replace

import numpy as np

from synthgen.attributes import (
    PLAN_REVISION,
    assign_balanced_values,
    assign_balanced_view_values,
    balance_applies,
    negative_prompt,
    plan_warnings,
    planning_revision,
)
from synthgen.builtin import edit_record
from synthgen.recipe import CLASS_SLOT, MAX_SLOT_NESTING, Recipe, ViewsSpec, slugify, template_slots
from synthgen.recipe_base import injected_template
from synthgen.seeding import derive_seed
from synthgen.views import ViewPlan, ViewText, plan_views
from synthgen.views.img2img import img2img_steps

# For the size estimate only: rough compressed bits per pixel (png 14 fits world-sd's 32 px
# quickstart: 1,834 bytes an image), and the bytes an image file has whatever its pixels
# (Pillow, a flat 8x8 image: png 77, jpg 629 at quality 90, webp 44).
_BITS_PER_PIXEL = {"jpg": 2.0, "webp": 1.5, "png": 14.0}
_IMAGE_FILE_BYTES = {"jpg": 630, "webp": 45, "png": 80}
# A tar member is a 512-byte header and its data padded to 512 bytes; a shard ends with two
# empty blocks and is padded to a 10,240-byte record.
_TAR_BLOCK, _TAR_RECORD = 512, 10_240
# A sample's json is its plan entry plus the model, image and recipe fields (about 500 bytes)
# and each view's file name.
_METADATA_BYTES, _METADATA_BYTES_PER_VIEW = 500, 20
_SHARD_STATS_BYTES = 320
# The first groups' json stands for all in the size estimate.
_SIZE_SAMPLE = 1000
WORLD_SD = "builtin:world-sd"


@dataclass(frozen=True)
class GroupPlan:
    """One multi-view group: it becomes exactly one sample (one tar entry set) in one shard."""

    group_id: str
    index: int
    shard: int
    class_name: str | None
    class_index: int
    corner_case: str | None
    tags: tuple[str, ...]
    template: str
    slots: dict[str, str] = field(hash=False)
    balance: dict[str, str] = field(hash=False)
    view_strategy: tuple[str, ...]
    views: tuple[ViewPlan, ...]

    def to_json(self) -> dict:
        return {
            "group_id": self.group_id, "index": self.index, "shard": self.shard,
            "class_name": self.class_name, "class_index": self.class_index,
            "corner_case": self.corner_case, "tags": list(self.tags),
            "template": self.template, "slots": dict(self.slots), "balance": dict(self.balance),
            "view_strategy": list(self.view_strategy),
            "views": [view.to_json() for view in self.views],
        }


class Plan:
    """All groups in output order, with the recipe they came from.

    The order is fixed at once from group ids alone; a group's template, slot values,
    balanced values and views are drawn when a shard that holds it is asked for
    (`shard_groups`). Every group's draws depend only on its id, its class's quotas and the
    recipe, so a shard drawn alone is the shard the whole plan holds (tested): a worker or a
    job-array task that builds a few shards of a 5,000,000-image recipe plans those, not all
    of them. `groups` and `iter_groups` draw the whole plan.
    """

    # Drawn shards kept for the callers that ask for the same shard again while building it.
    _KEPT_SHARDS = 16

    def __init__(self, recipe: Recipe, revision: int = PLAN_REVISION):
        self.recipe = recipe
        self.revision = revision
        self._targets = _targets(recipe)
        self._negative = negative_prompt(recipe)
        self._order_targets, self._order_numbers = _group_order(recipe, self._targets)
        self._views_of_target = np.array([target.views.count for target in self._targets] or [0],
                                         dtype=np.int64)
        self._start_caches()

    def _start_caches(self) -> None:
        self._lock = threading.Lock()
        self._drawn_targets: dict[int, _TargetDraws] = {}
        self._kept: OrderedDict[int, tuple[GroupPlan, ...]] = OrderedDict()
        self._all: tuple[GroupPlan, ...] | None = None
        self._sizes: dict[int, tuple[int, int]] = {}

    def __eq__(self, other: object) -> bool:
        # The same recipe under the same revision draws the same groups.
        if not isinstance(other, Plan):
            return NotImplemented
        return self.revision == other.revision and self.recipe == other.recipe

    __hash__ = None  # equal plans may differ in what they have drawn so far

    def __getstate__(self) -> dict:
        # Pickled for worker processes: the order, not what this process has drawn.
        return {"recipe": self.recipe, "revision": self.revision, "_targets": self._targets,
                "_negative": self._negative, "_order_targets": self._order_targets,
                "_order_numbers": self._order_numbers, "_views_of_target": self._views_of_target}

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self._start_caches()

    @property
    def group_count(self) -> int:
        return len(self._order_targets)

    @property
    def shard_count(self) -> int:
        per_shard = self.recipe.output.groups_per_shard
        return (self.group_count + per_shard - 1) // per_shard

    @property
    def image_count(self) -> int:
        return int(self._views_of_target[self._order_targets].sum()) if self.group_count else 0

    def shard_size(self, shard: int) -> tuple[int, int]:
        """(groups, images) of `shard`, without drawing it; asked once per finished group
        while a shard is built, so counted once per shard."""
        size = self._sizes.get(shard)
        if size is None:
            positions = self._shard_positions(shard)
            size = (len(positions),
                    int(self._views_of_target[self._order_targets[positions]].sum()))
            self._sizes[shard] = size
        return size

    def _shard_positions(self, shard: int) -> range:
        per_shard, count = self.recipe.output.groups_per_shard, self.group_count
        start = min(max(shard, 0) * per_shard, count)  # a shard outside the plan holds nothing
        return range(start, max(start, min((shard + 1) * per_shard, count)))

    def shard_groups(self, shard: int) -> tuple[GroupPlan, ...]:
        with self._lock:
            if self._all is not None:
                positions = self._shard_positions(shard)
                return self._all[positions.start:positions.stop]
            kept = self._kept.get(shard)
            if kept is not None:
                self._kept.move_to_end(shard)
                return kept
            groups = self._draw(self._shard_positions(shard))
            self._kept[shard] = groups
            if len(self._kept) > self._KEPT_SHARDS:
                self._kept.popitem(last=False)
            return groups

    def iter_groups(self):
        """Every group in order, drawn a shard at a time (the whole plan is never held)."""
        for shard in range(self.shard_count):
            yield from self.shard_groups(shard)

    @property
    def groups(self) -> tuple[GroupPlan, ...]:
        """The whole plan, drawn once and kept."""
        if self._all is None:
            everything = tuple(self.iter_groups())
            with self._lock:
                self._all = everything
                self._kept.clear()
        return self._all

    def head(self, count: int) -> tuple[GroupPlan, ...]:
        """The first `count` groups, drawing only the shards that hold them."""
        first = []
        for shard in range(self.shard_count):
            if len(first) >= count:
                break
            first.extend(self.shard_groups(shard))
        return tuple(first[:count])

    def write_jsonl(self, stream) -> None:
        for group in self.iter_groups():
            stream.write(jsonl_line(group))

    def _draw(self, positions: range) -> tuple[GroupPlan, ...]:
        """The groups at `positions` of the output order (under this plan's revision)."""
        token = planning_revision.set(self.revision)
        try:
            per_shard = self.recipe.output.groups_per_shard
            groups = []
            for position in positions:
                target_index = int(self._order_targets[position])
                draws = self._drawn_targets.get(target_index)
                if draws is None:
                    draws = self._drawn_targets[target_index] = _TargetDraws(
                        self.recipe, self._targets[target_index])
                group = _draw_group(self.recipe, draws, int(self._order_numbers[position]),
                                    self._negative)
                groups.append(GroupPlan(index=position, shard=position // per_shard, **group))
            return tuple(groups)
        finally:
            planning_revision.reset(token)


def jsonl_line(group: GroupPlan) -> str:
    """One line of `plan --jsonl`."""
    return json.dumps(group.to_json(), sort_keys=True) + "\n"


def stored_size(recipe: Recipe) -> tuple[int, int]:
    """(width, height) of stored images: generated size, longer side scaled to output.resolution."""
    width, height = recipe.model.width, recipe.model.height
    target = recipe.output.resolution
    if target is None or target == max(width, height):
        return width, height
    scale = target / max(width, height)
    return max(1, round(width * scale)), max(1, round(height * scale))


@dataclass(frozen=True)
class _Target:
    """A class or a corner case: the groups one recipe entry asks for."""

    name: str
    id_prefix: str
    class_name: str | None
    class_index: int
    corner_case: str | None
    tags: tuple[str, ...]
    templates: list[str]
    slot_values: dict[str, dict[str, float]]
    prompt_mode: str
    views: ViewsSpec
    groups: int


def class_names(recipe: Recipe) -> list[str]:
    """Label names by class index: the classes, then corner cases' own labels."""
    names = [spec.name for spec in recipe.classes]
    for case in recipe.corner_cases:
        if case.own_label is not None and case.own_label not in names:
            names.append(case.own_label)
    return names


def _targets(recipe: Recipe) -> list[_Target]:
    labels = class_names(recipe)
    targets = []
    for index, spec in enumerate(recipe.classes):
        targets.append(_Target(
            name=spec.name, id_prefix=f"class-{slugify(spec.name)}", class_name=spec.name,
            class_index=index, corner_case=None, tags=(), templates=recipe.templates_for(spec),
            slot_values={**recipe.slots, **spec.slots},
            prompt_mode=spec.prompt_mode or recipe.prompt_mode, views=recipe.views_for(spec),
            groups=spec.groups))
    for case in recipe.corner_cases:
        label = case.label if case.label is not None else case.own_label
        targets.append(_Target(
            name=case.name, id_prefix=f"corner-{slugify(case.name)}", class_name=label,
            class_index=labels.index(label) if label is not None else -1,
            corner_case=case.name, tags=tuple(case.tags), templates=[case.prompt],
            slot_values=dict(recipe.slots), prompt_mode="sample", views=recipe.views_for(case),
            groups=recipe.corner_case_groups(case)))
    return targets


def make_plan(recipe: Recipe, revision: int = PLAN_REVISION) -> Plan:
    """Expand a recipe into groups; the same recipe always gives the same plan. `revision`:
    how plans were drawn (`attributes.PLAN_REVISION`; an older one for datasets it made)."""
    return Plan(recipe, revision)


def _group_id(target: _Target, number: int) -> str:
    return f"{target.id_prefix}-{number:06d}"


def _group_order(recipe: Recipe, targets: list[_Target]) -> tuple[np.ndarray, np.ndarray]:
    """(target index, group number) of each group in output order: classes and corner cases
    in recipe order, or with `output.shuffle` interleaved by a seeded key of the group id, so
    every shard holds a mix and adding a class does not reshuffle the seeds of the others."""
    target_of = np.repeat(np.arange(len(targets), dtype=np.int32),
                          [target.groups for target in targets]).astype(np.int32)
    number_of = (np.concatenate([np.arange(target.groups, dtype=np.int64) for target in targets])
                 if targets else np.zeros(0, np.int64))
    if recipe.output.shuffle and len(target_of):
        keys = np.fromiter((derive_seed("order", recipe.seed, _group_id(target, number))
                            for target in targets for number in range(target.groups)),
                           dtype=np.int64, count=len(target_of))
        # Stable, as the sort of the earlier whole-plan lists was: equal keys keep recipe order.
        order = np.argsort(keys, kind="stable")
        target_of, number_of = target_of[order], number_of[order]
    return target_of, number_of


class _TargetDraws:
    """What the groups of one class or corner case draw together: balanced attributes'
    exact quotas over all its groups (or views), and the enumerated combinations."""

    def __init__(self, recipe: Recipe, target: _Target):
        self.target = target
        self.combinations = (_enumerate(_held(target), target.groups)
                             if target.prompt_mode == "enumerate" else None)
        # 1. Balanced attributes: exact quotas within this class or corner case, over its
        #    groups, or over its views for an attribute the `slots` strategy varies. Held
        #    per group only where there are some (most recipes balance nothing).
        self.balance: dict[str, dict[str, str]] = {}
        self.view_balance: dict[str, list[dict[str, str]]] = {}
        entries = [entry for entry in recipe.prompt_balance  # debias entries put nothing in prompts
                   if balance_applies(entry, target.name)]
        if not entries:
            return
        group_ids = [_group_id(target, n) for n in range(target.groups)]
        self.balance = {group_id: {} for group_id in group_ids}
        if any(entry.slot_name in target.views.varied_slots for entry in entries):
            self.view_balance = {group_id: [{} for _ in range(target.views.count)]
                                 for group_id in group_ids}
        for entry in entries:
            if entry.slot_name in target.views.varied_slots:
                per_view = assign_balanced_view_values(
                    recipe.seed, entry, group_ids, target.views.count,
                    target.views.slots.distinct)
                for group_id, values in per_view.items():
                    for view, value in enumerate(values):
                        self.view_balance[group_id][view][entry.attribute] = value
                continue
            for group_id, value in assign_balanced_values(recipe.seed, entry, group_ids).items():
                self.balance[group_id][entry.attribute] = value

    def balance_of(self, group_id: str) -> tuple[dict[str, str], list[dict[str, str]]]:
        """The group's balanced values, and each view's (a view-varied attribute's)."""
        no_views = [{} for _ in range(self.target.views.count)]
        return self.balance.get(group_id, {}), self.view_balance.get(group_id, no_views)


def _draw_group(recipe: Recipe, draws: _TargetDraws, number: int, negative: str) -> dict:
    """Group `number` of a class or corner case: its template and held slot values, then its
    views (all seeded by the group id)."""
    target = draws.target
    group_id = _group_id(target, number)
    rng = random.Random(derive_seed("prompt", recipe.seed, group_id))
    if draws.combinations is not None:
        template, chosen = draws.combinations[number % len(draws.combinations)]
        chosen = {slot: _expand(value, target.slot_values, rng, 1)
                  for slot, value in chosen.items()}
    else:
        template = target.templates[int(rng.random() * len(target.templates))]
        chosen = {slot: _expand(_weighted_choice(rng, target.slot_values[slot]),
                                target.slot_values, rng, 1)
                  for slot in template_slots(template) if slot in target.slot_values}
        # Varied slots are drawn and dropped, so the held ones take the values the
        # same recipe without the `slots` strategy gives.
        chosen = {slot: value for slot, value in chosen.items()
                  if slot not in target.views.varied_slots}
    balance, view_balance = draws.balance_of(group_id)
    texts = (_view_texts(recipe, target, group_id, template, chosen, balance, view_balance)
             if target.views.varied_slots else ())
    prompt = texts[0].prompt if texts else _fill(recipe, template, chosen, balance, target.class_name)
    return {
        "group_id": group_id, "class_name": target.class_name,
        "class_index": target.class_index, "corner_case": target.corner_case,
        "tags": target.tags, "template": template, "slots": chosen, "balance": balance,
        "view_strategy": tuple(target.views.strategy),
        "views": plan_views(target.views, recipe.seed, group_id, prompt, negative, texts),
    }


def _view_texts(recipe: Recipe, target: _Target, group_id: str, template: str,
                held: dict[str, str], balanced: dict[str, str],
                view_balance: list[dict[str, str]]) -> tuple[ViewText, ...]:
    """Each view's prompt under the `slots` strategy: the group's template, class, held slots
    and balanced values, with the varied slots re-drawn per view (by weight, without
    replacement while values last where `distinct`; seeded by recipe seed, group id and
    slot); varied balanced attributes come from their quotas (`view_balance`)."""
    count = target.views.count
    drawn = {}
    for slot in target.views.varied_slots:
        if slot in target.slot_values:  # else a balanced attribute's slot
            rng = random.Random(derive_seed("vary", recipe.seed, group_id, slot))
            drawn[slot] = [_expand(value, target.slot_values, rng, 1)
                           for value in _draw_for_views(rng, target.slot_values[slot], count,
                                                        target.views.slots.distinct)]
    if target.views.slots.distinct and planning_revision.get() >= 2:
        drawn, view_balance = _distinct_views(drawn, view_balance)
    texts = []
    for view in range(count):
        slots = {slot: values[view] for slot, values in drawn.items()}
        balance = {**balanced, **view_balance[view]}
        prompt = _fill(recipe, template, {**held, **slots}, balance, target.class_name)

        def filled(name: str, value: str) -> str:
            if name == CLASS_SLOT:
                return _fill(recipe, template, {**held, **slots}, balance, value)
            return _fill(recipe, template, {**held, name: value, **slots}, balance,
                         target.class_name)

        readings = tuple(
            (name, own, tuple((value, filled(name, value)) for value in alternatives))
            for name, own, alternatives in _held_alternatives(recipe, target, held))
        texts.append(ViewText(prompt=prompt, slots=slots, balance=view_balance[view],
                              held_readings=readings))
    return tuple(texts)


def _distinct_views(drawn: dict[str, list[str]], view_balance: list[dict[str, str]]
                    ) -> tuple[dict[str, list[str]], list[dict[str, str]]]:
    """With several varied attributes, each drawn or dealt on its own, two views of a group
    could get the same value of every one (4 views of 2 genders x 3 ages: a third of the
    groups), the same prompt twice, and with shared noise the same image. Each attribute's
    values are re-paired among the views (`_pair_distinct`) so that no two views share them
    all, where its values allow; an attribute keeps its values, so quotas over views hold,
    and a group whose views already differ keeps its draw."""
    names = [*drawn, *(view_balance[0] if view_balance else {})]
    if len(names) < 2:
        return drawn, view_balance
    columns = [drawn[name] if name in drawn else [values[name] for values in view_balance]
               for name in names]
    if planning_revision.get() >= 4:
        arranged = _arrange_distinct(columns)
    else:  # one attribute at a time, as datasets of revisions 2 and 3 were planned
        arranged = [list(columns[0])]
        for column in columns[1:]:
            arranged.append(_pair_distinct(list(zip(*arranged)), column))
    by_name = dict(zip(names, arranged))
    return ({name: by_name[name] for name in drawn},
            [{name: by_name[name][view] for name in values} for view, values in enumerate(view_balance)])


def _arrange_distinct(columns: list[list[str]], budget: int = 200) -> list[list[str]]:
    """`columns` (one per attribute, a value per view) with every column after the first
    re-ordered so that as few views as possible repeat another's values (none, where the
    values allow), searched over all columns at once: one column at a time, a column that
    could not separate the views before it on its own was left as drawn, and the columns
    after it could then no longer separate what was left (3 attributes of 2 values over 8
    views repeated a prompt in 5 groups of 12).

    First each view in turn takes the first combination of the values left that no earlier
    view has (else the first one left), trying the view's own values first, so a draw that
    already works is kept. Where that repeats, a depth-first search over the views (each
    taking one unused value of every column) looks for an arrangement with fewer repeats,
    for at most `budget` candidate rows. A view looks at no more than count + 1 of its
    combinations (at most `count` of them repeat an earlier view), so the cost grows with the
    views, not with the product of the attributes' values."""
    first, rest = columns[0], columns[1:]
    count = len(first)
    used = [[False] * count for _ in rest]
    chosen: list[tuple[int, ...]] = []
    seen: Counter = Counter()

    def candidates(view: int) -> list[tuple[int, ...]]:
        # Per column, the view's own position where unused, then the first unused position
        # of each other value, in the given order; at most count + 1 combinations of them.
        options = []
        for column, taken in zip(rest, used):
            firsts: dict[str, int] = {} if taken[view] else {column[view]: view}
            for position, value in enumerate(column):
                if not taken[position]:
                    firsts.setdefault(value, position)
            options.append(list(firsts.values()))
        return list(itertools.islice(itertools.product(*options), count + 1))

    def row(view: int, choice: tuple[int, ...]) -> tuple[str, ...]:
        return (first[view], *(column[position] for column, position in zip(rest, choice)))

    def take(view: int, choice: tuple[int, ...]) -> bool:
        """Place `choice` at `view`; whether its row repeats an earlier view's."""
        for taken, position in zip(used, choice):
            taken[position] = True
        chosen.append(choice)
        key = row(view, choice)
        seen[key] += 1
        return seen[key] > 1

    def undo(view: int) -> None:
        choice = chosen.pop()
        for taken, position in zip(used, choice):
            taken[position] = False
        seen[row(view, choice)] -= 1

    repeats = 0
    for view in range(count):  # greedy
        options = candidates(view)
        repeats += take(view, next((c for c in options if not seen[row(view, c)]), options[0]))
    best = (repeats, list(chosen))
    # No arrangement repeats fewer views than this: the views holding one value of a column
    # can differ in at most as many ways as the other columns have combinations of values.
    distinct = [len(set(column)) for column in columns]
    most_rows = min(
        sum(min(times, math.prod(distinct) // distinct[index])
            for times in Counter(column).values())
        for index, column in enumerate(columns))
    fewest = count - most_rows
    steps = 0

    def improve(view: int, repeats: int) -> None:
        nonlocal best, steps
        if view == count:
            best = (repeats, list(chosen))
            return
        # Rows no earlier view has first (stable, so the view's own values stay first).
        for choice in sorted(candidates(view), key=lambda c: seen[row(view, c)] > 0):
            steps += 1
            if steps > budget or best[0] <= fewest:
                return
            extra = seen[row(view, choice)] > 0
            if repeats + extra >= best[0]:
                continue
            take(view, choice)
            improve(view + 1, repeats + extra)
            undo(view)

    if repeats > fewest:
        for view in range(count - 1, -1, -1):
            undo(view)
        improve(0, 0)
    chosen = best[1]
    return [list(first)] + [[column[choice[index]] for choice in chosen]
                            for index, column in enumerate(rest)]


def _pair_distinct(prefixes: list[tuple[str, ...]], values: list[str],
                   budget: int = 5_000) -> list[str]:
    """`values` in an order (a depth-first search that tries them as given, so an order that
    already works is kept) in which no two views' prefix + value repeat; `values` unchanged
    where none is found within `budget` steps."""
    chosen: list[str] = []
    used = [False] * len(values)
    steps = 0

    def place(view: int, seen: frozenset) -> bool:
        nonlocal steps
        if view == len(values):
            return True
        steps += 1
        if steps > budget:
            return False
        tried = set()
        for index, value in enumerate(values):
            combination = prefixes[view] + (value,)
            if used[index] or value in tried or combination in seen:
                continue
            tried.add(value)
            used[index] = True
            chosen.append(value)
            if place(view + 1, seen | {combination}):
                return True
            used[index] = False
            chosen.pop()
        return False

    return chosen if place(0, frozenset()) else list(values)


def _held_alternatives(recipe: Recipe, target: _Target, held: dict[str, str]
                       ) -> list[tuple[str, str, list[str]]]:
    """For `slots.check.hold`: each held name, the group's value and every value a detector
    compares it with (the recipe's class names for the class, else the slot's values)."""
    check = target.views.slots.check if target.views.varied_slots else None
    if check is None:
        return []
    compared = []
    for name in check.hold:
        if name == CLASS_SLOT:
            names = [spec.name for spec in recipe.classes]
            own = target.class_name
            compared.append((name, own, names if own in names else [*names, own]))
        else:
            compared.append((name, held[name], list(target.slot_values[name])))
    return compared


def _held(target: _Target) -> _Target:
    """`target` without the slots its views vary: what a group draws (or enumerates)."""
    varied = target.views.varied_slots
    return replace(target, slot_values={
        slot: values for slot, values in target.slot_values.items() if slot not in varied})


def _fill(recipe: Recipe, template: str, chosen: dict[str, str], balanced: dict[str, str],
          class_name: str | None) -> str:
    """The group's prompt: slots, {class}, and balanced values (in their slot or injected)."""
    by_slot = {entry.slot_name: entry for entry in recipe.prompt_balance
               if entry.attribute in balanced}
    used = set(template_slots(template))
    values = {**chosen, CLASS_SLOT: class_name}
    values.update({slot: balanced[entry.attribute] for slot, entry in by_slot.items()})
    for slot, entry in by_slot.items():
        if slot not in used:
            template = injected_template(template, entry.inject, slot)
    prompt = template.format(**values)
    # Collapsing whitespace lets a slot value be empty ("a {style} photo" with style "").
    return " ".join(prompt.split())


def recipe_warnings(recipe: Recipe) -> list[str]:
    """Everything valid that will not do what the recipe seems to want (printed by validate,
    plan and generate): `attributes.plan_warnings`, enumerations with more combinations than
    groups, a concept erased twice, and prompts outside what builtin:world-sd learnt."""
    warnings = (plan_warnings(recipe) + _erased_twice_warnings(recipe) + _img2img_warnings(recipe)
                + _held_layout_warnings(recipe))
    if recipe.model.id == WORLD_SD:
        warnings += _world_sd_warnings(recipe)
    for target in _targets(recipe):
        if target.prompt_mode != "enumerate":
            continue
        combinations = _combination_count(_held(target))
        if combinations > target.groups:
            warnings.append(
                f"{target.name!r}: prompt_mode enumerate has {combinations} template x slot "
                f"combinations but only {target.groups} groups, so the last "
                f"{combinations - target.groups} are never used; raise groups to {combinations} "
                "(or a multiple of it) to cover each one, or use prompt_mode: sample")
    return warnings


def _enumerate(target: _Target, limit: int) -> list[tuple[str, dict[str, str]]]:
    """The first `limit` (template, direct slot values) combinations, in recipe order; weights
    ignored. (All of them could be far more than fit in memory: 5 slots of 1,000 values.)"""
    def every_combination():
        for template in target.templates:
            # A slot a template uses twice is one value (format fills both places).
            slots = list(dict.fromkeys(slot for slot in template_slots(template)
                                       if slot in target.slot_values))
            for values in itertools.product(*(list(target.slot_values[s]) for s in slots)):
                yield template, dict(zip(slots, values))

    return list(itertools.islice(every_combination(), limit))


def _combination_count(target: _Target) -> int:
    """How many combinations `_enumerate` has in all."""
    return sum(math.prod(len(target.slot_values[slot]) for slot in set(template_slots(template))
                         if slot in target.slot_values)
               for template in target.templates)


def _img2img_warnings(recipe: Recipe) -> list[str]:
    """img2img runs int(steps x strength) of the steps (diffusers), so the strength used is
    that count / steps: a strength between two counts is rounded down (0.9 at 2 steps is 0.5)."""
    warnings = []
    for where, views in recipe.views_blocks():
        if "img2img" not in views.strategy:
            continue
        strength = views.img2img.strength
        steps, used = img2img_steps(recipe.model.steps, strength)  # as the sampler asks
        if abs(used - strength) > 1e-9:
            warnings.append(f"{where}.img2img.strength {strength:g} at {steps} steps re-noises by "
                            f"{used:g} (img2img runs int(steps x strength) steps); choose a "
                            f"strength that is a multiple of 1/{steps}, or more steps")
    return list(dict.fromkeys(warnings))


def _held_layout_warnings(recipe: Recipe) -> list[str]:
    """`hold_layout` shares view 0's maps and features for the first int(fraction x steps)
    steps (`LayoutSharing.shared_steps`): at few steps that can be none, and the views are
    then plain shared-noise views."""
    warnings = []
    for where, views in recipe.views_blocks():
        if not views.holds_layout:
            continue
        # As LayoutSharing.shared_steps counts them (not imported: it would load torch here).
        steps = recipe.model.steps
        if not any(int(fraction * steps) for fraction in views.slots.layout_sharing.values()):
            warnings.append(f"{where}.slots.hold_layout: at model.steps {steps} no "
                            "step is shared (each part shares int(fraction x steps) of them), so "
                            "views hold nothing of view 0's layout; use more steps, or a larger "
                            "fraction (hold_layout: 1.0), or drop hold_layout")
    return warnings


def _world_sd_warnings(recipe: Recipe) -> list[str]:
    """builtin:world-sd learnt only its world's captions (synthgen/world/scene.py): words
    outside them are noise to it, and every caption names the background."""
    from synthgen.world.scene import BACKGROUNDS
    from synthgen.world.tokenizer import world_words

    known = set(world_words())
    unknown: dict[str, str] = {}  # word -> where it is first used
    for where, text in _recipe_texts(recipe):
        for word in re.findall(r"[a-z]+", text.lower()):
            if word not in known:
                unknown.setdefault(word, where)
    warnings = []
    if unknown:
        listed = ", ".join(f"{word!r} ({where})" for word, where in list(unknown.items())[:8])
        more = f" and {len(unknown) - 8} more" if len(unknown) > 8 else ""
        warnings.append(
            f"{WORLD_SD} knows only the words of its training captions (docs/WORLD.md, "
            f"vocabulary), and reads others as noise: {listed}{more}; use its shapes, colours, "
            "sizes and backgrounds")
    without: dict[str, str] = {}  # template -> the first class or corner case using it
    for target in _targets(recipe):
        for template in target.templates:
            if not _names_background(recipe, target, template):
                without.setdefault(template, target.name)
    if without:
        template, name = next(iter(without.items()))
        warnings.append(
            f"{WORLD_SD}: every caption it learnt from names the background, so a prompt "
            "without one is outside what it learnt: it draws a random background and worse "
            "shapes (docs/WORLD.md, vocabulary); "
            f"{len(without)} of the recipe's prompt templates name none, e.g. {template!r} "
            f"({name}); end them with 'on a {{background}} background' "
            f"(backgrounds: {', '.join(BACKGROUNDS)})")
    return warnings


def _recipe_texts(recipe: Recipe):
    """(where, text) for every piece of text that can reach a prompt or negative prompt."""
    def literal(template: str) -> str:
        return " ".join(text for text, *_ in string.Formatter().parse(template))

    for target in _targets(recipe):
        if target.class_name is not None:
            yield target.name, target.class_name
        for template in target.templates:
            yield target.name, literal(template)
        for slot, values in target.slot_values.items():
            for value in values:
                yield f"slot {slot}", literal(value)
        if "prompt" in target.views.strategy:
            yield f"{target.name} views", literal(target.views.prompt.template)
            for modifier in target.views.prompt.modifiers:
                yield f"{target.name} views", modifier
    for entry in recipe.balance:
        yield f"balance {entry.attribute}", literal(entry.inject) + " " + " ".join(entry.values)
    yield "negative prompt", negative_prompt(recipe)


def _names_background(recipe: Recipe, target: _Target, template: str) -> bool:
    """Whether every prompt from `template` says "background": in its own text, through a
    balance entry that puts it in, or through a slot whose every value says it."""
    says = re.compile(r"\bbackground\b", re.IGNORECASE)
    if says.search(template):
        return True
    for entry in recipe.balance:
        if balance_applies(entry, target.name) and (
                says.search(entry.inject) or all(says.search(v) for v in entry.values)):
            return True
    return any(all(says.search(value) for value in target.slot_values[slot])
               for slot in template_slots(template) if slot in target.slot_values)


def _erased_twice_warnings(recipe: Recipe) -> list[str]:
    """A suppress or balance entry that edits weights (`erase`, `debias`) for a concept or
    attribute the model folder (made by `synthgen edit`) has that edit of already."""
    edits = edit_record(recipe.model.id).get("edits", ())
    erased = {edit.get("concept", "").lower() for edit in edits if edit.get("method") != "debias"}
    debiased = {edit.get("attribute", "").lower() for edit in edits if edit.get("method") == "debias"}
    warnings = [f"suppress[{index}]: {recipe.model.id} was made by synthgen edit with "
                f"{entry.concept!r} already erased, and method {entry.method} would edit the weights "
                "again; drop this entry (the folder has the edit), or set model.id to the base "
                "model to erase once from there"
                for index, entry in enumerate(recipe.suppress)
                if entry.edits_weights and entry.concept.lower() in erased]
    warnings += [f"balance[{index}]: {recipe.model.id} was made by synthgen edit with "
                 f"{entry.attribute!r} already debiased, and method {entry.method} would edit the "
                 "weights again, on top of that edit; set model.id to the base model to debias once "
                 "from there (the entry stays: the audit reads the proportions from it)"
                 for index, entry in enumerate(recipe.balance)
                 if entry.edits_weights and entry.attribute.lower() in debiased]
    return warnings


def _expand(value: str, slot_values: dict[str, dict[str, float]], rng: random.Random,
            depth: int) -> str:
    """Fill slots nested inside a slot value (sampled, seeded); the recipe rules out cycles."""
    inner = list(dict.fromkeys(slot for slot in template_slots(value) if slot in slot_values))
    if depth > MAX_SLOT_NESTING + 1:  # a slot and MAX_SLOT_NESTING under it: the recipe refuses more
        return value
    filled = {slot: _expand(_weighted_choice(rng, slot_values[slot]), slot_values, rng, depth + 1)
              for slot in inner}
    # Formatted even with nothing to fill, so {{ and }} read as braces in every value alike.
    return value.format(**filled)


def _draw_for_views(rng: random.Random, weights: dict[str, float], count: int,
                    distinct: bool) -> list[str]:
    """`count` weighted draws; with `distinct`, without replacement (every value once before
    any repeats, when there are fewer values than draws)."""
    drawn, left = [], {}
    for _ in range(count):
        if not distinct:
            drawn.append(_weighted_choice(rng, weights))
            continue
        left = left or dict(weights)
        drawn.append(_weighted_choice(rng, left))
        del left[drawn[-1]]
    return drawn


def _weighted_choice(rng: random.Random, weights: dict[str, float]) -> str:
    # A single rng.random() draw per slot keeps choices stable across Python versions.
    threshold = rng.random() * sum(weights.values())
    running = 0.0
    for value, weight in weights.items():
        running += weight
        if threshold < running:
            return value
    return value


def summarize(plan: Plan, each_group=None) -> dict:
    """Counts a person checks before spending GPU time: groups, images, views, balance.
    `each_group`, if given, is called with every group as the count draws it (so `plan
    --jsonl` writes the lines in the same pass instead of drawing the plan twice)."""
    recipe = plan.recipe
    targets = _targets(recipe)
    width, height = stored_size(recipe)
    # {attribute: {class or corner case: {value: groups}}}, in recipe order throughout; an
    # attribute the `slots` strategy varies counts views (its quotas are over views), and
    # `balance_counts` says which.
    balance_table: dict[str, dict[str, dict[str, int]]] = {}
    balance_counts: dict[str, dict[str, str]] = {}
    for entry in recipe.prompt_balance:
        per_target = balance_table.setdefault(entry.attribute, {})
        for target in targets:
            if balance_applies(entry, target.name) and target.groups:
                per_target[target.name] = {value: 0 for value in entry.values}
                balance_counts.setdefault(entry.attribute, {})[target.name] = (
                    "views" if entry.slot_name in target.views.varied_slots else "groups")
    # One pass over the groups, a shard at a time: a 5,000,000-image plan is never held whole.
    groups_of, images_of, prompts, first = Counter(), Counter(), set(), []
    for group in plan.iter_groups():
        if each_group is not None:
            each_group(group)
        if len(first) < _SIZE_SAMPLE:
            first.append(group)
        name = group.corner_case or group.class_name
        groups_of[name] += 1
        images_of[name] += len(group.views)
        prompts.update(view.prompt for view in group.views)
        for assigned in [group.balance, *(view.balance or {} for view in group.views)]:
            for attribute, value in assigned.items():
                balance_table[attribute][name][value] += 1
    return {
        "recipe": recipe.name,
        "recipe_hash": recipe.recipe_hash,
        "model": recipe.model.id,
        "groups": plan.group_count,
        "images": plan.image_count,
        "shards": plan.shard_count,
        "groups_per_shard": recipe.output.groups_per_shard,
        "unique_prompts": len(prompts),
        "stored_size": [width, height],
        "estimated_bytes": estimate_bytes(plan, first),
        "classes": {t.name: {"groups": groups_of[t.name], "images": images_of[t.name],
                             "views": t.views.describe()}
                    for t in targets if t.corner_case is None},
        "corner_cases": {t.name: {"groups": groups_of[t.name], "images": images_of[t.name],
                                  "label": t.class_name, "class_index": t.class_index,
                                  "tags": list(t.tags), "views": t.views.describe()}
                         for t in targets if t.corner_case is not None},
        "balance": balance_table,
        "balance_counts": balance_counts,
        "suppress": [{"concept": e.concept, "method": e.method} for e in recipe.suppress],
        # Balance entries that edit the model instead of the prompts: no group records a value,
        # so the balance table above cannot show them.
        "balance_edits": [{"attribute": e.attribute, "method": e.method, "values": dict(e.values),
                           "applies_to": e.applies_to, "detector": e.detector, "trials": e.trials}
                          for e in recipe.balance if e.edits_weights],
        "negative_prompt": negative_prompt(recipe),
        "warnings": recipe_warnings(recipe),
    }


def estimate_bytes(plan: Plan, first: list[GroupPlan] | None = None) -> int:
    """About how many bytes the dataset's shards and stats files take.

    Tar headers, padding and each sample's json are counted exactly as write.py lays them
    out; only the compressed size of the pixels is a rough guess (`_BITS_PER_PIXEL`).
    `first`: the plan's first groups, where the caller has drawn them already.
    """
    recipe = plan.recipe
    if not plan.group_count:
        return 0
    width, height = stored_size(recipe)
    fmt = recipe.output.format
    image = _tar_member(_IMAGE_FILE_BYTES[fmt] + width * height * _BITS_PER_PIXEL[fmt] / 8)
    # The json of the first groups stands for all (they differ only in prompts and slots).
    sample = first or plan.head(_SIZE_SAMPLE)
    metadata = sum(_tar_member(len(json.dumps(group.to_json(), separators=(",", ":")))
                               + _METADATA_BYTES + _METADATA_BYTES_PER_VIEW * len(group.views))
                   for group in sample) / len(sample)
    class_member = _tar_member(1)
    per_group = metadata + class_member
    shards = 0
    for shard in range(plan.shard_count):
        groups, images = plan.shard_size(shard)
        shards += math.ceil((per_group * groups + image * images + 2 * _TAR_BLOCK)
                            / _TAR_RECORD) * _TAR_RECORD
    return int(shards + plan.shard_count * _SHARD_STATS_BYTES)


def _tar_member(data_bytes: float) -> int:
    return _TAR_BLOCK + math.ceil(data_bytes / _TAR_BLOCK) * _TAR_BLOCK


