"""The suite's workloads, found by module: each module here names its own in ``WORKLOADS``.

A workload module defines its config section, its :class:`~.base.Workload` (or
:class:`~.base.ExternalWorkload`) and ``WORKLOADS = {"<name>": TheWorkload}``; :func:`registry`
collects them (module by module, in alphabetical order), the suite's config gets a
``workloads.<name>`` section of each one's ``Config``, and :func:`build` creates one by name.
"""

from __future__ import annotations

import functools
import importlib
import pkgutil
from typing import Any

from .base import ExternalWorkload, Workload, WorkloadSection

__all__ = ["ExternalWorkload", "Workload", "WorkloadSection", "build", "registry"]


@functools.cache
def registry() -> dict[str, type]:
    """Every workload's class by name (``WORKLOADS`` of each module of this package)."""
    found: dict[str, type] = {}
    for module in sorted(m.name for m in pkgutil.iter_modules(__path__) if m.name != "base"):
        for name, cls in importlib.import_module(f"{__name__}.{module}").WORKLOADS.items():
            if name in found:
                raise RuntimeError(f"workload {name!r} is defined twice ({found[name].__module__}, {module})")
            found[name] = cls
    return found


def build(name: str, cfg: Any, data_dir: str | None = None) -> Workload:
    """The workload ``name`` for its config section ``cfg`` (``data_dir``: where its data lies, if it reads files)."""
    workloads = registry()
    if name not in workloads or issubclass(workloads[name], ExternalWorkload):
        runnable = [n for n, c in workloads.items() if not issubclass(c, ExternalWorkload)]
        raise ValueError(f"Unknown workload {name!r}; use one of {runnable}")
    return workloads[name](name, cfg, data_dir)
