"""What a checkpoint format is to ``lawa average``: a reader/writer pair and the paths it recognizes.

A format is one subclass of :class:`Format` with a ``name``, in its own module of this package:
defining the class registers it, and :func:`.formats.formats` finds it (in ``order``). The driver
(:mod:`.average`) chooses the files, finds their format, checks the options and ``out`` with the
format's rules, then calls its :meth:`Format.average` (into memory) or :meth:`Format.write` (to
``out``, atomically).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from .options import AverageOptions
from .summary import AverageSummary

__all__ = ["Format", "staged_folder"]


class Format:
    """One checkpoint format: how to recognize it, average checkpoints of it, and write their average.

    Attributes:
        name: the format's name in messages (``"pickled"``, ``"safetensors"``, ``"huggingface"``, ``"dcp"``).
        suffixes: file names it claims among a folder's entries (a folder checkpoint is recognized
            by :meth:`matches` alone).
        folder: whether a checkpoint of this format is a folder.
        out_formats: the ``out_format`` values it can write besides its own (``name``).
        order: where it is tried when a path's format is detected (lower first: folder formats
            before files, the catch-all ``pickled`` last).
    """

    name = ""
    suffixes: tuple[str, ...] = ()
    folder = False
    out_formats: tuple[str, ...] = ()
    order = 50

    registered: list[type[Format]] = []  # every subclass that names itself, in definition order

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if cls.__dict__.get("name"):  # a format of its own (helpers like hf._Streamed name none)
            Format.registered.append(cls)

    def matches(self, path: Path) -> bool:
        """Whether ``path`` (a file or folder given or found in a folder) is one checkpoint of this format."""
        raise NotImplementedError

    def check_options(self, opts: AverageOptions) -> None:
        """Refuse options this format cannot use, before anything is read (override to add more)."""
        if opts.out_format not in (None, self.name, *self.out_formats):
            if self.out_formats:
                can = f"one of {', '.join(repr(f) for f in (self.name, *self.out_formats))}"
            else:
                can = "their own format only"
            raise ValueError(f"Invalid out_format: {opts.out_format!r}; the average of {self.name} checkpoints is "
                             f"written in {can}")

    def writes_folder(self, opts: AverageOptions) -> bool:
        """Whether the average is written as a folder (with these options)."""
        return self.folder

    def check_out(self, out: Path, selected: Sequence[Path], opts: AverageOptions) -> None:
        """Refuse an ``out`` that is one of the inputs or exists (unless ``force``), or is of the wrong kind."""
        if not opts.force:
            for p in selected:
                if os.path.realpath(p) == os.path.realpath(out) or (out.exists() and os.path.samefile(p, out)):
                    raise ValueError(f"Invalid out: {str(out)!r} is also an input ({str(p)!r}); writing there "
                                     "would replace a checkpoint of the trajectory. Pick another file, or pass "
                                     "force=True")
        if self.writes_folder(opts):
            if out.exists() and not out.is_dir():
                raise ValueError(f"Invalid out: {str(out)!r} is a file; {self.name} checkpoints average into a "
                                 "folder")
            what = "folder"
        else:
            if out.is_dir():
                raise ValueError(f"Invalid out: {str(out)!r} is a directory; give a file name such as "
                                 "checkpoint_lawa.pt")
            what = "file"
        if out.exists() and not opts.force:
            raise ValueError(f"Invalid out: {str(out)!r} already exists; pick a new {what}, or pass force=True "
                             "to replace it")

    def average(self, paths: Sequence[Path], opts: AverageOptions) -> tuple[Any, AverageSummary]:
        """The average in memory, and what was done."""
        raise NotImplementedError

    def write(self, paths: Sequence[Path], out: Path, opts: AverageOptions) -> AverageSummary:
        """Write the average to ``out`` atomically (a crash leaves ``out`` as it was)."""
        raise NotImplementedError


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


@contextlib.contextmanager
def staged_folder(out: Path) -> Iterator[Path]:
    """Yield a hidden empty folder beside ``out``; on success it replaces ``out`` (renamed), on error it is removed.

    An existing ``out`` (``force``) is moved aside, the new folder renamed in, then the old one
    deleted: ``out`` is at every moment either the old folder or the complete new one.
    """
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent))
    try:
        yield tmp
        for p in tmp.rglob("*"):
            if p.is_file():
                fd = os.open(p, os.O_RDONLY)
                try:
                    os.fsync(fd)
                finally:
                    os.close(fd)
        os.chmod(tmp, 0o777 & ~_umask())
        if out.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".old", dir=out.parent))
            os.replace(out, old / out.name)
            os.replace(tmp, out)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
