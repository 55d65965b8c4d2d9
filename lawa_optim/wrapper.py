"""``LAWAWrapper``: LAtest Weight Averaging (Kaddour 2022) around any torch optimizer."""

from __future__ import annotations

import os
import warnings
from collections.abc import Sequence
from typing import Any

from torch import Tensor
from torch.optim import Optimizer

from . import ring_state
from ._checks import is_int
from ._shared import on_owner, shared
from ._tensors import copy_list
from .averaging import resolve_weights, window_coefficients
from .offload import check_offload, make_ring
from .protocol import STATE_KEY, AveragingOptimizer

__all__ = ["LAWAWrapper"]
NONFINITE_CHOICES = ("raise", "skip")


def _local(t: Tensor) -> Tensor:
    """A DTensor's (FSDP2) local shard, aliasing its storage; other tensors as they are."""
    return t.to_local() if hasattr(t, "to_local") else t


class LAWAWrapper(AveragingOptimizer):
    r"""Keep the k latest snapshots of the weights and evaluate their average.

    The average of the k latest snapshots (one per epoch in the paper) runs dozens of epochs
    ahead of the raw weights in the middle phase of training. The wrapper is itself a
    ``torch.optim.Optimizer`` sharing the base optimizer's ``param_groups`` and ``state``, so
    LR schedulers, ``torch.amp.GradScaler`` and ``add_param_group`` work as with the base
    optimizer. Only real optimizer steps count toward ``period`` (a step GradScaler skips
    never reaches :meth:`step`).

    With fewer than ``k`` snapshots taken, :meth:`averaged` averages those it has;
    before the first snapshot it raises ``RuntimeError``.

    Args:
        optimizer (torch.optim.Optimizer): the base optimizer (SGD, Adam, AdamW, foreach or fused).
        k (int, optional): number of latest snapshots to average (default: 6, the paper's default).
        period (int, optional): snapshot every ``period`` optimizer steps; ``len(train_loader)``
            is the paper's once per epoch; ``None`` snapshots only on :meth:`snapshot` (default: None).
        weights (str or sequence of float, optional): ``"uniform"`` (LAWA), ``"exp"`` (the paper's
            EXP comparator: ``alpha * (1 - alpha) ** i`` for the i-th newest snapshot, normalized),
            ``"linear"``, ``"cosine"``, ``"1-sqrt"`` (the merge that emulates that learning-rate decay over
            the window at a constant learning rate, WSM; ``"linear"`` is the uniform mean: see
            :mod:`lawa_optim.averaging`), or k non-negative coefficients, newest first, normalized
            (default: ``"uniform"``).
        alpha (float, optional): EXP's decay, in (0, 1] (default: 0.9).
        offload (str, optional): ``None`` keeps snapshots on the parameters' device, ``"cpu"`` in
            host memory, pinned and copied asynchronously on CUDA, ``"disk"`` in memory-mapped
            files under ``offload_dir`` for models whose k copies do not fit in RAM (default: None).
        offload_dir (str or os.PathLike, optional): an existing directory for ``offload="disk"``;
            the files are unlinked at once, so nothing is left behind (default: None).
        nonfinite (str, optional): what a snapshot of weights holding NaN or Inf does:
            ``"raise"`` a ``RuntimeError``, or ``"skip"`` it with a warning; either way the ring is
            left unchanged, so a diverged step never enters the average (default: ``"raise"``).
        fused (bool, optional): run a snapshot's ring update (and the swap's uniform mean, 8
            parameters per call) as ``torch.compile``'d one-pass kernels
            (:mod:`lawa_optim.fused`) for contiguous CPU parameters of at least ``2**16``
            elements: the same bits and checkpoints as the eager ops, a snapshot 11-23% faster at
            1e7-3e7 parameters on one thread (docs/results.md, "The fused kernels"), after a
            one-time compile (about 13 s in a fresh process, 2 s from inductor's disk cache).
            Where ``torch.compile`` is unavailable or fails, or inductor's flags allow unsafe
            math, it warns once and runs the eager ops (default: False).

    Example:
        >>> opt = LAWAWrapper(torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9),
        ...                   k=6, period=len(loader))
        >>> for x, y in loader:
        ...     opt.zero_grad(); loss_fn(model(x), y).backward(); opt.step()
        >>> with opt.averaged():
        ...     evaluate(model)
    """

    method = "lawa"
    skipped_snapshots = shared()
    _newest_key = shared()
    _weights_override = shared()
    #: the :class:`~lawa_optim.select_k.OnlineK` choosing this wrapper's window, if one was made (it sets this)
    online_k = shared()

    def __init__(
        self,
        optimizer: Optimizer,
        k: int = 6,
        period: int | None = None,
        *,
        weights: str | Sequence[float] = "uniform",
        alpha: float = 0.9,
        offload: str | None = None,
        offload_dir: str | os.PathLike | None = None,
        nonfinite: str = "raise",
        fused: bool = False,
    ) -> None:
        if not is_int(k):
            raise TypeError(f"Invalid k: {k!r} is not an int; use the number of snapshots to average, e.g. k=6")
        if k < 1:
            raise ValueError(f"Invalid k: {k}; it must be >= 1 (the paper uses 5 to 10)")
        kind, coeffs = resolve_weights(weights, k, alpha)
        offload_dir = check_offload(offload, offload_dir)
        if nonfinite not in NONFINITE_CHOICES:
            raise ValueError(f"Invalid nonfinite: {nonfinite!r}; use one of {NONFINITE_CHOICES}")
        if not isinstance(fused, bool):
            raise TypeError(f"Invalid fused: {fused!r}; use True or False")
        super().__init__(optimizer, period)
        self.k = k
        self.weights = kind
        self.alpha = float(alpha)
        self.coefficients = coeffs
        self.offload = offload
        self.nonfinite = nonfinite
        self.skipped_snapshots = 0
        self.online_k = None
        self.offload_dir = offload_dir
        # FSDP2: each rank keeps the ring of its own shards, so the average is sharded like the weights.
        self._ring = make_ring([_local(p) for p in self._params], k, offload, offload_dir)
        self.fused = fused
        if fused:
            self._ring.set_fused(True)
        # (num_steps, per-parameter version counters) right after the newest snapshot: while they
        # are unchanged, the parameters are that snapshot and a swap needs no backup.
        self._newest_key = None
        self._weights_override = None  # (kind, coefficients) for one swap_in(weights=...)

    def _describe(self) -> str:
        w = self.weights if self.coefficients is None else list(self.coefficients)
        extra = f", alpha={self.alpha}" if self.weights == "exp" else ""
        fused = ", fused=True" if self.fused else ""
        return f"k={self.k}, period={self.period}, weights={w!r}{extra}, offload={self.offload!r}{fused}"

    @property
    def num_snapshots(self) -> int:
        """How many snapshots the evaluation weights hold: the ring's, at most k."""
        return self._ring.size

    @property
    def snapshots_taken(self) -> int:
        """How many snapshots were taken since the start of training (skipped ones excluded)."""
        return self._ring.count

    def snapshots(self, index: int) -> list[Tensor]:
        """The snapshots of the ``index``-th parameter, oldest first (read-only views)."""
        return self._ring.snapshots(index)

    @on_owner
    def swap_in(self, k: int | None = None, *, weights: str | Sequence[float] | None = None, **kwargs: Any) -> Any:
        """:meth:`AveragingOptimizer.swap_in`, and ``weights`` to average with other coefficients this once.

        ``weights`` takes what the constructor's ``weights`` takes (``"uniform"``, ``"exp"``, a decay
        shape such as ``"cosine"``, or k coefficients, newest first); ``None`` uses the wrapper's own.
        So every weight scheme can be evaluated on the same ring: ``with opt.averaged(8, weights="1-sqrt")``.
        """
        if weights is None:
            return super().swap_in(k, **kwargs)
        override = resolve_weights(weights, self.k, self.alpha)
        self._weights_override = override
        try:
            swap = super().swap_in(k, **kwargs)
        finally:
            self._weights_override = None
        self._swap["args"]["weights"] = weights  # so `with opt.swap_out():` swaps this merge back in
        return swap

    # --------------------------------------------------------------------------- hooks
    def _take_snapshot(self) -> None:
        bad = self._ring.nonfinite_params()
        if bad:
            msg = (
                f"Snapshot refused: parameter(s) {bad[:8]} hold NaN or Inf after {self.num_steps} steps; "
                "the ring and its average are unchanged"
            )
            if self.nonfinite == "raise":
                raise RuntimeError(msg + " (pass nonfinite='skip' to skip such snapshots with a warning)")
            self.skipped_snapshots += 1
            warnings.warn(msg, RuntimeWarning, stacklevel=3)
            return
        self._ring.push()
        self._newest_key = self._weights_key()

    def _weights_key(self) -> tuple[int, list[int], list[int]] | None:
        if self._sharded:
            return None  # FSDP2: the ring holds local shards; always back up
        params = self._params
        return (self.num_steps, [p._version for p in params], [p.data_ptr() for p in params])

    def _weights_are_newest_snapshot(self) -> bool:
        key = self._newest_key
        return key is not None and key == self._weights_key()

    def _newest_snapshot_views(self) -> list[Tensor]:
        return self._ring.newest()

    def _restore_newest_snapshot(self, params: list[Tensor]) -> None:
        copy_list(params, self._ring.newest(), self._foreach and self._ring.offload is None)
        self._newest_key = self._weights_key()  # they are the newest snapshot again

    def _before_copy(self) -> None:
        self._ring.before_copy()

    def _check_can_average(self, k: int | None) -> None:
        if k is not None and not is_int(k, 1, self.k):
            raise ValueError(f"Invalid k={k!r} for averaged()/swap_in(): use an int in [1, {self.k}] or None for all")
        if self._ring.size == 0:
            raise RuntimeError(
                "No snapshot to average yet: the first one is taken after `period` optimizer steps "
                f"(period={self.period}) or by calling opt.snapshot()"
            )

    def _write_eval_weights(self, params: list[Tensor], k: int | None) -> None:
        j = min(k or self.k, self._ring.size)
        kind, given = self._weights_override or (self.weights, self.coefficients)
        coeffs = window_coefficients(kind, given, self.alpha, j)
        self._ring.write_average([_local(p) for p in params] if self._sharded else params, j, coeffs)

    def _on_new_params(self, params: list[Tensor]) -> None:
        self._ring.add_params([_local(p) for p in params])

    # --------------------------------------------------------------------------- state
    @on_owner
    def state_dict(self) -> dict[str, Any]:  # type: ignore[override]
        """The base optimizer's state dict, the ring in each parameter's state, and ``"lawa"``.

        Format 2 (see :mod:`lawa_optim.ring_state` and ``docs/sharded.md``, "How the ring is
        checkpointed"): ``sd["state"][i]`` holds, beside the base optimizer's entries, the k ring
        slots ``lawa_slot_0`` ... ``lawa_slot_{k-1}`` (shaped like the parameter, in its dtype;
        DTensors sharded like it under FSDP2) and the counters ``lawa_count``, ``lawa_head``,
        ``lawa_num_steps``, ``lawa_skipped_snapshots``, ``lawa_swapped_in`` (0-dim int64 tensors),
        so that torch's ``get_optimizer_state_dict``/``set_optimizer_state_dict`` and ``dcp.save``/
        ``dcp.load`` carry and reshard the ring. ``sd["lawa"]`` holds the wrapper-level entries of
        :meth:`AveragingOptimizer.state_dict` plus ``k``, ``count`` and ``skipped_snapshots``;
        ``load_state_dict`` reads them when present and the counters otherwise.

        Bytes: the base optimizer's state plus k copies of the parameters in their dtype plus a
        few counters per parameter; the float64 running sums are not saved (they are rebuilt
        exactly from the slots on load, and the save rebuilds them too, so the run that saved and
        the resumed one continue bit for bit). Like torch's own optimizers, the slots are views of
        the live ring, not copies: ``torch.save``/``dcp.save`` copy them; ``copy.deepcopy`` the
        state dict to keep it in memory while training goes on. State dicts of format 1 (with
        ``"ring"``/``"sums"`` lists) still load.
        """
        return super().state_dict()

    state_format = 2
    _loadable_formats = (1, 2)

    def _method_state(self) -> dict[str, Any]:
        self._ring.prepare_save()  # a save is a rebuild point (see lawa_optim.ring_state)
        return {"k": self.k, "count": self._ring.count, "skipped_snapshots": self.skipped_snapshots}

    def _meta(self) -> dict[str, int]:
        """The counters stored in every parameter's state (``lawa_<name>``)."""
        swap = self._swap
        ring = self._ring
        return {
            "count": ring.count,
            "head": ring.head,
            "num_steps": self.num_steps,
            "skipped_snapshots": self.skipped_snapshots,
            "swapped_in": 0 if swap is None else 1 if swap["backup"] is None else 2,
            **self._extra_meta(),
        }

    def _with_param_state(self, sd: dict[str, Any]) -> dict[str, Any]:
        meta = {ring_state.meta_key(name): value for name, value in self._meta().items()}
        training = sd[STATE_KEY]["training_weights"] if self._swap is not None and self._swap["backup"] is not None \
            else None
        index = {id(p): i for i, p in enumerate(self._params)}
        flat = [p for group in self.param_groups for p in group["params"]]
        old, state = sd.get("state", {}), {}  # a base optimizer may keep its state under other keys (Lookahead)
        for pos, p in enumerate(flat):  # torch's id of a parameter: its first position in the groups
            if pos in state or id(p) not in index:
                continue
            i = index.pop(id(p))
            entry = dict(old.get(pos, {}))  # a copy: the base optimizer's live dict stays as it is
            for j, view in enumerate(self._ring.slot_views(i)):
                entry[ring_state.slot_key(j)] = ring_state.like_param(ring_state.alias(view), p)
            entry.update({key: ring_state.counter(value) for key, value in meta.items()})
            if training is not None:
                entry[ring_state.TRAINING_KEY] = ring_state.like_param(ring_state.local(training[i]), p)
            state[pos] = entry
        state.update({key: value for key, value in old.items() if key not in state})
        sd["state"] = state
        return sd

    def _state_from_params(self, param_state: dict[int, dict[str, Any]]) -> dict[str, Any] | None:
        if not param_state:
            return None
        first = param_state[min(param_state)]
        meta = ring_state.read_meta(first)
        missing = [name for name in (*ring_state.META_FIELDS, *self._extra_meta()) if name not in meta]
        if missing:
            raise ValueError(
                f"Invalid state_dict: its per-parameter entries lack {[ring_state.meta_key(m) for m in missing]}; "
                f"was it saved by another method than {self.method!r} or another version?"
            )
        mine = {
            "format": self.state_format,
            "method": self.method,
            "num_steps": meta["num_steps"],
            "swapped_in": meta["swapped_in"] != 0,
            "training_weights": None,
            "training_buffers": None,
            "k": ring_state.num_slots(first),
            "count": meta["count"],
            "skipped_snapshots": meta["skipped_snapshots"],
            **self._extra_from_meta(meta),
        }
        if meta["swapped_in"]:
            mine["training_weights"] = self._saved_training_weights(param_state, meta)
        return mine

    def _saved_training_weights(self, param_state: dict[int, dict[str, Any]], meta: dict[str, int]) -> list[Tensor]:
        """The training weights of a state dict saved mid-swap: its ``lawa_training`` entries, or its
        newest slot when they were the newest snapshot (``lawa_swapped_in == 1``)."""
        by_param = self._by_param(param_state)
        if meta["swapped_in"] == 1:
            newest = ring_state.slot_key((meta["head"] - 1) % self.k)
            keys = [newest] * len(by_param)
        else:
            keys = [ring_state.TRAINING_KEY] * len(by_param)
        if any(key not in entry for key, entry in zip(keys, by_param)):
            raise ValueError(
                "Invalid state_dict: it was saved while the average was swapped in, but its training weights "
                f"({keys[0]!r}) are not in it (dcp.load only fills the entries the destination state dict has); "
                "save checkpoints outside the swap, or load this one with torch.load and opt.load_state_dict"
            )
        return [ring_state.local(entry[key]) for key, entry in zip(keys, by_param)]

    def _by_param(self, param_state: dict[int, dict[str, Any]]) -> list[dict[str, Any]]:
        """The per-parameter entries in ring order (``self._params``); ValueError if one is missing."""
        flat = [p for group in self.param_groups for p in group["params"]]
        index = {id(p): i for i, p in enumerate(self._params)}
        found: list[dict[str, Any] | None] = [None] * len(self._params)
        for pos, entry in param_state.items():
            if not is_int(pos, 0, len(flat) - 1):
                raise ValueError(f"Invalid state_dict: per-parameter entries at position {pos!r}, this optimizer "
                                 f"has {len(flat)} parameters; was it saved for another model?")
            found[index[id(flat[pos])]] = entry
        present = next((entry for entry in found if entry is not None), None)
        for i, p in enumerate(self._params):
            if found[i] is None and present is not None and not p.requires_grad:
                # torch's set_optimizer_state_dict passes no state for a parameter that needs no gradient:
                # a frozen parameter's snapshots (and training weights) are its current value
                value = ring_state.local(p).detach()
                found[i] = {
                    **{key: v for key, v in present.items() if not key.startswith(ring_state.SLOT_PREFIX)},
                    **{ring_state.slot_key(j): value for j in range(self.k)},
                    **({ring_state.TRAINING_KEY: value} if ring_state.TRAINING_KEY in present else {}),
                }
        missing = [i for i, entry in enumerate(found) if entry is None]
        if missing:
            raise ValueError(
                f"Invalid state_dict: no {ring_state.SLOT_PREFIX}* entries for parameter(s) {missing[:8]} of the "
                f"{len(found)} parameters of this optimizer; was it saved for another model or param groups?"
            )
        return found  # type: ignore[return-value]

    def _parse_ring(self, state: dict[str, Any]) -> tuple[int, int, list[list[Tensor]], int]:
        """``(count, head, slots per parameter, skipped_snapshots)`` from a format-2 state; ValueError."""
        by_param = self._by_param(state["param_state"])
        metas = [ring_state.read_meta(entry) for entry in by_param]
        if any(m != metas[0] for m in metas):
            raise ValueError("Invalid state_dict: the parameters' lawa_* counters differ (a corrupted checkpoint?)")
        meta = metas[0]
        for name in ring_state.META_FIELDS:
            if not is_int(meta.get(name), 0):
                raise ValueError(f"Invalid state_dict: {ring_state.meta_key(name)} = {meta.get(name)!r}; "
                                 "expected an int >= 0")
        if state.get("count", meta["count"]) != meta["count"]:
            raise ValueError(f"Invalid state_dict: {STATE_KEY!r}['count'] = {state.get('count')!r} but lawa_count = "
                             f"{meta['count']} (a corrupted checkpoint?)")
        slots = []
        for entry in by_param:
            n = ring_state.num_slots(entry)
            slots.append([ring_state.local(entry.get(ring_state.slot_key(j))) for j in range(n)])
        return meta["count"], meta["head"], slots, meta["skipped_snapshots"]

    def _check_method_state(self, state: dict[str, Any]) -> None:
        if state.get("k") != self.k:
            raise ValueError(
                f"Invalid state_dict: saved with k={state.get('k')!r}, this wrapper has k={self.k}; "
                "create the wrapper with the same k"
            )
        if state.get("format") == 1:  # the ring as lists under "lawa" (before format 2)
            self._ring.check_legacy_state(state, "state_dict['lawa']")
            return
        count, head, slots, _ = self._parse_ring(state)
        self._ring.check_slots(count, head, slots, "state_dict['state']")

    def _load_method_state(self, state: dict[str, Any]) -> None:
        if state.get("format") == 1:
            self._ring.load_legacy_state(state)
            self.skipped_snapshots = int(state.get("skipped_snapshots", 0))  # absent in older state dicts
        else:
            count, head, slots, skipped = self._parse_ring(state)
            self._ring.load_slots(count, head, slots)
            self.skipped_snapshots = skipped
        self._newest_key = None  # the weights loaded with the model may be anything

    def _extra_meta(self) -> dict[str, int]:
        """A subclass's own counters, stored like :meth:`_meta`'s (``lawa_<name>``)."""
        return {}

    def _extra_from_meta(self, meta: dict[str, int]) -> dict[str, Any]:
        """A subclass's entries of the ``"lawa"`` dict, rebuilt from its counters."""
        return {}
