"""Which torch device a command runs on: one definition for generation, audit and training."""

from __future__ import annotations

import torch

from synthgen.errors import UserError


def choose_device(requested: str = "auto") -> torch.device:
    """`auto` is the first CUDA GPU when there is one, else the CPU."""
    if requested == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(requested)
    except RuntimeError:
        raise UserError(f"--device {requested!r} is not a device; use auto, cpu, cuda or cuda:N") from None
    if device.type == "cuda":
        visible = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if visible == 0:
            raise UserError(f"--device {requested}: no CUDA GPU is visible here; use --device cpu")
        if device.index is not None and device.index >= visible:
            raise UserError(f"--device {requested}: only cuda:0 to cuda:{visible - 1} are visible")
    elif device.type == "meta":
        raise UserError(f"--device {requested}: meta tensors hold no data, so nothing can run "
                        "on it; use auto, cpu, cuda or cuda:N")
    elif device.type != "cpu":
        try:  # mps, xpu, ...: torch knows the name, but this build or machine may not have one
            torch.empty(0, device=device)
        except Exception as error:  # noqa: BLE001 - RuntimeError, or a backend module missing
            reason = " ".join(str(error).split())[:100]
            raise UserError(f"--device {requested}: this torch cannot use it ({reason}); "
                            "use auto, cpu, cuda or cuda:N") from None
    return device
