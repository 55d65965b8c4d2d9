"""Distributed checkpoints (``torch.distributed.checkpoint``) that a crash cannot leave half-written.

``dcp.save`` writes every rank's ``__<rank>_<n>.distcp`` file straight into the folder it is given,
and rank 0 its ``.metadata`` at the end. A rank killed while *overwriting* a checkpoint (a
``last`` folder saved every epoch) leaves the old ``.metadata`` beside new and old shard files: a
folder that loads garbage or fails half-way. :func:`atomic_save` writes into a staging folder
``<folder>.tmp-<id>`` beside the target and, once every rank's files and the metadata are written,
renames it to ``<folder>`` (the previous checkpoint, if any, is renamed aside first and deleted
after). A save killed at any point before the rename leaves the previous checkpoint as it was (and
the staging folder, which nothing reads); one killed between the two renames leaves it at
``<folder>.old-<id>``, which :func:`check` names and :func:`recover` (called by the next
:func:`atomic_save`) renames back. Folders are renamed on rank 0 of a shared filesystem.

:func:`check` refuses a folder that is not a finished checkpoint: no ``.metadata``, or a shard
file the metadata names that is missing or shorter than the metadata says (the message names the
file and the rank that wrote it). :func:`load` checks, then ``dcp.load``\\ s.

Example:
    >>> from torch.distributed.checkpoint.state_dict import get_state_dict
    >>> model_sd, optim_sd = get_state_dict(model, opt)
    >>> atomic_save({"model": model_sd, "optim": optim_sd}, "ckpt/last")   # on every rank
"""

from __future__ import annotations

import os
import re
import shutil
import uuid
from glob import escape as glob_escape
from pathlib import Path
from typing import Any

import torch.distributed as dist

from .io import CheckpointError

__all__ = ["atomic_save", "check", "check_files", "load", "commit", "recover", "staging_path", "METADATA_FILE"]

METADATA_FILE = ".metadata"  # what dcp's FileSystemWriter writes last, on the coordinator rank
_SHARD = re.compile(r"__(\d+)_\d+\.distcp$")


def _distributed() -> bool:
    return dist.is_available() and dist.is_initialized()


def _rank(process_group: Any = None) -> int:
    return dist.get_rank(process_group) if _distributed() else 0


def _broadcast_token(process_group: Any = None) -> str:
    token = [uuid.uuid4().hex[:12] if _rank(process_group) == 0 else None]
    if _distributed():
        src = dist.get_global_rank(process_group, 0) if process_group is not None else 0
        dist.broadcast_object_list(token, src=src, group=process_group)
    return str(token[0])


def staging_path(folder: str | os.PathLike, token: str) -> Path:
    """``<folder>.tmp-<token>``: where :func:`atomic_save` writes before the rename."""
    folder = Path(folder)
    return folder.with_name(f"{folder.name}.tmp-{token}")


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:  # a platform without directory file descriptors
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def commit(staging: str | os.PathLike, folder: str | os.PathLike) -> None:
    """Rename the finished ``staging`` folder to ``folder`` (one process only: rank 0).

    An existing ``folder`` (file or folder) is renamed to ``<folder>.old-<id>`` first and deleted
    once the new one is in place, so at every moment either the old or the new checkpoint is at
    ``folder`` (or, between the two renames, the old one at ``<folder>.old-<id>``).
    """
    staging, folder = Path(staging), Path(folder)
    check(staging)  # never publish an incomplete save
    aside = None
    if folder.exists() or folder.is_symlink():
        aside = folder.with_name(f"{folder.name}.old-{uuid.uuid4().hex[:12]}")
        os.rename(folder, aside)
    os.rename(staging, folder)
    _fsync_dir(folder.parent)
    if aside is not None:
        if aside.is_dir() and not aside.is_symlink():
            shutil.rmtree(aside, ignore_errors=True)
        else:
            aside.unlink(missing_ok=True)


def _set_aside(folder: Path) -> Path | None:
    """The newest ``<folder>.old-<id>`` that :func:`commit` renamed aside and holds a ``.metadata``, if any."""
    if not folder.parent.is_dir():
        return None
    candidates = [p for p in folder.parent.glob(f"{glob_escape(folder.name)}.old-*")
                  if p.is_dir() and (p / METADATA_FILE).is_file()]
    return max(candidates, key=lambda p: p.stat().st_mtime_ns, default=None)


def recover(folder: str | os.PathLike) -> bool:
    """Put the previous checkpoint back at ``folder`` if a process was stopped between the two renames
    of :func:`commit` (``folder`` missing, ``<folder>.old-<id>`` present); one process only (rank 0).
    Returns whether it renamed anything. :func:`atomic_save` calls it before saving."""
    folder = Path(folder)
    if folder.exists() or folder.is_symlink():
        return False
    aside = _set_aside(folder)
    if aside is None:
        return False
    os.rename(aside, folder)
    _fsync_dir(folder.parent)
    return True


def atomic_save(state_dict: dict[str, Any], folder: str | os.PathLike, *, process_group: Any = None) -> Path:
    """``dcp.save(state_dict, checkpoint_id=folder)`` through a staging folder and a rename.

    Call it on every rank, like ``dcp.save``. Returns the folder. A process killed during the save
    leaves ``folder`` as it was before (the previous checkpoint, or nothing).

    Args:
        state_dict (dict): what ``dcp.save`` takes (DTensors are saved shard by shard).
        folder (str or os.PathLike): the checkpoint folder, on a filesystem every rank shares.
        process_group (optional): the group that saves (default: the default group, if any).
    """
    import torch.distributed.checkpoint as dcp

    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise ValueError(
            f"Invalid folder: {str(folder)!r} is a file; give a folder path for the distributed checkpoint"
        )
    if _rank(process_group) == 0:
        recover(folder)  # a previous save stopped between commit's renames: its checkpoint is the latest
    staging = staging_path(folder, _broadcast_token(process_group))
    dcp.save(state_dict, checkpoint_id=staging, process_group=process_group)
    # dcp.save returns on every rank after the coordinator has written .metadata
    if _distributed():
        dist.barrier(group=process_group)
    if _rank(process_group) == 0:
        commit(staging, folder)
    if _distributed():
        dist.barrier(group=process_group)
    return folder


def _writer_rank(name: str) -> str:
    match = _SHARD.search(name)
    return f"rank {match.group(1)}" if match else "an unknown rank"


def check(folder: str | os.PathLike) -> Any:
    """The checkpoint's ``dcp`` metadata, or :class:`~lawa_optim.io.CheckpointError` (a
    ``ValueError``) if ``folder`` is not a finished, complete distributed checkpoint."""
    from torch.distributed.checkpoint import FileSystemReader

    folder = Path(folder)
    if not folder.is_dir():
        aside = _set_aside(folder)
        if aside is not None:
            raise CheckpointError(
                f"Distributed checkpoint {str(folder)!r} does not exist, but {str(aside)!r} holds the previous one "
                f"(a save was stopped between the two renames of its commit): rename it back to {folder.name!r}, "
                "or call lawa_optim.dcp_atomic.recover(folder)"
            )
        raise CheckpointError(f"Distributed checkpoint {str(folder)!r} does not exist (or is not a folder)")
    if not (folder / METADATA_FILE).is_file():
        raise CheckpointError(
            f"Distributed checkpoint {str(folder)!r} has no {METADATA_FILE}: its save did not finish (a process was "
            "stopped during dcp.save) or it is not a dcp.save folder; resume from the previous checkpoint"
        )
    try:
        metadata = FileSystemReader(folder).read_metadata()
    except Exception as err:  # a truncated or foreign .metadata
        raise CheckpointError(
            f"Distributed checkpoint {str(folder)!r}: its {METADATA_FILE} cannot be read ({err})"
        ) from err
    check_files(folder, metadata)
    return metadata


def check_files(folder: str | os.PathLike, metadata: Any) -> None:
    """:class:`~lawa_optim.io.CheckpointError` unless every file ``metadata`` (of the checkpoint in
    ``folder``) names exists and is as long as it says (:func:`check`'s test of the files)."""
    folder = Path(folder)
    needed: dict[str, int] = {}
    for info in (getattr(metadata, "storage_data", None) or {}).values():
        end = int(info.offset) + int(info.length)
        needed[info.relative_path] = max(needed.get(info.relative_path, 0), end)
    problems = []
    for name in sorted(needed):
        path = folder / name
        if not path.is_file():
            problems.append(f"{name} (written by {_writer_rank(name)}) is missing")
        elif path.stat().st_size < needed[name]:
            problems.append(
                f"{name} (written by {_writer_rank(name)}) has {path.stat().st_size} bytes, the metadata needs "
                f"{needed[name]}"
            )
    if problems:
        raise CheckpointError(
            f"Distributed checkpoint {str(folder)!r} is incomplete: " + "; ".join(problems)
            + "; it cannot be loaded (copy the missing file back, or resume from another checkpoint)"
        )


def load(state_dict: dict[str, Any], folder: str | os.PathLike, *, process_group: Any = None) -> None:
    """:func:`check`, then ``dcp.load(state_dict, checkpoint_id=folder)`` (fills ``state_dict`` in place)."""
    import torch.distributed.checkpoint as dcp

    check(folder)
    dcp.load(state_dict, checkpoint_id=Path(folder), process_group=process_group)
