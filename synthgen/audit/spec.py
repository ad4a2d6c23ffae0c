"""What an audit measures: attributes, suppressed concepts and thresholds, from recipe and options.

The recipe in `manifest.json` is plain JSON written by whichever synthgen version made the
dataset, so every section is read with `.get` and defaults: an older dataset without
`balance`, `suppress` or `audit` still audits (with command-line attributes, or none).

Contracts:
- an attribute has at least two distinct values and at least one template using `{value}`;
- a value's target proportion is known per view from the recipe's `balance` entries (the
  entry whose `applies_to` names the view's class or corner case, else the one applying to
  all); where none applies, the view has no target;
- command-line attributes replace recipe attributes of the same name.
"""

from __future__ import annotations

import string
from dataclasses import dataclass, field

from synthgen.errors import UserError

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

    def prompts(self, value: str) -> list[str]:
        return [template.replace("{value}", value).replace("{attribute}", self.name)
                for template in self.templates]

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

    def concept_prompts(self) -> list[str]:
        # The concept text as written, no templates: the same score `suppress: method: reject`
        # thresholds at generation time (synthgen/generate/detector.py), so rates compare.
        return [self.concept]


@dataclass(frozen=True)
class AuditSpec:
    """Everything the audit measures and the thresholds it uses."""

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


def spec_from_recipe(recipe: dict, *, clip: str | None = None, margin: float | None = None,
                     attributes: list[AttributeSpec] = (), fidelity_threshold: float | None = None,
                     duplicate_threshold: float | None = None) -> AuditSpec:
    """The audit for a manifest's recipe, with command-line options taking precedence."""
    audit = recipe.get("audit") or {}
    balance = [entry for entry in recipe.get("balance") or [] if entry.get("attribute")]
    targets_by_attribute: dict[str, list] = {}
    for entry in balance:
        applies_to = entry.get("applies_to")
        targets_by_attribute.setdefault(entry["attribute"], []).append(
            (tuple(applies_to) if applies_to else None, dict(entry.get("values") or {})))

    found: dict[str, AttributeSpec] = {}
    # The audit section says how to read an attribute (values, templates); balance entries of
    # the same name supply the targets. A balanced attribute without an audit entry is read
    # with its balance values and the default templates.
    for item in audit.get("attributes") or []:
        if not item.get("name"):
            continue
        found[item["name"]] = _attribute(item["name"], item.get("values") or [],
                                         item.get("templates") or DEFAULT_TEMPLATES,
                                         targets_by_attribute.get(item["name"], []), "recipe audit")
    for name, targets in targets_by_attribute.items():
        if name not in found:
            values = list(dict.fromkeys(v for _, proportions in targets for v in proportions))
            found[name] = _attribute(name, values, DEFAULT_TEMPLATES, targets, "recipe balance")
    for option in attributes:
        found[option.name] = _attribute(option.name, list(option.values), option.templates,
                                        targets_by_attribute.get(option.name, []), option.source)

    concepts = tuple(
        ConceptSpec(concept=entry["concept"], method=str(entry.get("method", "?")),
                    threshold=float(entry.get("threshold") or DEFAULT_SUPPRESS_THRESHOLD),
                    contrast=entry.get("contrast") or DEFAULT_CONTRAST,
                    detector=entry.get("detector") if entry.get("method") == "reject" else None)
        for entry in recipe.get("suppress") or [] if entry.get("concept"))
    chosen_margin = margin if margin is not None else audit.get("margin", DEFAULT_MARGIN)
    if not 0.0 <= chosen_margin < 1.0:
        raise UserError(f"--margin {chosen_margin}: must be in [0, 1)")
    return AuditSpec(
        clip=clip or audit.get("clip") or DEFAULT_CLIP,
        margin=float(chosen_margin),
        attributes=tuple(found.values()),
        concepts=concepts,
        fidelity_threshold=float(_first(fidelity_threshold, audit.get("fidelity_threshold"),
                                        DEFAULT_FIDELITY_THRESHOLD)),
        duplicate_threshold=float(_first(duplicate_threshold, audit.get("duplicate_threshold"),
                                         DEFAULT_DUPLICATE_THRESHOLD)),
    )


def _first(*candidates):
    return next(c for c in candidates if c is not None)


def _attribute(name: str, values: list[str], templates, targets: list, source: str) -> AttributeSpec:
    values = tuple(dict.fromkeys(values))
    if len(values) < 2:
        raise UserError(f"attribute {name!r}: needs at least two values to classify between "
                        f"(got {list(values)}); list them in the recipe's audit.attributes or "
                        f"with --attribute '{name}=a,b'")
    templates = tuple(templates)
    for template in templates:
        slots = {field_name for _, field_name, _, _ in string.Formatter().parse(template) if field_name}
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
                         targets=tuple(normalised), source=source)
