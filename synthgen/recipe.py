"""Recipe YAML -> validated, frozen recipe objects. The only module that reads YAML.

Every mistake a user can make in a recipe becomes one `UserError` that names the file, the
field path (``classes[0].templates[1]``), the bad value and how to fix it.
"""

from __future__ import annotations

import functools
import hashlib
import json
import difflib
import re
import reprlib
import sys
import unicodedata
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    AfterValidator,
    BeforeValidator,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from synthgen.balance import Balance, BalanceEntry
from synthgen.builtin import CLIP, PIPELINE, TINY_AUTOENCODER, check_model_reference
from synthgen.errors import UserError
from synthgen.recipe_base import (
    CLASS_SLOT,
    METHOD_CHOICE,
    StrictModel,
    check_template,
    recipe_problem,
    slugify,
    template_slots,
)
from synthgen.suppress import SuppressEntry
from synthgen.views import ViewsSpec
from synthgen.views.slots import colour_rgb

IMAGE_FORMATS = ("jpg", "png", "webp")
MAX_GUIDANCE_SCALE = 100.0
MAX_IMAGE_SIDE = 8192
# A shard's encoded images wait in memory until the shard is written.
MAX_GROUPS_PER_SHARD = 10_000
# The plan holds every view in memory, in every worker (about 0.5 KB each: 100,000 groups of
# 4 views took 200 MB and 17 s to plan on one busy CPU core); past this, split the dataset
# into several recipes.
MAX_PLAN_IMAGES = 5_000_000
MAX_SLOT_WEIGHT = 1e12
DTYPES = ("auto", "float32", "float16", "bfloat16")
_NAME_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]*")


def _parse_slot_values(raw: Any) -> dict[str, float]:
    """Slot values as {value: weight}; a plain list means equal weights."""
    if isinstance(raw, list):
        if not raw:
            raise recipe_problem("slot_values", "a slot needs at least one value")
        if not all(isinstance(value, str) for value in raw):
            raise recipe_problem("slot_values",
                                 "slot values must be strings; quote numbers, e.g. ['1', '2']")
        if len(set(raw)) != len(raw):
            raise recipe_problem("slot_values", "slot values must not repeat")
        return {value: 1.0 for value in raw}
    if isinstance(raw, dict):
        if not raw:
            raise recipe_problem("slot_values", "a slot needs at least one value")
        weights = {}
        for value, weight in raw.items():
            if not isinstance(value, str):
                raise recipe_problem("slot_values", "slot values must be strings")
            # Capped as balance proportions are: the draw sums the weights, and a sum past the
            # largest float (1e308 twice) is inf, which gave every group the last value.
            if (isinstance(weight, bool) or not isinstance(weight, (int, float))
                    or not 0 < weight <= MAX_SLOT_WEIGHT):  # also NaN
                raise recipe_problem("slot_values", f"weight of {value!r} must be a positive "
                                     f"number of at most {MAX_SLOT_WEIGHT:g} (weights are "
                                     f"relative), e.g. {value!r}: 2")
            weights[value] = float(weight)
        return weights
    raise recipe_problem("slot_values", "expected a list of values ['a', 'b'] or a mapping of "
                         "value to weight {a: 3, b: 1}")


SlotValues = Annotated[dict[str, float], BeforeValidator(_parse_slot_values)]


def _one_line(name: str) -> str:
    # Names are printed in tables (plan, inspect) and drawn as captions (audit): a line break
    # or other control character splits a row or cannot be drawn. Format characters (a
    # zero-width joiner in an emoji or a Persian word) and other spaces are fine.
    # Blank also when it holds only invisible characters (zero-width spaces and joiners).
    if not "".join(c for c in name if unicodedata.category(c) != "Cf").strip():
        raise recipe_problem("name", "is blank; give a name")
    if any(unicodedata.category(character) in ("Cc", "Zl", "Zp") for character in name):
        raise recipe_problem("name", f"{name!r} holds a line break or another control "
                             "character; write the name on one line")
    return name


# A class's or corner case's name or label: one printable line.
OneLineName = Annotated[str, Field(min_length=1), AfterValidator(_one_line)]


class ModelSpec(StrictModel):
    """Which diffusers text-to-image model runs, and how it samples."""

    id: str = Field(min_length=1)
    revision: str | None = None
    variant: str | None = None
    dtype: Literal["auto", "float32", "float16", "bfloat16"] = "auto"
    steps: int = Field(1, ge=1, le=1000)
    # Useful scales are 0-15; the bound keeps out values no model runs with (.inf made an
    # all-black dataset).
    guidance_scale: float = Field(0.0, ge=0.0, le=MAX_GUIDANCE_SCALE)
    # FLUX.1 only: real classifier-free guidance with the negative prompt (twice the compute).
    # Its guidance_scale is a distilled input that never looks at a negative prompt.
    true_cfg_scale: float | None = Field(None, gt=1.0, le=MAX_GUIDANCE_SCALE)
    scheduler: str | None = None
    width: int = Field(512, ge=8, le=MAX_IMAGE_SIDE)
    height: int = Field(512, ge=8, le=MAX_IMAGE_SIDE)
    negative_prompt: str = ""
    trust_remote_code: bool = False
    # An AutoencoderTiny (e.g. madebyollin/taesd for SD 1.x/2.x, taesdxl for SDXL; a hub id,
    # folder or builtin: name) that replaces the VAE: several times faster to decode, softer.
    decoder: str | None = None

    @field_validator("width", "height")
    @classmethod
    def _multiple_of_8(cls, size: int) -> int:
        if size % 8:
            raise recipe_problem("multiple_of_8", "must be a multiple of 8 (latent diffusion "
                                 f"models downsample by 8); try {size - size % 8 or 8}")
        return size

    @field_validator("scheduler")
    @classmethod
    def _scheduler_name(cls, name: str | None) -> str | None:
        if name is not None and not re.fullmatch(r"[A-Za-z0-9]+Scheduler", name):
            raise recipe_problem("scheduler_name", "expected a diffusers scheduler class name "
                                 "such as EulerDiscreteScheduler")
        return name


class ClassSpec(StrictModel):
    """One class: prompt templates with slots, and how many multi-view groups to make.

    Without `templates` the class uses the recipe's top-level `templates`; without `views`
    the recipe's views; without `prompt_mode` the recipe's.
    """

    name: OneLineName
    templates: list[str] | None = Field(None, min_length=1)
    slots: dict[str, SlotValues] = {}
    groups: int = Field(ge=0)
    prompt_mode: Literal["sample", "enumerate"] | None = None
    views: ViewsSpec | None = None


class CornerCaseSpec(StrictModel):
    """A named prompt for a situation real data rarely shows; a first-class entry in the plan.

    Its size is one of: `groups` (a count), `weight` (a fraction of all class groups) or
    `oversample` (a multiple of its label class's groups). Its label is a class (`label`), a
    class of its own (`own_label`, indexed after the recipe's classes), or none.
    """

    name: OneLineName
    prompt: str = Field(min_length=1)
    label: OneLineName | None = None
    own_label: OneLineName | None = None
    groups: int | None = Field(None, ge=0)
    # Bounded so that the group count (weight x all class groups, oversample x the label's)
    # stays a number: 1,000 is already far past any sensible corner case.
    weight: float | None = Field(None, ge=0.0, le=1000.0)
    oversample: float | None = Field(None, ge=0.0, le=1000.0)
    tags: list[str] = []
    views: ViewsSpec | None = None

    @model_validator(mode="after")
    def _one_size_and_one_label(self) -> CornerCaseSpec:
        sizes = [key for key in ("groups", "weight", "oversample") if getattr(self, key) is not None]
        if len(sizes) != 1:
            raise recipe_problem("corner_case", f"corner case {self.name!r}: give exactly one of "
                                 f"groups, weight or oversample (got {sizes or 'none'})")
        if self.label is not None and self.own_label is not None:
            raise recipe_problem("corner_case", f"corner case {self.name!r}: give label (an "
                                 "existing class) or own_label (a new one), not both")
        if self.oversample is not None and self.label is None:
            raise recipe_problem("corner_case", f"corner case {self.name!r}: oversample is "
                                 "relative to its label class; set label, or use groups/weight")
        return self


class AuditAttribute(StrictModel):
    """An attribute the audit reads by zero-shot classification."""

    name: str = Field(min_length=1)
    values: list[str] = Field(min_length=2)
    # None: the audit's four default templates (prompt ensembling, see docs/AUDIT.md).
    templates: list[str] | None = None

    @field_validator("templates")
    @classmethod
    def _templates_read_a_value(cls, templates: list[str] | None) -> list[str] | None:
        for template in templates or ():
            check_template("audit template", template, {"value", "attribute"}, "{value}")
            if "value" not in template_slots(template):
                raise recipe_problem("template", f"audit template {template!r} must use {{value}}, "
                                     "where the value goes")
        return templates


class AuditSpec(StrictModel):
    """Settings for `synthgen audit`."""

    clip: str = "builtin:world-clip"
    margin: float = Field(0.1, ge=0.0, lt=1.0)
    attributes: list[AuditAttribute] = []
    fidelity_threshold: float | None = Field(None, ge=-1.0, le=1.0)
    duplicate_threshold: float = Field(0.95, gt=0.0, le=1.0)


class OutputSpec(StrictModel):
    """Shard layout and image encoding.

    `layout` (synthgen/shards.py): `group`, one tar sample per multi-view group, or `view`, one
    per view (KEY.jpg + KEY.txt prompt, what CLIP-style loaders read). `format` is the image
    codec.
    """

    groups_per_shard: int = Field(100, ge=1, le=MAX_GROUPS_PER_SHARD)
    format: Literal["jpg", "png", "webp"] = "jpg"
    quality: int = Field(90, ge=1, le=100)
    resolution: int | None = Field(None, ge=8, le=MAX_IMAGE_SIDE)
    shuffle: bool = True
    layout: Literal["group", "view"] = "group"


class Recipe(StrictModel):
    """A whole dataset description; `recipe_hash` identifies it."""

    name: str
    seed: int = Field(ge=0, lt=2**63)
    model: ModelSpec
    templates: list[str] = []
    slots: dict[str, SlotValues] = {}
    prompt_mode: Literal["sample", "enumerate"] = "sample"
    classes: list[ClassSpec] = []
    corner_cases: list[CornerCaseSpec] = []
    views: ViewsSpec = ViewsSpec()
    # One model per method (synthgen/balance/, synthgen/suppress/), picked by `method`.
    balance: list[BalanceEntry] = []
    suppress: list[SuppressEntry] = []
    audit: AuditSpec = AuditSpec()
    output: OutputSpec = OutputSpec()

    @field_validator("name")
    @classmethod
    def _name_is_a_file_name(cls, name: str) -> str:
        if not _NAME_PATTERN.fullmatch(name):
            raise recipe_problem("recipe_name", "use letters, digits, '-' and '_' only (it names "
                                 "files), e.g. my-dataset")
        return name

    @model_validator(mode="after")
    def _check_cross_references(self) -> Recipe:
        _check_unique_names("classes", [spec.name for spec in self.classes])
        _check_unique_names("corner_cases", [spec.name for spec in self.corner_cases])
        class_names = {spec.name for spec in self.classes}
        for where, slots in [("slots", self.slots)] + [
                (f"classes[{i}].slots", spec.slots) for i, spec in enumerate(self.classes)]:
            if CLASS_SLOT in slots:
                raise recipe_problem("template", f"{where}.{CLASS_SLOT}: the slot name "
                                     f"{{{CLASS_SLOT}}} is reserved for the class name; rename it")
        balance_slots = self._check_balance()
        rejected: dict[str, int] = {}
        for index, entry in enumerate(self.suppress):
            entry.check_in_recipe(f"suppress[{index}]", self)
            if entry.method == "reject":
                # Retries and rejections are counted per concept: one entry per concept.
                if entry.concept in rejected:
                    raise recipe_problem(
                        "suppress", f"suppress[{index}] rejects {entry.concept!r} again "
                        f"(suppress[{rejected[entry.concept]}] does); keep one reject entry per "
                        "concept")
                rejected[entry.concept] = index
        for t_index, template in enumerate(self.templates):
            check_template(f"templates[{t_index}]", template,
                           set(self.slots) | balance_slots | {CLASS_SLOT}, "slots")
        _check_nested_slots("slots", self.slots, set(self.slots), balance_slots)
        for index, spec in enumerate(self.classes):
            known = set(self.slots) | set(spec.slots) | self._balance_slots_for(spec.name) | {CLASS_SLOT}
            if spec.templates is None and not self.templates:
                raise recipe_problem(
                    "cross_reference", f"classes[{index}] ({spec.name!r}) has no templates; give "
                    "it templates: [...] or add top-level templates: ['a photo of a {class}']")
            where = f"classes[{index}].templates" if spec.templates else "templates"
            for t_index, template in enumerate(self.templates_for(spec)):
                self._check_balance_reaches(f"{where}[{t_index}]", template, spec.name, known)
                check_template(f"{where}[{t_index}]", template, known, f"classes[{index}].slots")
            # Over the class's slots and the shared ones together: a cycle can run through both.
            _check_nested_slots(f"classes[{index}].slots", {**self.slots, **spec.slots},
                                set(self.slots) | set(spec.slots), balance_slots)
        own_labels = set()
        for index, case in enumerate(self.corner_cases):
            labelled = case.label is not None or case.own_label is not None
            known = (set(self.slots) | self._balance_slots_for(case.name)
                     | ({CLASS_SLOT} if labelled else set()))
            self._check_balance_reaches(f"corner_cases[{index}].prompt", case.prompt, case.name, known)
            check_template(f"corner_cases[{index}].prompt", case.prompt, known, "slots")
            if case.label is not None and case.label not in class_names:
                raise recipe_problem(
                    "cross_reference",
                    f"corner_cases[{index}].label {case.label!r} is not a class name; use one "
                    f"of {sorted(class_names)}, own_label for a new class, or null for no label")
            if case.own_label is not None and case.own_label in class_names:
                raise recipe_problem(
                    "cross_reference", f"corner_cases[{index}].own_label {case.own_label!r} is "
                    "already a class; use label: for an existing class")
            if case.own_label is not None:
                own_labels.add(case.own_label)
            if case.name in class_names:
                raise recipe_problem(
                    "cross_reference", f"corner_cases[{index}].name {case.name!r} is also a "
                    "class name; the plan's counts and applies_to name both, so give the corner "
                    "case another name")
        self._check_varied_slots()
        total = sum(s.groups for s in self.classes) + sum(
            self.corner_case_groups(c) for c in self.corner_cases)
        if total == 0:
            raise recipe_problem("cross_reference", "the recipe plans no groups; give at least "
                                 "one class or corner case groups: N > 0")
        if self.image_count > MAX_PLAN_IMAGES:
            raise recipe_problem(
                "cross_reference", f"the recipe plans {self.image_count:,} images (groups x "
                f"views); one dataset holds at most {MAX_PLAN_IMAGES:,}, because its plan is "
                "held in memory by every worker; lower groups, or split it into several recipes")
        return self

    @property
    def prompt_balance(self) -> list[Balance]:
        """The balance entries whose values the plan writes into prompts (those with a
        `slot_name`: not `debias`)."""
        return [entry for entry in self.balance if entry.slot_name is not None]

    @property
    def image_count(self) -> int:
        """How many images the recipe plans: each class's and corner case's groups x views."""
        return (sum(spec.groups * self.views_for(spec).count for spec in self.classes)
                + sum(self.corner_case_groups(case) * self.views_for(case).count
                      for case in self.corner_cases))

    def _check_balance(self) -> set[str]:
        names = {spec.name for spec in self.classes} | {case.name for case in self.corner_cases}
        slots = set()
        attributes: dict[str, int] = {}
        for index, entry in enumerate(self.balance):
            if entry.attribute in attributes:
                raise recipe_problem("balance", f"balance[{index}] balances attribute "
                                     f"{entry.attribute!r} again (balance[{attributes[entry.attribute]}] "
                                     "does); give each attribute one entry")
            attributes[entry.attribute] = index
            slot = entry.slot_name  # None: the prompts never name its values
            if slot is not None and not slot.isidentifier():
                raise recipe_problem("balance", f"balance[{index}].slot {slot!r} is not a slot "
                                     "name; use letters, digits and _")
            if slot is not None and (slot in slots or slot in self.slots or slot == CLASS_SLOT or any(
                    slot in spec.slots for spec in self.classes)):
                raise recipe_problem("balance", f"balance[{index}] fills slot {{{slot}}}, which "
                                     "is already defined elsewhere; set balance[].slot to "
                                     "another name")
            for name in entry.applies_to or ():
                if name not in names:
                    raise recipe_problem("balance", f"balance[{index}].applies_to names "
                                         f"{name!r}, which is neither a class nor a corner "
                                         f"case; use one of {sorted(names)}")
            if slot is not None:
                slots.add(slot)
        return slots

    def _balance_slots_for(self, target: str) -> set[str]:
        """The slots that balance entries fill for the class or corner case `target`."""
        return {entry.slot_name for entry in self.prompt_balance
                if entry.applies_to is None or target in entry.applies_to}

    def _check_balance_reaches(self, where: str, template: str, target: str, known: set[str]) -> None:
        """A template used by `target` may not need a balance slot whose entry skips `target`."""
        try:
            used = template_slots(template)
        except ValueError:
            return  # malformed braces: check_template reports them
        for index, entry in enumerate(self.balance):
            if entry.slot_name in used and entry.slot_name not in known:
                raise recipe_problem(
                    "balance", f"{where} {template!r} uses slot {{{entry.slot_name}}}, which "
                    f"balance[{index}] fills only for {entry.applies_to}, not for {target!r}; add "
                    f"{target!r} to balance[{index}].applies_to, or give {target!r} templates "
                    "of its own without that slot")

    def _check_varied_slots(self) -> None:
        """Every slot a `slots` view strategy varies is one each of its classes' and corner
        cases' prompts fills directly (or a balanced attribute, injected where a template
        lacks it), with more than one value: otherwise its views could not differ."""
        targets = []
        for i, spec in enumerate(self.classes):
            at = f"classes[{i}].templates" if spec.templates else "templates"
            templates = [(f"{at}[{t}]", text) for t, text in enumerate(self.templates_for(spec))]
            targets.append((f"classes[{i}]", spec.name, spec.views, templates, spec.slots))
        targets += [(f"corner_cases[{i}]", case.name, case.views,
                     [(f"corner_cases[{i}].prompt", case.prompt)], {})
                    for i, case in enumerate(self.corner_cases)]
        balanced = {entry.slot_name: (index, entry) for index, entry in enumerate(self.balance)
                    if entry.slot_name is not None}
        # The class each target's groups are labelled with (a corner case's label, if any).
        labels = {f"classes[{i}]": spec.name for i, spec in enumerate(self.classes)}
        labels.update({f"corner_cases[{i}]": case.label if case.label is not None
                       else case.own_label for i, case in enumerate(self.corner_cases)})
        for where, name, own_views, templates, own_slots in targets:
            slot_values = {**self.slots, **own_slots}
            views = own_views if own_views is not None else self.views
            field = f"{where}.views.slots.vary" if own_views is not None else "views.slots.vary"
            fix = (f"or give {where} ({name!r}) views of its own without slots"
                   if own_views is None else f"or take it out of {field}")
            for slot in views.varied_slots:
                if slot in balanced:
                    index, entry = balanced[slot]
                    if entry.applies_to is not None and name not in entry.applies_to:
                        raise recipe_problem(
                            "slots", f"{field}: {{{slot}}} is filled by balance[{index}] only "
                            f"for {entry.applies_to}, not for {name!r}; add {name!r} to "
                            f"balance[{index}].applies_to, {fix}")
                    continue
                if slot not in slot_values:
                    defined = sorted(set(slot_values) | self._balance_slots_for(name))
                    hint = next((f"vary {e.slot_name} instead (balance[{i}] fills slot "
                                 f"{{{e.slot_name}}} with attribute {e.attribute!r})"
                                 for i, e in balanced.values() if e.attribute == slot),
                                f"vary a slot its prompts fill, {fix}")
                    raise recipe_problem(
                        "slots", f"{field}: {slot!r} is not a slot of {where} ({name!r}) "
                        f"(defined: {defined or 'none'}); {hint}")
                for at, template in templates:
                    if slot not in template_slots(template):
                        raise recipe_problem(
                            "slots", f"{field}: {at} {template!r} does not use {{{slot}}} "
                            f"(views vary only slots a prompt fills directly, not inside "
                            f"another slot's values), so the views of {name!r} would not differ; "
                            f"add {{{slot}}} to it, {fix}")
                if len(slot_values[slot]) < 2:
                    raise recipe_problem(
                        "slots", f"{field}: slot {slot!r} has one value for {where} ({name!r}), "
                        f"so its views cannot differ; give it more values, {fix}")
            if views.varied_slots and views.slots.check is not None:
                self._check_held_names(views.slots.check.hold, where, name, labels[where],
                                       templates, slot_values, balanced,
                                       field.removesuffix(".vary") + ".check.hold")
            if views.varied_slots and views.slots.align_noise:
                self._check_aligned_noise(views.varied_slots[0], where, name, slot_values, own_slots,
                                          balanced, field.removesuffix(".vary") + ".align_noise")

    def _check_held_names(self, hold: list[str], where: str, name: str, label: str | None,
                          templates: list, slot_values: dict, balanced: dict,
                          field: str) -> None:
        """`slots.check.hold` reads each name by filling the view's template with each of its
        values: the class (`label`, the groups' class), or a slot every template fills
        directly, with plain values."""
        for held in hold:
            if held == CLASS_SLOT:
                if label is None:
                    raise recipe_problem("slots", f"{field}: {where} ({name!r}) has no label, so "
                                         "its groups have no class to hold; give it a label "
                                         "or drop class from hold")
                if len({spec.name for spec in self.classes} | {label}) < 2:
                    raise recipe_problem("slots", f"{field}: holding {{class}} compares each "
                                         "view with the other classes' names, and the recipe "
                                         "has one class; add classes or drop class from hold")
            elif held in balanced or held not in slot_values:
                raise recipe_problem(
                    "slots", f"{field}: {held!r} is not a slot of {where} ({name!r}) "
                    f"(defined: {sorted(slot_values) or 'none'}); hold the class or a slot "
                    "its prompts fill (balanced attributes are not read by the check)")
            elif len(slot_values[held]) < 2:
                raise recipe_problem("slots", f"{field}: slot {held!r} has one value for {where} "
                                     f"({name!r}), so there is nothing to compare it with; "
                                     "give it more values or drop it from hold")
            elif any("{" in value for value in slot_values[held]):
                raise recipe_problem("slots", f"{field}: the values of slot {held!r} fill other "
                                     "slots, so a view's value is not one of them to compare; "
                                     "hold a slot with plain values")
            for at, template in templates:
                if held not in template_slots(template):
                    raise recipe_problem(
                        "slots", f"{field}: {at} {template!r} does not use {{{held}}}, so a "
                        f"view's prompt does not name it to compare; add {{{held}}} to it or "
                        "drop it from hold")

    def _check_aligned_noise(self, slot: str, where: str, name: str, slot_values: dict,
                             own_slots: dict, balanced: dict, field: str) -> None:
        """`slots.align_noise` turns the noise by the model's own VAE latents of the slot's
        colours: every value a colour name (`views.slots.colour_rgb`), no `model.decoder`."""
        if self.model.decoder is not None:
            raise recipe_problem(
                "slots", f"{field}: model.decoder swaps the model's VAE for a tiny autoencoder, "
                "and align_noise encodes the colours with the model's own VAE, in whose latents "
                "the noise is drawn; drop model.decoder or set align_noise: false")
        if slot in balanced:
            index, entry = balanced[slot]
            values, source = entry.values, f"balance[{index}].values"
        else:
            values = slot_values[slot]
            source = f"{where}.slots.{slot}" if slot in own_slots else f"slots.{slot}"
        unknown = sorted(value for value in values if colour_rgb(value) is None)
        if unknown:
            raise recipe_problem(
                "slots", f"{field}: {where} ({name!r}) varies {{{slot}}}, whose values in "
                f"{source} are not all colour names: {unknown[:5]}; align_noise turns each "
                "view's noise towards its colour's latent, so it needs CSS colour names (red, "
                "light blue, '#ff8800'); vary a colour slot or set align_noise: false")

    def corner_case_groups(self, case: CornerCaseSpec) -> int:
        """The exact number of groups a corner case gets (weights and oversampling rounded)."""
        if case.groups is not None:
            return case.groups
        if case.weight is not None:
            return round(case.weight * sum(spec.groups for spec in self.classes))
        label_groups = next(spec.groups for spec in self.classes if spec.name == case.label)
        return round(case.oversample * label_groups)

    def views_for(self, spec: ClassSpec | CornerCaseSpec) -> ViewsSpec:
        """A class's or corner case's own views, else the recipe's."""
        return spec.views if spec.views is not None else self.views

    def views_blocks(self) -> list[tuple[str, ViewsSpec]]:
        """(field path, block) of every `views` block some group uses: the recipe's, where a
        class or corner case has none of its own, and each own one (`classes[1].views`)."""
        blocks = [(f"{kind}[{index}].views", spec.views)
                  for kind, specs in (("classes", self.classes), ("corner_cases", self.corner_cases))
                  for index, spec in enumerate(specs) if spec.views is not None]
        if any(spec.views is None for spec in [*self.classes, *self.corner_cases]):
            blocks.insert(0, ("views", self.views))
        return blocks

    def model_copy(self, *, update: dict | None = None, deep: bool = False) -> Recipe:
        """pydantic's copy, without the copied recipe's cached hash (its fields may differ)."""
        copy = super().model_copy(update=update, deep=deep)
        copy.__dict__.pop("recipe_hash", None)
        return copy

    def templates_for(self, spec: ClassSpec) -> list[str]:
        """A class's own templates, else the recipe's shared ones."""
        return spec.templates if spec.templates is not None else self.templates

    # Computed once: every sample's json records it, and dumping a 1,000-class recipe takes
    # milliseconds. The recipe is frozen, so only a copy can change what it hashes.
    @functools.cached_property
    def recipe_hash(self) -> str:
        """sha256 of the canonical JSON of the resolved recipe: equal recipes, equal hashes.

        The `audit` section is left out: it changes how a dataset is measured, not its bytes.
        So is the default `output.layout` (it came later): recipes that do not set it keep the
        hash they had before it existed, and their datasets stay resumable.
        """
        exclude: dict = {"audit": True}
        if self.output.layout == "group":
            exclude["output"] = {"layout"}
        generating = self.model_dump(mode="json", exclude=exclude)
        return hashlib.sha256(canonical_json(generating)).hexdigest()


def _check_unique_names(field: str, names: list[str]) -> None:
    seen = set()
    for index, name in enumerate(names):
        slug = slugify(name)
        if slug in seen:
            raise recipe_problem(
                "cross_reference",
                f"{field}[{index}].name {name!r} repeats an earlier name (names are compared "
                f"as {slug!r}, since they become sample keys); rename one of them")
        seen.add(slug)


# How deep slot values may name slots that name slots ("a {colour} {fabric} hat" is 1).
MAX_SLOT_NESTING = 8
# A prompt is read up to 77 tokens by CLIP text encoders, 512 by T5; nested slots that fill in
# to more than this are a mistake (or a bomb), not a prompt.
MAX_EXPANDED_SLOT_CHARACTERS = 10_000


def _check_nested_slots(where: str, slots: dict[str, dict[str, float]], known: set[str],
                        template_only: set[str]) -> None:
    """Slot values may name other slots in `known` ("a {colour} {fabric} hat"); no unknown
    names, no cycles, at most `MAX_SLOT_NESTING` deep. {class} and balance slots
    (`template_only`) are filled in templates, not inside slot values."""
    for slot, values in slots.items():
        for value in values:
            try:
                used = set(template_slots(value))
            except ValueError:
                used = set()  # check_template below says what is malformed
            misplaced = sorted(used & (template_only | {CLASS_SLOT}))
            if misplaced:
                raise recipe_problem(
                    "template", f"{where}.{slot} value {value!r} names {{{misplaced[0]}}}, which "
                    "is filled in templates only, not inside a slot's values; move it into the "
                    "template")
            check_template(f"{where}.{slot} value", value, known, where)

    # Per slot, the longest chain of slots under it and the longest text it expands to,
    # each worked out once: walking every path instead took minutes for 3.5 KB of slots that
    # fan out (8 slots a level, each naming all 8 of the next: 8**8 paths).
    below: dict[str, tuple[str, ...]] = {}
    longest: dict[str, int] = {}

    def visit(slot: str, trail: tuple[str, ...]) -> None:
        if slot in trail:
            raise recipe_problem("template", f"{where}: slots refer to each other in a cycle: "
                                 + " -> ".join(trail + (slot,)) + "; break the cycle")
        if slot not in below:
            chain, length = (), 0
            for value in slots.get(slot, {}):
                inner = [name for name in template_slots(value) if name in slots]
                for name in dict.fromkeys(inner):
                    visit(name, trail + (slot,))
                chain = max([chain] + [(name,) + below[name] for name in inner], key=len)
                length = max(length, len(value) + sum(longest[name] for name in inner))
            below[slot], longest[slot] = chain, length
        if len(trail) + len(below[slot]) > MAX_SLOT_NESTING:
            raise recipe_problem("template", f"{where}: slots name slots more than "
                                 f"{MAX_SLOT_NESTING} deep ("
                                 + " -> ".join(f"{{{name}}}" for name in trail + (slot,) + below[slot])
                                 + "); write some values out")
        if longest[slot] > MAX_EXPANDED_SLOT_CHARACTERS:
            raise recipe_problem("template", f"{where}.{slot}: its values name slots that name "
                                 f"slots, and filled in it can grow to {longest[slot]:,} "
                                 f"characters, more than a prompt can hold "
                                 f"({MAX_EXPANDED_SLOT_CHARACTERS:,}); name fewer slots per value")

    for slot in slots:
        visit(slot, ())


def canonical_json(value: Any) -> bytes:
    """JSON with sorted keys and no whitespace: the same value always gives the same bytes."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


# Shipped recipes are 1-7 KB; PyYAML parses about 0.2 MB a second, and a 58 MB slot list
# took over 400 s and 4.6 GB.
MAX_RECIPE_BYTES = 1_000_000
# Aliases (*name) repeat an anchored block; a chain of them expands a 1 KB file into billions
# of values ("billion laughs"), so the values aliases add are bounded.
MAX_ALIAS_VALUES = 100_000
# ... and the text they repeat: 99,000 aliases of one 400 KB string are 40 GB.
MAX_EXPANDED_CHARACTERS = 10_000_000
_MAX_NESTING = 50  # a recipe nests 6 levels deep


def load_recipe(path: str | Path) -> Recipe:
    """Read and validate a recipe file; every problem is raised as one `UserError`."""
    path = Path(path)
    recipe = parse_recipe(_read_recipe_text(path), source=str(path))
    try:
        check_model_references(recipe)
    except UserError as error:
        raise UserError(f"{path}: {error}") from None
    return recipe


class _AuditBlock(StrictModel):
    audit: AuditSpec


def load_audit_block(path: str | Path) -> AuditSpec:
    """The `audit:` block of a recipe file, for `synthgen audit --recipe`: a whole recipe, or
    a file holding only that block; nothing else of the file is validated."""
    path = Path(path)
    raw = _parse_yaml_mapping(_read_recipe_text(path), str(path))
    if "audit" not in raw:
        raise UserError(f"{path}: has no audit: block, which --recipe reads (attributes, "
                        "templates, margin, clip, thresholds); add one (the recipe reference in "
                        "README.md shows it), or drop --recipe to use the dataset's own")
    try:
        audit = _AuditBlock.model_validate({"audit": raw["audit"]}).audit
    except ValidationError as error:
        raise UserError(format_validation_error(str(path), error)) from None
    try:
        check_model_reference(audit.clip, "audit.clip", CLIP)
    except UserError as error:
        raise UserError(f"{path}: {error}") from None
    return audit


def _read_recipe_text(path: Path) -> str:
    try:
        with open(path, "rb") as stream:
            data = stream.read(MAX_RECIPE_BYTES + 1)
    except FileNotFoundError:
        raise UserError(f"{path}: recipe file not found; check the path "
                        "(recipes/quickstart.yaml is a working example)") from None
    except OSError as error:
        raise UserError(f"{path}: cannot read the recipe ({error.strerror}); pass a UTF-8 YAML "
                        "file") from None
    _check_recipe_size(len(data), str(path))
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as error:
        raise UserError(f"{path}: cannot read the recipe ({error}); pass a UTF-8 YAML file") from None


def check_model_references(recipe: Recipe) -> None:
    """Every model the recipe names can load as the kind its field needs, as far as can be
    told without loading it (see `builtin.check_model_reference`); folder paths are read
    from the current directory, as `from_pretrained` reads them."""
    check_model_reference(recipe.model.id, "model.id", PIPELINE, recipe.model.trust_remote_code)
    if recipe.model.scheduler is not None:
        check_scheduler_name(recipe.model.scheduler)
    if recipe.model.decoder is not None:
        check_model_reference(recipe.model.decoder, "model.decoder", TINY_AUTOENCODER)
    for index, entry in enumerate(recipe.suppress):
        entry.check_models(f"suppress[{index}]")
    for index, entry in enumerate(recipe.balance):
        entry.check_models(f"balance[{index}]")
    check_model_reference(recipe.audit.clip, "audit.clip", CLIP)
    for where, spec in [("views", recipe.views),
                        *((f"classes[{i}].views", c.views) for i, c in enumerate(recipe.classes)),
                        *((f"corner_cases[{i}].views", c.views)
                          for i, c in enumerate(recipe.corner_cases))]:
        if spec is not None and spec.checks_groups:
            check_model_reference(spec.slots.check.detector, f"{where}.slots.check.detector", CLIP)


def check_scheduler_name(name: str) -> None:
    """A `UserError` unless diffusers has a scheduler class of that name, naming the closest
    ones. Read from diffusers' list of names, which imports no scheduler (nor torch's
    kernels), so `validate` tells a typo without loading a model."""
    import diffusers

    known = sorted(n for n in dir(diffusers) if n.endswith("Scheduler"))
    if name not in known:
        close = difflib.get_close_matches(name, known, n=3, cutoff=0.5)
        raise UserError(f"model.scheduler: {name!r} is not a diffusers scheduler; "
                        + (f"did you mean {' or '.join(close)}? " if close else "")
                        + "leave model.scheduler out for the model's own, or name one such as "
                        "EulerDiscreteScheduler or DPMSolverMultistepScheduler")


def _check_recipe_size(size: int, source: str) -> None:
    if size > MAX_RECIPE_BYTES:
        raise UserError(f"{source}: the recipe is larger than {MAX_RECIPE_BYTES:,} bytes, the "
                        "most synthgen reads; a recipe lists classes, templates and slot values "
                        "(shipped ones are under 10 KB), so shorten those lists")


class _UniqueKeyLoader(yaml.SafeLoader):
    """yaml.SafeLoader that refuses a key given twice in one mapping (plain YAML keeps the
    last one silently, so half of a recipe block could be ignored)."""

    def construct_mapping(self, node, deep=False):
        if not isinstance(node, yaml.MappingNode):  # `!!map [a, b]`: PyYAML's own check, kept
            raise yaml.constructor.ConstructorError(
                None, None, f"expected a mapping, found {node.id}", node.start_mark)
        seen = {}
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                continue  # `<<: *base`: merged keys give way to the mapping's own (YAML's rule)
            key = self.construct_object(key_node, deep=deep)
            if isinstance(key, (list, dict)):
                raise yaml.constructor.ConstructorError(
                    None, None, "a key is a list or mapping; a recipe's keys are names",
                    key_node.start_mark)
            if isinstance(key, (str, int, float, bool)) and key in seen:
                raise _DuplicateKey(key, seen[key], key_node.start_mark)
            seen[key] = key_node.start_mark
        return super().construct_mapping(node, deep=deep)


_UniqueKeyLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG,
                                 _UniqueKeyLoader.construct_mapping)


def _refuse_set(loader, node):
    # A set has no order, and Python's changes with PYTHONHASHSEED: templates or values given
    # as `!!set` would plan (and hash) differently in every process.
    raise yaml.constructor.ConstructorError(
        None, None, "!!set has no order, so the same recipe would plan differently in each "
        "run; write a list ([a, b] or - items)", node.start_mark)


_UniqueKeyLoader.add_constructor("tag:yaml.org,2002:set", _refuse_set)


class _DuplicateKey(Exception):
    def __init__(self, key, first, again):
        super().__init__(key)
        self.key, self.first, self.again = key, first, again


def _load_yaml(text: str, source: str) -> Any:
    """The YAML document as Python values, refusing aliases that expand past the bound."""
    loader = _UniqueKeyLoader(text)  # a SafeLoader: no Python objects
    try:
        node = loader.get_single_node()
        if node is None:
            return None
        _check_alias_expansion(node, source)
        return loader.construct_document(node)
    finally:
        loader.dispose()


def _check_alias_expansion(root: yaml.Node, source: str) -> None:
    """Count the values the document holds with every alias expanded, without expanding it.

    An alias is the anchored node itself in the composed graph, so each distinct node's
    expanded size is computed once; a node inside its own expansion is a cycle.
    """
    sizes: dict[int, tuple[int, int]] = {}  # node -> (values, characters) when expanded
    open_nodes: set[int] = set()

    def expanded(node: yaml.Node, depth: int) -> tuple[int, int]:
        key = id(node)
        if key in sizes:
            return sizes[key]
        if key in open_nodes:
            mark = node.start_mark
            raise UserError(f"{source}:{mark.line + 1}:{mark.column + 1}: an alias refers to "
                            "the block that contains it, which never ends; write the values out")
        if depth > _MAX_NESTING:
            raise RecursionError
        open_nodes.add(key)
        if isinstance(node, yaml.MappingNode):
            children = [expanded(part, depth + 1) for pair in node.value for part in pair]
        elif isinstance(node, yaml.SequenceNode):
            children = [expanded(item, depth + 1) for item in node.value]
        else:
            children = [(0, len(str(node.value)))]
        size = (1 + sum(values for values, _ in children), sum(chars for _, chars in children))
        open_nodes.discard(key)
        sizes[key] = size
        return size

    values, characters = expanded(root, 0)
    added = values - len(sizes)
    if added > MAX_ALIAS_VALUES:
        raise UserError(f"{source}: its aliases (*name) expand to {added:,} more values, past "
                        f"the {MAX_ALIAS_VALUES:,} synthgen allows (aliases that repeat aliases "
                        "multiply); repeat fewer blocks, or write the values out")
    if characters > MAX_EXPANDED_CHARACTERS:
        raise UserError(f"{source}: with its aliases (*name) expanded it holds {characters:,} "
                        f"characters of text, past the {MAX_EXPANDED_CHARACTERS:,} synthgen "
                        "allows; repeat fewer or shorter blocks, or write the values out")


def _refuse_lone_surrogates(value: Any, source: str) -> None:
    """YAML's "\\udc80" escape makes a string no file, hash or prompt can encode as UTF-8."""
    if isinstance(value, str):
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            raise UserError(f"{source}: the text {value[:40]!r} holds a lone surrogate escape "
                            "(\\udXXX), which is no character; write the character itself") from None
    elif isinstance(value, dict):
        for key, item in value.items():
            _refuse_lone_surrogates(key, source)
            _refuse_lone_surrogates(item, source)
    elif isinstance(value, list):
        for item in value:
            _refuse_lone_surrogates(item, source)


def parse_recipe(text: str, source: str = "<recipe>") -> Recipe:
    """Validate recipe YAML text; `source` names it in error messages."""
    raw = _parse_yaml_mapping(text, source)
    try:
        return Recipe.model_validate(raw)
    except ValidationError as error:
        raise UserError(format_validation_error(source, error)) from None


def _parse_yaml_mapping(text: str, source: str) -> dict:
    """Recipe YAML text -> the mapping it holds, read safely; every problem one `UserError`."""
    _check_recipe_size(len(text.encode("utf-8", errors="replace")), source)
    try:
        raw = _load_yaml(text, source)
    except _DuplicateKey as duplicate:
        raise UserError(f"{source}:{duplicate.again.line + 1}:{duplicate.again.column + 1}: key "
                        f"{duplicate.key!r} is given twice in one mapping (first on line "
                        f"{duplicate.first.line + 1}); keep one of them") from None
    except yaml.MarkedYAMLError as error:
        mark = error.problem_mark
        where = f"{source}:{mark.line + 1}:{mark.column + 1}" if mark else source
        raise UserError(f"{where}: not valid YAML ({error.problem}); fix the syntax there "
                        "(indentation, a missing ':', or a value with ':' that needs quotes)") from None
    except ValueError as error:
        # A number with more digits than Python converts (sys.get_int_max_str_digits): PyYAML
        # raises int()'s ValueError, which is no YAMLError.
        if "digits" not in str(error):
            raise
        raise UserError(f"{source}: holds a number of more than {sys.get_int_max_str_digits()} "
                        "digits, too long to read; write a shorter number") from None
    except yaml.reader.ReaderError as error:
        # A character YAML does not allow (a NUL after every letter: UTF-16 saved without
        # its byte-order mark), reported at a character position, not a line.
        raise UserError(f"{source}: holds {error.character!r} at character {error.position}, "
                        "which YAML does not allow (a recipe saved as UTF-16 has a NUL after every "
                        "letter); save it as UTF-8 text") from None
    except yaml.YAMLError as error:
        raise UserError(f"{source}: not valid YAML ({' '.join(str(error).split())})") from None
    except RecursionError:
        raise UserError(f"{source}: the YAML is nested more than {_MAX_NESTING} levels deep; a "
                        "recipe nests about 6") from None
    _refuse_lone_surrogates(raw, source)
    if raw is None:
        raise UserError(f"{source}: the recipe is empty; start from recipes/quickstart.yaml "
                        "(name, seed, model, templates, classes)")
    if not isinstance(raw, dict):
        raise UserError(f"{source}: a recipe is a YAML mapping with keys such as name, seed, "
                        f"model, classes; got {type(raw).__name__} {_short(raw)}")
    return raw


def format_validation_error(source: str, error: ValidationError) -> str:
    """One message for all of a recipe's problems: each names field path, value and fix."""
    lines = [describe_problem(source, problem) for problem in error.errors()[:10]]
    if error.error_count() > 10:
        lines.append(f"... and {error.error_count() - 10} more problems")
    return "\n".join(lines)


_BOUNDS = {
    "greater_than_equal": (">=", "of at least", "ge"),
    "greater_than": (">", "above", "gt"),
    "less_than_equal": ("<=", "of at most", "le"),
    "less_than": ("<", "below", "lt"),
}
_FIXES = {
    "missing": "add it; see the recipe reference in README.md",
    "int_parsing": "write a whole number, e.g. 10",
    "int_type": "write a whole number, e.g. 10",
    "int_from_float": "write a whole number, e.g. 10",
    "float_parsing": "write a number, e.g. 7.5",
    "float_type": "write a number, e.g. 7.5",
    "string_type": "write text; quote it if YAML reads it as something else",
    "bool_parsing": "write true or false",
    "bool_type": "write true or false",
    "list_type": "write a list, e.g. [a, b] or one '- item' per line",
    "dict_type": "write a mapping of key: value lines",
    "model_type": "write a mapping of key: value lines",
    "model_attributes_type": "write a mapping of key: value lines",
    "finite_number": "write a finite number (.nan and .inf mean no setting)",
    "string_too_short": "give a non-empty value",
}


# Lists whose entries are one model per method (`recipe_base.method_union`): pydantic puts the
# method's name after an entry's index in the location of a problem inside the entry
# (('suppress', 0, 'erase', 'contexts')), a step the path a user reads does not have.
_METHOD_LISTS = ("balance", "suppress")


def describe_problem(source: str, problem: dict) -> str:
    """`file: field path: what is wrong (got value); how to fix`."""
    kind = problem["type"]
    location = list(problem["loc"])
    if len(location) > 2 and location[0] in _METHOD_LISTS and isinstance(location[1], int):
        del location[2]
    value = problem.get("input")
    if kind == METHOD_CHOICE:
        return _describe_method_choice(source, location, value, problem["ctx"]["choices"])
    if kind == "unknown_key":
        location.append(problem["ctx"]["key"])
        value = None
    path = field_path(location)
    message = problem["msg"]
    bound = _BOUNDS.get(kind)
    if bound is not None:
        symbol, word, limit = bound[0], bound[1], problem["ctx"][bound[2]]
        message = f"must be {symbol} {limit}"
        fix = f"use a value {word} {limit}"
    elif kind == "literal_error":
        fix = message.replace("Input should be", "use")
    elif kind == "too_short":
        least = problem["ctx"]["min_length"]
        fix = f"give at least {least} {'entry' if least == 1 else 'entries'}"
    else:
        fix = _FIXES.get(kind, "")
    what = {"missing": "required field is missing",
            "literal_error": "not one of the allowed values"}.get(kind, message)
    # Cross-reference problems are found on the whole recipe and name their own field path.
    text = f"{source}: {path}: {what}" if location else f"{source}: {what}"
    if kind != "missing" and value is not None and not isinstance(value, dict):
        text += f" (got {_short(value)})"
    if fix and fix not in what:
        text += f"; {fix}"
    return text


def _describe_method_choice(source: str, location: list, entry: Any, choices: str) -> str:
    """An entry of a method list whose `method` is missing or not one of `choices`, or that
    is not a mapping at all."""
    if not isinstance(entry, dict):
        return (f"{source}: {field_path(location)}: not a mapping (got {_short(entry)}); write a "
                f"mapping of key: value lines with a method: {choices}")
    path = field_path([*location, "method"])
    if "method" not in entry:
        return f"{source}: {path}: required field is missing; use {choices}"
    return (f"{source}: {path}: not one of the allowed values (got {_short(entry['method'])}); "
            f"use {choices}")


def field_path(location: list) -> str:
    """('classes', 0, 'templates', 1) -> 'classes[0].templates[1]'."""
    path = ""
    for part in location:
        if isinstance(part, int):
            path += f"[{part}]"
        else:
            path += f".{part}" if path else str(part)
    return path


_SHORT_REPR = reprlib.Repr()
_SHORT_REPR.maxlevel, _SHORT_REPR.maxstring, _SHORT_REPR.maxother = 3, 80, 80
_SHORT_REPR.maxlist = _SHORT_REPR.maxtuple = _SHORT_REPR.maxdict = 6


def _short(value: Any) -> str:
    # reprlib stops after a few items and levels: a huge (or alias-shared) value costs nothing.
    text = _SHORT_REPR.repr(value)
    return text if len(text) <= 80 else text[:77] + "..."
