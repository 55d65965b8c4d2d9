"""Which training runs a config asks for, and which evaluations each run makes per epoch.

Every method comes from the zoo's registry (:func:`lawa_optim.create`), and the registry's
``get_method_info(name).changes_trajectory`` decides where it goes: methods that leave the
training trajectory unchanged (LAWA for every k of the list, EXP, EMA, SWA) observe ONE base
run (its SGD optimizer is stepped once per batch, then each wrapper's ``observe_step()`` is
called); methods that change it (Lookahead, schedule-free) are runs of their own, driven by
their wrapper. A method added to the registry is planned like the others with no change here:
its ``MethodInfo.units`` say which of its options the config states in other units (see
:mod:`.config`), and no method is named in this module.

Evaluation names (the ``method`` column of the metrics):

=====================  ======================================================================
``base``               the SGD weights with the model's own BatchNorm statistics
``lawa_k{j}``          mean of the j latest epoch snapshots (one LAWA wrapper with k = max j)
``lawa_k{j}_bncopy``   the same weights with the current model's BatchNorm statistics copied
``{method}_k{k}``      a method of the base run that has a window ``k`` (``exp_k10``)
``{method}``           any other method (``ema``, ``swa``, and the runs ``lookahead``,
                       ``schedulefree``): what its ``averaged()`` swaps in
=====================  ======================================================================

(``lawa_k{j}`` stands for any method whose window option is in ``"windows"``: ``{method}_k{j}``.)

Averaged weights get BatchNorm statistics recomputed on a training subset unless
``eval.bn=copy`` (the ``_bncopy`` variants always copy).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from .config import Config

__all__ = ["DISPLAY_NAMES", "EvalSpec", "RunPlan", "display_name", "method_kwargs", "plan_methods", "plan_runs"]

# Optional: how the report names a method (default: its registry name); {base} is the base optimizer's name.
DISPLAY_NAMES = {"base": "{base}", "lawa": "LAWA", "exp": "EXP", "ema": "EMA", "swa": "SWA", "lookahead": "Lookahead",
                 "schedulefree": "Schedule-free {base}"}


def display_name(method: str, base: str = "SGD") -> str:
    """The name a report shows for ``method`` (its registry name when it has no display name)."""
    return DISPLAY_NAMES.get(method, method).format(base=base)


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

    ``base_options`` overrides the base optimizer's arguments of the recipe (schedule-free's own ``lr``);
    ``lr_schedule`` is False for a method that schedules the learning rate itself.
    """

    run: str
    driver: str | None  # registry name of the wrapper that steps (None: plain SGD)
    driver_kwargs: dict[str, Any] = field(default_factory=dict)
    observers: dict[str, tuple[str, dict[str, Any]]] = field(default_factory=dict)  # name -> (method, kwargs)
    evals: list[EvalSpec] = field(default_factory=list)
    base_options: dict[str, Any] = field(default_factory=dict)
    lr_schedule: bool = True


def method_kwargs(section: Any, name: str, steps_per_epoch: int) -> dict[str, Any]:
    """The keyword arguments ``lawa_optim.create(name, ...)`` gets: its config section, in the method's units."""
    from lawa_optim import get_method_info

    from .config import epochs_name

    info = get_method_info(name)
    kwargs = section.method_kwargs()
    if "period" in info.accepted_kwargs():
        kwargs["period"] = steps_per_epoch  # one snapshot per epoch
    for option, unit in info.units.items():
        if unit == "windows":  # one ring for every window evaluated
            kwargs[option] = max(getattr(section, option) + getattr(section, f"bncopy_{option}"))
        elif unit == "epochs":
            kwargs[option] = int(round(getattr(section, epochs_name(option)) * steps_per_epoch))
    return kwargs


def _label(name: str, kwargs: dict[str, Any], base: str) -> str:
    """The display name and the numeric options that differ from the registry's defaults."""
    from lawa_optim import get_method_info

    defaults = get_method_info(name).accepted_kwargs()
    shown = [f"{k}={v:g}" for k, v in kwargs.items() if k != "period" and isinstance(v, (int, float))
             and not isinstance(v, bool) and v != defaults.get(k)]
    return " ".join([display_name(name, base)] + ([", ".join(shown)] if shown else []))


def _evals(methods: Any, name: str, kwargs: dict[str, Any], wrapper: str, bn: str, base: str) -> list[EvalSpec]:
    from lawa_optim import get_method_info

    windows = [o for o, unit in get_method_info(name).units.items() if unit == "windows"]
    if windows:  # every window of the list from one ring, and the copied-BN variants
        section, label = methods[name], display_name(name, base)
        ks = getattr(section, windows[0])
        evals = [EvalSpec(f"{name}_k{k}", name, wrapper, k, bn, f"{label} k={k}") for k in sorted(set(ks))]
        if bn != "copy":
            evals += [EvalSpec(f"{name}_k{k}_bncopy", name, wrapper, k, "copy", f"{label} k={k}, BN copied")
                      for k in sorted(set(getattr(section, f"bncopy_{windows[0]}")))]
        return evals
    windowed = wrapper != "driver" and isinstance(kwargs.get("k"), int)
    return [EvalSpec(f"{name}_k{kwargs['k']}" if windowed else name, name, wrapper, None, bn,
                     _label(name, kwargs, base))]


def plan_runs(cfg: Config, methods: list[str] | None, steps_per_epoch: int) -> list[RunPlan]:
    """The ResNet benchmark's runs of one seed (see :func:`plan_methods`)."""
    return plan_methods(cfg.methods, methods, steps_per_epoch, bn=cfg.eval.bn)


def plan_methods(sections: Any, methods: list[str] | None, steps_per_epoch: int, *, bn: str = "recompute",
                 base: str = "SGD", bn_baseline: bool = False) -> list[RunPlan]:
    """The runs of one seed. ``methods`` selects methods by registry name (None: those enabled in ``sections``).

    Args:
        sections (MethodsConfig): the config's ``methods``.
        bn (str): how averaged weights get BatchNorm statistics (``recompute``, ``copy``).
        base (str): the base optimizer's display name (``SGD``, ``AdamW``).
        bn_baseline (bool): also evaluate the training weights with BatchNorm statistics recomputed as
            the averages get them (``base_bn``, an observer ``bare`` of the method ``base``).
    """
    from lawa_optim import get_method_info

    names = sections.names()
    if methods is None:
        methods = [n for n in names if sections[n].enabled]
    unknown = sorted(set(methods) - set(names))
    if unknown:
        raise ValueError(f"Invalid methods: unknown {unknown}; use names of lawa_optim.list_methods(): {names}")
    plan = RunPlan(run="base", driver=None)
    plan.evals.append(EvalSpec("base", "base", None, None, "model", display_name("base", base)))
    plans = [plan]
    for name in names:
        if name not in methods:
            continue
        info = get_method_info(name)
        kwargs = method_kwargs(sections[name], name, steps_per_epoch)
        if info.changes_trajectory:
            own = RunPlan(run=name, driver=name, driver_kwargs=kwargs,
                          evals=_evals(sections, name, kwargs, "driver", bn, base))
            if info.units.get("lr") == "constant":  # its own learning rate, and no schedule: that is the method
                lr = sections[name].lr
                own.base_options, own.lr_schedule = ({} if lr is None else {"lr": lr}), False
            plans.append(own)
        else:
            plan.observers[name] = (name, kwargs)
            plan.evals += _evals(sections, name, kwargs, name, bn, base)
    if bn_baseline:
        plan.observers["bare"] = ("base", {})
        plan.evals.insert(1, EvalSpec("base_bn", "base", "bare", None, "recompute", f"{base}, BN recomputed"))
    return plans
