"""``EXPWrapper``: exponentially-decayed coefficients over the k latest snapshots (Appendix C)."""

from __future__ import annotations

from torch.optim import Optimizer

from ..wrapper import LAWAWrapper

__all__ = ["EXPWrapper"]


class EXPWrapper(LAWAWrapper):
    r"""The paper's EXP comparator: :class:`LAWAWrapper` with ``weights="exp"``.

    Evaluates :math:`\sum_{i<j} c_i \theta_{E-i}` over the ``j = min(k, snapshots)`` latest
    snapshots with :math:`c_i \propto \alpha (1-\alpha)^i` normalized to sum to 1, which is the
    recursion :math:`\theta^{EXP}_E = \alpha \theta_E + (1-\alpha) \theta^{EXP}_{E-1}` of
    Appendix C truncated to the window. The paper's setting is ``alpha=0.9, k=10``.
    Its state dict carries ``method="exp"``, so it never loads into a uniform LAWA wrapper.

    Args:
        optimizer (torch.optim.Optimizer): the base optimizer.
        k (int, optional): number of latest snapshots in the window (default: 10).
        period (int, optional): snapshot every ``period`` optimizer steps (default: None).
        alpha (float, optional): weight of the newest snapshot in the recursion, in (0, 1] (default: 0.9).
        offload (str, optional): see :class:`LAWAWrapper` (default: None).
        nonfinite (str, optional): see :class:`LAWAWrapper` (default: ``"raise"``).

    Example:
        >>> opt = EXPWrapper(torch.optim.SGD(model.parameters(), lr=0.1), period=len(loader))
        >>> with opt.averaged():
        ...     evaluate(model)
    """

    method = "exp"

    def __init__(
        self,
        optimizer: Optimizer,
        k: int = 10,
        period: int | None = None,
        *,
        alpha: float = 0.9,
        offload: str | None = None,
        nonfinite: str = "raise",
    ) -> None:
        super().__init__(optimizer, k, period, weights="exp", alpha=alpha, offload=offload, nonfinite=nonfinite)
