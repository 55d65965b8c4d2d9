"""Create any method of the zoo by name: ``create("lawa", optimizer)`` (timm-style registry).

Each method is described by a frozen :class:`MethodInfo`; :func:`list_methods` names them,
:func:`get_method_info` describes one, :func:`create` builds it around a base optimizer with the
method's defaults, overridden by keyword arguments. Optional packages (torch-optimizer,
schedulefree) are imported only when their method is created.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

from torch.optim import Optimizer

from .baselines import BareWrapper, EMAWrapper, EXPWrapper, LookaheadWrapper, ScheduleFreeAdapter, SWAWrapper
from .baselines.jump import LAWAJumpWrapper
from .protocol import AveragingOptimizer
from .wrapper import LAWAWrapper

__all__ = ["MethodInfo", "create", "get_method_info", "list_methods"]


@dataclass(frozen=True)
class MethodInfo:
    """What the registry knows about one method.

    Args:
        name (str): the registry name (also the ``method`` stored in its state dicts).
        factory (callable): ``factory(optimizer, **kwargs)`` returning the wrapper.
        defaults (mapping): keyword arguments :func:`create` passes unless overridden.
        source (str): where the method and its defaults come from (paper section or library).
        description (str): one line on the method.
        evaluates (str): what ``averaged()`` swaps in.
        changes_trajectory (bool): ``True`` if training with the method moves the weights
            differently from the bare optimizer (Lookahead, schedule-free): it needs its own run.
            ``False`` if it only observes the base optimizer's trajectory, so several such
            wrappers can share one base optimizer (step it once, then ``observe_step()`` each).
        requires (str, optional): the module of the optional package it needs, imported when the
            method is created (``pip install lawa-optim[zoo]`` installs it).
        color (str): the method's colour in every benchmark plot (a matplotlib colour name).
        units (mapping): the unit a benchmark states each of these options in, where it is not
            given as is: ``"snapshots"`` (a count of snapshots; the benchmarks take one per epoch),
            ``"windows"`` (a list of windows ``j <= k``, all evaluated from one ring of the
            largest), ``"steps"`` (a count of optimizer steps), ``"epochs"`` (an option that counts
            steps, ``X_steps``, stated as ``X_epochs`` and multiplied by the steps per epoch) and,
            for ``lr``, ``"constant"`` (the method schedules the learning rate itself: its run
            gets a learning rate of its own and no schedule).
    """

    name: str
    factory: Callable[..., AveragingOptimizer]
    defaults: Mapping[str, Any]
    source: str
    description: str
    evaluates: str
    changes_trajectory: bool
    requires: str | None = None
    color: str = "tab:gray"
    units: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}))

    def accepted_kwargs(self) -> dict[str, Any]:
        """The keyword arguments the factory accepts, with their effective defaults."""
        params = list(inspect.signature(self.factory).parameters.values())[1:]  # after `optimizer`
        out = {p.name: p.default for p in params if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)}
        out.update(self.defaults)
        return out


def _info(name: str, factory: Callable[..., AveragingOptimizer], defaults: dict[str, Any], **kw: Any) -> MethodInfo:
    if "units" in kw:
        kw["units"] = MappingProxyType(dict(kw["units"]))
    return MethodInfo(name=name, factory=factory, defaults=MappingProxyType(dict(defaults)), **kw)


_METHODS: Mapping[str, MethodInfo] = MappingProxyType(
    {
        info.name: info
        for info in (
            _info(
                "base",
                BareWrapper,
                {},
                source="the base optimizer (paper's SGD/Adam baselines)",
                description="the bare optimizer",
                evaluates="the training weights",
                changes_trajectory=False,
                color="black",
            ),
            _info(
                "lawa",
                LAWAWrapper,
                {"k": 6},
                source="LAWA paper, Section 2 and Figure 2 (k=6 default)",
                description="uniform average of the k latest snapshots",
                evaluates="mean of the k latest snapshots",
                changes_trajectory=False,
                color="tab:blue",
                units={"k": "windows"},
            ),
            _info(
                "exp",
                EXPWrapper,
                {"k": 10, "alpha": 0.9},
                source="LAWA paper, Appendix C (k=10, alpha=0.9)",
                description="exponentially-decayed coefficients over the k latest snapshots",
                evaluates="EXP-weighted mean of the k latest snapshots",
                changes_trajectory=False,
                color="tab:orange",
                units={"k": "snapshots"},
            ),
            _info(
                "lookahead",
                LookaheadWrapper,
                {"k": 5, "alpha": 0.8},
                source="torch-optimizer Lookahead (fixed); LAWA paper, Appendix B (k=5, alpha=0.8)",
                description="Lookahead: k fast steps, then the slow weights step alpha toward them",
                evaluates="the slow weights",
                changes_trajectory=True,
                color="tab:green",
                units={"k": "steps"},
                requires="torch_optimizer",
            ),
            _info(
                "swa",
                SWAWrapper,
                {"swa_start": 0},
                source="torch.optim.swa_utils (Izmailov et al., 2018)",
                description="equal-weight mean of all snapshots from swa_start on",
                evaluates="mean of snapshots swa_start, swa_start+1, ...",
                changes_trajectory=False,
                color="tab:red",
                units={"swa_start": "snapshots"},
            ),
            _info(
                "ema",
                EMAWrapper,
                {"decay": 0.999, "update_every": 1},
                source="torch.optim.swa_utils.get_ema_multi_avg_fn",
                description="per-step exponential moving average of the weights",
                evaluates="the EMA of the weights",
                changes_trajectory=False,
                color="tab:purple",
                units={"update_every": "steps"},
            ),
            _info(
                "schedulefree",
                ScheduleFreeAdapter,
                {"warmup_steps": 0},
                source="schedulefree package, SGD/AdamWScheduleFree (Defazio et al., 2024)",
                description="schedule-free SGD/AdamW built over the given optimizer's param groups",
                evaluates="the schedule-free average x",
                changes_trajectory=True,
                color="tab:brown",
                units={"warmup_steps": "epochs", "lr": "constant"},
                requires="schedulefree",
            ),
            _info(  # the paper's open question (Section 4), not a method of the paper
                "lawa_jump",
                LAWAJumpWrapper,
                {"k": 6, "every": 6},
                source="LAWA paper, Section 4 (open question: continue training from the average)",
                description="LAWA that writes its average into the training weights every `every` snapshots",
                evaluates="mean of the k latest snapshots",
                changes_trajectory=True,
                color="tab:pink",
                units={"k": "snapshots", "every": "snapshots", "start": "snapshots"},
            ),
        )
    }
)


def list_methods(changes_trajectory: bool | None = None) -> list[str]:
    """Names of the registered methods, in registry order.

    Args:
        changes_trajectory (bool, optional): only those whose ``changes_trajectory`` equals this
            (default: None, all).

    Example:
        >>> list_methods()
        ['base', 'lawa', 'exp', 'lookahead', 'swa', 'ema', 'schedulefree', 'lawa_jump']
        >>> list_methods(changes_trajectory=False)
        ['base', 'lawa', 'exp', 'swa', 'ema']
    """
    if changes_trajectory not in (None, True, False):
        raise ValueError(f"Invalid changes_trajectory: {changes_trajectory!r}; use None, True or False")
    return [n for n, i in _METHODS.items() if changes_trajectory is None or i.changes_trajectory is changes_trajectory]


def get_method_info(name: str) -> MethodInfo:
    """The :class:`MethodInfo` of ``name``; ``ValueError`` listing the methods if unknown."""
    if not isinstance(name, str) or name not in _METHODS:
        raise ValueError(f"Unknown method: {name!r}; use one of {list_methods()}")
    return _METHODS[name]


def create(name: str, optimizer: Optimizer, **kwargs: Any) -> AveragingOptimizer:
    """Wrap ``optimizer`` with the method ``name``, its defaults overridden by ``kwargs``.

    Args:
        name (str): one of :func:`list_methods`.
        optimizer (torch.optim.Optimizer): the base optimizer (for ``schedulefree``: a fresh
            SGD/Adam/AdamW whose param groups and hyper-parameters it converts, or a
            schedule-free optimizer).
        **kwargs: the method's hyper-parameters (see ``get_method_info(name).accepted_kwargs()``).

    Raises ``ValueError`` for an unknown name, ``TypeError`` for a keyword the method does not
    accept, and the method's own ``ValueError``/``TypeError`` for a bad value; the optimizer is
    left unchanged.

    Example:
        >>> opt = create("lawa", torch.optim.SGD(model.parameters(), lr=0.1), period=len(loader))
        >>> ema = create("ema", opt.optimizer, decay=0.9999)  # both observe one base optimizer
    """
    info = get_method_info(name)
    accepted = info.accepted_kwargs()
    unknown = sorted(set(kwargs) - set(accepted))
    if unknown:
        raise TypeError(f"Invalid argument(s) {unknown} for method {name!r}; it accepts {accepted}")
    return info.factory(optimizer, **{**info.defaults, **kwargs})
