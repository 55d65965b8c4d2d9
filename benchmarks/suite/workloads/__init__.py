"""The suite's workloads: small modules that say data, model, recipe and metric; the runner does the rest.

Each workload module defines a class implementing :class:`~.base.Workload`; :func:`build`
creates one by the name of its config section.
"""

from __future__ import annotations

from typing import Any

from .base import Workload

__all__ = ["Workload", "build"]


def build(name: str, cfg: Any, data_dir: str | None = None) -> Workload:
    """The workload ``name`` (``resnet``, ``vit``, ``gpt``) for its config section ``cfg``."""
    if name in ("resnet", "vit"):
        from .images import ImageWorkload

        return ImageWorkload(name, cfg, data_dir)
    if name == "gpt":
        from .gpt import GPTWorkload

        return GPTWorkload(name, cfg)
    raise ValueError(f"Unknown workload {name!r}; use resnet, vit or gpt")
