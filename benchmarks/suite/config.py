"""The suite's configuration: YAML validated by pydantic, every problem reported at once.

A suite config has a top-level ``methods`` section (the defaults of every workload, in the
ResNet benchmark's format: one section per method of :func:`lawa_optim.list_methods`, see
:mod:`lawa_benchmarks.resnet.config`) and one section per workload under ``workloads``, whose
options each workload's module states (:mod:`lawa_benchmarks.suite.workloads`). A
workload's own ``methods`` mapping is merged over the top-level one (e.g. schedule-free AdamW's
learning rate for the transformers), then validated by the ResNet benchmark's own config model,
so the methods are named and checked exactly as there (the registry decides which exist).

``target`` (per workload) is the validation metric the steps-to-target count is measured at;
null: the baseline's final value averaged over the run's seeds (computed from the run). It
changes no number of the training, so a run folder resumes whatever it is set to.

Example:
    >>> cfg = load_config("configs/suite.yaml", ["seeds=1", "workloads.vit.epochs=2"])
    >>> [w for w in cfg.workload_names() if cfg.workload(w).enabled]
    ['gpt', 'resnet', 'vit', 'roberta']
"""

from __future__ import annotations

import copy
import functools
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import Field, create_model

from ..config_base import ConfigError, Section, load_yaml, validate

__all__ = ["ConfigError", "SuiteConfig", "config_to_dict", "load_config", "methods_for", "parse_config"]

PosInt = Annotated[int, Field(gt=0)]
NonNegInt = Annotated[int, Field(ge=0)]


class WorkloadsConfig(Section):
    """One section per workload of :func:`lawa_benchmarks.suite.workloads.registry` (see :func:`_suite_model`)."""


class ReportConfig(Section):
    headline: str = "lawa_k6"  # the method whose lead is the headline of each workload


class SuiteConfig(Section):
    """The whole suite; see the module docstring."""

    seeds: PosInt = 3
    first_seed: NonNegInt = 0
    threads: PosInt | None = None  # torch.set_num_threads (None: torch's default)
    device: Literal["auto", "cpu", "cuda"] = "cpu"
    methods: dict[str, Any] = Field(default_factory=dict)  # defaults of every workload (the resnet format)
    workloads: WorkloadsConfig = Field(default_factory=WorkloadsConfig)  # replaced by _suite_model()'s
    report: ReportConfig = Field(default_factory=ReportConfig)

    @property
    def seed_list(self) -> list[int]:
        return list(range(self.first_seed, self.first_seed + self.seeds))

    def workload_names(self) -> list[str]:
        return list(type(self.workloads).model_fields)

    def workload(self, name: str) -> Any:
        if name not in self.workload_names():
            raise KeyError(f"no workload {name!r}; the suite has {self.workload_names()}")
        return getattr(self.workloads, name)


@functools.cache
def _suite_model() -> type[SuiteConfig]:
    """:class:`SuiteConfig` with a ``workloads.<name>`` section for every workload of the registry."""
    from .workloads import registry

    sections = {name: (cls.Config, Field(default_factory=cls.Config)) for name, cls in registry().items()}
    workloads = create_model("workloads_config", __base__=WorkloadsConfig, **sections)
    return create_model("suite_config", __base__=SuiteConfig, workloads=(workloads, Field(default_factory=workloads)))


def _merge(base: dict, over: dict) -> dict:
    out = copy.deepcopy(base)
    for k, v in over.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else copy.deepcopy(v)
    return out


def _methods(raw_methods: Any, raw_workload: Any, epochs: Any, source: str) -> Any:
    from ..resnet.config import parse_config as parse_resnet

    over = raw_workload.get("methods") if isinstance(raw_workload, dict) else None
    merged = _merge(raw_methods if isinstance(raw_methods, dict) else {}, over if isinstance(over, dict) else {})
    return parse_resnet({"methods": merged, "train": {"epochs": epochs}}, (), source).methods


def _external(name: str) -> bool:
    """A workload another program trains (``roberta``): the suite's methods do not apply to it."""
    from .workloads import ExternalWorkload, registry

    return issubclass(registry()[name], ExternalWorkload)


def methods_for(cfg: SuiteConfig, name: str) -> Any:
    """The validated methods section of workload ``name`` (the ResNet benchmark's ``MethodsConfig``)."""
    if _external(name):
        raise ValueError(f"Invalid workload {name!r} for methods_for: another program trains it (fairseq's trainer "
                         "runs only Adam and the LAWA plugin there); the suite's methods apply to the other workloads")
    w = cfg.workload(name)
    return _methods(cfg.methods, {"methods": w.methods}, w.epochs, f"workloads.{name}")


def _method_errors(raw: dict) -> list[str]:
    """Each workload's methods (the top level merged with its own), checked by the ResNet benchmark's config."""
    errors = []
    workloads = raw.get("workloads") if isinstance(raw.get("workloads"), dict) else {}
    for name, model in _suite_model().model_fields["workloads"].annotation.model_fields.items():
        if _external(name):
            continue  # the suite's methods do not apply (fairseq's trainer runs Adam and the plugin's LAWA)
        section = workloads.get(name) if isinstance(workloads.get(name), dict) else {}
        epochs = section.get("epochs", model.annotation.model_fields["epochs"].default)
        if not isinstance(epochs, int) or isinstance(epochs, bool) or epochs < 1:
            epochs = 1
        try:
            _methods(raw.get("methods"), section, epochs, name)
        except ConfigError as err:
            own = isinstance(section.get("methods"), dict) and section["methods"]
            errors += [f"workloads.{name}.{e}" if own else e for e in err.errors]
    return list(dict.fromkeys(errors))  # a top-level problem once, not once per workload


def parse_config(raw: dict | None, overrides: list[str] | tuple[str, ...] = (), source: str = "config") -> SuiteConfig:
    """A mapping (a loaded YAML file) with ``key=value`` overrides applied first, validated; every problem at once.

    Raises:
        ConfigError: listing every problem found.
    """
    return validate(_suite_model(), raw, overrides, source, checks=_method_errors)


def load_config(path: str | Path | None, overrides: list[str] | tuple[str, ...] = ()) -> SuiteConfig:
    """Read a YAML config (``None``: the defaults) and apply ``key=value`` overrides before validating."""
    if path is None:
        return parse_config({}, overrides, "the defaults")
    return parse_config(load_yaml(path), overrides, str(path))


def config_to_dict(cfg: SuiteConfig) -> dict[str, Any]:
    """A plain dict (YAML/JSON-ready) of every value, defaults included."""
    return cfg.model_dump(mode="json")
