"""Model references (`builtin:NAME`, a folder, a hub id), for every stage that loads one.

A builtin name is only a folder under `synthgen/models/`; the caller loads it with the same
`from_pretrained` call as a hub id or a local folder, so no code path is special for it.
`check_model_reference` finds, without loading anything, the references that cannot load.
"""

from __future__ import annotations

import json
from importlib import resources
from pathlib import Path

from synthgen.errors import UserError

BUILTIN_PREFIX = "builtin:"
# What `synthgen edit` writes into an edited model folder: the base model and its erase edits.
EDITS_FILE = "synthgen-edits.json"

# The kinds of model synthgen loads, and what a folder of each holds: the file
# `from_pretrained` reads first, and the (key, value) in it that names the kind (None: any).
PIPELINE, CLIP, TINY_AUTOENCODER = ("text-to-image pipeline", "CLIP model",
                                    "tiny autoencoder (AutoencoderTiny)")
MODEL_KINDS = {
    PIPELINE: ("model_index.json", None),
    CLIP: ("config.json", ("model_type", "clip")),
    TINY_AUTOENCODER: ("config.json", ("_class_name", "AutoencoderTiny")),
}


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


def _is_folder(text: str) -> bool:
    try:
        return Path(text).is_dir()
    except (OSError, ValueError):  # a name longer than the file system allows, a NUL byte
        return False


def check_model_reference(model_id: str, field: str, kind: str,
                          trust_remote_code: bool = False) -> None:
    """Refuse a reference that cannot load as `kind` (a key of `MODEL_KINDS`), as far as can
    be told without loading it: an unknown builtin name, a folder that is missing or holds
    another kind of model (a pipeline: or lacks a component folder, or, without
    `trust_remote_code`, names a component library outside diffusers and transformers), or
    text that is neither a folder nor a hub id. A well-formed hub id passes: only downloading
    it tells whether it exists."""
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    if model_id.startswith(BUILTIN_PREFIX):
        folder = Path(resolve_model_source(model_id, field))
    elif _is_folder(model_id):  # diffusers and transformers try a folder first, too
        folder = Path(model_id)
    else:
        try:
            validate_repo_id(model_id)
        except HFValidationError:
            raise UserError(
                f"{field}: cannot load {model_id!r}: no such folder (relative paths start in "
                "the current directory), and not a hub id (NAME or ORG/NAME either); fix the "
                "path, or download the model with huggingface-cli download ID --local-dir DIR "
                "and use DIR") from None
        return
    found = folder_kind(folder)
    if found == kind == PIPELINE:
        _check_pipeline_components(folder, model_id, field, trust_remote_code)
    if found != kind:
        marker, named = MODEL_KINDS[kind]
        missing = f"it has no {marker}" if named is None else f"its {marker} is not a {kind}'s"
        offered = [BUILTIN_PREFIX + name for name in builtin_models()
                   if folder_kind(Path(resolve_model_source(BUILTIN_PREFIX + name))) == kind]
        raise UserError(
            f"{field}: {model_id!r} is not a {kind} folder ("
            + (f"it holds a {found}" if found else missing)
            + f"); give a {kind}: " + "".join(f"{name}, " for name in offered)
            + "a folder saved with save_pretrained, or a hub id")


# Where a pipeline's components may come from without trust_remote_code: diffusers imports any
# other library named in model_index.json (a dotted name such as "models.evil.scheduler" runs
# that module if it is importable, e.g. from a checkout's models/ folder on sys.path).
TRUSTED_LIBRARIES = ("diffusers", "transformers")


def foreign_component_libraries(index: dict) -> list[tuple[str, str]]:
    """(component, library) of each model_index.json entry whose library is not diffusers, one
    of diffusers' pipeline modules (SD 1.5's safety checker: "stable_diffusion", resolved as
    diffusers resolves it) or transformers. Entries that are not [library, class] pairs are
    left to from_pretrained's own message. Imports diffusers only for an unknown name."""
    foreign = []
    for name, value in index.items():
        library = value[0] if isinstance(value, (list, tuple)) and value else None
        if not isinstance(library, str) or library in TRUSTED_LIBRARIES:
            continue
        if library.isidentifier():
            from diffusers import pipelines

            if hasattr(pipelines, library):
                continue
        foreign.append((name, library))
    return foreign


def refuse_foreign_components(index: dict, model_id: str, field: str = "model.id") -> None:
    """A UserError naming the first component `foreign_component_libraries` finds."""
    foreign = foreign_component_libraries(index)
    if foreign:
        name, library = foreign[0]
        raise UserError(f"{field}: {model_id!r}: its model_index.json loads {name} from "
                        f"{library!r}, code outside diffusers and transformers, which would run "
                        "on loading; use a model made of diffusers and transformers components, "
                        "or set model.trust_remote_code: true if you trust that code")


def _check_pipeline_components(folder: Path, model_id: str, field: str,
                               trust_remote_code: bool) -> None:
    """Refuse a pipeline folder whose model_index.json names a component it does not hold (a
    download cut short: diffusers then builds an empty tokenizer from the root folder, and
    generation died inside it, OverflowError, instead of at this line), or, without
    `trust_remote_code`, one from another library (`refuse_foreign_components`)."""
    try:
        index = json.loads((folder / "model_index.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return  # loading says what is wrong with the index itself
    if not isinstance(index, dict):
        return
    if not trust_remote_code:
        refuse_foreign_components(index, model_id, field)
    missing = [name for name, entry in index.items()
               if not name.startswith("_") and isinstance(entry, list) and len(entry) == 2
               and entry[0] is not None and entry[1] is not None and not (folder / name).is_dir()]
    if missing:
        raise UserError(f"{field}: {model_id!r} lacks the folder{'s' if len(missing) > 1 else ''} "
                        f"{', '.join(missing)}, which its model_index.json names (a download cut "
                        "short?); download the model again, or save it whole with save_pretrained")


def folder_kind(folder: Path) -> str | None:
    """Which of `MODEL_KINDS` a model folder holds, or None."""
    for kind, (marker, named) in MODEL_KINDS.items():
        try:
            config = json.loads((folder / marker).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue
        if named is None or (isinstance(config, dict) and config.get(named[0]) == named[1]):
            return kind
    return None


def _is_edit_entry(edit) -> bool:
    """An edit as `synthgen edit` records it: an object whose method, concept and attribute,
    where present, are strings (the plan's warnings compare them as text)."""
    return isinstance(edit, dict) and all(isinstance(edit.get(key, ""), str)
                                          for key in ("method", "concept", "attribute"))


def edit_record(model_id: str) -> dict:
    """What `synthgen edit` recorded in a model folder (base_model, edits), or {}."""
    if model_id.startswith(BUILTIN_PREFIX):
        return {}
    record = Path(model_id) / EDITS_FILE
    if not record.is_file():
        return {}
    try:
        read = json.loads(record.read_text(encoding="utf-8"))
    except ValueError as error:  # not JSON, or not UTF-8
        read, reason = None, f"not JSON ({error})"
    else:
        reason = ("not a JSON object whose edits are a list of objects with string "
                  "method, concept and attribute")
    edits = read.get("edits", []) if isinstance(read, dict) else None
    if not isinstance(edits, list) or not all(_is_edit_entry(edit) for edit in edits):
        raise UserError(f"{record}: is damaged: {reason}; it records what synthgen edit changed "
                        "in this model folder: make the folder again with synthgen edit")
    return read
