"""Averaging coefficients: which weight each of the j latest snapshots gets.

Coefficients are listed newest first (index 0 is the latest snapshot) and always sum to 1.
``None`` stands for uniform coefficients (LAWA), which the snapshot ring computes from its
running sum instead of a weighted pass.

Decay shapes (WSM, Tian et al., ICLR 2026). Train at a constant learning rate ``lr`` and keep
``n`` snapshots ``s_0 .. s_{n-1}`` (oldest first) taken every ``nu`` steps. Plain SGD adds
``-lr * g_t`` to the weights, so a merge ``sum_q c_q s_q`` (coefficients summing to 1) equals

    s_0 - lr * sum_t m(t) * g_t,    m(t) = sum of c_q over the snapshots s_q taken after step t,

the weights that training from ``s_0`` with the step size scaled by ``m`` over the window would
reach, on the same gradients. ``m`` is constant on each of the ``n - 1`` intervals between two
snapshots: ``a_p = c_p + ... + c_{n-1}`` on the interval that ends at ``s_p``. So a decay
``f`` over ``[0, 1]`` with ``f(0) = 1`` and ``f(1) = 0`` sampled as ``a_p = f(p / n)`` (with
``a_0 = 1`` and ``a_n = 0``) gives the coefficients ``c_q = f(q / n) - f((q + 1) / n)``: the
negative differences of the decay sequence. They are non-negative for a non-increasing ``f``
and sum to ``f(0) - f(1) = 1``. The linear decay ``f(x) = 1 - x`` gives ``c_q = 1 / n``: LAWA's
uniform mean is the linear-decay member of the family. The equivalence is exact (to float
rounding) for SGD, SGD with momentum and Adam(W) without weight decay at a constant learning
rate, against a run that applies the decay to the same updates (their updates depend on the
gradients alone, and the merge rescales the updates as the decayed step size does;
tests/test_decay_weights.py checks it); weight decay scales the weights instead of adding to
them, which makes it approximate (second order in ``lr * weight_decay``). :func:`decay_coefficients` computes them,
:func:`emulated_decay` maps any coefficients back to the step-size multipliers they emulate.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from types import MappingProxyType

from ._checks import is_number

__all__ = [
    "DECAY_SHAPES",
    "WEIGHT_NAMES",
    "decay_coefficients",
    "emulated_decay",
    "exp_coefficients",
    "resolve_weights",
    "window_coefficients",
]


def _linear(x: float) -> float:
    return 1.0 - x


def _cosine(x: float) -> float:
    return 0.5 * (1.0 + math.cos(math.pi * x))


def _one_minus_sqrt(x: float) -> float:
    return 1.0 - math.sqrt(x)


#: the learning-rate decays a merge can emulate: ``f`` on ``[0, 1]``, ``f(0) = 1``, ``f(1) = 0``
DECAY_SHAPES = MappingProxyType({"linear": _linear, "cosine": _cosine, "1-sqrt": _one_minus_sqrt})
#: the names ``weights=`` accepts (``linear`` is ``uniform``: the same coefficients)
WEIGHT_NAMES = ("uniform", "exp", *DECAY_SHAPES)


def exp_coefficients(alpha: float, n: int) -> list[float]:
    """The paper's EXP coefficients (Appendix C) over ``n`` snapshots, newest first.

    ``alpha * (1 - alpha) ** i`` for ``i = 0 .. n-1``, normalized to sum to 1. With ``n`` going
    to infinity this is the recursion ``theta_E = alpha * theta_E + (1 - alpha) * theta_{E-1}``.
    """
    raw = [alpha * (1.0 - alpha) ** i for i in range(n)]
    total = math.fsum(raw)
    return [c / total for c in raw]


def decay_coefficients(shape: str, n: int) -> list[float]:
    """The merge coefficients of ``n`` snapshots, newest first, that emulate the decay ``shape``.

    ``shape`` is one of :data:`DECAY_SHAPES` (``"linear"``, ``"cosine"``, ``"1-sqrt"``). The
    snapshot that is ``q``-th oldest gets ``f(q / n) - f((q + 1) / n)`` (see the module
    docstring for the derivation); ``"linear"`` gives ``1 / n`` each, LAWA's uniform mean.

    Example:
        >>> [round(c, 4) for c in decay_coefficients("cosine", 4)]
        [0.1464, 0.3536, 0.3536, 0.1464]
        >>> [round(c, 4) for c in decay_coefficients("1-sqrt", 4)]
        [0.134, 0.1589, 0.2071, 0.5]
    """
    if shape not in DECAY_SHAPES:
        raise ValueError(f"Invalid decay shape: {shape!r}; use one of {tuple(DECAY_SHAPES)}")
    if not isinstance(n, int) or n < 1:
        raise ValueError(f"Invalid n: {n!r}; it must be an int >= 1 (the number of snapshots)")
    f = DECAY_SHAPES[shape]
    oldest_first = [f(q / n) - f((q + 1) / n) for q in range(n)]
    total = math.fsum(oldest_first)  # f(0) - f(1) = 1 up to rounding
    return [c / total for c in reversed(oldest_first)]


def emulated_decay(coefficients: Sequence[float]) -> list[float]:
    """The step-size multipliers a merge with ``coefficients`` (newest first) emulates.

    Returns ``a_1 .. a_{n-1}``, one per interval between consecutive snapshots, oldest interval
    first: a run at a constant learning rate merged with these coefficients equals (for plain
    SGD, on the same gradients) a run from the oldest snapshot whose step size was multiplied by
    ``a_p`` on the ``p``-th interval. Uniform coefficients give ``(n-1)/n, ..., 1/n``.

    Example:
        >>> emulated_decay([0.25, 0.25, 0.25, 0.25])
        [0.75, 0.5, 0.25]
    """
    oldest_first = [float(c) for c in reversed(coefficients)]
    total = math.fsum(oldest_first)
    if not oldest_first or total <= 0:
        raise ValueError(f"Invalid coefficients: {list(coefficients)!r}; give at least one positive value")
    return [math.fsum(oldest_first[p:]) / total for p in range(1, len(oldest_first))]


def resolve_weights(weights: str | Sequence[float], k: int, alpha: float) -> tuple[str, tuple[float, ...] | None]:
    """Validate the ``weights``/``alpha`` arguments of a wrapper with ring size ``k``.

    Returns ``(kind, coefficients)``: ``("uniform", None)`` (also for ``"linear"``, the same
    coefficients), ``("exp", None)``, ``(shape, None)`` for the other decay shapes or
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
        return ("uniform" if weights == "linear" else weights), None
    try:
        coeffs = tuple(float(c) for c in weights)
    except TypeError as err:
        raise TypeError(
            f"Invalid weights: {weights!r}; use one of {WEIGHT_NAMES} or a sequence of k={k} numbers"
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
    sequence over the ``j`` snapshots, a decay shape spreads its decay over them. Custom
    coefficients are truncated to their first ``j`` entries and renormalized; a window whose
    coefficients are all zero is an error.
    """
    if kind == "uniform":
        return None
    if kind == "exp":
        return exp_coefficients(alpha, j)
    if kind in DECAY_SHAPES:
        return decay_coefficients(kind, j)
    if coeffs is None:
        raise ValueError(f"Invalid weights kind {kind!r}: custom weights need their coefficients")
    head = coeffs[:j]
    total = math.fsum(head)
    if total <= 0:
        raise ValueError(
            f"Invalid k={j} for weights {coeffs!r}: the {j} newest coefficients are all zero; pick a larger k"
        )
    return [c / total for c in head]
