"""Balance methods: the ways a recipe's `balance` entries split an attribute across its values.

One module per method, registered in `METHODS` (in this order they are listed in errors);
an entry that names no method is a `prompt` one:

- `prompt`: each group's prompt names its value, by exact quotas (`prompt.py`).
- `debias`: prompts name no value; the model is edited until it draws them in proportion
  (`debias.py`).

Each module holds the method's recipe model (its own fields; `method` picks it) and its
generation-time preparation (`Balance`'s hooks); the quotas are attributes.py's.
`BalanceEntry`, the type of one `balance` entry, is the discriminated union of the models.
"""

from __future__ import annotations

from synthgen.balance.base import Balance
from synthgen.balance.debias import DebiasBalance
from synthgen.balance.prompt import PromptBalance
from synthgen.recipe_base import method_union

METHODS: dict[str, type[Balance]] = {model.model_fields["method"].default: model for model in (
    PromptBalance, DebiasBalance)}

# Every entry records these fields when dumped (recipe.json, manifest.json, the recipe hash):
# the one flat model every method shared before they had their own (see `method_union`).
# Frozen: a field added to a method later is recorded for that method's entries only.
RECORDED_FIELDS = {
    "attribute": "", "values": {}, "slot": None, "applies_to": None, "inject": "{prompt}, {value}",
    "method": "prompt", "detector": "builtin:world-clip", "prompts": 50, "trials": 16,
    "iterations": 3, "tolerance": 0.05, "preserve_weight": 1.0, "regularizer": 0.5,
}

BalanceEntry = method_union(METHODS, RECORDED_FIELDS, default="prompt")

__all__ = ["METHODS", "Balance", "BalanceEntry", "DebiasBalance", "PromptBalance"]
