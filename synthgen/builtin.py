"""`builtin:NAME`: the model folders shipped inside the package, for every stage that loads one.

A builtin name is only a folder under `synthgen/models/`; the caller loads it with the same
`from_pretrained` call as a hub id or a local folder, so no code path is special for it.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path

from synthgen.errors import UserError

BUILTIN_PREFIX = "builtin:"


def builtin_models() -> list[str]:
    """Names of the model folders shipped inside the package (pipelines, CLIPs, oracles)."""
    root = resources.files("synthgen") / "models"
    if not root.is_dir():
        return []
    return sorted(entry.name for entry in root.iterdir()
                  if (entry / "model_index.json").is_file() or (entry / "config.json").is_file())


def resolve_model_source(model_id: str, field: str = "model.id") -> str:
    """A `from_pretrained` argument: a local folder path for builtin names, else unchanged.

    `field` names where the id came from (a recipe field or a command-line option), for the
    error message when the builtin name is unknown.
    """
    if not model_id.startswith(BUILTIN_PREFIX):
        return model_id
    name = model_id[len(BUILTIN_PREFIX):]
    known = builtin_models()
    if name not in known:
        raise UserError(f"{field}: unknown builtin model {model_id!r}; the builtin models are: "
                        + ", ".join(BUILTIN_PREFIX + n for n in known)
                        + "; or give a hub id or a local model folder")
    return str(Path(str(resources.files("synthgen") / "models" / name)))
