"""What every recipe block is built on: `StrictModel`, `recipe_problem`, template slots, and
`method_union` for the lists whose entries are one model per method (`suppress`, `balance`).

Kept apart from recipe.py so that the blocks a registry owns (a view strategy's settings in
synthgen/views/, a suppression or balance method's entry in synthgen/suppress/ and
synthgen/balance/) can live beside their code: recipe.py imports them, and they import only this.
"""

from __future__ import annotations

import copy
import functools
import re
import string
import types
from typing import Annotated, Any, Union, get_args, get_origin

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Discriminator,
    Field,
    Tag,
    ValidationInfo,
    WrapSerializer,
    field_validator,
    model_validator,
)
from pydantic_core import PydanticCustomError

CLASS_SLOT = "class"  # filled with the class name (or a corner case's label) in every template


def recipe_problem(kind: str, message: str) -> PydanticCustomError:
    """A validation error whose message is final text (pydantic would read braces as fields)."""
    return PydanticCustomError(kind, "{message}", {"message": message})


def template_slots(template: str) -> list[str]:
    """The slot names a template uses, in order; raises ValueError for malformed braces."""
    return list(_template_slots(template))


@functools.lru_cache(maxsize=4096)  # the plan asks several times per group, of a few templates
def _template_slots(template: str) -> tuple[str, ...]:
    names = []
    for _, field_name, format_spec, conversion in string.Formatter().parse(template):
        if field_name is None:
            continue
        if format_spec or conversion:
            written = field_name + (f"!{conversion}" if conversion else "") + (
                f":{format_spec}" if format_spec else "")
            raise ValueError(f"'{{{written}}}': a slot takes no format spec or conversion "
                             f"(write '{{{field_name}}}')")
        if not field_name.isidentifier():
            raise ValueError(f"'{{{field_name}}}' is not a slot name")
        names.append(field_name)
    return tuple(names)


def injected_template(template: str, inject: str, slot: str) -> str:
    """`template` with a balanced value it has no slot for added by the balance entry's
    `inject` (e.g. "{prompt}, {value}"), the value left as the slot `slot`: how the plan and
    debias put such a value into a prompt."""
    parts = []
    for literal, field, _, _ in string.Formatter().parse(inject):
        parts.append(literal.replace("{", "{{").replace("}", "}}"))
        if field is not None:
            parts.append(template if field == "prompt" else "{" + slot + "}")
    return "".join(parts)


def well_formed_slots(template: str, named: str, example: str) -> list[str]:
    """`template_slots`, or a recipe problem that starts with `named` (the template as the
    message names it, or "") and shows a slot as `example` does."""
    try:
        return template_slots(template)
    except ValueError as error:
        raise recipe_problem("template", f"{named}{error}; slots look like {example}, literal "
                             "braces are written {{ and }}") from None


def check_template(where: str, template: str, known: set[str], slot_home: str) -> None:
    """A recipe problem unless `template`'s slots are well formed and all in `known`;
    `slot_home` is where the message tells the user to define a missing one."""
    for name in well_formed_slots(template, f"{where} {template!r}: ", "{breed}"):
        if name not in known:
            raise recipe_problem(
                "template",
                f"{where} {template!r} uses slot {{{name}}}, which is not defined; add {name!r} "
                f"under {slot_home} or the top-level slots, or fix the spelling (defined: "
                f"{sorted(known) or 'none'})")


def check_prompt_template(template: str, slot: str) -> str:
    """`template` if it uses exactly the slots {prompt} and {`slot`}: how a text enters a
    prompt (a view's modifier, a balanced value injected into a template that lacks its slot)."""
    if set(well_formed_slots(template, "", "{prompt}")) != {"prompt", slot}:
        raise recipe_problem("template", f"must use exactly the slots {{prompt}} and {{{slot}}}, "
                             f"e.g. '{{prompt}}, {{{slot}}}'")
    return template


def slugify(name: str) -> str:
    """A name as it appears in group ids and sample keys: lowercase, [a-z0-9_] only, no dots."""
    return re.sub(r"[^a-z0-9]+", "_", name.lower()).strip("_") or "x"


class StrictModel(BaseModel):
    """Frozen, and rejects keys it does not know, naming the keys it does."""

    # No NaN or infinity: YAML reads `.nan` and `.inf` as floats, and no setting means them.
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    @model_validator(mode="before")
    @classmethod
    def _reject_unknown_keys(cls, data: Any) -> Any:
        if isinstance(data, dict):
            for key in data:
                if key not in cls.model_fields:
                    raise PydanticCustomError(
                        "unknown_key", "{message}",
                        {"key": str(key), "message": f"unknown key {str(key)!r}; the keys "
                         f"allowed here are: {', '.join(cls.model_fields)}"},
                    )
        return data

    @field_validator("*", mode="before")
    @classmethod
    def _no_boolean_numbers(cls, value: Any, info: ValidationInfo) -> Any:
        # pydantic's lax mode reads true/false as 1/0, and YAML 1.1 reads yes/no/on/off as
        # booleans: `groups: off` planned no groups, silently. A number field takes no boolean.
        if isinstance(value, bool) and not _admits_bool(cls.model_fields[info.field_name].annotation):
            raise recipe_problem("bool_number", f"{str(value).lower()} is a yes/no value, and "
                                 f"{info.field_name} is a number; write the number (YAML reads "
                                 "yes, no, on and off as true and false)")
        return value


def _admits_bool(annotation: Any) -> bool:
    """Whether a field's type takes a boolean as itself (bool or Any among its types), or
    holds no number a boolean could pass for."""
    leaves = list(_leaf_types(annotation))
    return any(leaf is bool or leaf is Any for leaf in leaves) or not any(leaf in (int, float)
                                                                          for leaf in leaves)


def _leaf_types(annotation: Any):
    """The types a field's annotation is made of, through Annotated[...] and unions."""
    origin = get_origin(annotation)
    if origin is Annotated:
        yield from _leaf_types(get_args(annotation)[0])
    elif origin in (Union, types.UnionType):
        for argument in get_args(annotation):
            yield from _leaf_types(argument)
    else:
        yield annotation


# The problem type of an entry whose `method` is missing or names no registered method;
# recipe.py's `describe_problem` words it, from the entry and the `choices` in its context.
METHOD_CHOICE = "method_choice"


def method_union(methods: dict[str, type[StrictModel]], recorded: dict[str, Any],
                 default: str | None = None) -> Any:
    """The type of one entry of a recipe list whose `method` picks the entry's model: a pydantic
    discriminated union of `methods` ({method name: model}, each model with its own fields and
    `method: Literal[name]`).

    - `method` picks the model (`default` where an entry leaves it out); a missing or unknown
      one is one `METHOD_CHOICE` problem that lists `methods`.
    - A key of another method is refused naming that method (or in the words of the model's
      `refused_keys`, {key: message}); a key of none lists the keys the method takes.
    - Dumped, an entry holds the fields of `recorded` ({field: value}, in its order), its own
      value where it has the field and the recorded value where it has not, then any fields of
      its own that `recorded` lacks. Before the methods had models of their own, every entry
      was one flat model holding every method's fields; `recorded` keeps that dumped form, so
      recipe.json, manifest.json and the recipe hash (and so resume) stay what they were.
      Fields a new method adds are recorded for its own entries only.
    - An entry read back from such a record (it holds every `recorded` field: finalize reads
      recipe.json, tools read manifest.json) drops the fields its method does not take; a
      recorded value its method would not have recorded changes the recipe hash, which
      finalize reports.
    """
    choices = _quoted_choices(methods)

    def tag(entry: Any) -> str | None:
        if isinstance(entry, dict):
            method = entry.get("method", default)
            return method if isinstance(method, str) else None
        return getattr(entry, "method", None)

    def check_keys(entry: Any) -> Any:
        if not isinstance(entry, dict) or tag(entry) not in methods:
            return entry  # the discriminator reports it, as METHOD_CHOICE
        method = tag(entry)
        model = methods[method]
        if set(recorded) <= set(entry):
            return {key: value for key, value in entry.items() if key in model.model_fields}
        for key in entry:
            if key not in model.model_fields:
                raise PydanticCustomError("unknown_key", "{message}", {
                    "key": str(key), "message": _refused_key(method, model, methods, key)})
        return entry

    def record(entry: StrictModel, handler) -> dict[str, Any]:
        own = handler(entry)
        filled = {key: own[key] if key in own else copy.deepcopy(value)
                  for key, value in recorded.items()}
        return {**filled, **own}

    return Annotated[
        Union[tuple(Annotated[model, Tag(name)] for name, model in methods.items())],  # noqa: UP007
        Field(discriminator=Discriminator(
            tag, custom_error_type=METHOD_CHOICE, custom_error_message="{message}",
            custom_error_context={"message": f"method must be one of {choices}",
                                  "choices": choices})),
        BeforeValidator(check_keys),
        WrapSerializer(record),
    ]


def _quoted_choices(methods: dict[str, Any]) -> str:
    """"'negative', 'reject' or 'erase'", as pydantic words a Literal's choices."""
    quoted = [repr(name) for name in methods]
    return quoted[0] if len(quoted) == 1 else f"{', '.join(quoted[:-1])} or {quoted[-1]}"


def _refused_key(method: str, model: type[StrictModel], methods: dict[str, type[StrictModel]],
                 key: Any) -> str:
    own_words = getattr(model, "refused_keys", {}).get(key)
    if own_words:
        return own_words
    takers = [name for name, other in methods.items() if key in other.model_fields]
    allowed = f"method {method} takes: {', '.join(model.model_fields)}"
    if takers:
        return (f"method {method} takes no {str(key)!r} (method {' and '.join(takers)} does); "
                f"drop it, or use method: {takers[0]}; {allowed}")
    return f"unknown key {str(key)!r}; {allowed}"
