"""How ``lawa bench overhead`` measures: interleaved pairs timed on one clock, and temporary bytes.

Every figure is the median over repeats of the ratio ``time(figure) / time(reference)`` of a
pair measured back to back (the order alternating between repeats), so drifts of the machine
(other processes, clock boost, thermal) cancel within each pair. On the CPU with one intra-op
thread the clock is the thread's CPU time (``time.thread_time``), which time-slicing by other
processes does not inflate; otherwise it is wall time, with ``torch.cuda.synchronize()`` around
each call on CUDA.

Temporary memory: on CUDA the rise of ``torch.cuda.max_memory_allocated`` over what was
allocated before the call; on the CPU a ``TorchDispatchMode`` that adds up the bytes of every
storage an aten op creates during the call (outputs whose storage is not one of the op's
inputs) and subtracts them when their tensor is freed; its peak is what the call needed beyond
what existed before. ``tracemalloc`` does not see torch's allocator and RSS deltas are blurred by
the allocator's caching, which is why neither is used.
"""

from __future__ import annotations

import statistics
import time
import weakref
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

__all__ = ["Clock", "Pair", "TensorBytes", "median_time", "peak_temporary_bytes", "temporary_bytes", "time_pair",
           "traffic_floors"]


@dataclass(frozen=True)
class Clock:
    """A clock for one device: ``name`` is recorded in the results."""

    name: str
    device: torch.device

    @classmethod
    def for_device(cls, device: torch.device) -> Clock:
        if device.type == "cpu" and torch.get_num_threads() == 1:
            return cls("thread_time", device)
        return cls("cuda_sync_wall" if device.type == "cuda" else "wall", device)

    def time(self, fn: Callable[[], object], inner: int = 1) -> float:
        """Seconds per call of ``fn``, over ``inner`` calls in a row."""
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        now = time.thread_time if self.name == "thread_time" else time.perf_counter
        start = now()
        for _ in range(inner):
            fn()
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        return (now() - start) / inner


@dataclass(frozen=True)
class Pair:
    """The result of :func:`time_pair`: per-call times of both sides and their per-pair ratios."""

    figure_s: list[float]
    reference_s: list[float]

    @property
    def ratios(self) -> list[float]:
        return [f / r for f, r in zip(self.figure_s, self.reference_s)]

    def summary(self) -> dict[str, float]:
        ratios = sorted(self.ratios)
        q = statistics.quantiles(ratios, n=4) if len(ratios) >= 2 else [ratios[0]] * 3
        return {
            "ratio": statistics.median(ratios),
            "ratio_q1": q[0],
            "ratio_q3": q[2],
            "figure_s": statistics.median(self.figure_s),
            "reference_s": statistics.median(self.reference_s),
            "repeats": len(ratios),
        }


def time_pair(
    figure: Callable[[], object],
    reference: Callable[[], object],
    clock: Clock,
    repeats: int,
    inner: int = 1,
    warmup: int = 1,
) -> Pair:
    """Time ``figure`` and ``reference`` back to back ``repeats`` times, alternating which goes first."""
    for _ in range(warmup):
        reference()
        figure()
    fig_s, ref_s = [], []
    for r in range(repeats):
        if r % 2 == 0:
            ref_s.append(clock.time(reference, inner))
            fig_s.append(clock.time(figure, inner))
        else:
            fig_s.append(clock.time(figure, inner))
            ref_s.append(clock.time(reference, inner))
    return Pair(fig_s, ref_s)


def median_time(fn: Callable[[], object], clock: Clock, repeats: int) -> float:
    """Median seconds per call of ``fn`` alone (for derived figures, never a headline)."""
    fn()
    return statistics.median(clock.time(fn) for _ in range(repeats))


class TensorBytes(TorchDispatchMode):
    """Live and peak bytes of the storages that aten ops create while the mode is active."""

    def __init__(self) -> None:
        super().__init__()
        self.live = 0
        self.peak = 0
        self.created = 0
        self._tracked: dict[int, int] = {}

    def _free(self, ptr: int) -> None:
        self.live -= self._tracked.pop(ptr, 0)

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        inputs = {
            t.untyped_storage().data_ptr()
            for t in tree_flatten((args, kwargs))[0]
            if isinstance(t, torch.Tensor) and t.device.type == "cpu"
        }
        out = func(*args, **kwargs)
        for t in tree_flatten(out)[0]:
            if not isinstance(t, torch.Tensor) or t.device.type != "cpu":
                continue
            storage = t.untyped_storage()
            ptr, nbytes = storage.data_ptr(), storage.nbytes()
            if nbytes == 0 or ptr in inputs or ptr in self._tracked:
                continue
            self._tracked[ptr] = nbytes
            self.live += nbytes
            self.created += nbytes
            self.peak = max(self.peak, self.live)
            weakref.finalize(t, self._free, ptr)
        return out


def temporary_bytes(fn: Callable[[], object], device: torch.device) -> tuple[int, int]:
    """``(peak, allocated)``: the most bytes ``fn`` holds at once beyond what existed before it
    ran, and the bytes it allocates in total (see the module docstring)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        before = torch.cuda.memory_allocated(device)
        allocated = torch.cuda.memory_stats(device).get("allocated_bytes.all.allocated", 0)
        torch.cuda.reset_peak_memory_stats(device)
        fn()
        torch.cuda.synchronize(device)
        total = torch.cuda.memory_stats(device).get("allocated_bytes.all.allocated", 0) - allocated
        return max(0, torch.cuda.max_memory_allocated(device) - before), total
    with TensorBytes() as counter:
        fn()
    return counter.peak, counter.created


def peak_temporary_bytes(fn: Callable[[], object], device: torch.device) -> int:
    """Bytes ``fn`` needs beyond what is allocated before it runs (see the module docstring)."""
    return temporary_bytes(fn, device)[0]


def traffic_floors(params: list[torch.Tensor], acc_dtype: torch.dtype, clock: Clock, repeats: int,
                   floors: dict[str, float]) -> list[dict]:
    """The bytes each design moves, moved by plain foreach ops (no arithmetic), timed against the plain copy.

    The floors of :func:`.figures.floors` count bytes; this measures what those bytes cost on this
    machine: the snapshot's (read the parameters twice: the non-finite check and the copy; read
    and write the slot; read and write the running sum) as two ``_foreach_norm`` reads, a copy of
    the parameters and a copy of a float64 buffer; the averaged enter + exit's (read the sum, write
    the parameters; copy them back from the slot) as a norm of the sums, a copy and a norm. A
    design within 1.2x of this is as fast as its memory traffic allows; the rest of its time is
    arithmetic and passes over cached blocks, which the ``arithmetic_*`` rows measure alone (the
    same per-block ops on one block kept in the cache, repeated to cover every element).
    """
    p = [t.detach() for t in params]
    dst = [torch.empty_like(t) for t in p]
    slots = [torch.empty_like(t) for t in p]
    sums = [torch.zeros(t.shape, dtype=acc_dtype, device=t.device) for t in p]
    sums2 = [torch.empty_like(t) for t in sums]

    def copy() -> None:
        torch._foreach_copy_(dst, p)

    def snapshot_bytes() -> None:
        torch._foreach_norm(p, 2)
        torch._foreach_norm(slots, 2)
        torch._foreach_copy_(slots, p)
        torch._foreach_copy_(sums2, sums)

    def averaged_bytes() -> None:
        torch._foreach_norm(sums, 2)
        torch._foreach_copy_(dst, slots)
        torch._foreach_norm(dst, 2)

    # The arithmetic alone: the ring's own per-block ops (a snapshot: subtract the oldest row from
    # the float64 sum, copy the parameters into the row, add it back; an average: divide the sum
    # into the parameters) on one block that stays in the cache, repeated to cover every element:
    # what the float32 <-> float64 conversions and the float64 subtract, add and divide cost on
    # this CPU with no memory traffic. The bytes floor counts none of it.
    from lawa_optim import store

    numel = sum(t.numel() for t in p)
    block = store._CPU_BLOCK if p[0].device.type == "cpu" else store._DEVICE_BLOCK
    block = min(block, numel)
    times = -(-numel // block)
    c_total = torch.zeros(block, dtype=acc_dtype, device=p[0].device)
    c_row = torch.zeros(block, dtype=p[0].dtype, device=p[0].device)
    c_src = torch.ones(block, dtype=p[0].dtype, device=p[0].device)

    def snapshot_arith() -> None:
        for _ in range(times):
            c_total.sub_(c_row)
            c_row.copy_(c_src)
            c_total.add_(c_row)

    def averaged_arith() -> None:
        for _ in range(times):
            torch.div(c_total, 6, out=c_src)
            c_row.copy_(c_src)

    rows = []
    for name, fn, floor in (("traffic_snapshot", snapshot_bytes, floors["snapshot"]),
                            ("traffic_averaged", averaged_bytes, floors["averaged"]),
                            ("arithmetic_snapshot", snapshot_arith, None),
                            ("arithmetic_averaged", averaged_arith, None)):
        pair = time_pair(fn, copy, clock, repeats)
        rows.append({"figure": name, "reference": "foreach_copy", **pair.summary(), "floor": floor, "target": None,
                     "met": None})
    return rows
