"""Moving nested batches and states of tensors between devices (one helper for the package)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch

__all__ = ["move_to"]


def move_to(obj: Any, device: torch.device | str | None, non_blocking: bool = False) -> Any:
    """``obj`` with every tensor in it (nested in dicts, lists, tuples) detached and moved to
    ``device`` in its own dtype (fairseq's ``move_to_cpu`` would upcast fp16/bf16); anything else
    as it is. ``device=None`` returns ``obj`` unchanged."""
    if device is None:
        return obj
    if isinstance(obj, torch.Tensor):
        return obj.detach().to(device, non_blocking=non_blocking)
    if isinstance(obj, Mapping):
        return {key: move_to(value, device, non_blocking) for key, value in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(move_to(value, device, non_blocking) for value in obj)
    return obj
