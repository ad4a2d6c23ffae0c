"""Recipe -> a deterministic list of work items. Pure: no model, no GPU, no file output.

The plan fixes every group's id, class, corner case, slot values, per-view prompt and seed,
and shard index before any image is made, so a dry run is free, any worker can build any
shard, and resuming is "skip the shards that are done".
"""

from __future__ import annotations

import json
import random
from collections import Counter
from dataclasses import dataclass, field

from synthgen.recipe import CLASS_SLOT, Recipe, slugify, template_slots
from synthgen.seeding import derive_seed
from synthgen.views import ViewPlan, plan_views

# Rough compressed sizes, bits per pixel, for the size estimate only.
_BITS_PER_PIXEL = {"jpg": 2.0, "webp": 1.5, "png": 14.0}


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
    views: tuple[ViewPlan, ...]

    def to_json(self) -> dict:
        return {
            "group_id": self.group_id, "index": self.index, "shard": self.shard,
            "class_name": self.class_name, "class_index": self.class_index,
            "corner_case": self.corner_case, "tags": list(self.tags),
            "template": self.template, "slots": dict(self.slots),
            "views": [view.to_json() for view in self.views],
        }


@dataclass(frozen=True)
class Plan:
    """All groups in output order, with the recipe they came from."""

    recipe: Recipe
    groups: tuple[GroupPlan, ...]

    @property
    def shard_count(self) -> int:
        per_shard = self.recipe.output.groups_per_shard
        return (len(self.groups) + per_shard - 1) // per_shard

    @property
    def image_count(self) -> int:
        return sum(len(group.views) for group in self.groups)

    def shard_groups(self, shard: int) -> tuple[GroupPlan, ...]:
        per_shard = self.recipe.output.groups_per_shard
        return self.groups[shard * per_shard:(shard + 1) * per_shard]

    def write_jsonl(self, stream) -> None:
        for group in self.groups:
            stream.write(json.dumps(group.to_json(), sort_keys=True) + "\n")


def shard_name(shard: int) -> str:
    return f"shard-{shard:06d}.tar"


def stored_size(recipe: Recipe) -> tuple[int, int]:
    """(width, height) of stored images: generated size, longer side scaled to output.resolution."""
    width, height = recipe.model.width, recipe.model.height
    target = recipe.output.resolution
    if target is None or target == max(width, height):
        return width, height
    scale = target / max(width, height)
    return max(1, round(width * scale)), max(1, round(height * scale))


def make_plan(recipe: Recipe) -> Plan:
    """Expand a recipe into groups; the same recipe always gives the same plan."""
    class_index = {spec.name: index for index, spec in enumerate(recipe.classes)}
    unordered = []
    for index, spec in enumerate(recipe.classes):
        slot_values = {**recipe.slots, **spec.slots}
        for n in range(spec.groups):
            group_id = f"class-{slugify(spec.name)}-{n:06d}"
            unordered.append(_group(recipe, group_id, spec.name, index, None, (),
                                    recipe.templates_for(spec), slot_values))
    for case in recipe.corner_cases:
        label_index = class_index[case.label] if case.label is not None else -1
        for n in range(case.groups):
            group_id = f"corner-{slugify(case.name)}-{n:06d}"
            unordered.append(_group(recipe, group_id, case.label, label_index, case.name,
                                    tuple(case.tags), [case.prompt], recipe.slots))
    if recipe.output.shuffle:
        # Interleave classes and corner cases so every shard holds a mix; the order depends
        # only on group ids, so adding a class does not reshuffle the seeds of the others.
        unordered.sort(key=lambda group: derive_seed("order", recipe.seed, group["group_id"]))
    per_shard = recipe.output.groups_per_shard
    groups = tuple(
        GroupPlan(index=position, shard=position // per_shard, **group)
        for position, group in enumerate(unordered)
    )
    return Plan(recipe=recipe, groups=groups)


def _group(recipe: Recipe, group_id: str, class_name: str | None, class_index: int,
           corner_case: str | None, tags: tuple[str, ...], templates: list[str],
           slot_values: dict[str, dict[str, float]]) -> dict:
    rng = random.Random(derive_seed("prompt", recipe.seed, group_id))
    template = templates[int(rng.random() * len(templates))]
    chosen = {name: _weighted_choice(rng, slot_values[name])
              for name in template_slots(template) if name != CLASS_SLOT}
    # Collapsing whitespace lets a slot value be empty ("a {style} photo" with style "").
    prompt = " ".join(template.format(**chosen, **{CLASS_SLOT: class_name}).split())
    views = plan_views(recipe.views, recipe.seed, group_id, prompt, recipe.model.negative_prompt)
    return {"group_id": group_id, "class_name": class_name, "class_index": class_index,
            "corner_case": corner_case, "tags": tags, "template": template,
            "slots": chosen, "views": views}


def _weighted_choice(rng: random.Random, weights: dict[str, float]) -> str:
    # A single rng.random() draw per slot keeps choices stable across Python versions.
    threshold = rng.random() * sum(weights.values())
    running = 0.0
    for value, weight in weights.items():
        running += weight
        if threshold < running:
            return value
    return value


def summarize(plan: Plan) -> dict:
    """Counts a person checks before spending GPU time: groups and images per class and case."""
    recipe = plan.recipe
    groups_per_class = Counter(g.class_name for g in plan.groups if g.corner_case is None)
    groups_per_case = Counter(g.corner_case for g in plan.groups if g.corner_case is not None)
    views = recipe.views.count
    width, height = stored_size(recipe)
    estimated_bytes = plan.image_count * width * height * _BITS_PER_PIXEL[recipe.output.format] / 8
    return {
        "recipe": recipe.name,
        "recipe_hash": recipe.recipe_hash,
        "model": recipe.model.id,
        "groups": len(plan.groups),
        "views_per_group": views,
        "view_strategy": recipe.views.strategy,
        "images": plan.image_count,
        "shards": plan.shard_count,
        "groups_per_shard": recipe.output.groups_per_shard,
        "unique_prompts": len({v.prompt for g in plan.groups for v in g.views}),
        "stored_size": [width, height],
        "estimated_bytes": int(estimated_bytes),
        "classes": {spec.name: {"groups": groups_per_class[spec.name],
                                "images": groups_per_class[spec.name] * views}
                    for spec in recipe.classes},
        "corner_cases": {case.name: {"groups": groups_per_case[case.name],
                                     "images": groups_per_case[case.name] * views,
                                     "label": case.label, "tags": list(case.tags)}
                         for case in recipe.corner_cases},
    }
