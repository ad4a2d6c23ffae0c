"""What an audit measures: attributes, suppressed concepts and thresholds, from recipe and options.

The recipe in `manifest.json` is plain JSON written by whichever synthgen version made the
dataset, so every section is read with `.get` and defaults: an older dataset without
`balance`, `suppress` or `audit` still audits (with command-line attributes, or none).

Contracts:
- an attribute has at least two distinct values and at least one template using `{value}`;
- a value's target proportion is known per view from the recipe's `balance` entries (the
  entry whose `applies_to` names the view's class or corner case, else the one applying to
  all); where none applies, the view has no target. An attribute no `balance` entry names but
  a recipe slot does takes the slot's sampling weights (its class's own, else the recipe's;
  even shares under `prompt_mode: enumerate`) as the target of the groups that drew a value;
- command-line attributes replace recipe attributes of the same name; command-line templates
  replace the templates of the attribute they name.
"""

from __future__ import annotations

import functools
from collections import Counter
from dataclasses import dataclass, field

from synthgen.attributes import PROMPT_PLACEHOLDER
from synthgen.errors import UserError
from synthgen.recipe_base import template_slots

DEFAULT_CLIP = "builtin:world-clip"
DEFAULT_MARGIN = 0.1
# A cosine between a view and its own prompt; for the ViT-B/32 CLIPs real matches score
# about 0.25-0.35 and unrelated pairs about 0.1-0.15. Small CLIPs need their own value.
DEFAULT_FIDELITY_THRESHOLD = 0.2
DEFAULT_DUPLICATE_THRESHOLD = 0.95
DEFAULT_SUPPRESS_THRESHOLD = 0.5
DEFAULT_CONTRAST = "a photo"
# Prompt ensembles: each value is embedded through every template and the normalised text
# embeddings averaged (Radford et al. 2021, sec. 3.1.4), which steadies zero-shot choices.
DEFAULT_TEMPLATES = ("a photo of {value}", "an image of {value}", "a picture showing {value}",
                     "{value}")


@dataclass(frozen=True)
class AttributeSpec:
    """One attribute to classify: its values, prompt templates and recipe targets.

    `targets` holds (applies_to, {value: proportion}) per recipe `balance` entry, proportions
    normalised over `values`; applies_to None means every class and corner case.
    """

    name: str
    values: tuple[str, ...]
    templates: tuple[str, ...] = DEFAULT_TEMPLATES
    targets: tuple[tuple[tuple[str, ...] | None, dict[str, float]], ...] = ()
    source: str = "recipe"
    # Where `targets` come from: "balance" (exact quotas), "slot weights" (sampled; a target
    # only for groups that recorded a value of the slot) or None (no recipe target).
    target_from: str | None = "balance"

    def prompts(self, value: str) -> list[str]:
        return [template.format(value=value, attribute=self.name) for template in self.templates]

    def target_for(self, class_name: str | None, corner_case: str | None) -> dict[str, float] | None:
        """The target proportions for a view of this class / corner case, or None."""
        fallback = None
        for applies_to, proportions in self.targets:
            if applies_to is None:
                fallback = proportions
            elif (corner_case if corner_case is not None else class_name) in applies_to:
                return proportions
        return fallback


@dataclass(frozen=True)
class ConceptSpec:
    """A suppressed concept: detected when P(concept | concept vs contrast) > threshold."""

    concept: str
    method: str
    threshold: float
    contrast: str = DEFAULT_CONTRAST
    detector: str | None = None  # the CLIP `reject` used at generation time, if any

    @property
    def per_view(self) -> bool:
        """Whether each view is scored against its own prompt (a contrast naming `{prompt}`)."""
        return PROMPT_PLACEHOLDER in self.contrast


@dataclass(frozen=True)
class ResolvedAuditSpec:
    """Everything one audit measures and the thresholds it uses: the recipe's `audit:` block
    as written (recipe.py's model of it) resolved against the rest of the recipe (balance
    targets, slot weights, suppressed concepts) and the command line, by `spec_from_recipe`."""

    clip: str = DEFAULT_CLIP
    margin: float = DEFAULT_MARGIN
    attributes: tuple[AttributeSpec, ...] = ()
    concepts: tuple[ConceptSpec, ...] = ()
    fidelity_threshold: float = DEFAULT_FIDELITY_THRESHOLD
    duplicate_threshold: float = DEFAULT_DUPLICATE_THRESHOLD
    notes: list[str] = field(default_factory=list)


def parse_attribute_option(text: str) -> AttributeSpec:
    """`colour=red,green,blue` -> an attribute with the default templates and no targets."""
    name, separator, values_text = text.partition("=")
    values = tuple(dict.fromkeys(v.strip() for v in values_text.split(",") if v.strip()))
    if not separator or not name.strip() or len(values) < 2:
        raise UserError(f"--attribute {text!r}: write NAME=VALUE,VALUE[,...] with at least two "
                        "values, e.g. --attribute 'colour=red,green,blue'")
    return AttributeSpec(name=name.strip(), values=values, source="command line")


def parse_template_option(text: str) -> tuple[str, str]:
    """`shape=a {value} on a gray background` -> (attribute name, template)."""
    name, separator, template = text.partition("=")
    if not separator or not name.strip() or not template.strip():
        raise UserError(f"--template {text!r}: write NAME=TEMPLATE with {{value}} where the value "
                        "goes, e.g. --template 'shape=a {value} on a gray background'")
    return name.strip(), template.strip()


def spec_from_recipe(recipe: dict, *, clip: str | None = None, margin: float | None = None,
                     attributes: list[AttributeSpec] = (), fidelity_threshold: float | None = None,
                     duplicate_threshold: float | None = None,
                     templates: list[tuple[str, str]] = (),
                     audit_block: dict | None = None) -> ResolvedAuditSpec:
    """The audit for a manifest's recipe, with command-line options taking precedence.

    `templates` holds (attribute name, template) pairs from the command line; `audit_block`,
    when given, is read instead of the recipe's own `audit:` section (targets still come from
    the recipe that made the dataset).
    """
    check_stored_recipe(recipe, audit=audit_block is None)
    audit = (audit_block if audit_block is not None else recipe.get("audit")) or {}
    balance = [entry for entry in recipe.get("balance") or [] if entry.get("attribute")]
    targets_by_attribute: dict[str, list] = {}
    for entry in balance:
        applies_to = entry.get("applies_to")
        targets_by_attribute.setdefault(entry["attribute"], []).append(
            (tuple(applies_to) if applies_to else None, dict(entry.get("values") or {})))

    def targets(name: str) -> tuple[list, str | None]:
        if name in targets_by_attribute:
            return targets_by_attribute[name], "balance"
        weights = slot_weight_targets(recipe, name)
        return weights, ("slot weights" if weights else None)

    found: dict[str, AttributeSpec] = {}
    # The audit section says how to read an attribute (values, templates); balance entries of
    # the same name (else a slot of that name) supply the targets. A balanced attribute without
    # an audit entry is read with its balance values and the default templates.
    for item in audit.get("attributes") or []:
        if not item.get("name"):
            continue
        found[item["name"]] = _attribute(item["name"], item.get("values") or [],
                                         item.get("templates") or DEFAULT_TEMPLATES,
                                         *targets(item["name"]), "recipe audit")
    for name in targets_by_attribute:
        if name not in found:
            values = list(dict.fromkeys(v for _, proportions in targets_by_attribute[name]
                                        for v in proportions))
            found[name] = _attribute(name, values, DEFAULT_TEMPLATES, *targets(name), "recipe balance")
    for option in attributes:
        found[option.name] = _attribute(option.name, list(option.values), option.templates,
                                        *targets(option.name), option.source)
    given: dict[str, list[str]] = {}
    for name, template in templates:
        if name not in found:
            raise UserError(f"--template '{name}={template}': no attribute {name!r} to read; "
                            f"attributes: {', '.join(found) or 'none'} (add one with "
                            f"--attribute '{name}=a,b')")
        given.setdefault(name, []).append(template)
    for name, chosen in given.items():
        attribute = found[name]
        found[name] = _attribute(name, list(attribute.values), chosen, list(attribute.targets),
                                 attribute.target_from, f"{attribute.source}, command-line templates")

    concepts = tuple(
        ConceptSpec(concept=entry["concept"], method=str(entry.get("method", "?")),
                    threshold=float(entry.get("threshold") or DEFAULT_SUPPRESS_THRESHOLD),
                    contrast=entry.get("contrast") or DEFAULT_CONTRAST,
                    detector=entry.get("detector") if entry.get("method") == "reject" else None)
        for entry in recipe.get("suppress") or [] if entry.get("concept"))
    chosen_margin = margin if margin is not None else audit.get("margin", DEFAULT_MARGIN)
    if not 0.0 <= chosen_margin < 1.0:
        raise UserError(f"--margin {chosen_margin}: must be in [0, 1)")
    chosen_fidelity = float(_first(fidelity_threshold, audit.get("fidelity_threshold"),
                                   DEFAULT_FIDELITY_THRESHOLD))
    if not -1.0 <= chosen_fidelity <= 1.0:  # nan too: no view is ever below it
        raise UserError(f"--fidelity-threshold {chosen_fidelity}: a CLIP cosine score, so it must "
                        "be in [-1, 1] (e.g. 0.2)")
    chosen_duplicate = float(_first(duplicate_threshold, audit.get("duplicate_threshold"),
                                    DEFAULT_DUPLICATE_THRESHOLD))
    if not 0.0 < chosen_duplicate <= 1.0:  # above 1 (or nan) no pair is ever a duplicate
        raise UserError(f"--duplicate-threshold {chosen_duplicate}: a cosine similarity, so it "
                        f"must be in (0, 1] (default {DEFAULT_DUPLICATE_THRESHOLD})")
    return ResolvedAuditSpec(
        clip=clip or audit.get("clip") or DEFAULT_CLIP,
        margin=float(chosen_margin),
        attributes=tuple(found.values()),
        concepts=concepts,
        fidelity_threshold=chosen_fidelity,
        duplicate_threshold=chosen_duplicate,
    )


# What the audit reads of a stored recipe, and the JSON type synthgen writes there.
_TEXT, _NUMBER, _LIST, _MAPPING = "text", "a number", "a list", "a mapping"
_STORED_SECTIONS = {"audit": _MAPPING, "balance": _LIST, "suppress": _LIST, "classes": _LIST,
                    "corner_cases": _LIST, "slots": _MAPPING, "views": _MAPPING,
                    "prompt_mode": _TEXT}
_STORED_ENTRIES = {
    "audit": {"clip": _TEXT, "margin": _NUMBER, "fidelity_threshold": _NUMBER,
              "duplicate_threshold": _NUMBER, "attributes": _LIST},
    "audit.attributes[]": {"name": _TEXT, "values": _LIST, "templates": _LIST},
    "balance[]": {"attribute": _TEXT, "values": _MAPPING, "applies_to": _LIST},
    "suppress[]": {"concept": _TEXT, "method": _TEXT, "threshold": _NUMBER, "contrast": _TEXT,
                   "detector": _TEXT},
    "classes[]": {"name": _TEXT, "slots": _MAPPING, "views": _MAPPING, "prompt_mode": _TEXT},
    "corner_cases[]": {"name": _TEXT, "views": _MAPPING},
}


def _is(value, kind: str) -> bool:
    return {_TEXT: isinstance(value, str),
            _NUMBER: isinstance(value, (int, float)) and not isinstance(value, bool),
            _LIST: isinstance(value, list), _MAPPING: isinstance(value, dict)}[kind]


def check_stored_recipe(recipe: dict, audit: bool = True) -> None:
    """The parts of a dataset's stored recipe (manifest.json) the audit reads have the types
    synthgen writes there (null or absent is always fine: an older synthgen left some out);
    else one `UserError` naming the field. A hand-edited manifest, or another tool's, is
    otherwise a traceback deep in a measurement. `audit`: whether its audit: block is read
    (not where --recipe gives one)."""
    def refuse(path: str, value, kind: str):
        shown = repr(value) if len(repr(value)) <= 40 else repr(value)[:37] + "..."
        raise UserError(f"manifest.json: recipe.{path} is {shown}, where synthgen writes {kind}; "
                        "the manifest was edited or written by another tool: rewrite it with "
                        "synthgen finalize DATASET (from recipe.json), or pass --recipe FILE "
                        "for the audit: block")

    def check_fields(path: str, entry: dict, fields: dict[str, str]) -> None:
        for name, kind in fields.items():
            value = entry.get(name)
            if value is not None and not _is(value, kind):
                refuse(f"{path}.{name}", value, kind)

    for name, kind in _STORED_SECTIONS.items():
        value = recipe.get(name)
        if value is None or (name == "audit" and not audit):
            continue
        if not _is(value, kind):
            refuse(name, value, kind)
        if kind == _LIST:
            for index, entry in enumerate(value):
                if not isinstance(entry, dict):
                    refuse(f"{name}[{index}]", entry, _MAPPING)
                check_fields(f"{name}[{index}]", entry, _STORED_ENTRIES.get(f"{name}[]", {}))
    if audit and isinstance(recipe.get("audit"), dict):
        check_fields("audit", recipe["audit"], _STORED_ENTRIES["audit"])
        for index, entry in enumerate(recipe["audit"].get("attributes") or []):
            if not isinstance(entry, dict):
                refuse(f"audit.attributes[{index}]", entry, _MAPPING)
            check_fields(f"audit.attributes[{index}]", entry, _STORED_ENTRIES["audit.attributes[]"])
            for name in ("values", "templates"):
                for position, value in enumerate(entry.get(name) or []):
                    if not isinstance(value, str):
                        refuse(f"audit.attributes[{index}].{name}[{position}]", value, _TEXT)

    def check_weights(path: str, weights) -> None:
        # {value: weight} as recipes store them; a plain list of values (equal weights) too.
        if isinstance(weights, dict):
            for value, weight in weights.items():
                if not _is(weight, _NUMBER):
                    refuse(f"{path}.{value}", weight, _NUMBER)
        elif not (isinstance(weights, list) and all(isinstance(v, str) for v in weights)):
            refuse(path, weights, "a mapping of value: weight")

    def check_views(path: str, views: dict) -> None:
        strategy = views.get("strategy")
        if strategy is not None and not (isinstance(strategy, str) or (
                isinstance(strategy, list) and all(isinstance(s, str) for s in strategy))):
            refuse(f"{path}.strategy", strategy, "a list of strategy names")
        count = views.get("count")
        if count is not None and (isinstance(count, bool) or not isinstance(count, int)):
            refuse(f"{path}.count", count, "a whole number")
        varied = views.get("slots")
        if varied is not None:
            if not isinstance(varied, dict):
                refuse(f"{path}.slots", varied, _MAPPING)
            vary = varied.get("vary")
            if vary is not None and not (isinstance(vary, list)
                                         and all(isinstance(v, str) for v in vary)):
                refuse(f"{path}.slots.vary", vary, "a list of slot names")

    for index, entry in enumerate(recipe.get("balance") or []):
        check_weights(f"balance[{index}].values", entry.get("values") or {})
    for name, weights in (recipe.get("slots") or {}).items():
        check_weights(f"slots.{name}", weights)
    if recipe.get("views") is not None:
        check_views("views", recipe["views"])
    for section in ("classes", "corner_cases"):
        for index, entry in enumerate(recipe.get(section) or []):
            for name, weights in (entry.get("slots") or {}).items():
                check_weights(f"{section}[{index}].slots.{name}", weights)
            if entry.get("views") is not None:
                check_views(f"{section}[{index}].views", entry["views"])


def _first(*candidates):
    return next(c for c in candidates if c is not None)


def slot_weight_targets(recipe: dict, slot: str) -> list:
    """(applies_to, {value: weight}) per class and corner case that can draw `slot`.

    A class's own slot values replace the recipe's; `prompt_mode: enumerate` cycles through
    the values evenly, so its target is even shares. A slot the `slots` view strategy varies
    with `distinct` is drawn without replacement over a group's views, so its target is the
    share that draw gives each value (`_distinct_view_shares`), not its weight. Slots whose
    values hold other slots are left out: the recorded value is then the expanded text, not
    one of the listed values.
    """
    shared = (recipe.get("slots") or {}).get(slot)
    found = []
    for entry in recipe.get("classes") or []:
        weights = (entry.get("slots") or {}).get(slot, shared)
        if entry.get("name") and weights:
            mode = entry.get("prompt_mode") or recipe.get("prompt_mode") or "sample"
            # Enumeration covers the slots a group holds; a slot its views vary is drawn per
            # view by its weights whatever the mode.
            if _varying(recipe, entry, slot) is not None:
                mode = "sample"
            found.append(((entry["name"],), _view_shares(recipe, entry, slot,
                                                         _slot_proportions(weights, mode))))
    for entry in recipe.get("corner_cases") or []:
        if entry.get("name") and shared:
            found.append(((entry["name"],), _view_shares(recipe, entry, slot,
                                                         _slot_proportions(shared, "sample"))))
    return [(applies_to, weights) for applies_to, weights in found
            if not any("{" in value for value in weights)]


def _varying(recipe: dict, entry: dict, slot: str) -> dict | None:
    """The class's (or recipe's) views block if its views vary `slot` (the `slots` strategy
    listing it in `vary`), else None. A `slots` block without the strategy varies nothing."""
    views = entry.get("views") or recipe.get("views") or {}
    strategy = views.get("strategy") or ()
    strategy = [strategy] if isinstance(strategy, str) else strategy
    varying = views.get("slots") or {}
    if "slots" not in strategy or not isinstance(varying, dict) or slot not in (varying.get("vary") or ()):
        return None
    return views


def _view_shares(recipe: dict, entry: dict, slot: str, proportions: dict[str, float]) -> dict[str, float]:
    """`proportions`, or where the class's (or recipe's) views vary `slot` with `distinct`,
    the shares its views get from the plan's draw without replacement."""
    views = _varying(recipe, entry, slot)
    if views is None:
        return proportions
    count = views.get("count") or 1
    if (not views["slots"].get("distinct", True) or not isinstance(count, int) or count < 2
            or len(set(proportions.values())) == 1):  # equal weights: every draw is even
        return proportions
    return dict(_distinct_view_shares(tuple(proportions.items()), count))


@functools.lru_cache(maxsize=64)  # classes sharing the recipe's slot draw once
def _distinct_view_shares(weights: tuple[tuple[str, float], ...], count: int,
                          simulated_views: int = 200_000) -> tuple[tuple[str, float], ...]:
    """The share of each value among the views of groups of `count` views drawn as the plan
    draws them (`plan._draw_for_views`, without replacement while values last). Heavy values
    are held back by the values already drawn, so shares are flatter than the weights (red 3 :
    green 1 over 2 views: every group one of each, 1 : 1). Estimated by drawing: the exact sum
    runs over orderings of the values; at 200,000 views the shares are within about 0.002,
    and the fixed seed gives the same target every audit."""
    import random

    from synthgen.plan import _draw_for_views

    rng = random.Random(0)
    drawn = Counter()
    for _ in range(max(1, simulated_views // count)):
        drawn.update(_draw_for_views(rng, dict(weights), count, True))
    total = sum(drawn.values())
    return tuple((value, drawn[value] / total) for value, _ in weights)


def _slot_proportions(weights, mode: str) -> dict[str, float]:
    # Recipes store weights as {value: weight}; a plain list (equal weights) is read too.
    if mode == "enumerate" or not isinstance(weights, dict):
        return {str(value): 1.0 for value in weights}
    return {str(value): float(weight) for value, weight in weights.items()}


def _attribute(name: str, values: list[str], templates, targets: list, target_from: str | None,
               source: str) -> AttributeSpec:
    values = tuple(dict.fromkeys(values))
    if len(values) < 2:
        raise UserError(f"attribute {name!r}: needs at least two values to classify between "
                        f"(got {list(values)}); list them in the recipe's audit.attributes or "
                        f"with --attribute '{name}=a,b'")
    templates = tuple(templates)
    for template in templates:
        try:
            slots = set(template_slots(template))
        except ValueError as error:  # an unmatched { or }, a conversion (!r), a format spec
            raise UserError(f"attribute {name!r} ({source}): template {template!r} is "
                            f"malformed ({error}); write {{value}} where the value goes, {{{{ "
                            "and }} for braces") from None
        if "value" not in slots or slots - {"value", "attribute"}:
            raise UserError(f"attribute {name!r}: template {template!r} must use {{value}} (and "
                            "may use {attribute}), nothing else")
    normalised = []
    for applies_to, proportions in targets:
        # Proportions over the audited values only: a balance value the audit does not read
        # cannot be measured, so it is left out and the rest renormalised.
        kept = {v: float(proportions.get(v, 0.0)) for v in values}
        total = sum(kept.values())
        if total > 0:
            normalised.append((applies_to, {v: p / total for v, p in kept.items()}))
    return AttributeSpec(name=name, values=values, templates=templates,
                         targets=tuple(normalised), source=source,
                         target_from=target_from if normalised else None)
