"""Which checkpoints to average: files and folders expanded, natural order, the k newest.

A path given is one of:

- a checkpoint file (``.safetensors``, ``.ckpt``, ``.pth.tar``, ``.pt``, ``.pth``, ``.bin``, any name);
- a Hugging Face checkpoint folder (it holds ``model.safetensors``, sharded
  ``model-0000x-of-0000y.safetensors`` with ``model.safetensors.index.json``, or
  ``pytorch_model.bin``): one checkpoint;
- a folder of checkpoints (a ``Trainer`` output folder with ``checkpoint-500/``,
  ``checkpoint-1000/``; Lightning's ``epoch=3-step=40.ckpt`` files; timm's
  ``checkpoint-7.pth.tar``): its checkpoints whose name holds a number (an epoch or a step), in
  natural order. Names without a number (``last.ckpt``, ``model_best.pth.tar``, an average
  written earlier) are copies of a numbered one or not part of the trajectory: they are left
  out, and reported. A folder that is itself an HF checkpoint but also holds numbered
  checkpoints (a ``Trainer`` output folder after ``save_model``) counts as its checkpoints. An
  averaged folder written by :func:`write_average` (it holds ``lawa_average.json``) is left out too,
  as is the staging or set-aside folder of an interrupted distributed save (``step-800.tmp-<id>``,
  ``step-800.old-<id>``, see :mod:`lawa_optim.dcp_atomic`).
  Numbered names starting with ``best`` or ``last`` (Lightning's ``ModelCheckpoint`` writes
  ``best-epoch=3.ckpt``, ``last-v1.ckpt``) are copies of an epoch's checkpoint: left out unless
  ``include_copies``, and reported.

Which paths are checkpoints, and of which format, is the table of :mod:`.formats` (passed in as
``recognize``).
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..io import CheckpointError

__all__ = ["HF_WEIGHT_FILES", "PROVENANCE", "Selection", "natural_key", "select"]

# The weight files of a Hugging Face checkpoint folder, in order of preference.
HF_WEIGHT_FILES = ("model.safetensors.index.json", "model.safetensors", "pytorch_model.bin.index.json",
                   "pytorch_model.bin")
# Written into every averaged HF folder: such a folder in a folder of checkpoints is not one of them.
PROVENANCE = "lawa_average.json"
# Names of copies of a numbered checkpoint (Lightning's ModelCheckpoint: best-epoch=3.ckpt, last-v1.ckpt).
COPY_PREFIXES = ("best", "last")
# lawa_optim.dcp_atomic's staging and set-aside folders (<folder>.tmp-<id>, <folder>.old-<id>): left over by an
# interrupted save, they are no checkpoint of the run.
_STAGING = re.compile(r"\.(tmp|old)-[0-9a-f]+$")


def natural_key(path: str | os.PathLike) -> tuple:
    """Sort key putting ``checkpoint9.pt`` before ``checkpoint10.pt`` (digit runs compare as numbers).

    Example:
        >>> sorted(["ckpt10.pt", "ckpt9.pt", "ckpt_best.pt"], key=natural_key)
        ['ckpt9.pt', 'ckpt10.pt', 'ckpt_best.pt']
    """
    parts = re.split(r"(\d+)", str(path))
    return tuple((0, int(p), p) if p.isdigit() else (1, 0, p) for p in parts)


@dataclass(frozen=True)
class Selection:
    """The checkpoints chosen (oldest first), the folder entries left out because unnumbered, and the copies."""

    paths: tuple[Path, ...]
    ignored: tuple[Path, ...]
    copies: tuple[Path, ...] = ()


# recognize(path, in_folder) -> the path's format, or None when it is no checkpoint (formats.format_of)
Recognize = Callable[[Path, bool], Any]


def _expand(folder: Path, recognize: Recognize, include_copies: bool) -> tuple[list[Path], list[Path], list[Path]]:
    own = recognize(folder, False) is not None  # a checkpoint folder: only its sub-folders can be checkpoints
    children = sorted((p for p in folder.iterdir() if not p.name.startswith(".") and (p.is_dir() or not own)
                       and recognize(p, True) is not None), key=natural_key)
    numbered = [p for p in children if re.search(r"\d", p.name.split(".")[0] if p.is_file() else p.name)
                and not (p / PROVENANCE).exists() and not _STAGING.search(p.name)]
    copies = [] if include_copies else [p for p in numbered if p.name.lower().startswith(COPY_PREFIXES)]
    numbered = [p for p in numbered if p not in copies]
    if numbered:
        return numbered, [p for p in children if p not in numbered and p not in copies], copies
    if own:
        return [folder], [], []
    names = ", ".join(p.name for p in children[:4])
    found = f"; it holds {len(children)} unnumbered ones or copies ({names})" if children else ""
    hint = "; include_copies=True (--include-copies) averages best-*/last* copies" if copies else ""
    raise CheckpointError(
        f"Folder {str(folder)!r} holds no checkpoints: looked for Hugging Face checkpoint folders (with "
        f"{' or '.join(HF_WEIGHT_FILES[1::2])}), distributed checkpoint folders (with .metadata) and checkpoint "
        f"files (.safetensors, .ckpt, .pth.tar, .pt, .pth, .bin) whose name holds an epoch or step number{found}"
        f"{hint}; give the checkpoints themselves"
    )


def select(paths, last: int | None, sort: bool, recognize: Recognize, include_copies: bool = False) -> Selection:
    """Expand ``paths`` (files or folders) into the checkpoints to average, oldest first.

    Args:
        paths (sequence of path): as given by the user.
        last (int, optional): keep only the ``last`` newest.
        sort (bool): order all checkpoints naturally (by the numbers in their paths); otherwise the
            order given (a folder's checkpoints are in natural order either way).
        recognize (callable): ``recognize(path, in_folder)``, the format of a checkpoint path or ``None``.
        include_copies (bool): take a folder's ``best*``/``last*`` copies too.
    """
    if isinstance(paths, (str, os.PathLike)):
        raise TypeError(f"Invalid paths: {paths!r}; give a list of checkpoint files or folders, oldest first")
    given = [Path(p) for p in paths]
    if not given:
        raise ValueError("Invalid paths: no checkpoints given; give at least one file or folder")
    chosen: list[Path] = []
    ignored: list[Path] = []
    copies: list[Path] = []
    for p in given:
        if p.is_dir():
            found, left, copied = _expand(p, recognize, include_copies)
            chosen += found
            ignored += left
            copies += copied
        else:
            chosen.append(p)
    seen: dict[str, Path] = {}
    for p in chosen:
        real = os.path.realpath(p)
        if real in seen:
            raise ValueError(f"Invalid paths: {str(p)!r} is given twice (as {str(seen[real])!r} too); "
                             "give each checkpoint once")
        seen[real] = p
    if sort:
        chosen.sort(key=natural_key)
    if last is not None:
        if isinstance(last, bool) or not isinstance(last, int) or last < 1:
            raise ValueError(f"Invalid last: {last!r}; it must be a positive integer (how many newest to average)")
        if last > len(chosen):
            raise ValueError(f"Invalid last: {last} but only {len(chosen)} checkpoints were given; "
                             "give more files or a smaller last")
        chosen = chosen[-last:]
    return Selection(tuple(chosen), tuple(ignored), tuple(copies))

