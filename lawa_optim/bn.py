"""Recompute BatchNorm statistics for swapped-in weights, with torch's ``update_bn``.

``torch.optim.swa_utils.update_bn`` is the reference semantics (running statistics reset, then
a cumulative average over one pass with ``momentum=None``). It only accepts tensor batches or
tuples whose first element is the input, always builds an autograd graph and reads the whole
loader; :func:`recompute_bn` feeds it through a small adapter that adds dict batches, a batch
limit, device placement and ``no_grad``.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import torch
from torch import nn

from ._checks import is_int
from ._tensors import move_to

__all__ = ["LABEL_KEYS", "has_batchnorm", "model_input", "recompute_bn"]

# Keys of a dict batch that hold targets rather than model inputs.
LABEL_KEYS = ("label", "labels", "target", "targets", "y")


def has_batchnorm(model: nn.Module) -> bool:
    """Whether ``model`` has a BatchNorm layer (whose statistics a swap may recompute)."""
    return any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules())


def model_input(model: nn.Module, batch: Any) -> Any:
    """Call ``model`` on one batch the way ``update_bn`` would, plus dict batches.

    A tensor is passed as is; a list or tuple passes its first element; a dict passes
    ``batch["net_input"]`` as keyword arguments (fairseq) when present, else every entry
    except the label keys (:data:`LABEL_KEYS`) as keyword arguments.
    """
    if isinstance(batch, (list, tuple)):
        return model(batch[0])
    if isinstance(batch, Mapping):
        if "net_input" in batch:
            return model(**batch["net_input"])
        return model(**{k: v for k, v in batch.items() if k not in LABEL_KEYS})
    return model(batch)


class _Adapter(nn.Module):
    def __init__(self, model: nn.Module, device: Any, forward: Callable[[nn.Module, Any], Any]) -> None:
        super().__init__()
        self.model = model
        self._device = device
        self._forward = forward

    def forward(self, batch: Any) -> Any:
        return self._forward(self.model, move_to(batch, self._device, non_blocking=True))


def recompute_bn(
    model: nn.Module,
    loader: Iterable[Any],
    *,
    max_batches: int | None = None,
    device: torch.device | str | None = None,
    forward: Callable[[nn.Module, Any], Any] | None = None,
) -> None:
    """Reset and recompute the running statistics of every BatchNorm layer of ``model``.

    Args:
        model (nn.Module): the model, with the weights to compute statistics for.
        loader (iterable): batches as tensors, ``(input, target)`` tuples or dicts.
        max_batches (int, optional): stop after this many batches; a subset of the training
            data is usually enough (default: None, the whole loader).
        device (torch.device, optional): move each batch there first (default: None).
        forward (callable, optional): ``forward(model, batch)`` for batches of another shape
            (default: :func:`model_input`).
    """
    if max_batches is not None and not is_int(max_batches, 1):
        raise ValueError(f"Invalid max_batches: {max_batches!r}; use a positive int or None for the whole loader")
    batches = loader if max_batches is None else itertools.islice(loader, max_batches)
    adapter = _Adapter(model, device, forward or model_input)
    adapter.train(model.training)  # update_bn restores the adapter's mode: the model's, not a new module's train()
    with torch.no_grad():
        # Each batch is wrapped in a 1-tuple: update_bn passes its first element to the adapter.
        torch.optim.swa_utils.update_bn(((b,) for b in batches), adapter)
