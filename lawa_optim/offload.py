"""Where the snapshots live: the ``offload`` option turned into a ring object, in one place.

``offload=None`` keeps the ring beside the parameters (:class:`~lawa_optim.store.SnapshotRing`),
``"cpu"`` in host memory, pinned and filled asynchronously from CUDA
(:class:`~lawa_optim.store.HostSnapshotRing`), ``"disk"`` in memory-mapped files under
``offload_dir`` (:class:`~lawa_optim.disk_store.DiskSnapshotRing`). Each ring class carries its
own rules (where its slots are, whether it copies asynchronously, whether a wrapper holding it
may be copied or pickled); a new target is one ring class and one entry in :data:`RINGS`.
Command lines and configs spell ``None`` as ``"none"``: :func:`parse_offload` reads that form.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from types import MappingProxyType

from torch import Tensor

from .disk_store import DiskSnapshotRing, check_offload_dir
from .store import HostSnapshotRing, SnapshotRing

__all__ = ["OFFLOAD_CHOICES", "OFFLOAD_NAMES", "RINGS", "check_offload", "make_ring", "parse_offload"]

RINGS: Mapping[str | None, type[SnapshotRing]] = MappingProxyType(
    {None: SnapshotRing, "cpu": HostSnapshotRing, "disk": DiskSnapshotRing}
)
OFFLOAD_CHOICES = tuple(RINGS)
#: the spellings of the choices on command lines and in config files
OFFLOAD_NAMES = tuple("none" if c is None else c for c in OFFLOAD_CHOICES)
_NEEDS_DIR = (DiskSnapshotRing,)


def parse_offload(name: str) -> str | None:
    """``"none"`` -> ``None``; ``"cpu"``/``"disk"`` as they are; ``ValueError`` otherwise."""
    if not isinstance(name, str) or name not in OFFLOAD_NAMES:
        raise ValueError(f"Invalid offload: {name!r}; use one of {OFFLOAD_NAMES}")
    return None if name == "none" else name


def check_offload(offload: object, offload_dir: object = None) -> str | None:
    """Validate the ``offload``/``offload_dir`` pair; returns ``offload_dir`` as a path string or None."""
    if not (offload is None or isinstance(offload, str)) or offload not in RINGS:
        raise ValueError(f"Invalid offload: {offload!r}; use one of {OFFLOAD_CHOICES}")
    if issubclass(RINGS[offload], _NEEDS_DIR):  # type: ignore[index]
        return check_offload_dir(offload_dir)
    if offload_dir is not None:
        raise ValueError(
            f"Invalid offload_dir: {offload_dir!r} is only used with offload='disk' (offload={offload!r})"
        )
    return None


def make_ring(
    params: Sequence[Tensor], k: int, offload: str | None = None, offload_dir: str | os.PathLike | None = None
) -> SnapshotRing:
    """The ring of ``k`` slots for ``params`` that ``offload`` names (checked as :func:`check_offload`)."""
    directory = check_offload(offload, offload_dir)
    cls = RINGS[offload]
    if directory is not None:
        return cls(params, k, directory)  # type: ignore[call-arg]
    return cls(params, k)
