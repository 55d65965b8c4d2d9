"""One averaged copy of the parameters, updated by torch's ``swa_utils`` multi-tensor functions.

Shared by :class:`~lawa_optim.baselines.ema.EMAWrapper` and
:class:`~lawa_optim.baselines.swa.SWAWrapper`. The copy is kept in the parameters' dtype, except
for float16/bfloat16 parameters whose copy is float32 (a 0.999 EMA, or a mean of many snapshots,
is lost in half precision). Updates go through the ``multi_avg_fn`` that
``torch.optim.swa_utils.AveragedModel`` uses, called per (device, dtype) group as it does.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import Tensor
from torch.optim import Optimizer

from ..protocol import AveragingOptimizer

__all__ = ["Shadow", "ShadowWrapper"]

_HALF = (torch.float16, torch.bfloat16)


def _shadow_dtype(p: Tensor) -> torch.dtype:
    if not p.dtype.is_floating_point:
        raise TypeError(f"Invalid parameter dtype {p.dtype}: only floating-point parameters can be averaged")
    return torch.float32 if p.dtype in _HALF else p.dtype


class Shadow:
    """An averaged copy of ``params``, initialized to their current values.

    Args:
        params (sequence of Tensor): the training parameters (never modified here).
    """

    def __init__(self, params: Sequence[Tensor]) -> None:
        self.params: list[Tensor] = []
        self.avg: list[Tensor] = []
        self._groups: list[tuple[list[Tensor], list[Tensor]]] = []
        self.add(params)

    def add(self, params: Sequence[Tensor]) -> None:
        """Track more parameters; their average starts at their current value."""
        dtypes = [_shadow_dtype(p) for p in params]  # check all before changing anything
        with torch.no_grad():
            for p, dtype in zip(params, dtypes, strict=True):
                self.params.append(p)
                self.avg.append(p.detach().to(dtype=dtype, copy=True))
        groups: dict[tuple[torch.device, torch.dtype], tuple[list[Tensor], list[Tensor]]] = {}
        for p, a in zip(self.params, self.avg, strict=True):
            avgs, ps = groups.setdefault((a.device, a.dtype), ([], []))
            avgs.append(a)
            ps.append(p)
        self._groups = list(groups.values())

    @torch.no_grad()
    def copy_from_params(self) -> None:
        """Set the average to the current parameters (``AveragedModel``'s first update)."""
        for avgs, ps in self._groups:
            torch._foreach_copy_(avgs, [p.detach() for p in ps])

    @torch.no_grad()
    def update(self, multi_avg_fn: Callable[[list[Tensor], list[Tensor], Any], None], n_averaged: Any) -> None:
        """``multi_avg_fn(averages, current, n_averaged)`` per (device, dtype) group."""
        for avgs, ps in self._groups:
            current = [
                p.detach() if p.dtype == a.dtype else p.detach().to(a.dtype) for p, a in zip(ps, avgs, strict=True)
            ]
            multi_avg_fn(avgs, current, n_averaged)

    @torch.no_grad()
    def write_to(self, params: Sequence[Tensor]) -> None:
        """Copy the average into ``params`` (the same tensors as :attr:`params`), in place."""
        for p, a in zip(params, self.avg, strict=True):
            p.copy_(a)

    # ------------------------------------------------------------------------------- state
    def state(self) -> list[Tensor]:
        """Copies of the averages, one per parameter."""
        return [a.detach().clone() for a in self.avg]

    def check(self, tensors: Any, where: str) -> None:
        """Raise ``ValueError`` naming what does not match; change nothing."""
        if not isinstance(tensors, (list, tuple)) or len(tensors) != len(self.avg):
            n = len(tensors) if isinstance(tensors, (list, tuple)) else type(tensors).__name__
            raise ValueError(
                f"Invalid state dict: {where} holds averages of {n} parameters, this optimizer has "
                f"{len(self.avg)}; load a state dict saved for the same model and param groups"
            )
        for i, (t, a) in enumerate(zip(tensors, self.avg, strict=True)):
            if not isinstance(t, Tensor) or tuple(t.shape) != tuple(a.shape) or not t.dtype.is_floating_point:
                got = f"{tuple(t.shape)} {t.dtype}" if isinstance(t, Tensor) else type(t).__name__
                raise ValueError(
                    f"Invalid state dict: {where}[{i}] is {got}, expected {tuple(a.shape)} {a.dtype}; "
                    "was it saved with another model?"
                )

    @torch.no_grad()
    def load(self, tensors: Sequence[Tensor]) -> None:
        """Load averages checked by :meth:`check` (cast to this shadow's device and dtype)."""
        for a, t in zip(self.avg, tensors, strict=True):
            a.copy_(t)


class ShadowWrapper(AveragingOptimizer):
    """Base of the wrappers whose evaluation weights are one averaged copy (EMA, SWA).

    Args:
        optimizer (torch.optim.Optimizer): the base optimizer.
        period (int, optional): see :class:`~lawa_optim.protocol.AveragingOptimizer`.
        multi_avg_fn (callable): ``multi_avg_fn(averages, current, n_averaged)`` from
            ``torch.optim.swa_utils`` (``get_ema_multi_avg_fn`` or ``get_swa_multi_avg_fn``).
    """

    def __init__(self, optimizer: Optimizer, period: int | None, multi_avg_fn: Callable[..., None]) -> None:
        super().__init__(optimizer, period)
        self._avg_fn = multi_avg_fn
        self._shadow = Shadow(self._params)

    def _average_in(self, n_averaged: int) -> None:
        """One ``AveragedModel.update_parameters``: the first update copies the weights."""
        if n_averaged == 0:
            self._shadow.copy_from_params()
        else:
            self._shadow.update(self._avg_fn, n_averaged)

    def _write_eval_weights(self, params: list[Tensor], k: int | None) -> None:
        self._shadow.write_to(params)

    def _on_new_params(self, params: list[Tensor]) -> None:
        self._shadow.add(params)
