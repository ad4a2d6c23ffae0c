"""Training checkpoints as one safetensors file: tensors in the body, everything else as JSON.

Tensors: `model.<state_dict key>` (parameters and buffers), `optimizer.<param index>.<state
key>` (e.g. AdamW's exp_avg, exp_avg_sq, step) and `rng.torch` (the CPU generator state).
Metadata key `synthgen` holds JSON: the training step, the config, the optimiser's param groups,
any non-tensor optimiser state and a sha256 of the tensors (safetensors checks only its header,
so a flipped bit in a weight would otherwise load as another weight). Nothing is pickled, so
loading a checkpoint runs no code. The file is written whole under a temporary name and renamed
(`store.write_atomically`), so a crash leaves the previous one.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save

from synthgen.errors import UserError
from synthgen.store import write_atomically

METADATA_KEY = "synthgen"
LAST = "checkpoint-last.safetensors"


def save_checkpoint(path: Path, model: torch.nn.Module, optimizer: torch.optim.Optimizer | None,
                    record: dict) -> None:
    """Write model, optimiser and CPU RNG tensors plus `record` (JSON-able) to `path`."""
    tensors = {f"model.{key}": value.detach().cpu().contiguous()
               for key, value in model.state_dict().items()}
    scalars: dict[str, dict] = {}
    param_groups = []
    if optimizer is not None:
        state = optimizer.state_dict()
        param_groups = state["param_groups"]
        for index, values in state["state"].items():
            for key, value in values.items():
                if torch.is_tensor(value):
                    tensors[f"optimizer.{index}.{key}"] = value.detach().cpu().contiguous()
                else:
                    scalars.setdefault(str(index), {})[key] = value
    tensors["rng.torch"] = torch.get_rng_state()
    metadata = {**record, "optimizer": {"param_groups": param_groups, "scalars": scalars},
                "tensors_sha256": tensors_digest(tensors)}
    metadata["record_sha256"] = record_digest(metadata)
    # Serialised in memory and written by the store's helper, not safetensors' save_file: that
    # reports a full disk as its own error type (not OSError ENOSPC, which the command line
    # explains) and writes through an owner-only temporary whose mode the rename would keep.
    write_atomically(Path(path), save(tensors, metadata={METADATA_KEY: json.dumps(metadata)}))


def record_digest(record: dict) -> str:
    """sha256 of the record's canonical JSON, its own digest left out."""
    body = {key: value for key, value in record.items() if key != "record_sha256"}
    return hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()


def tensors_digest(tensors: dict[str, torch.Tensor]) -> str:
    """sha256 over the tensors' names, dtypes, shapes and bytes, in name order."""
    digest = hashlib.sha256()
    for key in sorted(tensors):
        tensor = tensors[key].detach().cpu().contiguous()
        digest.update(f"{key}|{tensor.dtype}|{tuple(tensor.shape)}|".encode())
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def read_record(path: Path) -> dict:
    """The JSON record of a checkpoint file alone (no tensors are read)."""
    return read_checkpoint(path, tensors=False)[1]


def read_checkpoint(path: Path, tensors: bool = True) -> tuple[dict[str, torch.Tensor], dict]:
    """(tensors by key, the JSON record) of a checkpoint file; a UserError for a file that is
    not a whole synthgen checkpoint (cut short by a full disk, or another tool's safetensors)."""
    try:
        with safe_open(str(path), framework="pt") as handle:
            record = json.loads((handle.metadata() or {})[METADATA_KEY])
            _check_record(record)
            if record.get("record_sha256") not in (None, record_digest(record)):  # absent: older
                raise ValueError("its record differs from the digest recorded when it was saved")
            read = {key: handle.get_tensor(key) for key in handle.keys()} if tensors else {}
        if tensors:
            if "rng.torch" not in read:
                raise ValueError("its RNG state is missing")
            recorded = record.get("tensors_sha256")  # absent in checkpoints made before it was kept
            if recorded is not None and recorded != tensors_digest(read):
                raise ValueError("its tensors differ from the digest recorded when it was saved")
    except Exception as error:  # noqa: BLE001 - safetensors raises its own types for damage
        raise damaged(path, error) from None
    return read, record


def damaged(path: Path, error: Exception) -> UserError:
    """The one message for a checkpoint that cannot be used as it is."""
    reason = " ".join(str(error).split())[:120]  # one line: torch's messages span several
    return UserError(f"{path}: is not a readable synthgen checkpoint ({type(error).__name__}: "
                     f"{reason}); delete it to start the run over, or pass another "
                     "checkpoint or --out")


def _check_record(record) -> None:
    """What the trainer and the probe index in a record is there, of the right kind."""
    if not isinstance(record, dict):
        raise ValueError("its record is not an object")
    step = record.get("step")
    if isinstance(step, bool) or not isinstance(step, int) or step < 0:
        raise ValueError(f"its step {step!r} is not a whole number")
    if not isinstance(record.get("config"), dict) or not isinstance(record["config"].get("encoder"), dict):
        raise ValueError("its training config is missing")
    optimizer = record.get("optimizer")
    if not (isinstance(optimizer, dict) and isinstance(optimizer.get("param_groups"), list)
            and isinstance(optimizer.get("scalars"), dict)):
        raise ValueError("its optimiser record is missing")


def model_state(tensors: dict[str, torch.Tensor], prefix: str = "model.") -> dict[str, torch.Tensor]:
    """The state dict under `prefix` ("model." for the whole model, "model.encoder." for the
    encoder alone), with the prefix removed."""
    return {key[len(prefix):]: value for key, value in tensors.items() if key.startswith(prefix)}


def restore(path: Path, model: torch.nn.Module, optimizer: torch.optim.Optimizer | None) -> dict:
    """Load a checkpoint into `model` (and `optimizer`), restore the CPU RNG; returns the record."""
    tensors, record = read_checkpoint(path)
    try:
        model.load_state_dict(model_state(tensors))
        if optimizer is not None:
            state: dict[int, dict] = {}
            for key, value in tensors.items():
                if key.startswith("optimizer."):
                    _, index, name = key.split(".", 2)
                    state.setdefault(int(index), {})[name] = value
            for index, values in record["optimizer"]["scalars"].items():
                state.setdefault(int(index), {}).update(values)
            optimizer.load_state_dict({"state": state,
                                       "param_groups": record["optimizer"]["param_groups"]})
        torch.set_rng_state(tensors["rng.torch"])
    except (KeyError, ValueError, TypeError, RuntimeError) as error:  # parts missing or misshapen
        raise damaged(path, error) from None
    return record
