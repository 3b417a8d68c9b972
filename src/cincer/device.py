"""Where models compute: a device name checked once, with one-line errors."""

from __future__ import annotations

import torch

from .errors import CincerError

DEVICE_HELP = "where the models train, e.g. cuda (default: the CPU); results are equivalent, not bit-identical"


def resolve_device(name: str | None) -> torch.device | None:
    """``None`` (the CPU) or a torch device that exists on this machine. On CUDA, TF32 is turned off
    so that float32 stays float32, as on a CPU."""
    if name is None:
        return None
    try:
        device = torch.device(name)
    except RuntimeError:
        raise CincerError(f"unknown device {name!r} (e.g. cpu, cuda, cuda:1)") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise CincerError(f"device {name!r}: this machine has no CUDA GPU that torch can use")
        torch.backends.cuda.matmul.allow_tf32 = False
        torch.backends.cudnn.allow_tf32 = False
    return device
