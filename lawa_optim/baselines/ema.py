"""``EMAWrapper``: a per-step exponential moving average of the weights (torch's ``swa_utils``)."""

from __future__ import annotations

from typing import Any

from torch.optim import Optimizer
from torch.optim.swa_utils import get_ema_multi_avg_fn

from .._checks import is_int, is_number
from .._shared import shared
from ._shadow import ShadowWrapper

__all__ = ["EMAWrapper"]


class EMAWrapper(ShadowWrapper):
    r"""Exponential moving average of the weights, updated every ``update_every`` optimizer steps.

    :math:`W^{EMA}_1 = W_1`, then :math:`W^{EMA} \leftarrow \text{decay}\, W^{EMA} + (1-\text{decay})\, W`
    after every ``update_every``-th real optimizer step, computed by
    ``torch.optim.swa_utils.get_ema_multi_avg_fn`` (``torch._foreach_lerp_``) exactly as
    ``AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(decay))`` does when its
    ``update_parameters`` is called after those steps. The first update copies the weights, as
    ``AveragedModel`` does. :meth:`averaged` evaluates the EMA; it raises before the first update.
    The EMA is kept in float32 for float16/bfloat16 parameters. :meth:`snapshot` does nothing.
    Buffers are not averaged: BatchNorm statistics stay the model's unless ``bn_loader`` recomputes them.

    Args:
        optimizer (torch.optim.Optimizer): the base optimizer.
        decay (float, optional): the EMA decay, in [0, 1) (default: 0.999).
        update_every (int, optional): update the EMA every ``update_every`` optimizer steps; the
            decay applies per update, not per step (default: 1).

    Example:
        >>> opt = EMAWrapper(torch.optim.AdamW(model.parameters(), lr=1e-3), decay=0.999)
        >>> opt.zero_grad(); loss_fn(model(x), y).backward(); opt.step()
        >>> with opt.averaged():
        ...     evaluate(model)
    """

    method = "ema"
    num_updates = shared()

    def __init__(self, optimizer: Optimizer, decay: float = 0.999, update_every: int = 1) -> None:
        if not is_number(decay) or not (0.0 <= decay < 1.0):
            raise ValueError(f"Invalid decay: {decay!r}; use a float in [0, 1), e.g. 0.999")
        if not is_int(update_every, 1):
            raise ValueError(f"Invalid update_every: {update_every!r}; use a positive int (1 updates every step)")
        super().__init__(optimizer, None, get_ema_multi_avg_fn(float(decay)))
        self.decay = float(decay)
        self.update_every = update_every
        self.num_updates = 0

    def _describe(self) -> str:
        return f"decay={self.decay}, update_every={self.update_every}"

    @property
    def num_snapshots(self) -> int:
        """How many EMA updates were made."""
        return self.num_updates

    # --------------------------------------------------------------------------- hooks
    def _after_step(self) -> None:
        if self.num_steps % self.update_every:
            return
        self._average_in(self.num_updates)
        self.num_updates += 1

    def _check_can_average(self, k: int | None) -> None:
        super()._check_can_average(k)
        if self.num_updates == 0:
            raise RuntimeError(
                f"No EMA yet: the first update comes after {self.update_every} optimizer step(s) "
                f"({self.num_steps} taken so far)"
            )

    def _method_state(self) -> dict[str, Any]:
        return {
            "decay": self.decay,
            "update_every": self.update_every,
            "num_updates": self.num_updates,
            "average": self._shadow.state(),
        }

    def _check_method_state(self, state: dict[str, Any]) -> None:
        decay, every, n = state.get("decay"), state.get("update_every"), state.get("num_updates")
        if decay != self.decay or every != self.update_every:
            raise ValueError(
                f"Invalid state_dict: saved with decay={decay!r}, update_every={every!r}; this wrapper has "
                f"decay={self.decay}, update_every={self.update_every}; create it with the same values"
            )
        if not is_int(n, 0):
            raise ValueError(f"Invalid state_dict: num_updates={n!r} is not a non-negative int")
        self._shadow.check(state.get("average"), "state_dict['lawa']['average']")

    def _load_method_state(self, state: dict[str, Any]) -> None:
        self.num_updates = state["num_updates"]
        self._shadow.load(state["average"])
