"""The checkpoint formats ``lawa average`` reads and writes: one table, one entry (a reader/writer pair) per format.

Each entry is a :class:`~.base.Format` (its module holds its reader and writer):

====================  ==========================================================  ==========================
entry                 a checkpoint is                                             module
====================  ==========================================================  ==========================
``dcp``               a ``torch.distributed.checkpoint`` folder (``.metadata``)   :mod:`.dcp_io`
``huggingface``       a Hugging Face folder of safetensors weights                :mod:`.hf`
``huggingface-bin``   a Hugging Face folder of ``pytorch_model.bin`` weights      :mod:`.hf`
``safetensors``       a ``.safetensors`` file                                     :mod:`.hf`
``pickled``           a ``torch.save`` file (plain, fairseq, Lightning, timm)     :mod:`.pickled`
====================  ==========================================================  ==========================

A path is of the first format in :data:`FORMATS` whose ``matches`` accepts it (``pickled``, last,
takes any file). Adding a format: a module with its :class:`~.base.Format` subclass, and its
line here.
"""

from __future__ import annotations

from pathlib import Path

from ..io import CheckpointError
from .base import Format
from .dcp_io import DCPFolder
from .hf import HFBinFolder, HFFolder, SafetensorsFile
from .pickled import PickledFile

__all__ = ["FORMATS", "format_of", "one_format"]

# Detection order: folder formats first, then files; pickled (any file) last.
FORMATS: tuple[Format, ...] = (DCPFolder(), HFFolder(), HFBinFolder(), SafetensorsFile(), PickledFile())


def format_of(path: Path, in_folder: bool = False) -> Format | None:
    """The format of checkpoint ``path``; ``in_folder``: a folder's entry, whose file name must end in a suffix."""
    for fmt in FORMATS:
        if fmt.matches(path) and not (in_folder and path.is_file() and not path.name.endswith(fmt.suffixes)):
            return fmt
    return None


def one_format(paths) -> Format:
    """The format all ``paths`` share; a mix of formats, or a folder that is no checkpoint, is refused."""
    found = []
    for p in paths:
        fmt = format_of(p)
        if fmt is None:
            raise CheckpointError(f"{str(p)!r} is not a checkpoint: a folder of no known format (a Hugging Face "
                                  "folder, a distributed checkpoint with .metadata) and no checkpoint file")
        found.append(fmt)
    for p, fmt in zip(paths, found):
        if fmt is not found[0]:
            raise CheckpointError(f"{p} is a {fmt.name} checkpoint but {paths[0]} is a {found[0].name} one; "
                                  "give checkpoints of one format")
    return found[0]
