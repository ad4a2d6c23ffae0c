"""`prompt`: the prompt varied per view by modifiers (steering by text)."""

from __future__ import annotations

import random
from typing import Literal

from pydantic import Field, field_validator

from synthgen.recipe_base import StrictModel, check_prompt_template
from synthgen.seeding import derive_seed
from synthgen.views.base import ViewStrategy


class PromptViews(StrictModel):
    """`prompt`: the group's prompt varied per view by a list of modifiers."""

    modifiers: list[str] = Field(min_length=1)
    mode: Literal["cycle", "sample"] = "cycle"
    template: str = "{prompt}, {modifier}"

    @field_validator("template")
    @classmethod
    def _template_uses_prompt_and_modifier(cls, template: str) -> str:
        return check_prompt_template(template, "modifier")


class Prompt(ViewStrategy):
    name = "prompt"
    settings = PromptViews
    missing_block = ("strategy prompt needs a prompt block, e.g. "
                     "prompt: {modifiers: ['from the side', 'at night']}")

    def describe(self, spec) -> str:
        return f"prompt ({len(spec.prompt.modifiers)} modifiers, {spec.prompt.mode})"

    def change_view(self, spec, recipe_seed, group_id, view, request) -> None:
        modifier = _modifier(spec.prompt, recipe_seed, group_id, view)
        earlier = request["reword"]

        def reword(text: str) -> str:
            return spec.prompt.template.format(prompt=earlier(text), modifier=modifier)

        request.update(modifier=modifier, prompt=spec.prompt.template.format(
            prompt=request["prompt"], modifier=modifier), reword=reword)


def _modifier(settings: PromptViews, recipe_seed: int, group_id: str, view: int) -> str:
    modifiers = settings.modifiers
    if settings.mode == "cycle":
        return modifiers[view % len(modifiers)]
    rng = random.Random(derive_seed("modifier", recipe_seed, group_id, view))
    return modifiers[int(rng.random() * len(modifiers))]
