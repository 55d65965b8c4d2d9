"""Which training runs a config asks for, and which evaluations each run makes per epoch.

Methods that leave the training trajectory unchanged (LAWA for every k of the list, EXP, EMA,
SWA) observe ONE base run: its SGD optimizer is stepped once per batch, then each wrapper's
``observe_step()`` is called. Methods that change the trajectory (Lookahead, schedule-free) are
runs of their own, driven by their wrapper. Every wrapper comes from the zoo's registry
(:func:`lawa_optim.create`), so ``get_method_info(name).changes_trajectory`` decides which is which.

Evaluation names (the ``method`` column of the metrics):

=====================  ======================================================================
``base``               the SGD weights with the model's own BatchNorm statistics
``lawa_k{j}``          mean of the j latest epoch snapshots (one LAWA wrapper with k = max j)
``lawa_k{j}_bncopy``   the same weights with the current model's BatchNorm statistics copied
``exp_k{k}``           EXP coefficients alpha (1 - alpha)^i over the k latest snapshots
``ema``                per-step EMA of the weights
``swa``                mean of the epoch snapshots from ``start_epoch`` on
``lookahead``          Lookahead's slow weights (its own run)
``schedulefree``       schedule-free SGD's average x (its own run)
=====================  ======================================================================

Averaged weights get BatchNorm statistics recomputed on a training subset unless
``eval.bn=copy`` (the ``_bncopy`` variants always copy).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from .config import OBSERVER_FAMILIES, TRAJECTORY_FAMILIES, Config

__all__ = ["EvalSpec", "RunPlan", "plan_runs"]


@dataclass(frozen=True)
class EvalSpec:
    """One evaluation per epoch: ``wrapper`` (None: the training weights), window ``k``, BN mode."""

    name: str
    family: str
    wrapper: str | None
    k: int | None
    bn: str  # "model": the model's statistics; "recompute"; "copy"
    label: str


@dataclass
class RunPlan:
    """One training run: its name, the wrappers it creates and the evaluations it makes."""

    run: str
    driver: str | None  # registry name of the wrapper that steps (None: plain SGD)
    driver_kwargs: dict[str, Any] = field(default_factory=dict)
    observers: dict[str, tuple[str, dict[str, Any]]] = field(default_factory=dict)  # name -> (method, kwargs)
    evals: list[EvalSpec] = field(default_factory=list)


def plan_runs(cfg: Config, families: list[str] | None, steps_per_epoch: int) -> list[RunPlan]:
    """The runs of one seed. ``families`` selects method families (None: those enabled in ``cfg``)."""
    me = cfg.methods
    if families is None:
        families = [f for f in OBSERVER_FAMILIES + TRAJECTORY_FAMILIES if getattr(me, f).enabled]
    bn = cfg.eval.bn
    base = RunPlan(run="base", driver=None)
    base.evals.append(EvalSpec("base", "base", None, None, "model", "SGD"))
    if "lawa" in families:
        kmax = max(me.lawa.k + me.lawa.bncopy_k)
        base.observers["lawa"] = ("lawa", {"k": kmax, "period": steps_per_epoch})
        for k in sorted(set(me.lawa.k)):
            base.evals.append(EvalSpec(f"lawa_k{k}", "lawa", "lawa", k, bn, f"LAWA k={k}"))
        for k in sorted(set(me.lawa.bncopy_k)):
            if bn != "copy":
                base.evals.append(EvalSpec(f"lawa_k{k}_bncopy", "lawa", "lawa", k, "copy", f"LAWA k={k}, BN copied"))
    if "exp" in families:
        base.observers["exp"] = ("exp", {"k": me.exp.k, "alpha": me.exp.alpha, "period": steps_per_epoch})
        base.evals.append(EvalSpec(f"exp_k{me.exp.k}", "exp", "exp", None, bn,
                                   f"EXP k={me.exp.k}, a={me.exp.alpha:g}"))
    if "ema" in families:
        base.observers["ema"] = ("ema", {"decay": me.ema.decay, "update_every": me.ema.update_every})
        base.evals.append(EvalSpec("ema", "ema", "ema", None, bn, f"EMA {me.ema.decay:g}"))
    if "swa" in families:
        start = cfg.train.epochs // 2 if me.swa.start_epoch is None else me.swa.start_epoch
        base.observers["swa"] = ("swa", {"period": steps_per_epoch, "swa_start": start})
        base.evals.append(EvalSpec("swa", "swa", "swa", None, bn, f"SWA from epoch {start + 1}"))
    plans = [base]
    if "lookahead" in families:
        plans.append(RunPlan(run="lookahead", driver="lookahead",
                             driver_kwargs={"k": me.lookahead.k, "alpha": me.lookahead.alpha},
                             evals=[EvalSpec("lookahead", "lookahead", "driver", None, bn,
                                             f"Lookahead k={me.lookahead.k}, a={me.lookahead.alpha:g}")]))
    if "schedulefree" in families:
        warmup = int(round(me.schedulefree.warmup_epochs * steps_per_epoch))
        plans.append(RunPlan(run="schedulefree", driver="schedulefree", driver_kwargs={"warmup_steps": warmup},
                             evals=[EvalSpec("schedulefree", "schedulefree", "driver", None, bn,
                                             "Schedule-free SGD")]))
    return plans
