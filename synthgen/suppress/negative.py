"""`negative`: the concept joins every view's negative prompt (needs classifier-free guidance)."""

from __future__ import annotations

from typing import ClassVar, Literal

from synthgen.suppress.base import Suppression


class NegativeSuppression(Suppression):
    """`suppress: method: negative`: nothing but the concept."""

    method: Literal["negative"] = "negative"

    asked_for: ClassVar[str] = "its prompts and the negative prompt pull against each other"

    def negative_prompt_text(self) -> str:
        return self.concept
