"""Recipe -> a deterministic list of work items. Pure: no model, no GPU, no file output.

The plan fixes every group's id, class, corner case, slot values, balanced attribute values,
per-view prompt, seed and strategy parameters, and shard index before any image is made, so a
dry run is free, any worker can build any shard, and resuming is "skip the shards that are done".
"""

from __future__ import annotations

import itertools
import json
import random
from collections import Counter
from dataclasses import dataclass, field

from synthgen.attributes import (
    assign_balanced_values,
    balance_applies,
    negative_prompt,
    plan_warnings,
)
from synthgen.recipe import CLASS_SLOT, Recipe, ViewsSpec, slugify, template_slots
from synthgen.seeding import derive_seed
from synthgen.views import ViewPlan, plan_views

# Rough compressed sizes, bits per pixel, for the size estimate only.
_BITS_PER_PIXEL = {"jpg": 2.0, "webp": 1.5, "png": 14.0}
_MAX_SLOT_DEPTH = 8


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


def make_plan(recipe: Recipe) -> Plan:
    """Expand a recipe into groups; the same recipe always gives the same plan."""
    negative = negative_prompt(recipe)
    unordered = []
    for target in _targets(recipe):
        group_ids = [f"{target.id_prefix}-{n:06d}" for n in range(target.groups)]
        # 1. Balanced attributes: exact quotas within this class or corner case.
        balance = {group_id: {} for group_id in group_ids}
        for entry in recipe.balance:
            if balance_applies(entry, target.name):
                for group_id, value in assign_balanced_values(recipe.seed, entry, group_ids).items():
                    balance[group_id][entry.attribute] = value
        # 2. Template and slot values per group, then the views.
        combinations = _enumerate(target) if target.prompt_mode == "enumerate" else None
        for n, group_id in enumerate(group_ids):
            rng = random.Random(derive_seed("prompt", recipe.seed, group_id))
            if combinations is not None:
                template, chosen = combinations[n % len(combinations)]
                chosen = {slot: _expand(value, target.slot_values, rng, 1)
                          for slot, value in chosen.items()}
            else:
                template = target.templates[int(rng.random() * len(target.templates))]
                chosen = {slot: _expand(_weighted_choice(rng, target.slot_values[slot]),
                                        target.slot_values, rng, 1)
                          for slot in template_slots(template) if slot in target.slot_values}
            prompt = _fill(recipe, template, chosen, balance[group_id], target.class_name)
            unordered.append({
                "group_id": group_id, "class_name": target.class_name,
                "class_index": target.class_index, "corner_case": target.corner_case,
                "tags": target.tags, "template": template, "slots": chosen,
                "balance": balance[group_id], "view_strategy": tuple(target.views.strategy),
                "views": plan_views(target.views, recipe.seed, group_id, prompt, negative),
            })
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


def _fill(recipe: Recipe, template: str, chosen: dict[str, str], balanced: dict[str, str],
          class_name: str | None) -> str:
    """The group's prompt: slots, {class}, and balanced values (in their slot or injected)."""
    by_slot = {entry.slot_name: entry for entry in recipe.balance if entry.attribute in balanced}
    used = set(template_slots(template))
    values = {**chosen, CLASS_SLOT: class_name}
    values.update({slot: balanced[entry.attribute] for slot, entry in by_slot.items()})
    prompt = template.format(**values)
    for slot, entry in by_slot.items():
        if slot not in used:
            prompt = entry.inject.format(prompt=prompt, value=balanced[entry.attribute])
    # Collapsing whitespace lets a slot value be empty ("a {style} photo" with style "").
    return " ".join(prompt.split())


def recipe_warnings(recipe: Recipe) -> list[str]:
    """Everything valid that will not do what the recipe seems to want (printed by plan and
    generate): `attributes.plan_warnings`, and enumerations with more combinations than groups."""
    warnings = plan_warnings(recipe)
    for target in _targets(recipe):
        if target.prompt_mode != "enumerate":
            continue
        combinations = len(_enumerate(target))
        if combinations > target.groups:
            warnings.append(
                f"{target.name!r}: prompt_mode enumerate has {combinations} template x slot "
                f"combinations but only {target.groups} groups, so the last "
                f"{combinations - target.groups} are never used; raise groups to {combinations} "
                "(or a multiple of it) to cover each one, or use prompt_mode: sample")
    return warnings


def _enumerate(target: _Target) -> list[tuple[str, dict[str, str]]]:
    """Every (template, direct slot values) combination, in recipe order; weights ignored."""
    combinations = []
    for template in target.templates:
        slots = [slot for slot in template_slots(template) if slot in target.slot_values]
        for values in itertools.product(*(list(target.slot_values[s]) for s in slots)):
            combinations.append((template, dict(zip(slots, values))))
    return combinations


def _expand(value: str, slot_values: dict[str, dict[str, float]], rng: random.Random,
            depth: int) -> str:
    """Fill slots nested inside a slot value (sampled, seeded); the recipe rules out cycles."""
    inner = [slot for slot in template_slots(value) if slot in slot_values]
    if not inner or depth > _MAX_SLOT_DEPTH:
        return value
    filled = {slot: _expand(_weighted_choice(rng, slot_values[slot]), slot_values, rng, depth + 1)
              for slot in inner}
    return value.format(**filled)


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
    """Counts a person checks before spending GPU time: groups, images, views, balance."""
    recipe = plan.recipe
    targets = _targets(recipe)
    groups_of = Counter(g.corner_case or g.class_name for g in plan.groups)
    images_of = Counter()
    for group in plan.groups:
        images_of[group.corner_case or group.class_name] += len(group.views)
    width, height = stored_size(recipe)
    estimated_bytes = plan.image_count * width * height * _BITS_PER_PIXEL[recipe.output.format] / 8
    # {attribute: {class or corner case: {value: groups}}}, in recipe order throughout.
    balance_table: dict[str, dict[str, dict[str, int]]] = {}
    for entry in recipe.balance:
        per_target = balance_table.setdefault(entry.attribute, {})
        for target in targets:
            if balance_applies(entry, target.name) and target.groups:
                per_target[target.name] = {value: 0 for value in entry.values}
    for group in plan.groups:
        for attribute, value in group.balance.items():
            balance_table[attribute][group.corner_case or group.class_name][value] += 1
    return {
        "recipe": recipe.name,
        "recipe_hash": recipe.recipe_hash,
        "model": recipe.model.id,
        "groups": len(plan.groups),
        "images": plan.image_count,
        "shards": plan.shard_count,
        "groups_per_shard": recipe.output.groups_per_shard,
        "unique_prompts": len({v.prompt for g in plan.groups for v in g.views}),
        "stored_size": [width, height],
        "estimated_bytes": int(estimated_bytes),
        "classes": {t.name: {"groups": groups_of[t.name], "images": images_of[t.name],
                             "views": _describe_views(t.views)}
                    for t in targets if t.corner_case is None},
        "corner_cases": {t.name: {"groups": groups_of[t.name], "images": images_of[t.name],
                                  "label": t.class_name, "class_index": t.class_index,
                                  "tags": list(t.tags), "views": _describe_views(t.views)}
                         for t in targets if t.corner_case is not None},
        "balance": balance_table,
        "suppress": [{"concept": e.concept, "method": e.method} for e in recipe.suppress],
        "negative_prompt": negative_prompt(recipe),
        "warnings": recipe_warnings(recipe),
    }


def _describe_views(spec: ViewsSpec) -> str:
    """One line a person can read: '4 views: latent (sigma 0.5, anchor) + prompt (3 modifiers)'."""
    parts = []
    for strategy in spec.strategy:
        if strategy == "latent":
            anchor = ", view 0 = anchor" if spec.latent.anchor_view else ""
            parts.append(f"latent (sigma {spec.latent.sigma:g}{anchor})")
        elif strategy == "prompt":
            parts.append(f"prompt ({len(spec.prompt.modifiers)} modifiers, {spec.prompt.mode})")
        elif strategy == "img2img":
            parts.append(f"img2img (strength {spec.img2img.strength:g})")
        else:
            parts.append(strategy)
    return f"{spec.count} views: " + " + ".join(parts)
