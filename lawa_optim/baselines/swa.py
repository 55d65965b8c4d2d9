"""``SWAWrapper``: stochastic weight averaging of snapshots (torch's ``swa_utils``)."""

from __future__ import annotations

from typing import Any

from torch.optim import Optimizer
from torch.optim.swa_utils import get_swa_multi_avg_fn

from .._checks import is_int
from .._shared import shared
from ._shadow import ShadowWrapper

__all__ = ["SWAWrapper"]


class SWAWrapper(ShadowWrapper):
    r"""Stochastic Weight Averaging (Izmailov et al., 2018): the equal-weight mean of all snapshots
    from the ``swa_start``-th on.

    Snapshots are numbered from 0 (every ``period`` optimizer steps, or each :meth:`snapshot`
    call); snapshot ``i >= swa_start`` makes one update of the running mean, computed by
    ``torch.optim.swa_utils.get_swa_multi_avg_fn`` as ``AveragedModel.update_parameters`` does
    (the first one copies the weights). :meth:`averaged` evaluates the mean; it raises before the
    first averaged snapshot. The running mean is kept in the parameters' dtype as torch keeps it
    (float32 for float16/bfloat16 parameters). Being an optimizer itself, the wrapper accepts
    ``torch.optim.swa_utils.SWALR`` for the usual constant or annealed SWA learning rate, and
    ``bn_loader=`` on :meth:`averaged` does what ``update_bn`` does for an ``AveragedModel``.

    Args:
        optimizer (torch.optim.Optimizer): the base optimizer.
        period (int, optional): snapshot every ``period`` optimizer steps (``len(train_loader)``:
            once per epoch, as in the SWA paper); ``None`` for explicit :meth:`snapshot` calls (default: None).
        swa_start (int, optional): index of the first snapshot that enters the mean; with one
            snapshot per epoch, the epoch SWA starts at (the SWA paper starts at ~75% of the
            training budget) (default: 0).

    Example:
        >>> opt = SWAWrapper(torch.optim.SGD(model.parameters(), lr=0.1), period=len(loader), swa_start=160)
        >>> swa_sched = torch.optim.swa_utils.SWALR(opt, swa_lr=0.05)
        >>> with opt.averaged(model=model, bn_loader=loader):
        ...     evaluate(model)
    """

    method = "swa"
    snapshots_taken = shared()
    n_averaged = shared()

    def __init__(self, optimizer: Optimizer, period: int | None = None, swa_start: int = 0) -> None:
        if not is_int(swa_start, 0):
            raise ValueError(
                f"Invalid swa_start: {swa_start!r}; use a non-negative int, the index of the first "
                "snapshot (epoch, with period=len(train_loader)) to average"
            )
        super().__init__(optimizer, period, get_swa_multi_avg_fn())
        self.swa_start = swa_start
        self.snapshots_taken = 0
        self.n_averaged = 0

    def _describe(self) -> str:
        return f"period={self.period}, swa_start={self.swa_start}"

    @property
    def num_snapshots(self) -> int:
        """How many snapshots the mean holds."""
        return self.n_averaged

    # --------------------------------------------------------------------------- hooks
    def _take_snapshot(self) -> None:
        index = self.snapshots_taken
        self.snapshots_taken += 1
        if index < self.swa_start:
            return
        self._average_in(self.n_averaged)
        self.n_averaged += 1

    def _check_can_average(self, k: int | None) -> None:
        super()._check_can_average(k)
        if self.n_averaged == 0:
            raise RuntimeError(
                f"No SWA mean yet: averaging starts at snapshot {self.swa_start} (swa_start) and "
                f"{self.snapshots_taken} snapshot(s) were taken (period={self.period})"
            )

    def _method_state(self) -> dict[str, Any]:
        return {
            "swa_start": self.swa_start,
            "snapshots_taken": self.snapshots_taken,
            "n_averaged": self.n_averaged,
            "average": self._shadow.state(),
        }

    def _check_method_state(self, state: dict[str, Any]) -> None:
        if state.get("swa_start") != self.swa_start:
            raise ValueError(
                f"Invalid state_dict: saved with swa_start={state.get('swa_start')!r}, this wrapper has "
                f"swa_start={self.swa_start}; create it with the same swa_start"
            )
        taken, n = state.get("snapshots_taken"), state.get("n_averaged")
        if not is_int(taken, 0) or not is_int(n, 0) or n != max(0, taken - self.swa_start):
            raise ValueError(
                f"Invalid state_dict: snapshots_taken={taken!r}, n_averaged={n!r} do not agree with "
                f"swa_start={self.swa_start}"
            )
        self._shadow.check(state.get("average"), "state_dict['lawa']['average']")

    def _load_method_state(self, state: dict[str, Any]) -> None:
        self.snapshots_taken = state["snapshots_taken"]
        self.n_averaged = state["n_averaged"]
        self._shadow.load(state["average"])
