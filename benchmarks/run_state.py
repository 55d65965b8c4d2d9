"""What every benchmark runner's per-run trainer shares: its checkpoint, its observers, its swap.

The one runner's ``Trainer`` (:mod:`lawa_benchmarks.suite.runner`) subclasses :class:`RunState`
and sets ``model``, ``driver`` (the optimizer that steps: the base optimizer, or a zoo method that
changes the trajectory around it), ``base`` (the base optimizer), ``observers`` (zoo methods that
watch ``base``), ``scheduler``, ``plan``, ``seed``, ``device``, ``epoch``, ``train_time`` and
``rows``. The checkpoint holds everything needed to go on bit-exactly: the model, the driver's
state, each observer's own part of its state (they share the base optimizer's), the LR scheduler
and the RNG states.
"""

from __future__ import annotations

import random
import time
from contextlib import nullcontext
from typing import Any

import torch

from lawa_optim.protocol import PARAM_STATE_PREFIX, STATE_KEY

__all__ = ["ResumeError", "RunState"]


class ResumeError(RuntimeError):
    """The run folder holds checkpoints of another configuration (or of another version of the benchmark)."""


def _as_tuple(obj: Any) -> Any:
    """Python's RNG state comes back from a checkpoint with lists where it had tuples."""
    return tuple(_as_tuple(o) for o in obj) if isinstance(obj, (list, tuple)) else obj


def _own_part(sd: dict[str, Any]) -> dict[str, Any]:
    """A wrapper's entries of its state dict: ``"lawa"``, and the ``lawa_*`` entries of each parameter's state."""
    per_param = {i: {k: v for k, v in st.items() if k.startswith(PARAM_STATE_PREFIX)} for i, st in sd["state"].items()}
    return {STATE_KEY: sd[STATE_KEY], "state": {i: st for i, st in per_param.items() if st}}


def _with_own_part(plain: dict[str, Any], own: dict[str, Any]) -> dict[str, Any]:
    """The base optimizer's state dict ``plain`` with a wrapper's own entries (:func:`_own_part`) put back."""
    state = {i: dict(st) for i, st in plain["state"].items()}
    for i, st in own["state"].items():
        state.setdefault(i, {}).update(st)
    return {**plain, "state": state, STATE_KEY: own[STATE_KEY]}


class RunState:
    """Checkpointing, observing and swapping for one training run of a benchmark."""

    model: torch.nn.Module
    driver: Any
    base: torch.optim.Optimizer
    observers: dict[str, Any]
    scheduler: Any
    plan: Any
    seed: int
    device: torch.device
    epoch: int
    train_time: float
    rows: list[dict[str, Any]]
    observe_time: dict[str, float]
    CHECKPOINT_FORMAT: int = 1

    def state_dict(self, cfg_hash: str) -> dict[str, Any]:
        return {
            "format": self.CHECKPOINT_FORMAT,
            "config_hash": cfg_hash,
            "run": self.plan.run,
            "seed": self.seed,
            "epoch": self.epoch,
            "model": self.model.state_dict(),
            "optimizer": self.driver.state_dict(),
            # observers share the base optimizer's state: keep only their own part
            "observers": {n: _own_part(w.state_dict()) for n, w in self.observers.items()},
            "scheduler": None if self.scheduler is None else self.scheduler.state_dict(),
            "rng": {
                "torch": torch.get_rng_state(),
                "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
                "python": random.getstate(),
            },
            "train_time_s": self.train_time,
            "rows": self.rows,
        }

    def load_state_dict(self, sd: dict[str, Any]) -> None:
        self.model.load_state_dict(sd["model"])
        self.driver.load_state_dict(sd["optimizer"])
        plain = self.base.state_dict()
        for name, w in self.observers.items():
            w.load_state_dict(_with_own_part(plain, sd["observers"][name]))
        if self.scheduler is not None:
            self.scheduler.load_state_dict(sd["scheduler"])
        torch.set_rng_state(sd["rng"]["torch"])
        if sd["rng"]["cuda"] and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(sd["rng"]["cuda"])
        random.setstate(_as_tuple(sd["rng"]["python"]))
        self.epoch = int(sd["epoch"])
        self.train_time = float(sd["train_time_s"])
        self.rows = list(sd["rows"])

    def observe_step(self, t1: float) -> None:
        """Every observer counts the step the driver just took; ``t1`` is when the step ended."""
        for name, w in self.observers.items():
            w.observe_step()
            t2 = time.perf_counter()
            self.observe_time[name] += t2 - t1
            t1 = t2

    def wrapper(self, spec: Any) -> Any:
        """The zoo wrapper an evaluation spec evaluates (None: the raw weights)."""
        if spec.wrapper is None:
            return None
        return self.driver if spec.wrapper == "driver" else self.observers[spec.wrapper]

    def swap(self, spec: Any, bn_loader: Any) -> Any:
        """The swap an evaluation spec asks for, BatchNorm recomputed over ``bn_loader`` if asked."""
        w = self.wrapper(spec)
        if w is None:
            return nullcontext()
        if spec.bn == "recompute" and bn_loader is not None:
            return w.averaged(spec.k, model=self.model, bn_loader=bn_loader, bn_device=self.device)
        return w.averaged(spec.k)

    def observe_cost(self, spec: Any) -> float:
        """The time the spec's observer spent watching this epoch's steps (0 for the driver)."""
        return self.observe_time.get(spec.wrapper, 0.0) if spec.wrapper not in (None, "driver") else 0.0
