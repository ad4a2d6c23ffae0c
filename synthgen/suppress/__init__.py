"""Suppression methods: the ways a recipe's `suppress` entries keep a concept out of the images.

One module per method, registered in `METHODS` (in this order they are listed in errors):

- `negative`: the concept joins every view's negative prompt (`negative.py`).
- `reject`: a CLIP detector scores every view as stored; flagged views are redrawn (`reject.py`).
- `erase`: the model's text paths are edited so the concept renders as a target (`erase.py`).

Each module holds the method's recipe model (its own fields; `method` picks it), its plan-time
part and its generation-time preparation (`Suppression`'s hooks). `SuppressEntry`, the type of
one `suppress` entry, is the discriminated union of the registered models.
"""

from __future__ import annotations

from synthgen.recipe_base import method_union
from synthgen.suppress.base import Suppression
from synthgen.suppress.erase import EraseSuppression
from synthgen.suppress.negative import NegativeSuppression
from synthgen.suppress.reject import RejectSuppression

METHODS: dict[str, type[Suppression]] = {model.model_fields["method"].default: model for model in (
    NegativeSuppression, RejectSuppression, EraseSuppression)}

# Every entry records these fields when dumped (recipe.json, manifest.json, the recipe hash):
# the one flat model every method shared before they had their own (see `method_union`).
# Frozen: a field added to a method later is recorded for that method's entries only.
RECORDED_FIELDS = {
    "concept": "", "method": "", "detector": "builtin:world-clip", "contrast": "a photo",
    "threshold": 0.5, "max_retries": 3, "target": "", "preserve": [], "contexts": [],
    "context_prompts": 200, "preserve_weight": 1.0, "regularizer": 0.5,
}

SuppressEntry = method_union(METHODS, RECORDED_FIELDS)

__all__ = ["METHODS", "SuppressEntry", "Suppression", "EraseSuppression", "NegativeSuppression",
           "RejectSuppression"]
