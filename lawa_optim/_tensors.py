"""Copying lists of tensors and moving nested batches and states of tensors between devices."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch

__all__ = ["copy_list", "move_to"]


def copy_list(dst: list[torch.Tensor], src: list[torch.Tensor], foreach: bool) -> None:
    """``dst[i].copy_(src[i])``; one foreach call if ``foreach`` (plain tensors, one device)."""
    if foreach and dst:
        torch._foreach_copy_(dst, src)
    else:
        for d, t in zip(dst, src):
            d.detach().copy_(t)


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
