"""The snapshot ring: k preallocated slots per parameter and a running sum of what they hold.

A snapshot costs O(P) whatever k is: the oldest slot is subtracted from the running sum, the
parameters are copied into that slot and added to the sum. The sum is kept in float64 for
float32/float64 parameters and in float32 for half-precision ones, and rebuilt exactly from
the slots every ``8 * k`` snapshots, so it never drifts from the true sum of the ring.

Slots live on the parameters' device or, with ``offload="cpu"``, in host memory (pinned, and
filled by non-blocking copies on a side stream when the parameters are on CUDA; the copy is
joined before anything reads the ring).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

__all__ = ["SnapshotRing"]

# How many full ring cycles pass between exact rebuilds of the running sum.
_REBUILD_CYCLES = 8


def _acc_dtype(dtype: torch.dtype) -> torch.dtype:
    if dtype in (torch.float32, torch.float64):
        return torch.float64
    if dtype.is_floating_point:
        return torch.float32
    raise TypeError(f"Invalid parameter dtype {dtype}: only floating-point parameters can be averaged")


def _group(indices: Sequence[int], tensors: Sequence[Tensor]) -> list[list[int]]:
    """Indices grouped by (device, dtype) so each foreach call sees one kind of tensor."""
    groups: dict[tuple[torch.device, torch.dtype], list[int]] = {}
    for i in indices:
        groups.setdefault((tensors[i].device, tensors[i].dtype), []).append(i)
    return list(groups.values())


class SnapshotRing:
    """k slots per parameter, filled round-robin, with a running sum of the filled slots.

    Args:
        params (list of Tensor): the tensors to snapshot (usually ``nn.Parameter``\\ s).
        k (int): number of slots.
        offload (str, optional): ``None`` keeps slots on each parameter's device, ``"cpu"``
            keeps them in host memory (default: None).
    """

    def __init__(self, params: Sequence[Tensor], k: int, offload: str | None = None) -> None:
        self.k = k
        self.offload = offload
        self.params: list[Tensor] = []
        self.slots: list[Tensor] = []  # per parameter: [k, *shape]
        self.sums: list[Tensor] = []  # per parameter: running sum of the filled slots
        self.count = 0  # snapshots taken in total
        self.size = 0  # filled slots, min(count, k)
        self.head = 0  # slot the next snapshot goes into
        self._pending: tuple[object, int] | None = None  # (cuda event, slot) of an async copy
        self._stream = None
        self._add(list(params))

    # ----------------------------------------------------------------------------- layout
    def _slot_device(self, p: Tensor) -> torch.device:
        return torch.device("cpu") if self.offload == "cpu" else p.device

    def _add(self, params: list[Tensor]) -> None:
        for p in params:
            dev = self._slot_device(p)
            pin = dev.type == "cpu" and p.device.type == "cuda"
            acc = _acc_dtype(p.dtype)
            slot = torch.empty((self.k, *p.shape), dtype=p.dtype, device=dev, pin_memory=pin)
            total = torch.zeros(p.shape, dtype=acc, device=dev, pin_memory=pin)
            self.params.append(p)
            self.slots.append(slot)
            self.sums.append(total)
        n = len(self.params)
        # Precomputed views: a snapshot allocates nothing once the ring exists.
        self._slot_views = [[s[i] for s in self.slots] for i in range(self.k)]
        self._slot_groups = _group(range(n), self.slots)
        self._async = (
            self.offload == "cpu"
            and n > 0
            and all(p.device.type == "cuda" for p in self.params)
            and len({p.device for p in self.params}) == 1
        )

    def add_params(self, params: Sequence[Tensor]) -> None:
        """Extend the ring with new tensors; their history is their current value in every slot."""
        self.join()
        first = len(self.params)
        self._add(list(params))
        for i in range(first, len(self.params)):
            for slot in self.order():
                self.slots[i][slot].copy_(self.params[i].detach())
            self.sums[i].copy_(self.params[i].detach()).mul_(self.size)

    # ----------------------------------------------------------------------------- writes
    def order(self) -> list[int]:
        """Filled slot indices, oldest first."""
        start = (self.head - self.size) % self.k
        return [(start + i) % self.k for i in range(self.size)]

    def nonfinite_params(self) -> list[int]:
        """Indices of the parameters holding NaN or Inf right now (one read of the parameters)."""
        bad: list[int] = []
        with torch.no_grad():
            for idx in _group(range(len(self.params)), self.params):
                norms = torch._foreach_norm([self.params[i].detach() for i in idx], float("inf"))
                finite = torch.stack(norms).isfinite().tolist()
                bad.extend(i for i, ok in zip(idx, finite) if not ok)
        return sorted(bad)

    def push(self) -> None:
        """Copy the parameters into the oldest slot and update the running sum in O(P)."""
        self.join()
        slot = self.head
        views = self._slot_views[slot]
        with torch.no_grad():
            for idx in self._slot_groups:
                sums = [self.sums[i] for i in idx]
                if self.size == self.k:
                    torch._foreach_sub_(sums, [views[i] for i in idx])
                if self._async:
                    continue
                torch._foreach_copy_([views[i] for i in idx], [self.params[i].detach() for i in idx])
                torch._foreach_add_(sums, [views[i] for i in idx])
            if self._async:
                self._push_async(slot)
        self.head = (self.head + 1) % self.k
        self.count += 1
        self.size = min(self.size + 1, self.k)
        if self.count % (_REBUILD_CYCLES * self.k) == 0:
            self.rebuild()

    def _push_async(self, slot: int) -> None:
        device = self.params[0].device
        if self._stream is None:
            self._stream = torch.cuda.Stream(device=device)
        main = torch.cuda.current_stream(device)
        self._stream.wait_stream(main)
        with torch.cuda.stream(self._stream):
            for view, p in zip(self._slot_views[slot], self.params):
                view.copy_(p.detach(), non_blocking=True)
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
        views = self._slot_views[slot]
        with torch.no_grad():
            for idx in self._slot_groups:
                torch._foreach_add_([self.sums[i] for i in idx], [views[i] for i in idx])

    def rebuild(self) -> None:
        """Recompute the running sum exactly from the slots, oldest first."""
        self.join()
        with torch.no_grad():
            for idx in self._slot_groups:
                sums = [self.sums[i] for i in idx]
                torch._foreach_zero_(sums)
                for slot in self.order():
                    torch._foreach_add_(sums, [self._slot_views[slot][i] for i in idx])

    def clear(self) -> None:
        self.join()
        self.count = self.size = self.head = 0
        with torch.no_grad():
            for t in self.sums:
                t.zero_()

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
        with torch.no_grad():
            for i, (out, total) in enumerate(zip(dst, self.sums)):
                if coeffs is None and j == self.size:
                    acc = total
                else:
                    acc = torch.zeros_like(total)
                    for n, slot in enumerate(newest_first):
                        if coeffs is None:
                            acc.add_(self.slots[i][slot])
                        else:
                            acc.add_(self.slots[i][slot], alpha=coeffs[n])
                if coeffs is None and acc.device == out.device:
                    torch.div(acc, j, out=out)  # computed in acc's precision, rounded once
                elif coeffs is None:
                    out.copy_(acc / j)
                else:
                    out.copy_(acc)

    def snapshots(self, i: int) -> list[Tensor]:
        """The filled slots of parameter ``i``, oldest first (views, for tests and exports)."""
        self.join()
        return [self.slots[i][s] for s in self.order()]

    # ----------------------------------------------------------------------------- state
    def state_dict(self) -> dict:
        """``{"count", "ring": [Tensor[size, *shape] oldest first], "sums": [Tensor]}``, copies."""
        self.join()
        order = self.order()
        index = torch.tensor(order, dtype=torch.long)
        return {
            "count": self.count,
            "ring": [s.index_select(0, index.to(s.device)).clone() for s in self.slots],
            "sums": [t.clone() for t in self.sums],
        }

    def check_state_dict(self, state: dict, where: str) -> None:
        """Raise ``ValueError`` naming what differs; change nothing."""
        for key in ("count", "ring", "sums"):
            if key not in state:
                raise ValueError(f"Invalid state dict: {where} lacks {key!r}; was it saved by this version?")
        ring, sums, count = state["ring"], state["sums"], state["count"]
        if not isinstance(count, int) or count < 0:
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
            if r.dtype != p.dtype or t.dtype != self.sums[i].dtype or tuple(t.shape) != tuple(p.shape):
                raise ValueError(
                    f"Invalid state dict: parameter {i} snapshots are {r.dtype}/{t.dtype}, expected "
                    f"{p.dtype}/{self.sums[i].dtype} of shape {tuple(p.shape)}"
                )

    def load_state_dict(self, state: dict) -> None:
        """Load a state checked by :meth:`check_state_dict` (slots may come from another device)."""
        self.join()
        self.count = state["count"]
        self.size = min(self.count, self.k)
        self.head = self.size % self.k
        with torch.no_grad():
            for slot, total, r, t in zip(self.slots, self.sums, state["ring"], state["sums"]):
                if self.size:
                    slot[: self.size].copy_(r)
                total.copy_(t)
