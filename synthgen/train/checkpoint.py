"""Training checkpoints as one safetensors file: tensors in the body, everything else as JSON.

Tensors: `model.<state_dict key>` (parameters and buffers), `optimizer.<param index>.<state
key>` (e.g. AdamW's exp_avg, exp_avg_sq, step) and `rng.torch` (the CPU generator state).
Metadata key `synthgen` holds JSON: the training step, the config, the optimiser's param groups
and any non-tensor optimiser state. Nothing is pickled, so loading a checkpoint runs no code.
The file is written under a temporary name and renamed, so a crash leaves the previous one.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from synthgen.errors import UserError

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
    metadata = {**record, "optimizer": {"param_groups": param_groups, "scalars": scalars}}
    path = Path(path)
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    save_file(tensors, str(temporary), metadata={METADATA_KEY: json.dumps(metadata)})
    os.replace(temporary, path)


def read_record(path: Path) -> dict:
    """The JSON record of a checkpoint file alone (no tensors are read)."""
    return read_checkpoint(path, tensors=False)[1]


def read_checkpoint(path: Path, tensors: bool = True) -> tuple[dict[str, torch.Tensor], dict]:
    """(tensors by key, the JSON record) of a checkpoint file; a UserError for a file that is
    not a whole synthgen checkpoint (cut short by a full disk, or another tool's safetensors)."""
    try:
        with safe_open(str(path), framework="pt") as handle:
            record = json.loads((handle.metadata() or {})[METADATA_KEY])
            if not isinstance(record, dict):
                raise ValueError("its record is not an object")
            read = {key: handle.get_tensor(key) for key in handle.keys()} if tensors else {}
    except Exception as error:  # noqa: BLE001 - safetensors raises its own types for damage
        raise UserError(f"{path}: is not a readable synthgen checkpoint ({type(error).__name__}: "
                        f"{str(error)[:120]}); delete it to start the run over, or pass another "
                        "checkpoint or --out") from None
    return read, record


def model_state(tensors: dict[str, torch.Tensor], prefix: str = "model.") -> dict[str, torch.Tensor]:
    """The state dict under `prefix` ("model." for the whole model, "model.encoder." for the
    encoder alone), with the prefix removed."""
    return {key[len(prefix):]: value for key, value in tensors.items() if key.startswith(prefix)}


def restore(path: Path, model: torch.nn.Module, optimizer: torch.optim.Optimizer | None) -> dict:
    """Load a checkpoint into `model` (and `optimizer`), restore the CPU RNG; returns the record."""
    tensors, record = read_checkpoint(path)
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
    return record
