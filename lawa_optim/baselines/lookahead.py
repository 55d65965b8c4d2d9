"""``LookaheadWrapper``: Lookahead (torch-optimizer's, fixed) behind the zoo's protocol."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor
from torch.optim import Optimizer

from .._shared import on_owner
from ..protocol import AveragingOptimizer, check_not_wrapped
from ._optional import import_optional

__all__ = ["LookaheadWrapper"]


class LookaheadWrapper(AveragingOptimizer):
    r"""Lookahead (Zhang et al., 2019) around a base optimizer; :meth:`averaged` evaluates the slow weights.

    The update is ``torch_optimizer.Lookahead``'s, unchanged, through the subclass
    :class:`lawa_optim.baselines.torch_optimizer_fix.Lookahead` that makes it a working
    ``torch.optim.Optimizer`` on current torch (see that module for the upstream bugs fixed).
    The wrapper's :attr:`optimizer` is that Lookahead, which wraps the given base optimizer.
    Unlike the averaging methods, Lookahead changes the training trajectory: every ``k`` steps
    the fast (training) weights are pulled back toward the slow weights.

    :meth:`averaged` swaps in the slow weights :math:`\phi`: they are Lookahead's iterate (the
    fast weights only explore the ``k`` steps ahead of them), and they are what the authors'
    reference code evaluates (its ``_backup_and_load_cache``). Right after a synchronisation the
    two coincide. Parameters without slow weights yet (before the first step) are evaluated as
    they are, as upstream creates the slow weights from them at the first step.

    Args:
        optimizer (torch.optim.Optimizer): the base ("fast") optimizer.
        k (int, optional): fast steps per synchronisation (default: 5, Appendix B's CIFAR-100 setting).
        alpha (float, optional): slow-weights step size, in (0, 1] (default: 0.8, Appendix B).

    Example:
        >>> opt = LookaheadWrapper(torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9), k=5, alpha=0.8)
        >>> opt.zero_grad(); loss_fn(model(x), y).backward(); opt.step()
        >>> with opt.averaged():
        ...     evaluate(model)  # the slow weights
    """

    method = "lookahead"

    def __init__(self, optimizer: Optimizer, k: int = 5, alpha: float = 0.8) -> None:
        fix = import_optional("lawa_optim.baselines.torch_optimizer_fix", "torch-optimizer", self.method)
        check_not_wrapped(optimizer)
        if isinstance(optimizer, fix.torch_optimizer.Lookahead):
            raise TypeError("Invalid optimizer: it is a Lookahead already; pass its base optimizer")
        super().__init__(fix.Lookahead(optimizer, k=k, alpha=alpha), period=None)
        self.k = k
        self.alpha = float(alpha)

    def _describe(self) -> str:
        return f"k={self.k}, alpha={self.alpha}"

    @property
    def num_snapshots(self) -> int:
        """How many times the slow weights were synchronised (after steps 1, k+1, 2k+1, ...)."""
        return 0 if self.num_steps == 0 else (self.num_steps - 1) // self.k + 1

    @on_owner
    def slow_weights(self) -> list[Tensor | None]:
        """The slow weights of each parameter (``None`` before its first step); read-only views."""
        assert self.optimizer is not None
        return [self.optimizer.state.get(p, {}).get("slow_param") for p in self._params]

    # --------------------------------------------------------------------------- hooks
    def _write_eval_weights(self, params: list[Tensor], k: int | None) -> None:
        with torch.no_grad():
            for p, slow in zip(params, self.slow_weights(), strict=True):
                if slow is not None:
                    p.copy_(slow)

    def _method_state(self) -> dict[str, Any]:
        return {"k": self.k, "alpha": self.alpha}

    def _check_method_state(self, state: dict[str, Any]) -> None:
        if state.get("k") != self.k or state.get("alpha") != self.alpha:
            raise ValueError(
                f"Invalid state_dict: saved with k={state.get('k')!r}, alpha={state.get('alpha')!r}; this wrapper "
                f"has k={self.k}, alpha={self.alpha}; create it with the same values"
            )
