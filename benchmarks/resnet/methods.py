"""Which training runs a config asks for, and which evaluations each run makes per epoch.

Every method comes from the zoo's registry (:func:`lawa_optim.create`), and the registry's
``get_method_info(name).changes_trajectory`` decides where it goes: methods that leave the
training trajectory unchanged (LAWA for every k of the list, EXP, EMA, SWA) observe ONE base
run (its SGD optimizer is stepped once per batch, then each wrapper's ``observe_step()`` is
called); methods that change it (Lookahead, schedule-free) are runs of their own, driven by
their wrapper. A method added to the registry is planned like the others with no change here.

Evaluation names (the ``method`` column of the metrics):

=====================  ======================================================================
``base``               the SGD weights with the model's own BatchNorm statistics
``lawa_k{j}``          mean of the j latest epoch snapshots (one LAWA wrapper with k = max j)
``lawa_k{j}_bncopy``   the same weights with the current model's BatchNorm statistics copied
``{method}_k{k}``      a method of the base run that has a window ``k`` (``exp_k10``)
``{method}``           any other method (``ema``, ``swa``, and the runs ``lookahead``,
                       ``schedulefree``): what its ``averaged()`` swaps in
=====================  ======================================================================

Averaged weights get BatchNorm statistics recomputed on a training subset unless
``eval.bn=copy`` (the ``_bncopy`` variants always copy).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from .config import Config

__all__ = ["DISPLAY_NAMES", "EvalSpec", "RunPlan", "method_kwargs", "plan_runs"]

# Optional: how the report names a method (default: its registry name).
DISPLAY_NAMES = {"base": "SGD", "lawa": "LAWA", "exp": "EXP", "ema": "EMA", "swa": "SWA", "lookahead": "Lookahead",
                 "schedulefree": "Schedule-free SGD"}


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
    """One training run: its name, the wrappers it creates and the evaluations it makes.

    ``sgd`` overrides the base SGD's arguments of ``train`` (schedule-free's own ``lr``);
    ``lr_schedule`` is False for a method that schedules the learning rate itself.
    """

    run: str
    driver: str | None  # registry name of the wrapper that steps (None: plain SGD)
    driver_kwargs: dict[str, Any] = field(default_factory=dict)
    observers: dict[str, tuple[str, dict[str, Any]]] = field(default_factory=dict)  # name -> (method, kwargs)
    evals: list[EvalSpec] = field(default_factory=list)
    sgd: dict[str, Any] = field(default_factory=dict)
    lr_schedule: bool = True


def method_kwargs(cfg: Config, name: str, steps_per_epoch: int) -> dict[str, Any]:
    """The keyword arguments ``lawa_optim.create(name, ...)`` gets: the config's section, in the method's units."""
    from lawa_optim import get_method_info

    section = cfg.methods[name]
    kwargs = section.method_kwargs()
    if "period" in get_method_info(name).accepted_kwargs():
        kwargs["period"] = steps_per_epoch  # one snapshot per epoch
    if name == "lawa":  # one ring for every window evaluated
        kwargs["k"] = max(section.k + section.bncopy_k)
    elif name == "swa":
        kwargs["swa_start"] = cfg.train.epochs // 2 if section.start_epoch is None else section.start_epoch
    elif name == "schedulefree":
        kwargs["warmup_steps"] = int(round(section.warmup_epochs * steps_per_epoch))
    return kwargs


def _label(name: str, kwargs: dict[str, Any]) -> str:
    """The display name and the numeric options that differ from the registry's defaults."""
    from lawa_optim import get_method_info

    defaults = get_method_info(name).accepted_kwargs()
    shown = [f"{k}={v:g}" for k, v in kwargs.items() if k != "period" and isinstance(v, (int, float))
             and not isinstance(v, bool) and v != defaults.get(k)]
    return " ".join([DISPLAY_NAMES.get(name, name)] + ([", ".join(shown)] if shown else []))


def _evals(cfg: Config, name: str, kwargs: dict[str, Any], wrapper: str) -> list[EvalSpec]:
    bn = cfg.eval.bn
    if name == "lawa":  # every window of the list from one ring, and the copied-BN variants
        section = cfg.methods[name]
        evals = [EvalSpec(f"lawa_k{k}", name, wrapper, k, bn, f"LAWA k={k}") for k in sorted(set(section.k))]
        if bn != "copy":
            evals += [EvalSpec(f"lawa_k{k}_bncopy", name, wrapper, k, "copy", f"LAWA k={k}, BN copied")
                      for k in sorted(set(section.bncopy_k))]
        return evals
    windowed = wrapper != "driver" and isinstance(kwargs.get("k"), int)
    return [EvalSpec(f"{name}_k{kwargs['k']}" if windowed else name, name, wrapper, None, bn, _label(name, kwargs))]


def plan_runs(cfg: Config, methods: list[str] | None, steps_per_epoch: int) -> list[RunPlan]:
    """The runs of one seed. ``methods`` selects methods by registry name (None: those enabled in ``cfg``)."""
    from lawa_optim import get_method_info

    names = cfg.methods.names()
    if methods is None:
        methods = [n for n in names if cfg.methods[n].enabled]
    unknown = sorted(set(methods) - set(names))
    if unknown:
        raise ValueError(f"Invalid methods: unknown {unknown}; use names of lawa_optim.list_methods(): {names}")
    base = RunPlan(run="base", driver=None)
    base.evals.append(EvalSpec("base", "base", None, None, "model", DISPLAY_NAMES["base"]))
    plans = [base]
    for name in names:
        if name not in methods:
            continue
        kwargs = method_kwargs(cfg, name, steps_per_epoch)
        if get_method_info(name).changes_trajectory:
            plan = RunPlan(run=name, driver=name, driver_kwargs=kwargs, evals=_evals(cfg, name, kwargs, "driver"))
            if name == "schedulefree":  # its own learning rate, and no schedule: that is the method
                plan.sgd, plan.lr_schedule = {"lr": cfg.methods[name].lr, "nesterov": False}, False
            plans.append(plan)
        else:
            base.observers[name] = (name, kwargs)
            base.evals += _evals(cfg, name, kwargs, name)
    return plans
