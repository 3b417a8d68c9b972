"""Where models compute: a device name checked once, with one-line errors."""

from __future__ import annotations

from typing import Any

import torch

from .errors import CincerError

DEVICE_HELP = "where the models train, e.g. cuda (default: the CPU); results are equivalent, not bit-identical"


def resolve_device(name: Any) -> torch.device | None:
    """``None`` (the CPU) or a torch device that exists on this machine; ``"auto"`` is the first CUDA GPU
    when there is one, else the CPU. On CUDA, TF32 is turned off so that float32 stays float32, as on a CPU."""
    if name is None:
        return None
    if isinstance(name, str) and name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if not isinstance(name, (str, torch.device)):
        raise CincerError(f"device must be a name such as 'cpu', 'cuda' or 'auto', got {type(name).__name__}")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise CincerError(f"unknown device {name!r} (e.g. cpu, cuda, cuda:1, auto)") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise CincerError(f"device {str(name)!r}: this machine has no CUDA GPU that torch can use")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise CincerError(f"device {str(name)!r}: this machine has {torch.cuda.device_count()} CUDA GPU(s)")
        torch.backends.cuda.matmul.allow_tf32 = False
        torch.backends.cudnn.allow_tf32 = False
    return device
