"""Online k: choose LAWA's window at each evaluation on a held-out selection split.

The paper's first open question (Section 4, its Figure 2): the best k changes during training,
small early and larger later. The ring already holds the k latest snapshots and
``averaged(k=j)`` gives any window ``j <= k`` from one run, so the window can be chosen as
training goes: :class:`OnlineK` evaluates a few windows on a small *selection* split (held out
from the training data, never the split the results are reported on) and keeps the best.

Strategies, by cost in passes over the selection split (``m = min(max_k, snapshots)``):

- ``"all"``: every ``j`` in ``1..m`` (``m`` passes): the exhaustive search.
- ``"doubling"``: ``j`` in ``1, 2, 4, ..., m`` (``floor(log2 m) + 2`` passes at most).
- ``"local"``: the previous choice and its two neighbours (3 passes at most), a hill climb that
  moves one step per evaluation; it suits the slow drift of the best k the paper describes.

With BatchNorm, pass ``model=..., bn_loader=...`` as ``swap_kwargs``: each candidate's statistics
are recomputed (one more pass over ``bn_loader`` per candidate). Selecting changes nothing in
training: every candidate is swapped in and out, bit-exactly, and the optimizer is not stepped.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from contextlib import AbstractContextManager
from typing import Any

from ._checks import is_int, is_number
from ._shared import owner_of
from .protocol import STATE_KEY as WRAPPER_KEY
from .wrapper import LAWAWrapper

__all__ = ["STRATEGIES", "OnlineK", "candidate_windows"]

STRATEGIES = ("all", "doubling", "local")
STATE_KEY = "online_k"  # its entry in the wrapper's state_dict()["lawa"]


def candidate_windows(strategy: str, available: int, previous: int | None = None) -> list[int]:
    """The windows ``strategy`` evaluates when ``available`` snapshots can be averaged, ascending.

    Example:
        >>> candidate_windows("doubling", 12), candidate_windows("local", 12, previous=5)
        ([1, 2, 4, 8, 12], [4, 5, 6])
    """
    if strategy not in STRATEGIES:
        raise ValueError(f"Invalid strategy: {strategy!r}; use one of {STRATEGIES}")
    if not is_int(available, 1):
        raise ValueError(f"Invalid available: {available!r}; it must be an int >= 1 (take a snapshot first)")
    if strategy == "all":
        return list(range(1, available + 1))
    if strategy == "doubling":
        return sorted({min(2**i, available) for i in range(available.bit_length() + 1)})
    c = 1 if previous is None else min(max(previous, 1), available)
    return [j for j in (c - 1, c, c + 1) if 1 <= j <= available]


class OnlineK:
    r"""Pick LAWA's window ``j`` in ``1..max_k`` at each evaluation from a selection split.

    Call :meth:`select` at each evaluation (after the epoch's snapshot), then evaluate with
    :meth:`averaged`. The choices are kept in :attr:`history` and saved in the wrapper's own
    ``state_dict()`` (under ``["lawa"]["online_k"]``), so a resumed run chooses exactly as the
    uninterrupted one; create the :class:`OnlineK` before loading the wrapper's state.

    Args:
        optimizer (LAWAWrapper): the wrapper whose ring the windows come from (also EXP, lawa_jump).
        evaluate (callable): ``evaluate() -> float`` on the selection split, a number to *minimize*
            (the selection loss; minus an accuracy), computed on the model as it is when called.
        max_k (int, optional): the largest window considered (default: ``optimizer.k``).
        strategy (str, optional): ``"all"``, ``"doubling"`` or ``"local"``; see the module docstring
            (default: ``"all"``).
        swap_kwargs (mapping, optional): passed to ``optimizer.averaged`` for each candidate and by
            :meth:`averaged` (``model=..., bn_loader=...`` to recompute BatchNorm) (default: None).

    Example:
        >>> opt = LAWAWrapper(torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9), k=12,
        ...                   period=len(train_loader))
        >>> online = OnlineK(opt, lambda: evaluate_loss(model, selection_loader))
        >>> for epoch in range(epochs):
        ...     train_one_epoch(model, opt)
        ...     j = online.select()          # j passes over the selection split at most
        ...     with online.averaged():      # the average of the j latest snapshots
        ...         evaluate(model, val_loader)
    """

    def __init__(
        self,
        optimizer: LAWAWrapper,
        evaluate: Callable[[], float],
        *,
        max_k: int | None = None,
        strategy: str = "all",
        swap_kwargs: Mapping[str, Any] | None = None,
    ) -> None:
        if not isinstance(optimizer, LAWAWrapper):
            raise TypeError(
                f"Invalid optimizer: {type(optimizer).__name__} has no ring of snapshots to choose a window "
                "from; pass a LAWAWrapper (or EXP, lawa_jump)"
            )
        if not callable(evaluate):
            raise TypeError(f"Invalid evaluate: {evaluate!r} is not callable; pass a function returning a loss")
        if max_k is not None and not is_int(max_k, 1, optimizer.k):
            raise ValueError(f"Invalid max_k: {max_k!r}; use an int in [1, {optimizer.k}] (the wrapper's k) or None")
        if strategy not in STRATEGIES:
            raise ValueError(f"Invalid strategy: {strategy!r}; use one of {STRATEGIES}")
        if swap_kwargs is not None and not isinstance(swap_kwargs, Mapping):
            raise TypeError(f"Invalid swap_kwargs: {swap_kwargs!r}; use a dict such as {{'model': m, 'bn_loader': b}}")
        optimizer = owner_of(optimizer)  # the wrapper, also when given a framework proxy of it
        if getattr(optimizer, "online_k", None) is not None:
            raise RuntimeError(
                "Invalid optimizer: it already has an OnlineK (its choices are saved in its state dict); "
                "use that one, or a wrapper of its own"
            )
        optimizer.online_k = self
        self.optimizer = optimizer
        self.evaluate = evaluate
        self.max_k = optimizer.k if max_k is None else max_k
        self.strategy = strategy
        self.swap_kwargs = dict(swap_kwargs or {})
        #: one entry per :meth:`select`: ``{"step": num_steps, "k": chosen, "scores": {j: value}}``
        self.history: list[dict[str, Any]] = []
        self._pending: dict[str, Any] | None = None
        optimizer.register_state_dict_post_hook(self._save)
        optimizer.register_load_state_dict_pre_hook(self._check_load)
        optimizer.register_load_state_dict_post_hook(self._apply_load)

    @property
    def k(self) -> int | None:
        """The window chosen by the last :meth:`select` (None before the first)."""
        return self.history[-1]["k"] if self.history else None

    def select(self) -> int:
        """Evaluate the strategy's candidate windows on the selection split; keep and return the best.

        Ties go to the smaller window. Raises ``RuntimeError`` while swapped in or before the first
        snapshot, and ``ValueError`` if ``evaluate`` returns something that is not a finite number.
        """
        opt = self.optimizer
        if opt.swapped_in:
            raise RuntimeError(
                "OnlineK.select() while the averaged weights are swapped in; leave the `with opt.averaged():` "
                "block or call opt.swap_out() first"
            )
        if opt.num_snapshots == 0:
            raise RuntimeError("OnlineK.select(): no snapshot to average yet; call it after the first snapshot")
        available = min(self.max_k, opt.num_snapshots)
        scores: dict[int, float] = {}
        for j in candidate_windows(self.strategy, available, self.k):
            with opt.averaged(j, **self.swap_kwargs):
                value = self.evaluate()
            if not is_number(value) or not math.isfinite(value):
                raise ValueError(f"evaluate() returned {value!r} for k={j}; it must return a finite number to minimize")
            scores[j] = float(value)
        best = min(scores, key=lambda j: (scores[j], j))
        self.history.append({"step": opt.num_steps, "k": best, "scores": scores})
        return best

    def averaged(self, **swap_kwargs: Any) -> AbstractContextManager[None]:
        """``optimizer.averaged(k=<the chosen window>)`` (all snapshots before the first :meth:`select`)."""
        return self.optimizer.averaged(self.k, **{**self.swap_kwargs, **swap_kwargs})

    # --------------------------------------------------------------------------- state
    def state_dict(self) -> dict[str, Any]:
        """``{"max_k", "strategy", "history"}`` (plain values: ``weights_only=True`` loads it)."""
        history = [{"step": h["step"], "k": h["k"], "scores": {int(j): v for j, v in h["scores"].items()}}
                   for h in self.history]
        return {"max_k": self.max_k, "strategy": self.strategy, "history": history}

    def _validated(self, state: Any) -> list[dict[str, Any]]:
        def entry_ok(h: Any) -> bool:
            return (isinstance(h, dict) and is_int(h.get("step"), 0) and is_int(h.get("k"), 1, self.max_k)
                    and isinstance(h.get("scores"), dict) and h["k"] in h["scores"]
                    and all(is_int(j, 1) and is_number(v) for j, v in h["scores"].items()))

        if not isinstance(state, dict) or not isinstance(state.get("history"), list) or \
                not all(entry_ok(h) for h in state["history"]):
            raise ValueError(f"Invalid OnlineK state: {state!r:.200}; expected {{'max_k', 'strategy', 'history'}}")
        if state.get("max_k") != self.max_k or state.get("strategy") != self.strategy:
            raise ValueError(
                f"Invalid OnlineK state: saved with max_k={state.get('max_k')!r}, strategy={state.get('strategy')!r}; "
                f"this one has max_k={self.max_k}, strategy={self.strategy!r}; create it with the same values"
            )
        return [{"step": h["step"], "k": h["k"], "scores": dict(h["scores"])} for h in state["history"]]

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Load :meth:`state_dict`'s output; checked before anything changes."""
        self.history = self._validated(state)

    def _save(self, _opt: Any, sd: dict[str, Any]) -> dict[str, Any]:
        sd[WRAPPER_KEY][STATE_KEY] = self.state_dict()
        return sd

    def _check_load(self, _opt: Any, sd: dict[str, Any]) -> None:
        mine = sd.get(WRAPPER_KEY) if isinstance(sd, dict) else None
        self._pending = None
        if isinstance(mine, dict) and STATE_KEY in mine:
            self._pending = {"history": self._validated(mine[STATE_KEY])}  # raises before anything loads
        elif isinstance(mine, dict):
            self._pending = {"history": []}  # saved without online k: no choice made yet

    def _apply_load(self, _opt: Any) -> None:
        if self._pending is not None:
            self.history = self._pending["history"]
            self._pending = None
