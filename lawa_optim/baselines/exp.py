"""``EXPWrapper``: exponentially-decayed coefficients over the k latest snapshots (Appendix C)."""

from __future__ import annotations

import inspect
from typing import Any

from torch.optim import Optimizer

from ..wrapper import LAWAWrapper

__all__ = ["EXPWrapper"]

_DEFAULTS = {"k": 10, "alpha": 0.9}  # the paper's setting


def _signature() -> inspect.Signature:
    """LAWAWrapper's signature without ``weights`` and with EXP's defaults."""
    sig = inspect.signature(LAWAWrapper.__init__)
    params = [
        p.replace(default=_DEFAULTS.get(p.name, p.default)) for p in sig.parameters.values() if p.name != "weights"
    ]
    return sig.replace(parameters=params)


class EXPWrapper(LAWAWrapper):
    r"""The paper's EXP comparator: :class:`LAWAWrapper` with ``weights="exp"``.

    Evaluates :math:`\sum_{i<j} c_i \theta_{E-i}` over the ``j = min(k, snapshots)`` latest
    snapshots with :math:`c_i \propto \alpha (1-\alpha)^i` normalized to sum to 1, which is the
    recursion :math:`\theta^{EXP}_E = \alpha \theta_E + (1-\alpha) \theta^{EXP}_{E-1}` of
    Appendix C truncated to the window. The paper's setting is ``alpha=0.9, k=10``, the defaults
    here; every other argument is :class:`LAWAWrapper`'s, forwarded as given (``offload``,
    ``offload_dir``, ``nonfinite``, ...), so the two cannot drift apart.
    Its state dict carries ``method="exp"``, so it never loads into a uniform LAWA wrapper.

    Example:
        >>> opt = EXPWrapper(torch.optim.SGD(model.parameters(), lr=0.1), period=len(loader))
        >>> with opt.averaged():
        ...     evaluate(model)
    """

    method = "exp"

    def __init__(self, optimizer: Optimizer, *args: Any, **kwargs: Any) -> None:
        if "weights" in kwargs:
            raise TypeError("Invalid argument weights: EXPWrapper's weights are 'exp'; use LAWAWrapper for others")
        bound = _SIGNATURE.bind(self, optimizer, *args, **kwargs)  # TypeError for what LAWA does not accept
        bound.apply_defaults()
        arguments = dict(bound.arguments)
        del arguments["self"]
        super().__init__(weights="exp", **arguments)


_SIGNATURE = _signature()
EXPWrapper.__init__.__signature__ = _SIGNATURE  # type: ignore[attr-defined]
