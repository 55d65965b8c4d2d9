"""The ring's opt-in fused kernels (``fused=True``): a snapshot's push and a swap's uniform mean,
each one ``torch.compile``'d pass over a parameter instead of three eager passes over cached blocks.

The eager push runs ``total.sub_(slot); slot.copy_(param); total.add_(slot)`` block by block; its
float32 -> float64 conversions and float64 arithmetic run one after the other with the memory
traffic (see docs/results.md, "What LAWA costs"). The fused push does the same three steps per
element in one loop (load the sum, the old slot value and the parameter, store the slot and
``(sum - old) + new``): the same roundings in the same order, so the same bits. The fused mean
writes ``(sum / j)`` rounded once into the parameter, as ``torch.div(sum, j, out=param)`` does.

Each function is compiled once per dtype with a dynamic length (``dynamic=True``): one graph for
every parameter of that dtype, called once per contiguous parameter of at least
:data:`FUSED_MIN` elements (the others stay on the eager ops, where a call's fixed cost would
outweigh the gain); the mean takes :data:`MEAN_BATCH` parameters per call (one graph per dtype
too). Inductor's C++ flags for these graphs keep IEEE semantics: no
``-funsafe-math-optimizations`` and ``-ffp-contract=off`` are its defaults
(``torch._inductor.config.cpp.enable_unsafe_math_opt_flag``/``enable_floating_point_contract_flag``,
set from ``TORCHINDUCTOR_CPP_ENABLE_UNSAFE_MATH_OPT_FLAG``/``..._FLOATING_POINT_CONTRACT_FLAG``);
:func:`unsafe_reason` refuses the fused path when either is changed, and a division by a
constant is not turned into a multiplication on the CPU (``div_prim`` in inductor's lowering; the
divisor is passed as a tensor anyway). Only CPU groups (slots and parameters on the CPU) use it.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

__all__ = ["FUSED_MEAN_MIN", "FUSED_MIN", "MEAN_BATCH", "mean_batch_kernel", "mean_kernel", "push_kernel",
           "unsafe_reason"]

#: parameters with fewer elements stay on the eager blocks (a compiled call costs tens of microseconds)
FUSED_MIN = 1 << 16
#: the mean's kernels for parameters this large (as the push's)
FUSED_MEAN_MIN = FUSED_MIN
#: parameters per call of the batched mean: one compiled call's fixed cost (tens of microseconds,
#: as much as the whole mean of a 2e5-element parameter) spread over this many parameters
MEAN_BATCH = 8

_kernels: dict[str, Callable[..., None]] = {}


def _push_full(total: Tensor, row: Tensor, src: Tensor) -> None:
    total.sub_(row)  # the oldest leaves the sum (converted exactly to the sum's dtype)
    row.copy_(src)
    total.add_(row)  # the new snapshot joins it


def _mean_into(out: Tensor, total: Tensor, j: Tensor) -> None:
    out.copy_(total / j)  # computed in the sum's dtype, rounded once into out


def _mean_batch(outs: list[Tensor], totals: list[Tensor], j: Tensor) -> None:
    for out, total in zip(outs, totals):
        out.copy_(total / j)  # as _mean_into, for each pair


def unsafe_reason() -> str | None:
    """Why inductor's C++ flags could change the bits now (``None`` when they cannot)."""
    try:
        from torch._inductor import config
    except Exception as err:  # noqa: BLE001 - no inductor: nothing can be compiled
        return f"torch._inductor is not importable ({err})"
    if config.cpp.enable_unsafe_math_opt_flag:
        return "torch._inductor.config.cpp.enable_unsafe_math_opt_flag is set (-funsafe-math-optimizations)"
    if config.cpp.enable_floating_point_contract_flag != "off":
        return (f"torch._inductor.config.cpp.enable_floating_point_contract_flag is "
                f"{config.cpp.enable_floating_point_contract_flag!r}, not 'off' (FMA contraction)")
    return None


def _compiled(name: str, fn: Callable[..., None]) -> Callable[..., None]:
    kernel = _kernels.get(name)
    if kernel is None:
        kernel = torch.compile(fn, dynamic=True, fullgraph=True)
        _kernels[name] = kernel
    return kernel


def push_kernel() -> Callable[[Tensor, Tensor, Tensor], None]:
    """``f(total, row, src)``: ``total -= row; row[:] = src; total += row`` in one pass (flat, contiguous)."""
    return _compiled("push", _push_full)


def mean_kernel() -> Callable[[Tensor, Tensor, Tensor], None]:
    """``f(out, total, j)``: ``out[:] = total / j`` rounded once (``j`` a 0-d tensor of the sum's dtype)."""
    return _compiled("mean", _mean_into)


def mean_batch_kernel() -> Callable[[list[Tensor], list[Tensor], Tensor], None]:
    """``f(outs, totals, j)``: :func:`mean_kernel` for :data:`MEAN_BATCH` pairs in one call.

    Traced without duck sizing, so that parameters of equal sizes do not make a graph of their
    own: one graph per dtype for every batch of :data:`MEAN_BATCH` flat tensors.
    """
    kernel = _compiled("mean_batch", _mean_batch)

    def call(outs: list[Tensor], totals: list[Tensor], j: Tensor) -> None:
        with _no_duck_sizing():
            kernel(outs, totals, j)

    return call


def _no_duck_sizing():
    import contextlib

    try:
        from torch.fx.experimental import _config as fx_config
    except ImportError:  # another torch: equal sizes may share a symbol (more graphs, same bits)
        return contextlib.nullcontext()
    return fx_config.patch(use_duck_shape=False)
