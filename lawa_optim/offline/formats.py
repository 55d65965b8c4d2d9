"""The checkpoint formats ``lawa average`` reads and writes: one :class:`~.base.Format` (a reader/writer
pair) per format, each defined in a module of this package and found there.

The formats, in the order they are tried:

====================  ==========================================================  ==========================
entry                 a checkpoint is                                             module
====================  ==========================================================  ==========================
``dcp``               a ``torch.distributed.checkpoint`` folder (``.metadata``)   :mod:`.dcp_io`
``huggingface``       a Hugging Face folder of safetensors weights                :mod:`.hf`
``huggingface-bin``   a Hugging Face folder of ``pytorch_model.bin`` weights      :mod:`.hf`
``safetensors``       a ``.safetensors`` file                                     :mod:`.hf`
``pickled``           a ``torch.save`` file (plain, fairseq, Lightning, timm)     :mod:`.pickled`
====================  ==========================================================  ==========================

A path is of the first format of :func:`formats` whose ``matches`` accepts it (``pickled``, last,
takes any file). Adding a format is one file: a module of ``lawa_optim.offline`` with a
:class:`~.base.Format` subclass that sets ``name`` and ``order``; defining the class registers it.
"""

from __future__ import annotations

from pathlib import Path

from ..io import CheckpointError
from .base import Format

__all__ = ["format_of", "formats", "one_format"]

_instances: dict[type[Format], Format] = {}


def formats() -> tuple[Format, ...]:
    """Every format, in detection ``order``: the package's modules are imported once (at the first call,
    so no module here imports another's format) and every :class:`~.base.Format` subclass they define
    that sets ``name`` is one."""
    if not _instances:
        import importlib
        import pkgutil

        package = __name__.rpartition(".")[0]
        for module in pkgutil.iter_modules(importlib.import_module(package).__path__):
            importlib.import_module(f"{package}.{module.name}")
    for cls in Format.registered:
        if cls not in _instances:
            _instances[cls] = cls()
    return tuple(sorted(_instances.values(), key=lambda fmt: fmt.order))


def format_of(path: Path, in_folder: bool = False) -> Format | None:
    """The format of checkpoint ``path``; ``in_folder``: a folder's entry, whose file name must end in a suffix."""
    for fmt in formats():
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
