"""Safe checkpoint files: atomic writes and ``weights_only`` loads with errors that name the file.

Everything the project writes goes through :func:`atomic_save` (a temporary file in the same
folder, flushed and fsynced, then ``os.replace``d over the target, so a crash leaves either the
old file or the new one, never a truncated one). Everything it loads goes through
:func:`safe_load` (``torch.load(weights_only=True)``: a pickle that would run code is refused).
"""

from __future__ import annotations

import os
import pickle
import tempfile
from pathlib import Path
from typing import Any

import torch

__all__ = ["CheckpointError", "atomic_save", "atomic_write_bytes", "safe_load"]


class CheckpointError(ValueError):
    """A checkpoint file that is missing, truncated, unsafe or of the wrong kind."""


def _fsync_dir(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def atomic_write_bytes(path: str | os.PathLike, write) -> None:
    """Call ``write(fileobj)`` on a temporary file beside ``path``, then move it over ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    _fsync_dir(path.parent)


def atomic_save(obj: Any, path: str | os.PathLike) -> None:
    """``torch.save(obj, path)`` that never leaves a half-written file at ``path``."""
    atomic_write_bytes(path, lambda f: torch.save(obj, f))


def safe_load(path: str | os.PathLike, map_location: Any = "cpu") -> Any:
    """``torch.load(path, weights_only=True)`` with a :class:`CheckpointError` naming the file.

    A missing, empty or truncated file, or one whose pickle asks for anything beyond tensors and
    plain containers (code execution), is refused; nothing is executed.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"Checkpoint {str(path)!r} does not exist")
    if path.stat().st_size == 0:
        raise CheckpointError(f"Checkpoint {str(path)!r} is empty (an interrupted write?)")
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as err:
        raise CheckpointError(
            f"Checkpoint {str(path)!r} was refused by torch.load(weights_only=True): it holds objects "
            f"other than tensors and plain containers, which could run code when loaded ({err})"
        ) from err
    except (RuntimeError, EOFError, OSError, ValueError) as err:
        raise CheckpointError(f"Checkpoint {str(path)!r} could not be read; it is truncated or not a "
                              f"torch checkpoint ({type(err).__name__}: {err})") from err
