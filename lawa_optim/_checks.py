"""Small argument checks shared by the core, the zoo and the integrations."""

from __future__ import annotations

from typing import Any

__all__ = ["check_period", "is_int", "is_number"]


def is_int(value: Any, minimum: int | None = None, maximum: int | None = None) -> bool:
    """Whether ``value`` is an int (not a bool) in ``[minimum, maximum]`` (either bound optional)."""
    if isinstance(value, bool) or not isinstance(value, int):
        return False
    return (minimum is None or value >= minimum) and (maximum is None or value <= maximum)


def is_number(value: Any) -> bool:
    """Whether ``value`` is an int or a float (not a bool)."""
    return isinstance(value, (int, float)) and not isinstance(value, bool)



def check_period(period: Any) -> None:
    """Raise ``ValueError`` unless ``period`` (steps between snapshots) is a positive int or None."""
    if period is not None and not is_int(period, 1):
        raise ValueError(
            f"Invalid period: {period!r}; use a positive int (len(train_loader) for one snapshot per "
            "epoch) or None to snapshot only on explicit snapshot() calls"
        )
