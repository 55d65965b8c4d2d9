"""A snapshot ring kept in memory-mapped files, for models whose k copies do not fit in RAM.

:class:`DiskSnapshotRing` is :class:`~lawa_optim.store.SnapshotRing` with the slot rows and the
running sums allocated in memory-mapped files (``torch.from_file(..., shared=True)``) in a
directory the user chooses; the arithmetic, exactness and state-dict format are the ring's. The
operating system's page cache holds what fits in memory and writes the rest back to disk, so a
snapshot costs what the ring costs while the pages are cached, and is bounded by the disk's
write bandwidth beyond that. Each file is unlinked as soon as it is mapped: nothing is left
behind when the process ends, even after a crash. A state dict holds views of the mapped slots,
not copies: ``torch.save`` and ``dcp.save`` read them through the page cache, so saving a
checkpoint needs no extra RAM either (only what the writer itself buffers).

Select it with ``LAWAWrapper(..., offload="disk", offload_dir="/scratch/lawa")`` (through
:func:`lawa_optim.offload.make_ring`).
"""

from __future__ import annotations

import math
import os
import tempfile
from collections.abc import Sequence

import torch
from torch import Tensor

from .store import SnapshotRing

__all__ = ["DiskSnapshotRing", "check_offload_dir"]


def check_offload_dir(offload_dir: object) -> str:
    """Return ``offload_dir`` as a path string, or raise ``ValueError``/``TypeError`` naming it."""
    if not isinstance(offload_dir, (str, os.PathLike)):
        raise TypeError(
            f"Invalid offload_dir: {offload_dir!r}; offload='disk' needs the path of a directory to keep "
            "the snapshot files in, e.g. offload_dir='/scratch/lawa'"
        )
    path = os.fspath(offload_dir)
    if not os.path.isdir(path):
        raise ValueError(f"Invalid offload_dir: {path!r} is not an existing directory; create it first")
    if not os.access(path, os.W_OK):
        raise ValueError(f"Invalid offload_dir: {path!r} is not writable; choose a directory you can write to")
    return path


def mapped_tensor(directory: str, shape: tuple[int, ...], dtype: torch.dtype, prefix: str = "lawa-ring-") -> Tensor:
    """A zero-filled CPU tensor backed by a fresh memory-mapped file in ``directory`` (already unlinked)."""
    numel = math.prod(shape)
    if numel == 0:
        return torch.zeros(shape, dtype=dtype)
    fd, path = tempfile.mkstemp(prefix=prefix, suffix=".bin", dir=directory)
    try:
        os.ftruncate(fd, numel * torch.empty((), dtype=dtype).element_size())  # sparse: reads as zeros
        flat = torch.from_file(path, shared=True, size=numel, dtype=dtype)
    finally:
        os.close(fd)
        try:
            os.unlink(path)  # the mapping stays valid; the space is freed when it is dropped
        except OSError:  # pragma: no cover - platforms that cannot unlink a mapped file
            pass
    return flat.view(shape)


class DiskSnapshotRing(SnapshotRing):
    """The snapshot ring in memory-mapped files under ``directory``.

    Args:
        params (list of Tensor): the tensors to snapshot.
        k (int): number of slots.
        directory (str or os.PathLike): an existing, writable directory for the files.
    """

    offload = "disk"

    def __init__(self, params: Sequence[Tensor], k: int, directory: str | os.PathLike) -> None:
        self.directory = check_offload_dir(directory)
        super().__init__(params, k)

    def _slot_device(self, p: Tensor) -> torch.device:
        return torch.device("cpu")

    def before_copy(self) -> None:
        raise TypeError(
            "Cannot copy or pickle a wrapper with offload='disk' (the copy would share its files); "
            "save opt.state_dict() and load it into a new wrapper"
        )

    def _alloc(
        self, shape: tuple[int, ...], dtype: torch.dtype, device: torch.device, pin: bool, zero: bool = False
    ) -> Tensor:
        return mapped_tensor(self.directory, shape, dtype)  # new files read as zeros
