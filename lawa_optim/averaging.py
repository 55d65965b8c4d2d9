"""Averaging coefficients: which weight each of the j latest snapshots gets.

Coefficients are listed newest first (index 0 is the latest snapshot) and always sum to 1.
``None`` stands for uniform coefficients (LAWA), which the snapshot ring computes from its
running sum instead of a weighted pass.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from ._checks import is_number

__all__ = ["exp_coefficients", "resolve_weights", "window_coefficients"]

WEIGHT_NAMES = ("uniform", "exp")


def exp_coefficients(alpha: float, n: int) -> list[float]:
    """The paper's EXP coefficients (Appendix C) over ``n`` snapshots, newest first.

    ``alpha * (1 - alpha) ** i`` for ``i = 0 .. n-1``, normalized to sum to 1. With ``n`` going
    to infinity this is the recursion ``theta_E = alpha * theta_E + (1 - alpha) * theta_{E-1}``.
    """
    raw = [alpha * (1.0 - alpha) ** i for i in range(n)]
    total = math.fsum(raw)
    return [c / total for c in raw]


def resolve_weights(weights: str | Sequence[float], k: int, alpha: float) -> tuple[str, tuple[float, ...] | None]:
    """Validate the ``weights``/``alpha`` arguments of a wrapper with ring size ``k``.

    Returns ``(kind, coefficients)``: ``("uniform", None)``, ``("exp", None)`` or
    ``("custom", (c_0, ..., c_{k-1}))`` with the custom coefficients as given (newest first).
    Raises ``ValueError``/``TypeError`` naming the argument; nothing is changed.
    """
    if not is_number(alpha) or not (0.0 < float(alpha) <= 1.0):
        raise ValueError(f"Invalid alpha: {alpha!r}; it must be a number in (0, 1] (the paper's EXP uses 0.9)")
    if isinstance(weights, str):
        if weights not in WEIGHT_NAMES:
            raise ValueError(
                f"Invalid weights: {weights!r}; use one of {WEIGHT_NAMES} or a sequence of k={k} "
                "non-negative coefficients, newest first"
            )
        return weights, None
    try:
        coeffs = tuple(float(c) for c in weights)
    except TypeError as err:
        raise TypeError(
            f"Invalid weights: {weights!r}; use 'uniform', 'exp' or a sequence of k={k} numbers"
        ) from err
    if len(coeffs) != k:
        raise ValueError(f"Invalid weights: {len(coeffs)} coefficients given for k={k}; give exactly k, newest first")
    if any(not math.isfinite(c) or c < 0 for c in coeffs):
        raise ValueError(f"Invalid weights: {weights!r}; coefficients must be finite and non-negative")
    if math.fsum(coeffs) <= 0:
        raise ValueError(f"Invalid weights: {weights!r}; at least one coefficient must be positive")
    return "custom", coeffs


def window_coefficients(
    kind: str, coeffs: tuple[float, ...] | None, alpha: float, j: int
) -> list[float] | None:
    """Coefficients for averaging the ``j`` latest snapshots, newest first, summing to 1.

    Uniform returns ``None`` (the ring uses its running sum). EXP restarts its geometric
    sequence over the ``j`` snapshots. Custom coefficients are truncated to their first ``j``
    entries and renormalized; a window whose coefficients are all zero is an error.
    """
    if kind == "uniform":
        return None
    if kind == "exp":
        return exp_coefficients(alpha, j)
    assert coeffs is not None
    head = coeffs[:j]
    total = math.fsum(head)
    if total <= 0:
        raise ValueError(
            f"Invalid k={j} for weights {coeffs!r}: the {j} newest coefficients are all zero; pick a larger k"
        )
    return [c / total for c in head]
