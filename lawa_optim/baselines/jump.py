"""``LAWAJumpWrapper``: LAWA that writes its average into the training weights and trains on from it.

The paper's second open question (Section 4): the average of the k latest snapshots runs ahead
of the raw weights, so could training *continue from* it ("jump forward")? This wrapper is
:class:`~lawa_optim.LAWAWrapper` plus jumps; every choice the paper leaves open is an option:

- **when**: a fixed schedule (``every`` snapshots, the first at snapshot ``start``), or on demand
  with :meth:`LAWAJumpWrapper.jump` / :meth:`LAWAJumpWrapper.jump_if_ahead` (when the average's
  lead on a held-out selection split exceeds a threshold);
- **the optimizer's state**: ``"keep"`` it (SGD's momentum, Adam's moments), ``"reset_momentum"``
  (zero the first moments ``momentum_buffer``/``exp_avg``, keep Adam's second moments and step
  counts: the direction of travel was averaged away, the gradient scale was not), or ``"reset"``
  (forget the state, as a fresh optimizer would);
- **the ring**: kept (the next average still holds the snapshots before the jump, whose mean is
  the jumped weights), or restarted from the jumped weights (``restart_ring=True``);
- **the learning rate**: untouched; the schedule goes on as it would have.

Lookahead (Zhang et al., 2019) is the same idea at a fine time scale: every few *steps* the slow
weights move a fraction ``alpha`` toward the fast ones, which restart from them. A jump is an
interpolation with ``alpha = 1`` toward the *mean* of the k latest epoch snapshots instead.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable
from typing import Any

import torch

from .._checks import is_int, is_number
from .._shared import on_owner, shared
from ..bn import recompute_bn
from ..wrapper import LAWAWrapper

__all__ = ["OPTIMIZER_STATE_CHOICES", "LAWAJumpWrapper"]

OPTIMIZER_STATE_CHOICES = ("keep", "reset_momentum", "reset")
_FIRST_MOMENTS = ("momentum_buffer", "exp_avg")  # SGD/RMSprop's momentum, Adam-family first moments


class LAWAJumpWrapper(LAWAWrapper):
    r"""LAWA whose average is written into the training weights, on a schedule or on demand.

    After a snapshot that makes a jump due, the average of the ring (the ``min(k, snapshots)``
    latest, as :meth:`averaged` evaluates it) is copied into the parameters in place, then the
    optimizer state and the ring are handled as the options say; the learning rate is never
    touched. :meth:`averaged` evaluates the average as :class:`~lawa_optim.LAWAWrapper` does.
    BatchNorm running statistics are left as they are (training mode uses batch statistics; they
    re-adapt within ~1/momentum steps); evaluate with ``averaged(model=..., bn_loader=...)``.

    Args:
        optimizer (torch.optim.Optimizer): the base optimizer.
        k (int, optional): the number of latest snapshots averaged, as in :class:`~lawa_optim.LAWAWrapper`
            (default: 6).
        period (int, optional): one snapshot every ``period`` optimizer steps, as in
            :class:`~lawa_optim.LAWAWrapper` (default: None, snapshots only on ``snapshot()``).
        every (int, optional): jump after every ``every``-th snapshot, the first at snapshot
            ``start``; counted from the last jump, whatever made it. ``None``: jump only on
            :meth:`jump` or :meth:`jump_if_ahead` calls (default: None).
        start (int, optional): the first scheduled jump comes no earlier than this many snapshots
            (``None``: ``k``, once the ring is full; the paper found averaging in the first epochs
            hurts) (default: None).
        optimizer_state (str, optional): what a jump does to the base optimizer's state: ``"keep"``,
            ``"reset_momentum"`` or ``"reset"`` (see the module docstring) (default: ``"keep"``).
        restart_ring (bool, optional): after a jump, empty the ring and put the jumped weights in
            it as its only snapshot (default: False, the ring is kept).
        **lawa_options: :class:`~lawa_optim.LAWAWrapper`'s other options (``weights``, ``alpha``,
            ``offload``, ``offload_dir``, ``nonfinite``), as there.

    Example:
        >>> opt = LAWAJumpWrapper(torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9),
        ...                       k=6, period=len(loader), every=6)   # a jump every 6 epochs
        >>> for epoch in range(epochs):
        ...     for x, y in loader:
        ...         opt.zero_grad(); loss_fn(model(x), y).backward(); opt.step()
        >>> opt.jumps        # optimizer steps at which it jumped
        [6 * len(loader), 12 * len(loader)]
    """

    method = "lawa_jump"
    jumps = shared()
    last_lead = shared()
    _taken = shared()
    _last_jump = shared()

    def __init__(
        self,
        optimizer: torch.optim.Optimizer,
        k: int = 6,
        period: int | None = None,
        *,
        every: int | None = None,
        start: int | None = None,
        optimizer_state: str = "keep",
        restart_ring: bool = False,
        **lawa_options: Any,
    ) -> None:
        if every is not None and not is_int(every, 1):
            raise ValueError(
                f"Invalid every: {every!r}; use a positive int (jump after every `every`-th snapshot) or None "
                "to jump only on opt.jump()/opt.jump_if_ahead() calls"
            )
        if start is not None and not is_int(start, 1):
            raise ValueError(f"Invalid start: {start!r}; use a positive int (snapshots before the first jump) or None")
        if optimizer_state not in OPTIMIZER_STATE_CHOICES:
            raise ValueError(f"Invalid optimizer_state: {optimizer_state!r}; use one of {OPTIMIZER_STATE_CHOICES}")
        if not isinstance(restart_ring, bool):
            raise TypeError(f"Invalid restart_ring: {restart_ring!r}; use True or False")
        # every other option is LAWAWrapper's, forwarded as given, so the two cannot drift apart
        super().__init__(optimizer, k, period, **lawa_options)
        self.every = every
        self.start = k if start is None else start
        self.optimizer_state = optimizer_state
        self.restart_ring = restart_ring
        self.jumps: list[int] = []  # num_steps at each jump
        self.last_lead: float | None = None  # the lead measured by the last jump_if_ahead call
        self._taken = 0  # snapshots taken since the start of training (the ring's count restarts)
        self._last_jump: int | None = None  # _taken at the last jump

    def _describe(self) -> str:
        return (f"{super()._describe()}, every={self.every}, start={self.start}, "
                f"optimizer_state={self.optimizer_state!r}, restart_ring={self.restart_ring}")

    @property
    def snapshots_taken(self) -> int:
        """Snapshots taken since the start of training (skipped ones excluded), across ring restarts."""
        return self._taken

    # --------------------------------------------------------------------------- jumps
    def _take_snapshot(self) -> None:
        before = self._ring.count
        super()._take_snapshot()
        if self._ring.count == before:
            return  # skipped (nonfinite="skip"): no new information, no jump
        self._taken += 1
        if self.every is None or self._taken < self.start:
            return
        if self._last_jump is None or self._taken - self._last_jump >= self.every:
            self._jump()

    @on_owner
    def jump(self) -> None:
        """Write the average into the training weights now, then handle the optimizer state and the ring.

        Raises ``RuntimeError`` while the average is swapped in or before the first snapshot.
        """
        self._require_training_weights("jump()")
        self._check_can_average(None)
        self._jump()

    @on_owner
    def jump_if_ahead(self, evaluate: Callable[[], float], threshold: float = 0.0, **swap_kwargs: Any) -> bool:
        """Jump if the average beats the training weights on ``evaluate`` by more than ``threshold``.

        Costs two calls of ``evaluate`` (keep its data small: a selection split held out from the
        training data, never the split results are reported on).

        Args:
            evaluate (callable): ``evaluate() -> float``, a number to *minimize* (a loss, or minus an
                accuracy) computed on the model as it is when called.
            threshold (float, optional): the lead ``evaluate(training) - evaluate(average)`` needed,
                in ``evaluate``'s units (default: 0.0, any lead).
            **swap_kwargs: passed to :meth:`averaged` (``model=..., bn_loader=...`` for BatchNorm: the
                training weights then get their statistics recomputed over ``bn_loader`` too, then
                restored, so that the lead is the weights' and not the statistics').

        Returns True if it jumped; the lead is kept in :attr:`last_lead`.
        """
        if not callable(evaluate):
            raise TypeError(f"Invalid evaluate: {evaluate!r} is not callable; pass a function returning a loss")
        if not is_number(threshold) or not math.isfinite(threshold):
            raise ValueError(f"Invalid threshold: {threshold!r}; use a finite number in evaluate()'s units")
        self._require_training_weights("jump_if_ahead()")
        self._check_can_average(None)
        raw = float(self._evaluate_training(evaluate, swap_kwargs))
        with self.averaged(**swap_kwargs):
            avg = float(evaluate())
        self.last_lead = raw - avg
        if self.last_lead > threshold:
            self._jump()
            return True
        return False

    @staticmethod
    def _evaluate_training(evaluate: Callable[[], float], swap_kwargs: dict[str, Any]) -> float:
        """``evaluate()`` on the training weights; with ``bn_loader``, their BatchNorm statistics are
        recomputed the same way first (and restored after), so both sides are compared alike."""
        loader = swap_kwargs.get("bn_loader")
        model = swap_kwargs.get("model")
        if loader is None or not isinstance(model, torch.nn.Module):
            return evaluate()
        buffers = list(model.buffers())
        saved = [b.detach().clone() for b in buffers]
        try:
            recompute_bn(model, loader, max_batches=swap_kwargs.get("bn_batches"), device=swap_kwargs.get("bn_device"),
                         forward=swap_kwargs.get("bn_forward"))
            return evaluate()
        finally:
            with torch.no_grad():
                for b, t in zip(buffers, saved):
                    b.copy_(t)

    def _jump(self) -> None:
        with torch.no_grad():
            self._write_eval_weights(self._params, None)
        self._newest_key = None  # the parameters are no longer the newest snapshot
        self._reset_optimizer_state()
        if self.restart_ring:
            self._restart_ring()
        self.jumps.append(self.num_steps)
        self._last_jump = self._taken

    def _reset_optimizer_state(self) -> None:
        if self.optimizer_state == "keep":
            return
        for p in self._params:
            if self.optimizer_state == "reset":
                self.state.pop(p, None)
                continue
            for key in _FIRST_MOMENTS:
                value = self.state.get(p, {}).get(key)
                if isinstance(value, torch.Tensor):
                    value.zero_()

    def _restart_ring(self) -> None:
        """Empty the ring, then snapshot the (jumped) weights into it."""
        ring = self._ring
        ring.clear()
        ring.push()
        self._newest_key = self._weights_key()

    # --------------------------------------------------------------------------- state
    def _method_state(self) -> dict[str, Any]:
        return {**super()._method_state(), "jump": {"taken": self._taken, "last_jump": self._last_jump,
                                                    "jumps": list(self.jumps), "last_lead": self.last_lead}}

    def _check_method_state(self, state: dict[str, Any]) -> None:
        super()._check_method_state(state)
        mine = state.get("jump")
        ok = (isinstance(mine, dict) and is_int(mine.get("taken"), 0)
              and (mine.get("last_jump") is None or is_int(mine.get("last_jump"), 0, mine.get("taken")))
              and isinstance(mine.get("jumps"), (list, tuple)) and all(is_int(s, 0) for s in mine["jumps"])
              and (mine.get("last_lead") is None or is_number(mine.get("last_lead"))))
        if not ok:
            raise ValueError(f"Invalid state_dict: its jump entry {mine!r} is not a lawa_jump state "
                             "({'taken', 'last_jump', 'jumps', 'last_lead'})")

    def _extra_meta(self) -> dict[str, int]:
        # in every parameter's state (lawa_jump_taken, lawa_jump_last: -1 for none yet), so that torch's
        # get/set_optimizer_state_dict, which drop the "lawa" entry, keep the jump schedule; the list of
        # jumps and the last lead are kept only in the "lawa" entry (opt.state_dict()/load_state_dict())
        last = self._last_jump
        return {"jump_taken": self._taken, "jump_last": -1 if last is None else last}

    def _extra_from_meta(self, meta: dict[str, int]) -> dict[str, Any]:
        last = meta["jump_last"]
        return {"jump": {"taken": meta["jump_taken"], "last_jump": None if last < 0 else last, "jumps": [],
                         "last_lead": None}}

    def _load_method_state(self, state: dict[str, Any]) -> None:
        super()._load_method_state(state)
        mine = state["jump"]
        self._taken, self._last_jump = int(mine["taken"]), mine["last_jump"]
        self.jumps, self.last_lead = [int(s) for s in mine["jumps"]], mine["last_lead"]


def _signature() -> inspect.Signature:
    """LAWAWrapper's signature followed by the jump's own keyword options (what the registry and
    ``help()`` show; ``**lawa_options`` accepts exactly LAWA's keyword arguments)."""
    lawa = list(inspect.signature(LAWAWrapper.__init__).parameters.values())
    own = [p for p in inspect.signature(LAWAJumpWrapper.__init__).parameters.values() if p.kind is p.KEYWORD_ONLY]
    return inspect.Signature([*lawa, *own])


LAWAJumpWrapper.__init__.__signature__ = _signature()  # type: ignore[attr-defined]
