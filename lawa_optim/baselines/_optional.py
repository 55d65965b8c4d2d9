"""Import an optional dependency of the zoo, or say how to install it."""

from __future__ import annotations

import importlib
from types import ModuleType

__all__ = ["import_optional"]


def import_optional(module: str, package: str, method: str) -> ModuleType:
    """Import ``module`` or raise ``ImportError`` naming ``pip install lawa-optim[zoo]``."""
    try:
        return importlib.import_module(module)
    except ImportError as err:
        raise ImportError(
            f"The {method!r} method needs the {package!r} package, which is not installed ({err}); "
            f"install the zoo's extras with `pip install lawa-optim[zoo]` (or `pip install {package}`)"
        ) from err
