"""The shim every framework integration is built on: observe a framework's optimizer, average.

A framework (Lightning, the HF ``Trainer``, accelerate) owns its optimizer: it creates it, steps it
(through its AMP scaler), checkpoints it and resumes it. :class:`Observer` leaves all of that alone.
It holds a zoo wrapper (:func:`lawa_optim.create`) around a stand-in optimizer that owns nothing but
the same ``Parameter`` objects, and counts the framework optimizer's real steps with torch's own
``register_step_post_hook`` (a step that ``GradScaler`` skips never runs the base ``step()``, so it
does not count). So:

- the framework's optimizer, its state dict and its LR scheduler are exactly what they would be
  without LAWA (training is bit-identical to a run without it);
- :meth:`Observer.state_dict` holds only the averaging state (the ring, counters), plain tensors,
  for the framework's own checkpoint, beside the optimizer state the framework saves anyway;
- :meth:`Observer.averaged` swaps the average into the same parameters in place (the training
  weights restored bit-exactly on exit), for the framework's own evaluation.

Methods that change the training trajectory (``lookahead``, ``schedulefree``) cannot be observed:
they must *be* the optimizer. Create them in the training code (``lawa_optim.create("lookahead",
opt)``) and evaluate with ``lawa_optim.unwrap(opt).averaged()``; the observer refuses them.

:class:`TimeSaved` is the paper's measure on the user's own run: when the average first reached the
raw weights' best validation metric, and how many steps/epochs earlier than the raw weights.

Nothing here imports a framework; each ``integrations/<framework>.py`` is a thin layer on top.
"""

from __future__ import annotations

import math
import sys
from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch import nn
from torch.optim import Optimizer

from .._checks import check_period
from ..protocol import STATE_KEY, AveragingOptimizer
from ..registry import create, get_method_info, list_methods
from ..unwrap import strip_proxies

__all__ = ["Observer", "StateSwap", "TimeSaved", "check_method", "check_model"]

STATE_FORMAT = 1


class _Observed(Optimizer):
    """The framework optimizer's parameters (same objects, same groups) and nothing else."""

    def __init__(self, base: Optimizer) -> None:
        super().__init__([{"params": list(g["params"])} for g in base.param_groups], {})
        # An (empty) state entry per parameter, also after a load: torch's get/set_optimizer_state_dict
        # would otherwise call step() once to create the state of what looks like a fresh optimizer.
        self._fill_state()
        self.register_load_state_dict_post_hook(lambda opt: opt._fill_state())

    def _fill_state(self) -> None:
        for group in self.param_groups:
            for p in group["params"]:
                self.state.setdefault(p, {})

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        super().add_param_group(param_group)
        if hasattr(self, "_optimizer_load_state_dict_post_hooks"):  # not while Optimizer.__init__ runs
            self._fill_state()

    def step(self, closure: Any = None) -> None:
        raise RuntimeError(
            "An Observer never steps: the framework's own optimizer updates the parameters and the "
            "observer counts its steps"
        )


def check_method(method: str, period: int | None = None, **method_kwargs: Any) -> None:
    """Raise the error :class:`Observer` would raise for these arguments, without an optimizer.

    Builds the method once around a one-element stand-in, so every argument the method checks
    (``k``, ``weights``, ``decay``, ...) is checked here, before a framework starts training.
    """
    info = get_method_info(method)  # ValueError naming the methods
    if info.changes_trajectory:
        observable = list_methods(changes_trajectory=False)
        raise ValueError(
            f"Invalid method: {method!r} changes the training trajectory, so it cannot observe the framework's "
            f"optimizer; use one of {observable}, or create it yourself around your optimizer "
            f"(lawa_optim.create({method!r}, opt) in configure_optimizers/your training script) and evaluate "
            "with lawa_optim.unwrap(opt).averaged()"
        )
    check_period(period)
    kwargs = _method_kwargs(method, period, method_kwargs)
    probe = torch.zeros(1, requires_grad=True)
    create(method, _Observed(torch.optim.SGD([probe], lr=0.0)), **kwargs)


def _method_kwargs(method: str, period: int | None, method_kwargs: dict[str, Any]) -> dict[str, Any]:
    accepted = get_method_info(method).accepted_kwargs()
    if period is not None and "period" not in accepted:
        raise TypeError(
            f"Invalid period={period!r} for method {method!r}: it does not take snapshots every N steps "
            f"(it accepts {sorted(accepted)}); leave period=None"
        )
    return dict(method_kwargs, **({"period": period} if "period" in accepted else {}))


def check_model(model: Any) -> None:
    """``ValueError`` if ``model`` is not an ``nn.Module`` with a trainable floating-point parameter."""
    if not isinstance(model, nn.Module):
        raise TypeError(f"Invalid model: {type(model).__name__} is not a torch.nn.Module")
    if not any(p.requires_grad and p.dtype.is_floating_point for p in model.parameters()):
        raise ValueError(
            f"Invalid model: {type(model).__name__} has no trainable parameters (none with requires_grad=True), "
            "so there is nothing to average; unfreeze some parameters or drop the callback"
        )


class Observer:
    """Average the weights a framework's optimizer trains, without owning that optimizer.

    Args:
        optimizer (torch.optim.Optimizer): the framework's optimizer, or a proxy of it
            (``LightningOptimizer``, accelerate's ``AcceleratedOptimizer``); a plain torch
            optimizer, not a zoo wrapper.
        method (str, optional): a method of the zoo that does not change the trajectory:
            ``"lawa"``, ``"exp"``, ``"ema"``, ``"swa"`` or ``"base"`` (default: ``"lawa"``).
        period (int, optional): snapshot every ``period`` optimizer steps; ``None`` snapshots
            only on :meth:`snapshot` (e.g. at the end of each epoch) (default: None).
        **method_kwargs: the method's hyper-parameters (``k=6``, ``decay=0.999``, ...).

    Attributes:
        wrapper (AveragingOptimizer): the zoo wrapper holding the average.
        base (torch.optim.Optimizer): the framework's optimizer behind its proxies.

    Example:
        >>> obs = Observer(trainer_optimizer, "lawa", k=6)
        >>> ...                                  # the framework trains; obs counts its steps
        >>> obs.snapshot()                       # at the end of an epoch
        >>> with obs.averaged(model):
        ...     evaluate(model)
    """

    def __init__(self, optimizer: Any, method: str = "lawa", *, period: int | None = None, **method_kwargs: Any):
        check_method(method, period, **method_kwargs)
        base = strip_proxies(optimizer)
        if isinstance(base, AveragingOptimizer):
            raise TypeError(
                f"Invalid optimizer: it is already a lawa_optim wrapper ({type(base).__name__}); give the observer "
                "the plain optimizer (it adds the averaging itself), or use the wrapper directly without it"
            )
        if not isinstance(base, Optimizer):
            raise TypeError(
                f"Invalid optimizer: {type(optimizer).__name__} is not a torch.optim.Optimizer (nor a Lightning/"
                "accelerate proxy of one); pass the optimizer the framework trains with"
            )
        self.base = base
        self.method = method
        self.wrapper: AveragingOptimizer = create(
            method, _Observed(base), **_method_kwargs(method, period, method_kwargs)
        )
        self._num_params = self._count(base)
        self._hook = base.register_step_post_hook(self._on_step)

    # ----------------------------------------------------------------------------- training
    @staticmethod
    def _count(optimizer: Optimizer) -> int:
        return sum(len(g["params"]) for g in optimizer.param_groups)

    def _on_step(self, _optimizer: Optimizer, _args: Any, _kwargs: Any) -> None:
        if self._count(self.base) != self._num_params:  # e.g. Lightning's BaseFinetuning unfroze a layer
            known = {id(p) for g in self.wrapper.param_groups for p in g["params"]}
            for group in self.base.param_groups:
                new = [p for p in group["params"] if id(p) not in known]
                if new:
                    self.wrapper.add_param_group({"params": new})
            self._num_params = self._count(self.base)
        self.wrapper.observe_step()

    def snapshot(self) -> None:
        """Record the current weights (at the end of an epoch when ``period`` is None)."""
        self.wrapper.snapshot()

    @property
    def num_steps(self) -> int:
        """Real optimizer steps observed (skipped AMP steps excluded)."""
        return self.wrapper.num_steps

    @property
    def ready(self) -> bool:
        """Whether there is an average to evaluate (LAWA: at least one snapshot)."""
        return self.method == "base" or self.wrapper.num_snapshots > 0

    # ----------------------------------------------------------------------------- evaluation
    def averaged(
        self,
        model: nn.Module | None = None,
        *,
        k: int | None = None,
        bn_loader: Iterable[Any] | None = None,
        bn_batches: int | None = None,
        bn_device: torch.device | str | None = None,
        bn_forward: Callable[[nn.Module, Any], Any] | None = None,
    ) -> Any:
        """Context manager: the average in the parameters (and recomputed BatchNorm statistics if
        ``bn_loader`` is given), the training weights and buffers restored bit-exactly on exit."""
        bn: dict[str, Any] = {}
        if bn_loader is not None:
            bn = {"bn_loader": bn_loader, "bn_batches": bn_batches, "bn_device": bn_device, "bn_forward": bn_forward}
        return self.wrapper.swap_in(k, model=model, **bn)

    def averaged_state(self, model: nn.Module, *, k: int | None = None, **bn: Any) -> dict[str, torch.Tensor]:
        """A copy of ``model.state_dict()`` holding the average (and BatchNorm statistics recomputed
        for it if ``bn_loader=`` is given); the model is left as it was."""
        return self.wrapper.averaged_state_dict(model, k, **bn)

    @property
    def swapped_in(self) -> bool:
        return self.wrapper.swapped_in

    # ----------------------------------------------------------------------------- state
    def state_dict(self) -> dict[str, Any]:
        """``{"format", "method", "wrapper"}``: the averaging state only, plain tensors and values.

        The framework saves its optimizer and the model itself; ``wrapper`` is the zoo wrapper's
        state dict around the stand-in optimizer (which has no state of its own). If taken while the
        average is swapped in, it is recorded as swapped out: the framework's checkpoint must hold
        the training weights (the integrations make sure of that).
        """
        sd = self.wrapper.state_dict()
        mine = sd.get(STATE_KEY)
        if isinstance(mine, dict) and mine.get("swapped_in"):
            sd[STATE_KEY] = {**mine, "swapped_in": False}
            for key in ("training_weights", "training_buffers"):  # the framework saves those itself
                if key in mine:
                    sd[STATE_KEY][key] = None
        return {"format": STATE_FORMAT, "method": self.method, "wrapper": sd}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Load :meth:`state_dict`'s output; checked before anything changes (``ValueError``)."""
        if not isinstance(state_dict, dict) or state_dict.get("format") != STATE_FORMAT or "wrapper" not in state_dict:
            got = sorted(state_dict) if isinstance(state_dict, dict) else type(state_dict).__name__
            raise ValueError(f"Invalid observer state: expected a dict from Observer.state_dict(), got {got}")
        if state_dict.get("method") != self.method:
            raise ValueError(
                f"Invalid observer state: saved by method {state_dict.get('method')!r}, this observer runs "
                f"{self.method!r}; resume with the same method (or drop the saved state for a fresh average)"
            )
        self.wrapper.load_state_dict(state_dict["wrapper"])

    def close(self) -> None:
        """Stop observing the optimizer's steps (removes the step hook)."""
        self._hook.remove()

    def __repr__(self) -> str:
        return f"Observer({self.wrapper._describe()}, method={self.method!r}, base={type(self.base).__name__})"


def _local(t: torch.Tensor) -> torch.Tensor:
    """A DTensor's local shard (a view of its storage); any other tensor as it is."""
    return t.to_local() if hasattr(t, "to_local") else t


def release_unsharded(model: nn.Module) -> None:
    """Free FSDP2's unsharded parameter copies (``FSDPModule.reshard``), so that the next forward
    gathers the shards as they are now: after weights are written into the shards in place, a
    module kept unsharded (``reshard_after_forward=False``) would still compute with the old ones."""
    fsdp = sys.modules.get("torch.distributed.fsdp")
    if fsdp is None or not hasattr(fsdp, "FSDPModule"):
        return  # FSDP2 never imported: nothing is sharded
    for module in model.modules():
        if isinstance(module, fsdp.FSDPModule):
            module.reshard()


class StateSwap:
    """Copy a saved state (the average, from :meth:`Observer.averaged_state`) into ``model`` in place,
    and back: ``with swap: evaluate(model)``; reusable, one backup buffer allocated once.

    For frameworks that evaluate batch by batch (Lightning): the average (and its BatchNorm
    statistics) is computed once per evaluation, then swapped in around each batch's second pass
    for the cost of three copies, the model's own tensors restored bit-exactly on exit (also when
    the evaluation raises). The same ``Parameter`` and buffer objects stay in the model.

    Args:
        model (nn.Module): the model; ``state`` entries are matched to its ``state_dict()`` names.
        state (dict): name -> tensor, a subset of ``model.state_dict()``'s names, same shapes.
    """

    def __init__(self, model: nn.Module, state: dict[str, torch.Tensor]) -> None:
        targets = model.state_dict()  # detached aliases of the parameters and buffers (FSDP2: local shards' DTensors)
        missing = sorted(set(state) - set(targets))
        if missing:
            raise ValueError(f"Invalid state: {missing[:5]} are not in the model's state_dict")
        for name, t in state.items():
            if tuple(t.shape) != tuple(targets[name].shape):
                want = tuple(targets[name].shape)
                raise ValueError(f"Invalid state: {name!r} has shape {tuple(t.shape)}, the model's {want}")
        self.state = state
        self.model = model
        self._targets = [_local(targets[n]) for n in state]  # FSDP2: each rank copies its own shards
        self._sources = [_local(t) for t in state.values()]
        with torch.no_grad():
            self._backups = [targets[n].detach().clone() for n in state]  # DTensors stay DTensors
        self._backup = [_local(t) for t in self._backups]
        self.active = False

    def training_state(self) -> dict[str, torch.Tensor]:
        """While active: copies of the model's own tensors (what a checkpoint must hold)."""
        return {n: b.clone() for n, b in zip(self.state, self._backups)}

    def __enter__(self) -> StateSwap:
        if self.active:
            raise RuntimeError("StateSwap entered twice: the average is already in the model")
        release_unsharded(self.model)
        with torch.no_grad():
            torch._foreach_copy_(self._backup, self._targets)
            torch._foreach_copy_(self._targets, self._sources)
        self.active = True
        return self

    def __exit__(self, *exc: object) -> None:
        with torch.no_grad():
            torch._foreach_copy_(self._targets, self._backup)
        release_unsharded(self.model)
        self.active = False


class TimeSaved:
    """When the average first reached the raw weights' best metric: the paper's measure on one run.

    Args:
        metric (str): the name of the metric, for the summary (e.g. ``"val_loss"``).
        mode (str, optional): ``"min"`` (a loss) or ``"max"`` (an accuracy) (default: ``"min"``).

    Example:
        >>> ts = TimeSaved("val_loss")
        >>> ts.record(step=100, epoch=1, raw=0.9, avg=None)   # no average yet
        >>> ts.record(step=200, epoch=2, raw=0.7, avg=0.6)
        >>> ts.record(step=300, epoch=3, raw=0.6, avg=0.5)
        >>> ts.result()["saved_steps"], ts.result()["saved_epochs"]
        (100, 1)
        >>> ts.summary()  # doctest: +ELLIPSIS
        "the average first reached the raw weights' best val_loss 0.6 at step 200 (epoch 2), 100 steps / 1 epochs ..."
    """

    def __init__(self, metric: str, mode: str = "min") -> None:
        if not isinstance(metric, str) or not metric:
            raise ValueError(f"Invalid metric: {metric!r}; use the logged name, e.g. 'val_loss'")
        if mode not in ("min", "max"):
            raise ValueError(f"Invalid mode: {mode!r}; use 'min' (lower is better) or 'max' (higher is better)")
        self.metric = metric
        self.mode = mode
        self.records: list[tuple[int, int, float, float | None]] = []

    def record(self, step: int, epoch: int, raw: float, avg: float | None) -> None:
        """One evaluation: the raw weights' value and the average's (None before there is one)."""
        self.records.append((int(step), int(epoch), float(raw), None if avg is None else float(avg)))

    def _better_or_equal(self, a: float, b: float) -> bool:
        return a <= b if self.mode == "min" else a >= b

    def result(self) -> dict[str, Any] | None:
        """The numbers behind :meth:`summary`, or None before any finite raw value was recorded."""
        raws = [r for r in self.records if math.isfinite(r[2])]
        if not raws:
            return None
        best = min(r[2] for r in raws) if self.mode == "min" else max(r[2] for r in raws)
        raw_step, raw_epoch = next((s, e) for s, e, v, _ in raws if v == best)
        out: dict[str, Any] = {"best": best, "raw_step": raw_step, "raw_epoch": raw_epoch}
        avgs = [(a, s, e) for s, e, _, a in self.records if a is not None and math.isfinite(a)]
        hit = next(((s, e) for a, s, e in avgs if self._better_or_equal(a, best)), None)
        if avgs:
            top = min(avgs) if self.mode == "min" else max(avgs)
            out.update(avg_best=top[0], avg_best_step=top[1], avg_best_epoch=top[2])
        if hit is not None:
            out.update(
                avg_step=hit[0], avg_epoch=hit[1], saved_steps=raw_step - hit[0], saved_epochs=raw_epoch - hit[1]
            )
        return out

    def summary(self) -> str:
        """One line: how much earlier the average reached the raw weights' best, or that it did not."""
        r = self.result()
        if r is None:
            return f"no finite {self.metric} was recorded, so there is nothing to compare"
        best = f"{r['best']:.6g}"
        raw_at = f"step {r['raw_step']}, epoch {r['raw_epoch']}"
        if "avg_step" not in r:
            if "avg_best" not in r:
                return (
                    f"the average was never evaluated (no snapshot yet); the raw weights' best {self.metric} "
                    f"was {best} ({raw_at})"
                )
            return (
                f"the average never reached the raw weights' best {self.metric} {best} ({raw_at}); its best was "
                f"{r['avg_best']:.6g} at step {r['avg_best_step']} (epoch {r['avg_best_epoch']})"
            )
        head = (
            f"the average first reached the raw weights' best {self.metric} {best} at step {r['avg_step']} "
            f"(epoch {r['avg_epoch']}), "
        )
        steps, epochs = r["saved_steps"], r["saved_epochs"]
        if steps >= 0:
            return head + f"{steps} steps / {epochs} epochs before the raw weights ({raw_at})"
        return head + f"{-steps} steps / {-epochs} epochs after the raw weights ({raw_at})"

    def state_dict(self) -> dict[str, Any]:
        return {"metric": self.metric, "mode": self.mode, "records": [list(r) for r in self.records]}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        records = state.get("records") if isinstance(state, dict) else None
        if not isinstance(records, list) or not all(isinstance(r, (list, tuple)) and len(r) == 4 for r in records):
            raise ValueError("Invalid TimeSaved state: expected {'records': [[step, epoch, raw, avg], ...]}")
        self.records = [(int(s), int(e), float(v), None if a is None else float(a)) for s, e, v, a in records]
