"""The snapshot ring: k preallocated slots per parameter and a running sum of what they hold.

A snapshot costs O(P) whatever k is: the oldest slot is subtracted from the running sum, the
parameters are copied into that slot and added to the sum. The sum is kept in float64 for
float32/float64 parameters and in float32 for half-precision ones, and rebuilt exactly from
the slots every ``8 * k`` snapshots, so it never drifts from the true sum of the ring.

Layout (what makes a snapshot a few large operations): the parameters are grouped by (slot
device, dtype); each group owns one ``[k, n]`` tensor holding its k slots as flat rows and one
``[n]`` running sum. On the CPU the work runs block by block (``2**15`` elements: the slot's
block and the sum's, 384 KiB, stay in the L2 cache between the subtract, the copy and the add;
measured interleaved at 1e7 parameters, a push took 4.3x a plain copy with ``2**15``, 4.4x with
``2**14``, 4.7x with ``2**16`` and 5.4x with ``2**17``). The subtract and the add are mixed-dtype
in-place ops (``total.sub_(slot)``: each float32 value converted exactly as it is subtracted),
three passes over a cached block where explicit float64 copies of the slot took five at the same
speed each. The uniform mean of the whole ring (what a swap writes) is divided from the sum
straight into the parameters' pieces (``torch.div(sum, j, out=piece)``: computed in the sum's
dtype, rounded once); other averages go through one scratch block in the sum's dtype, the only
temporary; nothing is allocated per snapshot.

Where the slots live is the ring's class: :class:`SnapshotRing` keeps them on the parameters'
device; :class:`HostSnapshotRing` in host memory (pinned, and filled by non-blocking copies on a
side stream when the parameters are on CUDA: the side stream waits for the parameters' producer,
the main stream waits for the copy before any later kernel can overwrite the parameters, and the
copy is joined before anything reads the ring);
:class:`lawa_optim.disk_store.DiskSnapshotRing` keeps the same layout in memory-mapped files.
:func:`lawa_optim.offload.make_ring` turns the wrappers' ``offload`` option into one of them.

``fused=True`` (:meth:`SnapshotRing.set_fused`): on CPU groups, the push of a full ring and the
uniform mean of the whole ring run through the ``torch.compile``'d one-pass kernels of
:mod:`lawa_optim.fused` for the contiguous parameters of at least ``FUSED_MIN`` elements (the
push one call per parameter, the mean one call per ``MEAN_BATCH`` parameters);
the other parameters keep the eager blocks (a sub-group over their columns, :meth:`_Group.part`).
The same roundings in the same order: the same bits, and the same checkpoints.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence

import torch
from torch import Tensor

from . import fused as _fused
from ._checks import is_int

__all__ = ["HostSnapshotRing", "SnapshotRing"]

# How many full ring cycles pass between exact rebuilds of the running sum.
_REBUILD_CYCLES = 8
# Elements per block: a CPU block of slot + sum (+ the mixed-dtype ops' temporaries) stays in L2; elsewhere large.
_CPU_BLOCK = 1 << 15
_DEVICE_BLOCK = 1 << 22


def acc_dtype(dtype: torch.dtype) -> torch.dtype:
    """The running sum's dtype for parameters of ``dtype``: float64 for float32/64, float32 for 16-bit floats."""
    if dtype in (torch.float32, torch.float64):
        return torch.float64
    if dtype.is_floating_point:
        return torch.float32
    raise TypeError(f"Invalid parameter dtype {dtype}: only floating-point parameters can be averaged")


def _copy_all(dst: list[Tensor], src: list[Tensor], same_device: bool | None = None) -> None:
    """``dst[i].copy_(src[i])`` for all i: one foreach call when everything is on one device."""
    if not dst:
        return
    if same_device is None:
        same_device = len({t.device for t in dst} | {t.device for t in src}) == 1
    if same_device:
        torch._foreach_copy_(dst, src)
    else:
        for d, s in zip(dst, src):
            d.copy_(s)


class _Piece:
    """A stretch of one parameter inside a block: flat ``[a, b)`` of parameter ``index``."""

    __slots__ = ("index", "a", "b", "whole", "shape", "col")

    def __init__(self, index: int, a: int, b: int, whole: bool, shape: torch.Size, col: int) -> None:
        self.index, self.a, self.b, self.whole, self.shape, self.col = index, a, b, whole, shape, col

    def of(self, t: Tensor) -> Tensor:
        """The same stretch of a tensor shaped like the parameter (``t`` itself when whole)."""
        return t if self.whole else t.view(-1)[self.a : self.b]

    def in_row(self, row: Tensor, start: int = 0) -> Tensor:
        """The stretch inside a flat row (``start`` = where ``row`` begins in the group)."""
        view = row[self.col - start : self.col - start + self.b - self.a]
        return view.view(self.shape) if self.whole else view


class _Group:
    """The parameters of one (slot device, dtype): k flat slot rows, a running sum, blocks."""

    def __init__(self, ring: SnapshotRing, indices: list[int], device: torch.device, pin: bool) -> None:
        params = ring.params
        self.indices = indices
        self.device = device
        self.dtype = params[indices[0]].dtype
        self.acc = acc_dtype(self.dtype)
        self.columns: dict[int, int] = {}  # parameter index -> first column in the rows
        n = 0
        for i in indices:
            self.columns[i] = n
            n += params[i].numel()
        self.n = n
        self.rows = ring._alloc((ring.k, n), self.dtype, device, pin)
        self.total = ring._alloc((n,), self.acc, device, pin, zero=True)
        self.blocks = self._make_blocks(params, _CPU_BLOCK if device.type == "cpu" else _DEVICE_BLOCK)
        self.max_block = max((stop - start for start, stop, _ in self.blocks), default=0)
        self.same_device = all(params[i].device == device for i in indices)
        self.fused: _FusedPlan | None | bool = None  # the fused=True plan: None until made, False if none
        self._reset_views()

    def _reset_views(self) -> None:
        self._dst: dict[int, list[list[Tensor]]] = {}  # slot -> per block, the pieces' views in the row
        self._blocks_of: dict[int, list[tuple[Tensor, Tensor, list[Tensor]]]] = {}  # see block_views
        self._src: tuple[list[int], list[list[Tensor]]] | None = None  # (data_ptrs, per block views)
        self._scratch_views: tuple[int, list[list[Tensor]]] | None = None
        self._total_views: list[list[Tensor]] | None = None

    def part(self, params: Sequence[Tensor], indices: list[int]) -> _Group:
        """A group over some of this group's parameters, sharing its rows and running sum (their
        columns stay where they are; blocks cover only theirs): the eager rest of a fused plan."""
        sub = object.__new__(_Group)
        sub.indices, sub.device, sub.dtype, sub.acc = indices, self.device, self.dtype, self.acc
        sub.columns, sub.n, sub.rows, sub.total = self.columns, self.n, self.rows, self.total
        sub.blocks = sub._make_blocks(params, _CPU_BLOCK if self.device.type == "cpu" else _DEVICE_BLOCK, indices)
        sub.max_block = max((stop - start for start, stop, _ in sub.blocks), default=0)
        sub.same_device = all(params[i].device == self.device for i in indices)
        sub.fused = False
        sub._reset_views()
        return sub

    def block_views(self, slot: int) -> list[tuple[Tensor, Tensor, list[Tensor]]]:
        """Per block, ``(its running sum, its stretch of the slot row, the pieces' views in that row)``,
        made once per slot: the loop over blocks then only calls the three operations."""
        views = self._blocks_of.get(slot)
        if views is None:
            views = [(self.total[start:stop], self.rows[slot, start:stop], dst)
                     for (start, stop, _), dst in zip(self.blocks, self.dst_views(slot))]
            self._blocks_of[slot] = views
        return views

    def dst_views(self, slot: int) -> list[list[Tensor]]:
        """Per block, the views of the slot row the pieces go to (made once per slot)."""
        views = self._dst.get(slot)
        if views is None:
            views = [[pc.in_row(self.rows[slot, start:stop], start) for pc in pieces]
                     for start, stop, pieces in self.blocks]
            self._dst[slot] = views
        return views

    def total_views(self) -> list[list[Tensor]]:
        """Per block, the pieces' views in the running sum, shaped like the parameters' pieces (made once)."""
        if self._total_views is None:
            self._total_views = [[pc.in_row(self.total[start:stop], start) for pc in pieces]
                                 for start, stop, pieces in self.blocks]
        return self._total_views

    def scratch_views(self, scratch: Tensor) -> list[list[Tensor]]:
        """Per block, the pieces' views in a scratch block (made once per scratch tensor)."""
        key = scratch.data_ptr()
        if self._scratch_views is None or self._scratch_views[0] != key:
            views = [
                [pc.in_row(scratch[: stop - start], start) for pc in pieces] for start, stop, pieces in self.blocks
            ]
            self._scratch_views = (key, views)
        return self._scratch_views[1]

    def param_views(self, params: Sequence[Tensor]) -> list[list[Tensor]]:
        """Per block, the views of the parameters' pieces; remade if a parameter got new storage.

        A cached view keeps its storage alive, so an unchanged ``data_ptr`` means the same memory.
        """
        ptrs = [params[i].data_ptr() for i in self.indices]
        if self._src is None or self._src[0] != ptrs:
            views = [[pc.of(params[pc.index].detach()) for pc in pieces] for _, _, pieces in self.blocks]
            self._src = (ptrs, views)
        return self._src[1]

    def _make_blocks(
        self, params: Sequence[Tensor], size: int, indices: Sequence[int] | None = None
    ) -> list[tuple[int, int, list[_Piece]]]:
        """The blocks over the columns of ``indices`` (default: all of the group's, in column
        order); a gap in the columns (parameters left out) closes the block before it."""
        blocks: list[tuple[int, int, list[_Piece]]] = []
        start, pieces = 0, []
        end = 0  # where the previous parameter's columns end

        def close(stop: int) -> None:
            nonlocal start, pieces
            if pieces:
                blocks.append((start, stop, pieces))
            start, pieces = stop, []

        for i in self.indices if indices is None else indices:
            p, col = params[i], self.columns[i]
            m = p.numel()
            if col != end:  # a parameter left out lies between: no block spans its columns
                close(end)
                start = col
            end = col + m
            if m == 0 or not p.is_contiguous():  # kept whole: copy_ handles its strides
                if pieces and col + m - start > size:
                    close(col)
                pieces.append(_Piece(i, 0, m, True, p.shape, col))
                if col + m - start >= size:
                    close(col + m)
                continue
            a = 0
            while a < m:  # a large parameter is cut into block-sized stretches
                b = min(m, a + size - (col + a - start))
                pieces.append(_Piece(i, a, b, a == 0 and b == m, p.shape, col + a))
                if col + b - start >= size:
                    close(col + b)
                a = b
        close(end)
        return blocks

    def row_view(self, slot: int, i: int, shape: torch.Size) -> Tensor:
        col = self.columns[i]
        return self.rows[slot, col : col + shape.numel()].view(shape)


def _flat_alias(t: Tensor) -> Tensor | None:
    """A flat tensor on ``t``'s memory that is not a view (no ``_base``), or None if ``t`` is not
    contiguous. torch.compile guards on a view's base, so views of differently sized bases (the
    slices of one running sum, parameters that are views) would each compile a graph; aliases
    made with ``set_`` share one. Writing through one bumps no version counter of ``t``."""
    if not t.is_contiguous():
        return None
    t = t.detach()
    return torch.empty(0, dtype=t.dtype, device=t.device).set_(
        t.untyped_storage(), t.storage_offset(), (t.numel(),), (1,))


class _FusedPlan:
    """A group's work under ``fused=True``: the contiguous parameters of at least
    :data:`lawa_optim.fused.FUSED_MIN` elements go through the compiled kernels (the push one
    parameter per call, the mean :data:`lawa_optim.fused.MEAN_BATCH` per call); the others
    (``rest``) keep the eager blocks."""

    def __init__(self, g: _Group, params: Sequence[Tensor]) -> None:
        chosen = [i for i in g.indices if params[i].is_contiguous() and params[i].numel() >= _fused.FUSED_MIN]
        self.items = [(i, g.columns[i], params[i].numel()) for i in chosen]
        taken = set(chosen)
        self.rest = g.part(params, [i for i in g.indices if i not in taken])
        self.sums = [_flat_alias(g.total[col : col + m]) for _, col, m in self.items]
        # the mean goes through the plan if an item is large enough for its kernels (FUSED_MEAN_MIN);
        # else it stays on the group's eager blocks, as without fused=True
        self.fuse_mean = any(m >= _fused.FUSED_MEAN_MIN for _, _, m in self.items)
        self._rows: dict[int, list[Tensor]] = {}
        self._src: tuple[list[int], list[Tensor | None]] | None = None
        self._divisors: dict[int, Tensor] = {}
        self._acc = g.acc
        self._g = g

    def rows(self, slot: int) -> list[Tensor]:
        """The items' flat stretches of slot row ``slot`` as aliases (made once per slot)."""
        views = self._rows.get(slot)
        if views is None:
            views = [_flat_alias(self._g.rows[slot, col : col + m]) for _, col, m in self.items]
            self._rows[slot] = views
        return views

    def sources(self, params: Sequence[Tensor]) -> list[Tensor | None]:
        """The items' parameters as flat aliases (None: no longer contiguous), remade when a
        parameter got new storage (as :meth:`_Group.param_views`)."""
        ptrs = [params[i].data_ptr() for i, _, _ in self.items]
        if self._src is None or self._src[0] != ptrs:
            self._src = (ptrs, [_flat_alias(params[i]) for i, _, _ in self.items])
        return self._src[1]

    def divisor(self, j: int) -> Tensor:
        """``j`` as a 0-d tensor of the sum's dtype (exact: j is a small int)."""
        t = self._divisors.get(j)
        if t is None:
            t = torch.tensor(j, dtype=self._acc)
            self._divisors[j] = t
        return t


class SnapshotRing:
    """k slots per parameter, filled round-robin, with a running sum of the filled slots.

    The slots live on each parameter's device. Subclasses choose another place by overriding
    :meth:`_slot_device`/:meth:`_alloc` (and say whether a copy of the ring may be made with
    :meth:`before_copy`).

    Args:
        params (list of Tensor): the tensors to snapshot (usually ``nn.Parameter``\\ s).
        k (int): number of slots.
    """

    offload: str | None = None  # the wrappers' `offload` option this ring implements

    def __init__(self, params: Sequence[Tensor], k: int) -> None:
        self.k = k
        self.params: list[Tensor] = []
        self.groups: list[_Group] = []
        self._where: list[_Group] = []  # parameter index -> its group
        self._slot_views: dict[int, list[Tensor]] = {}  # slot -> each parameter's view in it (see newest)
        self.count = 0  # snapshots taken in total
        self.size = 0  # filled slots, min(count, k)
        self.head = 0  # slot the next snapshot goes into
        self._pending: tuple[object, int] | None = None  # (cuda event, slot) of an async copy
        self._stream = None
        self._scratch: dict[tuple[torch.device, torch.dtype, int], Tensor] = {}
        self.fused = False  # see set_fused
        self.fused_fallback: str | None = None  # why fused=True runs the eager ops (None: it does not)
        self._add(list(params))

    # ----------------------------------------------------------------------------- layout
    def _slot_device(self, p: Tensor) -> torch.device:
        return p.device

    def _pin(self, p: Tensor) -> bool:
        """Whether the slots of ``p`` are pinned host memory (filled asynchronously)."""
        return False

    def before_copy(self) -> None:
        """Called before the wrapper holding this ring is copied or pickled: settle the ring, or
        raise ``TypeError`` if a copy cannot be made (the disk ring's files would be shared)."""
        self.join()
        for g in self.groups:  # a fused plan's aliases are remade by the copy on first use
            g.fused = None

    def _alloc(
        self, shape: tuple[int, ...], dtype: torch.dtype, device: torch.device, pin: bool, zero: bool = False
    ) -> Tensor:
        """Memory for slots and sums (overridden by the disk-backed ring)."""
        make = torch.zeros if zero else torch.empty
        return make(shape, dtype=dtype, device=device, pin_memory=pin)

    def _add(self, params: list[Tensor]) -> None:
        self._slot_views = {}
        first = len(self.params)
        self.params.extend(params)
        keyed: dict[tuple[torch.device, torch.dtype, bool], list[int]] = {}
        for i in range(first, len(self.params)):
            p = self.params[i]
            acc_dtype(p.dtype)  # refuse integer tensors before allocating anything
            dev = self._slot_device(p)
            pin = self._pin(p)
            keyed.setdefault((dev, p.dtype, pin), []).append(i)
        for (dev, _, pin), idx in keyed.items():
            group = _Group(self, idx, dev, pin)
            self.groups.append(group)
            self._where.extend([group] * (len(self.params) - len(self._where)))  # placeholders
            for i in idx:
                self._where[i] = group
        self._async = (
            len(self.params) > 0
            and all(self._pin(p) for p in self.params)
            and len({p.device for p in self.params}) == 1
        )

    def _scratch_for(self, g: _Group, which: int = 0) -> Tensor:
        key = (g.device, g.acc, which)
        t = self._scratch.get(key)
        if t is None or t.numel() < g.max_block:
            t = torch.empty(g.max_block, dtype=g.acc, device=g.device)
            self._scratch[key] = t
        return t

    def add_params(self, params: Sequence[Tensor]) -> None:
        """Extend the ring with new tensors; their history is their current value in every slot."""
        self.join()
        first = len(self.params)
        self._add(list(params))
        with torch.no_grad():
            for i in range(first, len(self.params)):
                g, p = self._where[i], self.params[i].detach()
                for slot in self.order():
                    g.row_view(slot, i, p.shape).copy_(p)
                col = g.columns[i]
                g.total[col : col + p.numel()].view(p.shape).copy_(p).mul_(self.size)

    def set_fused(self, on: bool) -> None:
        """Run the push of a full ring and the uniform mean of the whole ring through the
        ``torch.compile``'d kernels of :mod:`lawa_optim.fused` (``on=True``) or the eager blocks.

        Same bits either way. Where the kernels cannot be used (``torch.compile`` unsupported, a
        compile that fails, inductor flags that allow unsafe math), the ring warns once, records
        why in :attr:`fused_fallback` and keeps running the eager ops. Only CPU groups are fused.
        """
        self.fused = bool(on)
        if self.fused and self.fused_fallback is None:
            try:
                supported = torch._dynamo.is_dynamo_supported()  # type: ignore[attr-defined]
            except Exception:  # noqa: BLE001
                supported = False
            if not supported:
                self._fused_failed("torch.compile is not supported on this platform/Python")

    def _fused_failed(self, why: str) -> None:
        self.fused_fallback = why
        warnings.warn(
            f"LAWA fused=True: {why}; running the eager ops instead (the same results, slower)",
            RuntimeWarning, stacklevel=4,
        )

    def _fused_plan(self, g: _Group) -> _FusedPlan | None:
        """``g``'s fused plan, or None where its work stays eager."""
        if not self.fused or self.fused_fallback is not None:
            return None
        if g.fused is None:
            ok = g.device.type == "cpu" and all(self.params[i].device.type == "cpu" for i in g.indices)
            plan = _FusedPlan(g, self.params) if ok else None
            g.fused = plan if plan is not None and plan.items else False
        if g.fused is False:
            return None
        why = _fused.unsafe_reason()
        if why is not None:
            self._fused_failed(why)
            return None
        return g.fused  # type: ignore[return-value]

    # ----------------------------------------------------------------------------- writes
    def order(self) -> list[int]:
        """Filled slot indices, oldest first."""
        start = (self.head - self.size) % self.k
        return [(start + i) % self.k for i in range(self.size)]

    def nonfinite_params(self) -> list[int]:
        """Indices of the parameters holding NaN or Inf right now (one read of the parameters).

        On the CPU the 2-norm of ``torch._foreach_norm`` is used (a NaN or Inf anywhere makes it
        non-finite; a norm that overflowed on finite values is confirmed element-wise), which
        reads at the speed of memory; elsewhere the inf-norm, which cannot overflow.
        """
        bad: list[int] = []
        with torch.no_grad():
            by_device: dict[tuple[torch.device, torch.dtype], list[int]] = {}
            for i, p in enumerate(self.params):
                if p.numel():  # the inf-norm of an empty tensor raises; it holds nothing anyway
                    by_device.setdefault((p.device, p.dtype), []).append(i)
            for (device, _), idx in by_device.items():
                ps = [self.params[i].detach() for i in idx]
                if device.type == "cpu":  # the 2-norm reads at memory speed; the inf-norm does not
                    finite = torch.stack(torch._foreach_norm(ps, 2)).isfinite().tolist()
                    finite = [ok or bool(p.isfinite().all()) for ok, p in zip(finite, ps)]  # overflow?
                else:
                    finite = torch.stack(torch._foreach_norm(ps, float("inf"))).isfinite().tolist()
                bad.extend(i for i, ok in zip(idx, finite) if not ok)
        return sorted(bad)

    def push(self) -> None:
        """Copy the parameters into the oldest slot and update the running sum in O(P)."""
        self.join()
        slot = self.head
        full = self.size == self.k
        with torch.no_grad():
            if self._async:
                self._push_async(slot, full)
            else:
                for g in self.groups:
                    self._push_group(g, slot, full)
        self.head = (self.head + 1) % self.k
        self.count += 1
        self.size = min(self.size + 1, self.k)
        if self.count % (_REBUILD_CYCLES * self.k) == 0:
            self.rebuild()

    def _push_group(self, g: _Group, slot: int, full: bool) -> None:
        plan = self._fused_plan(g) if full else None  # the k first pushes (no subtract) stay eager
        if plan is not None:
            self._push_fused(plan, slot)
            g = plan.rest
        for (total, row, dst), src in zip(g.block_views(slot), g.param_views(self.params)):
            if full:
                total.sub_(row)  # the oldest leaves the sum (float32 -> float64 exactly, in the op)
            if len(dst) == 1 and g.same_device:
                dst[0].copy_(src[0])
            else:
                _copy_all(dst, src, same_device=g.same_device)
            total.add_(row)  # the new snapshot joins it, read back from the cache

    def _push_fused(self, plan: _FusedPlan, slot: int) -> None:
        kernel = _fused.push_kernel()
        for (i, _, _), total, row, src in zip(plan.items, plan.sums, plan.rows(slot), plan.sources(self.params)):
            if self.fused_fallback is None and src is not None:  # None: its .data was made non-contiguous
                try:
                    kernel(total, row, src)
                    continue
                except Exception as err:  # noqa: BLE001 - a compile failure: nothing was written yet
                    self._fused_failed(f"torch.compile failed ({type(err).__name__}: {err})")
            p = self.params[i].detach()
            total.sub_(row)  # the same three ops, eagerly, on the whole parameter
            row.view(p.shape).copy_(p)
            total.add_(row)

    def _mean_fused(self, plan: _FusedPlan, dst: Sequence[Tensor], own: bool, j: int) -> None:
        divisor = plan.divisor(j)
        outs = plan.sources(self.params) if own else [_flat_alias(dst[i]) for i, _, _ in plan.items]
        ready = [(i, total, out) for (i, _, m), total, out in zip(plan.items, plan.sums, outs)
                 if out is not None and m >= _fused.FUSED_MEAN_MIN]
        done = set()
        if self.fused_fallback is None and ready:
            try:
                batch, size = _fused.mean_batch_kernel(), _fused.MEAN_BATCH
                whole = len(ready) - len(ready) % size
                for a in range(0, whole, size):  # one compiled call per batch of parameters
                    part = ready[a:a + size]
                    batch([out for _, _, out in part], [total for _, total, _ in part], divisor)
                kernel = _fused.mean_kernel()
                for _, total, out in ready[whole:]:
                    kernel(out, total, divisor)
                for i, _, _ in ready:  # written through aliases: bump the versions as an in-place op would
                    torch.autograd.graph.increment_version(dst[i])
                done = {i for i, _, _ in ready}
            except Exception as err:  # noqa: BLE001
                self._fused_failed(f"torch.compile failed ({type(err).__name__}: {err})")
        for (i, _, m), total in zip(plan.items, plan.sums):
            if i in done:
                continue
            target = dst[i].detach()  # the eager ops, block by block: the same bits
            if target.is_contiguous():
                flat = target.view(-1)
                for a in range(0, m, _CPU_BLOCK):
                    torch.div(total[a:a + _CPU_BLOCK], j, out=flat[a:a + _CPU_BLOCK])
            else:
                torch.div(total.view(target.shape), j, out=target)

    def _fold(self, g: _Group, slot: int, sign: int) -> None:
        """``total += sign * slot`` block by block."""
        for total, row, _ in g.block_views(slot):
            if sign > 0:
                total.add_(row)
            else:
                total.sub_(row)

    def _push_async(self, slot: int, full: bool) -> None:
        device = self.params[0].device
        if full:  # the oldest slot leaves the sum before the copy overwrites it (host work)
            for g in self.groups:
                self._fold(g, slot, -1)
        if self._stream is None:
            self._stream = torch.cuda.Stream(device=device)
        main = torch.cuda.current_stream(device)
        # The copy must see the parameters as the kernels queued so far leave them.
        self._stream.wait_stream(main)
        with torch.cuda.stream(self._stream):
            for g in self.groups:
                for i in g.indices:
                    p = self.params[i].detach()
                    g.row_view(slot, i, p.shape).copy_(p, non_blocking=True)
            event = torch.cuda.Event()
            event.record(self._stream)
        # The next optimizer step must not overwrite the parameters before they are copied.
        main.wait_stream(self._stream)
        self._pending = (event, slot)

    def join(self) -> None:
        """Wait for an in-flight asynchronous snapshot and fold it into the running sum."""
        if self._pending is None:
            return
        event, slot = self._pending
        self._pending = None
        event.synchronize()  # type: ignore[attr-defined]
        with torch.no_grad():
            for g in self.groups:
                self._fold(g, slot, +1)

    def rebuild(self) -> None:
        """Recompute the running sum exactly from the slots, oldest first."""
        self.join()
        with torch.no_grad():
            for g in self.groups:
                g.total.zero_()
                for slot in self.order():
                    self._fold(g, slot, +1)

    # ----------------------------------------------------------------------------- reads
    def write_average(self, dst: Sequence[Tensor], j: int, coeffs: Sequence[float] | None) -> None:
        """Write into ``dst`` the average of the ``j`` latest snapshots.

        ``coeffs`` (newest first, summing to 1) or ``None`` for the uniform mean. The average is
        computed in the running sum's precision and rounded once into ``dst``.
        """
        self.join()
        if not 1 <= j <= self.size:
            raise ValueError(f"Invalid k={j}: the ring holds {self.size} snapshot(s)")
        newest_first = self.order()[::-1][:j]
        from_total = coeffs is None and j == self.size
        own = len(dst) == len(self.params) and all(d is p for d, p in zip(dst, self.params))
        with torch.no_grad():
            for g in self.groups:
                outs = g.param_views(self.params) if own else None
                if from_total and (g.same_device if own else all(
                    dst[i].device == g.device and dst[i].dtype == g.dtype and dst[i].shape == self.params[i].shape
                    for i in g.indices
                )):  # the uniform mean of the whole ring, divided straight into dst: no scratch, one pass
                    part, plan = g, self._fused_plan(g)
                    if plan is not None and plan.fuse_mean:
                        self._mean_fused(plan, self.params if own else dst, own, j)
                        part = plan.rest
                        outs = part.param_views(self.params) if own else None
                    targets = outs if own else [[pc.of(dst[pc.index].detach()) for pc in pieces]
                                                for _, _, pieces in part.blocks]
                    for sums, outs_b in zip(part.total_views(), targets):
                        for s, t in zip(sums, outs_b):
                            torch.div(s, j, out=t)  # computed in the sum's dtype, rounded once into t
                    continue
                acc = self._scratch_for(g, 0)
                sources = g.scratch_views(acc)
                conv = self._scratch_for(g, 1) if (g.acc != g.dtype and not from_total) else None
                for b, (start, stop, pieces) in enumerate(g.blocks):
                    n = stop - start
                    out = acc[:n]
                    if from_total:
                        torch.div(g.total[start:stop], j, out=out)
                    else:
                        out.zero_()
                        for pos, slot in enumerate(newest_first):
                            row = g.rows[slot, start:stop]
                            if conv is not None:
                                conv[:n].copy_(row)
                                row = conv[:n]
                            if coeffs is None:
                                out.add_(row)
                            else:
                                out.add_(row, alpha=coeffs[pos])
                        if coeffs is None:
                            out.div_(j)
                    if outs is not None:  # the ring's own parameters, on the group's device or not
                        _copy_all(outs[b], sources[b], same_device=g.same_device)
                    else:
                        _copy_all([pc.of(dst[pc.index]) for pc in pieces], sources[b])

    def snapshots(self, i: int) -> list[Tensor]:
        """The filled slots of parameter ``i``, oldest first (views, for tests and exports)."""
        self.join()
        g, shape = self._where[i], self.params[i].shape
        return [g.row_view(s, i, shape) for s in self.order()]

    def newest(self) -> list[Tensor]:
        """The newest snapshot of every parameter (views into the ring, shaped like the parameters)."""
        self.join()
        if self.size == 0:
            raise RuntimeError("The ring holds no snapshot yet")
        slot = (self.head - 1) % self.k
        views = self._slot_views.get(slot)
        if views is None:  # made once per slot: a swap restores from them without building views
            views = [self._where[i].row_view(slot, i, p.shape) for i, p in enumerate(self.params)]
            self._slot_views[slot] = views
        return views

    def sum_of(self, i: int) -> Tensor:
        """The running sum of parameter ``i`` (a view)."""
        g, p = self._where[i], self.params[i]
        col = g.columns[i]
        return g.total[col : col + p.numel()].view(p.shape)

    # ----------------------------------------------------------------------------- state
    # Checkpoint format (see docs/sharded.md, "How the ring is checkpointed"): the k slots of every
    # parameter as they lie in the ring (views, no copy) plus ``count`` and ``head``; the running
    # sums are not saved but rebuilt from the slots on load, and a save is a rebuild point too, so
    # the saving and the resumed run hold the same sums bit for bit.
    def slot_views(self, i: int) -> list[Tensor]:
        """All k slots of parameter ``i`` in ring order (slot 0 first, not oldest first), as views
        shaped like the parameter; call :meth:`prepare_save` first (it zeroes the unfilled slots)."""
        g, shape = self._where[i], self.params[i].shape
        return [g.row_view(s, i, shape) for s in range(self.k)]

    def prepare_save(self) -> None:
        """Settle the ring for a save: join an async copy, zero the slots not filled yet (so a
        checkpoint holds no stale memory) and rebuild the running sums exactly (a save is a
        rebuild point: the loaded ring rebuilds them the same way)."""
        self.join()
        filled = set(self.order())
        with torch.no_grad():
            for g in self.groups:
                for s in range(self.k):
                    if s not in filled:
                        g.rows[s].zero_()
        self.rebuild()

    def check_slots(self, count: int, head: int, slots: Sequence[Sequence[Tensor]], where: str) -> None:
        """Raise ``ValueError`` naming what differs from :meth:`load_slots`'s expectations; change nothing."""
        if not is_int(count, 0) or not is_int(head, 0) or head >= self.k:
            raise ValueError(
                f"Invalid state dict: {where} has count={count!r}, head={head!r}; expected ints >= 0, head < k={self.k}"
            )
        if len(slots) != len(self.params):
            raise ValueError(
                f"Invalid state dict: {where} holds snapshots of {len(slots)} parameters, this optimizer has "
                f"{len(self.params)}; load a state dict saved for the same model and param groups"
            )
        for i, (per, p) in enumerate(zip(slots, self.params)):
            if len(per) != self.k:
                raise ValueError(
                    f"Invalid state dict: {where} has {len(per)} snapshot slots for parameter {i}, this wrapper "
                    f"has k={self.k}; create the wrapper with the k it was saved with"
                )
            for s, t in enumerate(per):
                if not isinstance(t, Tensor) or tuple(t.shape) != tuple(p.shape) or t.dtype != p.dtype:
                    got = f"has shape {tuple(t.shape)}, dtype {t.dtype}" if isinstance(t, Tensor) else \
                        f"a {type(t).__name__}"
                    raise ValueError(
                        f"Invalid state dict: {where} slot {s} of parameter {i} {got}, expected shape "
                        f"{tuple(p.shape)}, dtype {p.dtype} (this rank's shard under FSDP2); was it saved for "
                        "another model?"
                    )

    def load_slots(self, count: int, head: int, slots: Sequence[Sequence[Tensor]]) -> None:
        """Load slots checked by :meth:`check_slots` into the same ring positions and rebuild the sums.

        A slot that already is the ring's memory (``dcp.load`` wrote into the views of
        :meth:`slot_views`) is left as it is.
        """
        self.join()
        with torch.no_grad():
            for i, per in enumerate(slots):
                for dst, src in zip(self.slot_views(i), per):
                    if src.data_ptr() != dst.data_ptr() or src.device != dst.device:
                        dst.copy_(src)
        self.count, self.head, self.size = count, head, min(count, self.k)
        self._slot_views = {}
        self.rebuild()

    def clear(self) -> None:
        """Forget every snapshot (the slots' memory stays allocated)."""
        self.join()
        self.count = self.size = self.head = 0
        with torch.no_grad():
            for g in self.groups:
                g.total.zero_()

    # Format 1 (state dicts saved before the slots moved into the per-parameter state): still loaded.
    def check_legacy_state(self, state: dict, where: str) -> None:
        """Raise ``ValueError`` naming what differs (including a running sum that is not the sum of
        its snapshots, as a corrupted checkpoint would hold); change nothing."""
        for key in ("count", "ring", "sums"):
            if key not in state:
                raise ValueError(f"Invalid state dict: {where} lacks {key!r}; was it saved by this version?")
        ring, sums, count = state["ring"], state["sums"], state["count"]
        for key in ("ring", "sums"):
            entries = state[key]
            if not isinstance(entries, (list, tuple)) or not all(isinstance(t, Tensor) for t in entries):
                raise ValueError(f"Invalid state dict: {where}[{key!r}] must be a list of tensors")
        if not is_int(count, 0):
            raise ValueError(f"Invalid state dict: {where}['count'] = {count!r}")
        if len(ring) != len(self.params) or len(sums) != len(self.params):
            raise ValueError(
                f"Invalid state dict: it holds snapshots of {len(ring)} parameters, this optimizer has "
                f"{len(self.params)}; load a state dict saved for the same model and param groups"
            )
        size = min(count, self.k)
        for i, (r, t, p) in enumerate(zip(ring, sums, self.params)):
            if tuple(r.shape) != (size, *p.shape):
                raise ValueError(
                    f"Invalid state dict: parameter {i} has snapshots of shape {tuple(r.shape)}, expected "
                    f"{(size, *p.shape)} (k={self.k}, {count} snapshots taken); was it saved with another "
                    "model or another k?"
                )
            acc = self._where[i].acc
            if r.dtype != p.dtype or t.dtype != acc or tuple(t.shape) != tuple(p.shape):
                raise ValueError(
                    f"Invalid state dict: parameter {i} snapshots are {r.dtype}/{t.dtype}, expected "
                    f"{p.dtype}/{acc} of shape {tuple(p.shape)}"
                )
        for i, (r, total) in enumerate(zip(ring, sums)):
            # The running sum must be the sum of the snapshots (up to its rounding): a corrupted
            # one (NaN, flipped bits) would silently skew every average until the next rebuild.
            exact = r.to(total.dtype)
            if not bool(((total - exact.sum(0)).abs() <= 1e-3 * exact.abs().sum(0) + 1e-30).all()):
                raise ValueError(
                    f"Invalid state dict: the running sum of parameter {i} does not match its snapshots "
                    "(a corrupted checkpoint?); nothing was loaded"
                )

    def load_legacy_state(self, state: dict) -> None:
        """Load a format-1 state checked by :meth:`check_legacy_state`, its running sums as saved
        (so a run resumed from an old checkpoint continues exactly as it would have)."""
        self.join()
        self.count = state["count"]
        self.size = min(self.count, self.k)
        self.head = self.size % self.k
        self._slot_views = {}
        with torch.no_grad():
            for i, (r, t) in enumerate(zip(state["ring"], state["sums"])):
                g, p = self._where[i], self.params[i]
                col, m = g.columns[i], p.numel()
                if self.size:
                    g.rows[: self.size, col : col + m].copy_(r.reshape(self.size, m))
                self.sum_of(i).copy_(t)


class HostSnapshotRing(SnapshotRing):
    """The ring in host memory (``offload="cpu"``): pinned and filled asynchronously on a side
    stream when the parameters are on CUDA (see the module docstring); plain memory otherwise."""

    offload = "cpu"

    def _slot_device(self, p: Tensor) -> torch.device:
        return torch.device("cpu")

    def _pin(self, p: Tensor) -> bool:
        return p.device.type == "cuda"
