"""``torch_optimizer.Lookahead``, fixed by subclassing to be a working ``torch.optim.Optimizer``.

Importing this module imports ``torch_optimizer`` (``pip install lawa-optim[zoo]``). What is
broken upstream (torch-optimizer 0.3.0, the latest release) on current torch, and the fix:

1. ``__init__`` never calls ``Optimizer.__init__``, so the hook dictionaries and the step
   patching that torch's ``Optimizer`` relies on do not exist: ``state_dict()`` raises
   ``AttributeError: 'Lookahead' object has no attribute '_optimizer_state_dict_pre_hooks'``, and
   ``register_step_pre_hook``/``register_step_post_hook``/``register_load_state_dict_post_hook``
   raise too. Fixed: the attributes are created as ``Optimizer.__init__`` creates them.
2. ``load_state_dict()`` goes through ``Optimizer.load_state_dict`` for the slow weights, which
   rebinds ``self.param_groups`` to a new list of new dicts, and then loads the inner optimizer,
   which rebinds *its* ``param_groups`` to another one. After resuming, Lookahead and its inner
   optimizer no longer share their groups: an LR scheduler (or ``SWALR``) attached to the
   Lookahead edits groups the inner optimizer never reads, so the schedule silently stops, and
   the step counters Lookahead advances are not the ones the next ``state_dict()`` saves.
   Fixed: everything is checked first, the inner optimizer loads, the groups are shared again,
   the slow weights are loaded as copies, and load-state-dict post hooks run last.
3. ``add_param_group`` is ``Optimizer``'s: it appends a group built from Lookahead's defaults
   without the ``counter`` key (the next ``step()`` raises ``KeyError: 'counter'``) and bypasses the
   inner optimizer's own ``add_param_group``. Fixed: the inner optimizer adds the group and the
   group gets ``counter = 0`` as upstream's ``__init__`` gives every group.
4. ``defaults`` is a copy ``{"k", "alpha", **inner.defaults}``; here it is the inner optimizer's
   own dict, as torch's wrappers share it (a copy goes stale and spreads ``k``/``alpha`` into param
   groups of code that fills groups from ``defaults``).
5. ``zero_grad(set_to_none=False)`` by default, unlike torch's ``True``; fixed to ``True``.
6. ``k=0`` is accepted and fails in ``step()`` with ``ZeroDivisionError``, a float ``k`` or
   ``alpha > 1`` are accepted; fixed: ``k`` must be an int >= 1, ``alpha`` in (0, 1].

Kept as upstream (the update rule is the package's, unchanged): the slow weights are created
from the fast weights at the first step (after the first inner step), and synchronised after
steps 1, k+1, 2k+1, ..., i.e. one step later than the paper's schedule (sync after steps
k, 2k, ...); ``fast <- alpha * fast + (1 - alpha) * slow; slow <- fast``.
"""

from __future__ import annotations

from collections import OrderedDict, defaultdict
from typing import Any

import torch
import torch_optimizer
from torch import Tensor
from torch.optim import Optimizer

from .._checks import is_int, is_number

__all__ = ["Lookahead"]

_HOOK_DICTS = (
    "_optimizer_step_pre_hooks",
    "_optimizer_step_post_hooks",
    "_optimizer_state_dict_pre_hooks",
    "_optimizer_state_dict_post_hooks",
    "_optimizer_load_state_dict_pre_hooks",
    "_optimizer_load_state_dict_post_hooks",
)
_KEYS = ("fast_state", "slow_state", "param_groups")


class Lookahead(torch_optimizer.Lookahead):
    """``torch_optimizer.Lookahead`` (Zhang et al., 2019) that works as a ``torch.optim.Optimizer``.

    Args:
        optimizer (torch.optim.Optimizer): the inner ("fast") optimizer.
        k (int, optional): synchronise the slow weights every ``k`` steps (default: 5).
        alpha (float, optional): slow-weights step size, in (0, 1] (default: 0.5, upstream's).

    Example:
        >>> opt = Lookahead(torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9), k=5, alpha=0.8)
        >>> sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=100)
        >>> torch.save(opt.state_dict(), "opt.pt")  # raises AttributeError upstream
    """

    def __init__(self, optimizer: Optimizer, k: int = 5, alpha: float = 0.5) -> None:
        if not isinstance(optimizer, Optimizer):
            raise TypeError(f"Invalid optimizer: {type(optimizer).__name__} is not a torch.optim.Optimizer")
        if not is_int(k, 1):
            raise ValueError(f"Invalid k: {k!r}; use an int >= 1, the number of fast steps per sync (e.g. 5)")
        if not is_number(alpha) or not 0.0 < alpha <= 1.0:
            raise ValueError(f"Invalid alpha: {alpha!r}; use a float in (0, 1] (1.0 recovers the inner optimizer)")
        super().__init__(optimizer, k=k, alpha=float(alpha))
        # What Optimizer.__init__ would have set (upstream never calls it).
        self.defaults = optimizer.defaults
        for name in _HOOK_DICTS:
            setattr(self, name, OrderedDict())
        self._patch_step_function()
        self._warned_capturable_if_run_uncaptured = True

    def zero_grad(self, set_to_none: bool = True) -> None:
        """Clear the gradients through the inner optimizer (``set_to_none=True`` as in torch)."""
        self.optimizer.zero_grad(set_to_none=set_to_none)

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        """Add a group through the inner optimizer; its Lookahead counter starts at 0."""
        self.optimizer.add_param_group(param_group)
        self.param_groups = self.optimizer.param_groups
        self.param_groups[-1]["counter"] = 0

    def _check_slow_state(self, slow_state: Any, params: list[Tensor]) -> None:
        if not isinstance(slow_state, dict):
            raise ValueError(f"Invalid state_dict: 'slow_state' is a {type(slow_state).__name__}, expected a dict")
        for index, entry in slow_state.items():
            if not is_int(index, 0, len(params) - 1):
                raise ValueError(
                    f"Invalid state_dict: slow_state has an entry for parameter {index!r}, this optimizer has "
                    f"{len(params)} parameters; load a state dict saved for the same model"
                )
            slow = entry.get("slow_param") if isinstance(entry, dict) else None
            if not isinstance(slow, Tensor) or tuple(slow.shape) != tuple(params[index].shape):
                got = tuple(slow.shape) if isinstance(slow, Tensor) else type(slow).__name__
                raise ValueError(
                    f"Invalid state_dict: slow weights of parameter {index} are {got}, expected a tensor of "
                    f"shape {tuple(params[index].shape)}"
                )

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Load a state dict from :meth:`state_dict`; checked before anything changes."""
        for hook in self._optimizer_load_state_dict_pre_hooks.values():
            state_dict = hook(self, state_dict) or state_dict
        if not isinstance(state_dict, dict) or any(key not in state_dict for key in _KEYS):
            keys = sorted(state_dict) if isinstance(state_dict, dict) else type(state_dict).__name__
            raise ValueError(f"Invalid state_dict: expected the keys {_KEYS} of Lookahead.state_dict(), got {keys}")
        groups = state_dict["param_groups"]
        if not isinstance(groups, list) or any(
            not isinstance(g, dict) or isinstance(g.get("counter"), bool) or not isinstance(g.get("counter"), int)
            for g in groups
        ):
            raise ValueError(
                "Invalid state_dict: its param_groups lack Lookahead's int 'counter'; was it saved by Lookahead?"
            )
        params = [p for group in self.param_groups for p in group["params"]]
        self._check_slow_state(state_dict["slow_state"], params)
        # The inner optimizer checks group counts and sizes before it changes anything.
        self.optimizer.load_state_dict({"state": state_dict["fast_state"], "param_groups": state_dict["param_groups"]})
        self.param_groups = self.optimizer.param_groups
        self.fast_state = self.optimizer.state
        state: defaultdict[Tensor, dict[str, Any]] = defaultdict(dict)
        with torch.no_grad():
            for index, entry in state_dict["slow_state"].items():
                p = params[index]
                state[p] = {
                    key: value.to(device=p.device, dtype=p.dtype, copy=True) if isinstance(value, Tensor) else value
                    for key, value in entry.items()
                }
        self.state = state
        for hook in self._optimizer_load_state_dict_post_hooks.values():
            hook(self)
