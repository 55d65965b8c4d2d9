"""The protocol every method of the zoo follows: an optimizer wrapper that swaps weights.

:class:`AveragingOptimizer` wraps a base ``torch.optim.Optimizer`` and *is* one: it shares the
base optimizer's ``param_groups``, ``state`` and ``defaults`` (so LR schedulers, GradScaler and
``add_param_group`` behave as with the base optimizer), counts real optimizer steps, calls
:meth:`snapshot` every ``period`` steps, and swaps the method's evaluation weights into the
same ``Parameter`` objects in place, restoring the training weights bit-exactly afterwards.

Subclasses implement the method itself through a few hooks:

- ``_write_eval_weights(params, k)``: write the evaluation weights into ``params``.
- ``_take_snapshot()``: what a snapshot means for the method (LAWA: push into the ring).
- ``_after_step()``: work done after every real optimizer step (EMA).
- ``_check_can_average(k)``: raise before there is anything to evaluate.
- ``_method_state()`` / ``_check_method_state(state)`` / ``_load_method_state(state)``:
  the method's part of the state dict, validated before anything changes.
- ``_on_new_params(params)``: parameters arrived through ``add_param_group``.
- ``_newest_snapshot()``: the snapshot the training weights still equal, if the method keeps one
  (LAWA's ring): a swap then restores from it instead of backing the weights up.

Framework proxies (Lightning's ``self.optimizers()``): every attribute that changes after
``__init__`` is declared with ``shared`` and the public methods run on the wrapper itself whoever
they are called through, so ``self.optimizers().swap_in()`` swaps the one wrapper; see
:mod:`lawa_optim._shared`.
"""

from __future__ import annotations

import sys
import warnings
import weakref
from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch import Tensor, nn
from torch.optim import Optimizer

from ._checks import check_period, is_int
from ._shared import on_owner, shared
from ._tensors import copy_list
from .bn import recompute_bn

__all__ = ["STATE_KEY", "AveragingOptimizer", "check_not_wrapped"]

STATE_KEY = "lawa"  # the key the wrapper's own state takes beside "state"/"param_groups"
STATE_FORMAT = 1
#: Prefix of the entries a wrapper adds to each parameter's ``state`` in its state dict (LAWA's ring).
PARAM_STATE_PREFIX = "lawa_"
# Per-parameter states of torch's optimizers that always have the parameter's shape.
_PARAM_SHAPED_STATE = ("momentum_buffer", "exp_avg", "exp_avg_sq", "max_exp_avg_sq")


def _layout(params: list[Tensor]) -> tuple[bool, bool]:
    """``(sharded, foreach)``: FSDP2 DTensors among them; all plain tensors on one device."""
    sharded = any(hasattr(p, "to_local") for p in params)
    return sharded, not sharded and len({p.device for p in params}) <= 1


class _Swap:
    """Returned by :meth:`AveragingOptimizer.swap_in`/``swap_out``; ``with`` undoes the call on exit."""

    def __init__(self, undo: Callable[[], Any]) -> None:
        self._undo = undo

    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc: object) -> None:
        self._undo()


def _local(t: Tensor) -> Tensor:
    """A DTensor's (FSDP2) local shard, aliasing its storage; other tensors as they are."""
    return t.to_local() if hasattr(t, "to_local") else t


def _is_state_init_step(groups: list[dict[str, Any]]) -> bool:
    """Whether this ``step()`` is torch's ``_init_optim_state`` making a fresh optimizer's state
    (``get_optimizer_state_dict``/``set_optimizer_state_dict`` call ``step()`` once with every
    learning rate set to 0 and zero gradients when the optimizer has no state): no training step.

    Cheap for real steps: the call stack is only looked at when every learning rate is a 0 on the CPU.
    """
    for group in groups:
        lr = group.get("lr")
        if isinstance(lr, Tensor):
            if lr.device.type != "cpu" or lr.numel() != 1 or lr.item() != 0:
                return False
        elif lr != 0:
            return False
    module = sys.modules.get("torch.distributed.checkpoint.state_dict")
    code = getattr(getattr(module, "_init_optim_state", None), "__code__", None)
    frame = sys._getframe(1)
    while frame is not None and code is not None:
        if frame.f_code is code:
            return True
        frame = frame.f_back
    return False


def _split_param_state(state_dict: dict[str, Any]) -> tuple[dict[str, Any], dict[int, dict[str, Any]]]:
    """``(state_dict without the wrappers' per-parameter entries, {position: those entries})``.

    ``position`` is the parameter's place in the saved ``param_groups`` (torch's
    ``Optimizer.load_state_dict`` matches saved and current parameters by that order too, whether
    the saved ids are ints or, from ``set_optimizer_state_dict``, FQNs). The input is not changed.
    """
    state, groups = state_dict.get("state"), state_dict.get("param_groups")
    if not isinstance(state, dict) or not isinstance(groups, list):
        return state_dict, {}
    ids = [i for g in groups if isinstance(g, dict) for i in g.get("params", [])]
    position: dict[Any, int] = {}
    for n, key in enumerate(ids):
        position.setdefault(key, n)
    base: dict[Any, Any] = {}
    mine: dict[int, dict[str, Any]] = {}
    for key, value in state.items():
        own = {} if not isinstance(value, dict) else {
            n: v for n, v in value.items() if isinstance(n, str) and n.startswith(PARAM_STATE_PREFIX)
        }
        if not own:
            base[key] = value
            continue
        if key in position:
            mine[position[key]] = own
        rest = {n: v for n, v in value.items() if n not in own}
        if rest:
            base[key] = rest
    return {**state_dict, "state": base}, mine


def _reshard(model: nn.Module | None) -> None:
    """Release FSDP2's unsharded copies of the weights (kept after some forward passes, e.g. the
    root module's under ``no_grad``): a forward pass would read them instead of the swapped shards."""
    fsdp = sys.modules.get("torch.distributed.fsdp")  # loaded if the model uses FSDP2
    if model is None or fsdp is None or not hasattr(fsdp, "FSDPModule"):
        return
    for m in model.modules():
        if isinstance(m, fsdp.FSDPModule):
            m.reshard()


def check_not_wrapped(optimizer: Any) -> None:
    """Raise ``TypeError`` if ``optimizer`` is already one of the zoo's wrappers."""
    if isinstance(optimizer, AveragingOptimizer):
        raise TypeError(
            f"Invalid optimizer: it is already wrapped by {type(optimizer).__name__}; wrap the base optimizer"
        )


class AveragingOptimizer(Optimizer):
    """Base class of the zoo's wrappers; see the module docstring.

    Args:
        optimizer (torch.optim.Optimizer): the base optimizer; its update is never re-implemented.
        period (int, optional): take a snapshot every ``period`` real optimizer steps; ``None``
            snapshots only on explicit :meth:`snapshot` calls (default: None).
    """

    method = "base"  # registry name, also stored in the state dict
    state_format = STATE_FORMAT  # the format state_dict() writes
    _loadable_formats: tuple[int, ...] = (STATE_FORMAT,)  # the formats load_state_dict() reads

    # Everything that changes after __init__ (see `shared`); subclasses declare theirs the same way.
    param_groups = shared()
    state = shared()
    defaults = shared()
    num_steps = shared()
    _params = shared()
    _sharded = shared()
    _foreach = shared()
    _swap = shared()
    _backup = shared()
    _pending_buffers = shared()
    keep_swap_buffer = shared()

    def __init__(self, optimizer: Optimizer, period: int | None = None) -> None:
        if not isinstance(optimizer, Optimizer):
            raise TypeError(
                f"Invalid optimizer: {type(optimizer).__name__} is not a torch.optim.Optimizer; "
                "pass e.g. torch.optim.SGD(model.parameters(), lr=0.1)"
            )
        check_not_wrapped(optimizer)
        check_period(period)
        self.__dict__["_shared"] = {"owner": self}
        self.optimizer: Optimizer | None = None  # add_param_group below runs Optimizer's during __init__
        super().__init__(optimizer.param_groups, optimizer.defaults)
        self.optimizer = optimizer
        # Share, do not copy: schedulers and GradScaler see the base optimizer's groups and state.
        self._share()
        self._follow_base_loads()
        self.period = period
        self.num_steps = 0
        self._params = self._group_params()
        self._sharded, self._foreach = _layout(self._params)
        self._swap: dict[str, Any] | None = None
        # The training weights' copy during a swap, when they are not the newest snapshot.
        self._backup: list[Tensor] | None = None
        #: keep the backup's memory between swaps (one P-sized buffer reused) instead of freeing it
        #: at swap_out; a swap right after a snapshot needs no backup either way.
        self.keep_swap_buffer = False
        self._pending_buffers: list[Tensor] | None = None  # see restore_training_buffers

    # --------------------------------------------------------------------------- bookkeeping
    def __getstate__(self) -> dict[str, Any]:
        # Optimizer.__getstate__ keeps only defaults/state/param_groups: a deepcopy or pickle of a
        # wrapper would lose its base optimizer and snapshots. Keep everything instead.
        self._before_copy()
        return self.__dict__.copy()

    def _before_copy(self) -> None:
        """Raise if this wrapper cannot be copied or pickled; settle anything in flight."""

    def __setstate__(self, state: dict[str, Any]) -> None:
        state = dict(state)
        mine = dict(state.pop("_shared", {}))
        mine["owner"] = self
        for name in list(state):  # a pickle from before `shared` kept these in __dict__
            if isinstance(getattr(type(self), name, None), shared):
                mine[name] = state.pop(name)
        self.__dict__["_shared"] = mine
        if "optimizer" not in state:  # a plain Optimizer state (torch's own format)
            super().__setstate__({**state, **mine})
            return
        mine.setdefault("keep_swap_buffer", False)
        if "_sharded" not in mine and "_params" in mine:
            mine["_sharded"], mine["_foreach"] = _layout(mine["_params"])
        mine.setdefault("_backup", None)
        mine.setdefault("_pending_buffers", None)
        self.__dict__.update(state)
        self._follow_base_loads()

    def _follow_base_loads(self) -> None:
        """The base optimizer's load_state_dict replaces its param_groups and state objects: share
        the new ones, whoever calls it (else a scheduler would drive stale groups after resuming)."""
        assert self.optimizer is not None
        if not hasattr(self.optimizer, "_optimizer_load_state_dict_post_hooks"):
            return  # skips Optimizer.__init__ (timm's Lookahead): load_state_dict() below shares again itself
        ref = weakref.ref(self)
        self.optimizer.register_load_state_dict_post_hook(lambda _opt: ref() is not None and ref()._share())

    def _share(self) -> None:
        assert self.optimizer is not None
        self.param_groups = self.optimizer.param_groups
        self.state = self.optimizer.state
        self.defaults = self.optimizer.defaults

    def _group_params(self) -> list[Tensor]:
        seen: dict[int, Tensor] = {}
        for group in self.param_groups:
            for p in group["params"]:
                seen.setdefault(id(p), p)
        return list(seen.values())

    @property
    def swapped_in(self) -> bool:
        """Whether the evaluation weights are in the model right now."""
        return self._swap is not None

    def _require_training_weights(self, action: str) -> None:
        if self._swap is not None:
            raise RuntimeError(
                f"{action} while the averaged weights are swapped in; leave the `with opt.averaged():` "
                "block or call opt.swap_out() first"
            )

    def __getattr__(self, name: str) -> Any:
        """Public attributes of the base optimizer that training scripts read through the wrapper
        (timm's ``is_second_order``, which its ``train.py`` turns into ``backward(create_graph=...)``).

        Only reached when normal lookup fails. Private names and the wrapper's own ``shared`` state
        are never forwarded (the proxy mechanism of :mod:`lawa_optim._shared` relies on their
        ``AttributeError``); nothing is forwarded before ``__init__`` has set the base optimizer.
        """
        base = self.__dict__.get("optimizer")
        if name.startswith("_") or base is None or isinstance(getattr(type(self), name, None), shared):
            raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")
        try:
            return getattr(base, name)
        except AttributeError:
            raise AttributeError(
                f"{type(self).__name__!r} object has no attribute {name!r} (nor has its base optimizer "
                f"{type(base).__name__})"
            ) from None

    @on_owner
    def __repr__(self) -> str:
        return f"{type(self).__name__}({self._describe()}, optimizer={self.optimizer!r})"

    def _describe(self) -> str:
        return f"period={self.period}"

    # --------------------------------------------------------------------------- training
    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if "step" in cls.__dict__:  # see `step.hooked` below
            cls.step.hooked = True  # type: ignore[attr-defined]

    @on_owner
    def step(self, closure: Callable[[], float] | None = None) -> Any:  # type: ignore[override]
        """One step of the base optimizer; a snapshot follows every ``period`` steps.

        Hooks registered on this wrapper (``register_step_pre_hook``/``post_hook``) run here;
        torch's global optimizer hooks run once, in the base optimizer's ``step()``.
        """
        mine = self.__dict__["_shared"]  # read directly: this runs every step
        if mine["_swap"] is not None:
            self._require_training_weights("step()")
        args: tuple[Any, ...] = (self,) if closure is None else (self, closure)
        kwargs: dict[str, Any] = {}
        for pre_hook in self._optimizer_step_pre_hooks.values():
            result = pre_hook(self, args, kwargs)
            if result is not None:
                args, kwargs = result
        loss = self.optimizer.step(*args[1:], **kwargs)  # type: ignore[union-attr]
        if not _is_state_init_step(mine["param_groups"]):
            self._count_step(mine)
        for post_hook in self._optimizer_step_post_hooks.values():
            post_hook(self, args, kwargs)
        return loss

    # torch's Optimizer.__init__ wraps an un-`hooked` class `step` in a profiler record that also
    # runs the global hooks: the base optimizer's step already does both, so a wrapped step would
    # run global hooks twice per step and cost ~15-30 us (a third of a tiny model's step).
    step.hooked = True  # type: ignore[attr-defined]

    @on_owner
    def observe_step(self) -> None:
        """Count one step that the base optimizer has just taken, without stepping it.

        :meth:`step` calls it. Call it yourself when several wrappers observe one base optimizer
        (a benchmark evaluating LAWA, EXP, EMA and SWA on the same run steps the base optimizer
        once, then calls ``observe_step()`` on each wrapper).
        """
        self._require_training_weights("step()")
        self._count_step(self.__dict__["_shared"])

    def _count_step(self, mine: dict[str, Any]) -> None:
        n = mine["num_steps"] = mine["num_steps"] + 1
        self._after_step()
        if self.period is not None and n % self.period == 0:
            self.snapshot()

    @on_owner
    def zero_grad(self, set_to_none: bool = True) -> None:
        assert self.optimizer is not None
        self.optimizer.zero_grad(set_to_none=set_to_none)

    @on_owner
    def add_param_group(self, param_group: dict[str, Any]) -> None:
        """Add a group to the base optimizer (and so to this one) and start tracking it."""
        if self.optimizer is None:  # Optimizer.__init__ registering the shared groups
            return super().add_param_group(param_group)
        self._require_training_weights("add_param_group()")
        known = {id(p) for p in self._params}
        self.optimizer.add_param_group(param_group)
        self._params = self._group_params()
        self._sharded, self._foreach = _layout(self._params)
        self._on_new_params([p for p in self._params if id(p) not in known])

    @on_owner
    def snapshot(self) -> None:
        """Record the current weights (called every ``period`` steps, or by hand)."""
        self._require_training_weights("snapshot()")
        self._take_snapshot()

    # --------------------------------------------------------------------------- evaluation
    @on_owner
    def swap_in(
        self,
        k: int | None = None,
        *,
        model: nn.Module | None = None,
        bn_loader: Iterable[Any] | None = None,
        bn_batches: int | None = None,
        bn_device: torch.device | str | None = None,
        bn_forward: Callable[[nn.Module, Any], Any] | None = None,
    ) -> _Swap:
        """Write the evaluation weights into the parameters, in place.

        Args:
            k (int, optional): for LAWA, average only the ``k`` latest snapshots (default: all).
            model (nn.Module, optional): the model, needed with ``bn_loader``.
            bn_loader (iterable, optional): recompute BatchNorm statistics for the swapped-in
                weights over these batches (``update_bn`` semantics); the model's buffers are
                then restored on :meth:`swap_out` too. Without it the buffers stay as they are.
            bn_batches (int, optional): use at most this many batches of ``bn_loader``.
            bn_device (torch.device or str, optional): see :func:`lawa_optim.bn.recompute_bn`.
            bn_forward (callable, optional): see :func:`lawa_optim.bn.recompute_bn`.

        Returns a context manager that calls :meth:`swap_out` on exit.
        """
        self._require_training_weights("swap_in()")
        self._check_can_average(k)
        if bn_loader is not None and not isinstance(model, nn.Module):
            raise ValueError("Invalid model: bn_loader needs model=<the nn.Module whose BatchNorm to recompute>")
        params = self._params
        if model is None and self._sharded:
            raise ValueError(
                "Invalid model: None, but the parameters are sharded (FSDP2 DTensors); pass model=<the "
                "fully_shard-ed module> so its unsharded copies are released around the swap"
            )
        _reshard(model)
        with torch.no_grad():
            # The training weights are kept in the newest snapshot when they still equal it, else
            # in the backup buffer (allocated here, reused when keep_swap_buffer is set).
            backup = None if self._weights_are_newest_snapshot() else self._back_up(params)
            buffers = list(model.buffers()) if bn_loader is not None else []
            saved_buffers = [b.detach().clone() for b in buffers]
            swap = {"backup": backup, "buffers": buffers, "saved_buffers": saved_buffers}
            try:
                self._write_eval_weights(params, k)
                if bn_loader is not None:
                    recompute_bn(model, bn_loader, max_batches=bn_batches, device=bn_device, forward=bn_forward)
            except BaseException:
                self._restore_training(swap)
                raise
        swap["args"] = {
            "k": k,
            "model": model,
            "bn_loader": bn_loader,
            "bn_batches": bn_batches,
            "bn_device": bn_device,
            "bn_forward": bn_forward,
        }
        self._swap = swap
        return _Swap(self.swap_out)

    @on_owner
    def swap_out(self) -> _Swap:
        """Restore the training weights (and buffers, if BatchNorm was recomputed) bit-exactly.

        Returns a context manager that swaps the same evaluation weights back in on exit.
        """
        if self._swap is None:
            raise RuntimeError("swap_out() without swap_in(): the training weights are already in place")
        swap, self._swap = self._swap, None
        _reshard(swap["args"].get("model"))
        self._restore_training(swap)
        args = swap["args"]
        return _Swap(lambda: self.swap_in(**args))

    def _back_up(self, params: list[Tensor]) -> list[Tensor]:
        """Copy the training weights into the backup buffer (made if missing or mismatched)."""
        backup = self._backup
        if backup is None or len(backup) != len(params) or any(
            b.shape != p.shape or b.dtype != p.dtype or b.device != p.device for b, p in zip(backup, params)
        ):
            self._backup = None  # free the old one before making the new one
            backup = [torch.empty_like(p.detach()) for p in params]
        copy_list(backup, [p.detach() for p in params], self._foreach)
        self._backup = backup
        return backup

    def _restore_training(self, swap: dict[str, Any]) -> None:
        with torch.no_grad():
            if swap["backup"] is None:
                self._restore_newest_snapshot(self._params)
            else:
                copy_list(self._params, swap["backup"], self._foreach)
                if not self.keep_swap_buffer:
                    self._backup = None
            for dst, src in zip(swap["buffers"], swap["saved_buffers"]):
                dst.copy_(src)

    def _training_weights(self) -> list[Tensor] | None:
        """Copies of the training weights (None when they are in the parameters)."""
        swap = self._swap
        if swap is None:
            return None
        if swap["backup"] is None:
            return [t.clone() for t in self._newest_snapshot_views()]
        return [t.detach().clone() for t in swap["backup"]]

    @on_owner
    def restore_training_buffers(self, model: nn.Module) -> bool:
        """Write the training buffers saved with a mid-swap checkpoint into ``model``'s buffers.

        When a state dict is saved while swapped in with BatchNorm recomputed (``bn_loader``), the
        model's checkpoint holds the statistics recomputed for the average; :meth:`load_state_dict`
        restores the training *weights* into the parameters but cannot reach the model's buffers,
        so it keeps the saved training buffers until this call (made after loading, before
        training on). Returns True if buffers were restored, False if none were pending.
        """
        pending = self._pending_buffers
        if pending is None:
            return False
        if not isinstance(model, nn.Module):
            raise TypeError(f"Invalid model: {type(model).__name__} is not an nn.Module")
        buffers = list(model.buffers())
        if len(buffers) != len(pending) or any(b.shape != t.shape for b, t in zip(buffers, pending)):
            raise ValueError(
                f"Invalid model: it has {len(buffers)} buffers of shapes {[tuple(b.shape) for b in buffers][:8]}, the "
                f"checkpoint saved {len(pending)} of shapes {[tuple(t.shape) for t in pending][:8]}; pass the model "
                "whose optimizer state was loaded"
            )
        with torch.no_grad():
            for b, t in zip(buffers, pending):
                b.copy_(t)
        self._pending_buffers = None
        return True

    def averaged(self, k: int | None = None, **bn: Any) -> _Swap:
        """``with opt.averaged(): evaluate(model)``: :meth:`swap_in` as a context manager."""
        return self.swap_in(k, **bn)

    @on_owner
    def averaged_state_dict(self, model: nn.Module, k: int | None = None, **bn: Any) -> dict[str, Tensor]:
        """A copy of ``model.state_dict()`` holding the evaluation weights (for ``checkpoint_lawa.pt``)."""
        if not isinstance(model, nn.Module):
            raise TypeError(f"Invalid model: {type(model).__name__} is not an nn.Module")
        with self.swap_in(k, model=model, **bn):
            return {name: t.detach().clone() for name, t in model.state_dict().items()}

    # --------------------------------------------------------------------------- state
    @on_owner
    def state_dict(self) -> dict[str, Any]:  # type: ignore[override]
        """The base optimizer's state dict plus ``{"lawa": {...}}`` with this wrapper's state.

        ``"lawa"`` holds ``format``, ``method``, ``num_steps``, ``swapped_in``,
        ``training_weights`` (when saved while swapped in: copies of the training weights, else
        None), ``training_buffers`` (when saved while swapped in with BatchNorm recomputed: copies
        of the model's training buffers in ``model.buffers()`` order, else None) and the method's
        own entries. Only tensors and plain values: ``weights_only=True`` loads it.
        """
        for pre_hook in self._optimizer_state_dict_pre_hooks.values():
            pre_hook(self)
        assert self.optimizer is not None
        sd = self.optimizer.state_dict()
        sd[STATE_KEY] = {
            "format": self.state_format,
            "method": self.method,
            "num_steps": self.num_steps,
            "swapped_in": self._swap is not None,
            "training_weights": self._training_weights(),
            "training_buffers": None if self._swap is None or not self._swap["buffers"] else [
                t.clone() for t in self._swap["saved_buffers"]
            ],
            **self._method_state(),
        }
        sd = self._with_param_state(sd)
        for post_hook in self._optimizer_state_dict_post_hooks.values():
            sd = post_hook(self, sd) or sd
        return sd

    @on_owner
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Load a state dict from :meth:`state_dict`; everything is checked before anything changes.

        A state dict saved while swapped in (a framework checkpointing during validation) loads
        swapped *out*: its training weights are written into the parameters, so load the model's
        state first and the optimizer's second, as Lightning, the HF Trainer, accelerate and ignite
        all do; training then continues exactly as the uninterrupted run. If BatchNorm statistics
        had been recomputed for the swap, the model's saved buffers are the average's: the
        training buffers are kept until :meth:`restore_training_buffers` writes them back (a
        ``RuntimeWarning`` says so).
        """
        self._require_training_weights("load_state_dict()")
        for pre_hook in self._optimizer_load_state_dict_pre_hooks.values():
            state_dict = pre_hook(self, state_dict) or state_dict
        if not isinstance(state_dict, dict):
            raise ValueError(f"Invalid state_dict: a {type(state_dict).__name__}, not a dict")
        # The wrapper's per-parameter entries (torch.distributed.checkpoint's API keeps only "state"
        # and "param_groups": without the STATE_KEY entry, the method rebuilds it from them).
        state_dict, param_state = _split_param_state(state_dict)
        mine = state_dict[STATE_KEY] if STATE_KEY in state_dict else self._state_from_params(param_state)
        if mine is None:
            raise ValueError(
                f"Invalid state_dict: it has no {STATE_KEY!r} entry (nor per-parameter {PARAM_STATE_PREFIX}* "
                "entries), so it was not saved by a lawa_optim wrapper; a plain optimizer state dict goes to "
                "wrapper.optimizer.load_state_dict()"
            )
        if not isinstance(mine, dict):
            raise ValueError(f"Invalid state_dict: its {STATE_KEY!r} entry is a {type(mine).__name__}, not a dict")
        mine = {**mine, "param_state": param_state}  # what the method's hooks read its entries from
        steps = mine.get("num_steps")
        if not is_int(steps, 0):
            raise ValueError(f"Invalid state_dict: {STATE_KEY!r}['num_steps'] = {steps!r}; it must be an int >= 0")
        if mine.get("format") not in self._loadable_formats or mine.get("method") != self.method:
            raise ValueError(
                f"Invalid state_dict: saved by method {mine.get('method')!r} (format {mine.get('format')!r}); "
                f"this is {self.method!r} (formats {self._loadable_formats})"
            )
        weights = mine.get("training_weights")
        if mine.get("swapped_in"):
            if weights is None or len(weights) != len(self._params) or any(
                tuple(w.shape) != tuple(p.shape) for w, p in zip(weights, self._params)
            ):
                raise ValueError("Invalid state_dict: its training weights do not match this optimizer's parameters")
        saved_buffers = mine.get("training_buffers") if mine.get("swapped_in") else None
        if saved_buffers is not None and (
            not isinstance(saved_buffers, (list, tuple)) or not all(isinstance(t, Tensor) for t in saved_buffers)
        ):
            raise ValueError("Invalid state_dict: its training buffers are not a list of tensors")
        self._check_method_state(mine)
        self._check_base_state_shapes(state_dict)
        assert self.optimizer is not None
        self.optimizer.load_state_dict({k: v for k, v in state_dict.items() if k != STATE_KEY})
        self._share()  # also for a base optimizer whose load_state_dict runs no post hooks (timm's Lookahead)
        self.num_steps = int(mine["num_steps"])
        self._load_method_state(mine)
        if mine.get("swapped_in"):  # saved mid-swap: the training weights go back into the parameters
            with torch.no_grad():
                copy_list([_local(p) for p in self._params],
                          [_local(w).to(p.device, p.dtype) for w, p in zip(weights, self._params)], False)
        self._pending_buffers = None if saved_buffers is None else [t.detach().clone() for t in saved_buffers]
        if saved_buffers is not None:
            warnings.warn(
                "This optimizer state was saved while the average was swapped in with BatchNorm recomputed: the "
                "training weights are restored, but the model's buffers hold the average's statistics; call "
                "opt.restore_training_buffers(model) to put the training statistics back",
                RuntimeWarning,
                stacklevel=2,
            )
        for post_hook in self._optimizer_load_state_dict_post_hooks.values():
            post_hook(self)

    def _check_base_state_shapes(self, state_dict: dict[str, Any]) -> None:
        """torch's ``Optimizer.load_state_dict`` checks parameter counts, not shapes: for torch's own
        optimizers, whose per-parameter state is documented (momentum, Adam moments), refuse saved
        state of the wrong shape before it is loaded. Any other optimizer's state is its own (one
        value per layer for NovoGrad, factored rows and columns for Adafactor): left to it."""
        if not type(self.optimizer).__module__.startswith("torch.optim."):
            return
        groups, state = state_dict.get("param_groups"), state_dict.get("state")
        if not isinstance(groups, list) or not isinstance(state, dict):
            return  # torch's own load_state_dict reports it
        ids = [i for g in groups if isinstance(g, dict) for i in g.get("params", [])]
        params = [p for g in self.param_groups for p in g["params"]]
        if len(ids) != len(params):
            return  # torch's own load_state_dict reports it
        for index, p in zip(ids, params):
            saved = state.get(index)
            current = self.state.get(p, {})
            for key, value in (saved.items() if isinstance(saved, dict) else ()):
                now = current.get(key)
                shaped = key in _PARAM_SHAPED_STATE or (isinstance(now, Tensor) and now.dim() > 0)
                want = tuple(p.shape) if key in _PARAM_SHAPED_STATE else tuple(now.shape) if shaped else None
                if isinstance(value, Tensor) and shaped and tuple(value.shape) != want:
                    raise ValueError(
                        f"Invalid state_dict: optimizer state {key!r} of parameter {index} has shape "
                        f"{tuple(value.shape)}, expected {want}; was it saved for another model?"
                    )

    # --------------------------------------------------------------------------- method hooks
    def _write_eval_weights(self, params: list[Tensor], k: int | None) -> None:
        pass  # the bare optimizer evaluates its training weights

    def _take_snapshot(self) -> None:
        pass

    def _after_step(self) -> None:
        pass

    def _check_can_average(self, k: int | None) -> None:
        if k is not None:
            raise ValueError(f"Invalid k={k!r}: {self.method!r} has no window of snapshots to choose from")

    def _method_state(self) -> dict[str, Any]:
        return {}

    def _check_method_state(self, state: dict[str, Any]) -> None:
        pass

    def _with_param_state(self, sd: dict[str, Any]) -> dict[str, Any]:
        """Add the method's per-parameter entries (keys starting with ``PARAM_STATE_PREFIX``) to
        ``sd["state"]``, without changing the base optimizer's live state dicts."""
        return sd

    def _state_from_params(self, param_state: dict[int, dict[str, Any]]) -> dict[str, Any] | None:
        """The ``STATE_KEY`` entry rebuilt from the per-parameter entries (the state dict went
        through torch's ``get/set_optimizer_state_dict``, which drop it), or None if it cannot be."""
        return None

    def _load_method_state(self, state: dict[str, Any]) -> None:
        pass

    def _on_new_params(self, params: list[Tensor]) -> None:
        pass

    def _weights_are_newest_snapshot(self) -> bool:
        """Whether the parameters still equal the newest snapshot (then a swap backs nothing up)."""
        return False

    def _newest_snapshot_views(self) -> list[Tensor]:
        raise NotImplementedError  # only reached when _weights_are_newest_snapshot() said True

    def _restore_newest_snapshot(self, params: list[Tensor]) -> None:
        copy_list(params, self._newest_snapshot_views(), False)

    @property
    def num_snapshots(self) -> int:
        """How many snapshots the evaluation weights combine now (0: they are the training weights)."""
        return 0

    @property
    def snapshots_taken(self) -> int:
        """How many snapshots the method has taken since the start of training (>= num_snapshots)."""
        return self.num_snapshots
