"""``ScheduleFreeAdapter``: schedule-free SGD/AdamW (the ``schedulefree`` package) behind the zoo's protocol."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor
from torch.optim import Optimizer

from .._checks import is_int, is_number
from .._shared import on_owner
from ..protocol import AveragingOptimizer, check_not_wrapped
from ._optional import import_optional

__all__ = ["ScheduleFreeAdapter"]

_SF_CLASSES = ("SGDScheduleFree", "AdamWScheduleFree", "RAdamScheduleFree")


def _convert(optimizer: Optimizer, sf: Any, warmup_steps: int, r: float, weight_lr_power: float) -> Optimizer:
    """A schedule-free optimizer over ``optimizer``'s param groups and hyper-parameters."""
    if optimizer.state:
        raise ValueError(
            "Invalid optimizer: it has already stepped and its state (momentum, moments) cannot be carried "
            "over to a schedule-free optimizer; pass a fresh one"
        )
    extra = {"warmup_steps": warmup_steps, "r": r, "weight_lr_power": weight_lr_power}
    groups = []
    if type(optimizer) is torch.optim.SGD:
        cls = sf.SGDScheduleFree
        for g in optimizer.param_groups:
            if not 0.0 < g["momentum"] < 1.0 or g["nesterov"] or g["dampening"] != 0:
                raise ValueError(
                    f"Invalid optimizer: schedule-free SGD needs plain momentum in (0, 1), got momentum="
                    f"{g['momentum']}, nesterov={g['nesterov']}, dampening={g['dampening']}; use e.g. "
                    "torch.optim.SGD(params, lr=..., momentum=0.9)"
                )
            groups.append(
                {
                    "params": g["params"],
                    "lr": g["lr"],
                    "momentum": g["momentum"],
                    "weight_decay": g["weight_decay"],
                    **extra,
                }
            )
    elif type(optimizer) in (torch.optim.AdamW, torch.optim.Adam):
        cls = sf.AdamWScheduleFree
        for g in optimizer.param_groups:
            if type(optimizer) is torch.optim.Adam and g["weight_decay"] != 0:
                raise ValueError(
                    f"Invalid optimizer: Adam's weight_decay={g['weight_decay']} is an L2 penalty, schedule-free "
                    "AdamW decays decoupled; pass torch.optim.AdamW instead"
                )
            if g["amsgrad"]:
                raise ValueError("Invalid optimizer: amsgrad=True has no schedule-free counterpart; use amsgrad=False")
            groups.append(
                {
                    "params": g["params"],
                    "lr": g["lr"],
                    "betas": tuple(g["betas"]),
                    "eps": g["eps"],
                    "weight_decay": g["weight_decay"],
                    **extra,
                }
            )
    else:
        raise TypeError(
            f"Invalid optimizer: cannot convert {type(optimizer).__name__} to a schedule-free optimizer; pass "
            f"torch.optim.SGD (momentum in (0, 1)), Adam or AdamW, or a schedulefree.{'/'.join(_SF_CLASSES)}"
        )
    return cls(groups)


class ScheduleFreeAdapter(AveragingOptimizer):
    r"""Schedule-free SGD or AdamW (Defazio et al., 2024; ``pip install schedulefree``) on the zoo's protocol.

    Schedule-free optimizers train at an interpolation :math:`y` between their SGD/Adam iterate
    :math:`z` and the running average :math:`x` of the :math:`z`'s, and evaluate :math:`x`; the
    package switches the parameters between them with ``optimizer.train()``/``.eval()``. Here
    the optimizer always stays in train mode (the parameters hold :math:`y`, which is what
    ``model.state_dict()`` and :meth:`state_dict` save, and a resume from them is exact), and
    :meth:`averaged` writes :math:`x` into the parameters through the package's ``eval()``;
    leaving restores :math:`y` bit-exactly from a copy (the package's ``train()`` would
    recompute it with rounding). :meth:`eval`/:meth:`train` are the same swap under the
    package's names, so the HF ``Trainer`` and accelerate, which call them around evaluation,
    evaluate :math:`x` and train on an exact :math:`y`; a checkpoint they write in eval mode
    resumes exactly (see :meth:`AveragingOptimizer.load_state_dict`). Use
    :meth:`averaged_state_dict` for the :math:`x` weights to ship.

    It needs its own optimizer, built over the parameters. Given a schedule-free optimizer
    (``schedulefree.SGDScheduleFree``, ``AdamWScheduleFree``, ``RAdamScheduleFree``), it wraps it as
    it is. Given a fresh ``torch.optim.SGD`` (momentum in (0, 1)), ``Adam`` or ``AdamW``, it builds
    ``SGDScheduleFree``/``AdamWScheduleFree`` over the same param groups with the same ``lr``,
    ``momentum``/``betas``, ``eps`` and ``weight_decay``, and the given optimizer is not used
    afterwards (``opt.optimizer`` is the new one). Schedule-free needs no LR schedule; a torch
    scheduler still works on it (it edits ``lr``, which the package then uses), and warmup is
    ``warmup_steps``.

    Args:
        optimizer (torch.optim.Optimizer): a fresh SGD/Adam/AdamW to convert, or a schedule-free optimizer.
        warmup_steps (int, optional): linear LR warmup steps of the converted optimizer (default: 0).
        r (float, optional): polynomial weighting power of the average (default: 0.0, the package's).
        weight_lr_power (float, optional): weights of the average are ``lr_max ** weight_lr_power``
            (default: 2.0, the package's).

    Example:
        >>> opt = ScheduleFreeAdapter(torch.optim.AdamW(model.parameters(), lr=2.5e-3), warmup_steps=100)
        >>> opt.zero_grad(); loss_fn(model(x), y).backward(); opt.step()
        >>> with opt.averaged():
        ...     evaluate(model)  # x, the schedule-free average
    """

    method = "schedulefree"

    def __init__(
        self, optimizer: Optimizer, warmup_steps: int = 0, r: float = 0.0, weight_lr_power: float = 2.0
    ) -> None:
        sf = import_optional("schedulefree", "schedulefree", self.method)
        check_not_wrapped(optimizer)
        if not is_int(warmup_steps, 0):
            raise ValueError(f"Invalid warmup_steps: {warmup_steps!r}; use a non-negative int")
        for name, value in (("r", r), ("weight_lr_power", weight_lr_power)):
            if not is_number(value) or value < 0:
                raise ValueError(f"Invalid {name}: {value!r}; use a non-negative float")
        if isinstance(optimizer, tuple(getattr(sf, name) for name in _SF_CLASSES)):
            if (warmup_steps, r, weight_lr_power) != (0, 0.0, 2.0):
                raise ValueError(
                    "Invalid warmup_steps/r/weight_lr_power: they configure a converted optimizer; set them on "
                    f"the {type(optimizer).__name__} you pass instead"
                )
            if not all(g["train_mode"] for g in optimizer.param_groups) and optimizer.state:
                raise ValueError(
                    f"Invalid optimizer: the {type(optimizer).__name__} is in eval mode; call its .train() first"
                )
            base = optimizer
        elif isinstance(optimizer, Optimizer):
            base = _convert(optimizer, sf, warmup_steps, float(r), float(weight_lr_power))
        else:
            raise TypeError(f"Invalid optimizer: {type(optimizer).__name__} is not a torch.optim.Optimizer")
        base.train()  # stays in train mode; evaluation goes through averaged()
        super().__init__(base, period=None)

    def _describe(self) -> str:
        assert self.optimizer is not None
        return f"variant={type(self.optimizer).__name__}"

    @property
    def num_snapshots(self) -> int:
        """How many optimizer steps the average :math:`x` holds."""
        return self.num_steps

    @on_owner
    def eval(self) -> None:
        """Put the evaluation weights :math:`x` into the parameters (:meth:`swap_in`); idempotent.

        The schedule-free protocol, as the package's own ``optimizer.eval()``: the HF ``Trainer``
        and accelerate's ``AcceleratedOptimizer`` call it before evaluating, :meth:`train` after.
        """
        if self._swap is None:
            self.swap_in()

    @on_owner
    def train(self) -> None:
        """Put the training weights :math:`y` back, bit-exactly (:meth:`swap_out`); idempotent."""
        if self._swap is not None:
            self.swap_out()

    @on_owner
    def step(self, closure: Any = None) -> Any:  # type: ignore[override]
        """One schedule-free step (raises if someone put the optimizer in eval mode)."""
        assert self.optimizer is not None
        if not all(g["train_mode"] for g in self.optimizer.param_groups):
            raise RuntimeError(
                "step() with the schedule-free optimizer in eval mode: use `with opt.averaged():` or "
                "opt.eval()/opt.train() to evaluate, or call opt.optimizer.train() before stepping"
            )
        return super().step(closure)

    # --------------------------------------------------------------------------- hooks
    def _on_new_params(self, params: list[Tensor]) -> None:
        assert self.optimizer is not None
        for g in self.optimizer.param_groups:  # a new group starts in the package's eval mode;
            g["train_mode"] = True  # its parameters have no state yet, so y = x: nothing moves

    def _write_eval_weights(self, params: list[Tensor], k: int | None) -> None:
        assert self.optimizer is not None
        state = self.optimizer.state
        known = set(state)
        try:
            self.optimizer.eval()  # the parameters now hold x
        finally:
            for g in self.optimizer.param_groups:  # swap_out restores y from the protocol's copy
                g["train_mode"] = True
            for p in [p for p in state if p not in known and not state[p]]:
                del state[p]  # the package's eval() made empty entries for parameters never stepped

    @on_owner
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """As :meth:`AveragingOptimizer.load_state_dict`; refuses a state saved in eval mode."""
        groups = state_dict.get("param_groups") if isinstance(state_dict, dict) else None
        if isinstance(groups, list) and not all(isinstance(g, dict) and g.get("train_mode") for g in groups):
            raise ValueError(
                "Invalid state_dict: its schedule-free param groups are in eval mode (train_mode=False), so "
                "the saved weights would be x, not the training weights y; save from this wrapper"
            )
        states = state_dict.get("state") if isinstance(state_dict, dict) else None
        if isinstance(states, dict):  # torch does not check state shapes; z must match its parameter
            for index, entry in states.items():
                z = entry.get("z") if isinstance(entry, dict) else None
                p = self._params[index] if isinstance(index, int) and 0 <= index < len(self._params) else None
                if isinstance(z, Tensor) and (p is None or tuple(z.shape) != tuple(p.shape)):
                    want = "no parameter" if p is None else f"shape {tuple(p.shape)}"
                    raise ValueError(
                        f"Invalid state_dict: schedule-free state z of parameter {index!r} has shape "
                        f"{tuple(z.shape)}, this optimizer has {want}; load a state dict saved for the same model"
                    )
        super().load_state_dict(state_dict)
