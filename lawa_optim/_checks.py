"""Small argument checks shared by the core, the zoo and the integrations."""

from __future__ import annotations

from typing import Any

__all__ = ["check_not_wrapped", "is_int", "is_number"]


def is_int(value: Any, minimum: int | None = None, maximum: int | None = None) -> bool:
    """Whether ``value`` is an int (not a bool) in ``[minimum, maximum]`` (either bound optional)."""
    if isinstance(value, bool) or not isinstance(value, int):
        return False
    return (minimum is None or value >= minimum) and (maximum is None or value <= maximum)


def is_number(value: Any) -> bool:
    """Whether ``value`` is an int or a float (not a bool)."""
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def check_not_wrapped(optimizer: Any) -> None:
    """Raise ``TypeError`` if ``optimizer`` is already one of the zoo's wrappers."""
    from .protocol import AveragingOptimizer  # the protocol imports this module

    if isinstance(optimizer, AveragingOptimizer):
        raise TypeError(
            f"Invalid optimizer: it is already wrapped by {type(optimizer).__name__}; wrap the base optimizer"
        )
