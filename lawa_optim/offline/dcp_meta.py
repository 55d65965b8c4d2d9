"""DCP's ``.metadata`` read and written without importing ``torch.distributed.checkpoint`` (0.6 s).

Any ``torch.distributed.checkpoint`` import runs that package's ``__init__``, which imports
DTensor, and so ``torch.fx``'s symbolic shapes and sympy: 0.6 s of a 42.5M-parameter average that
otherwise takes 0.8 s. The ``.metadata`` pickle refers to a few plain dataclasses of
``torch.distributed.checkpoint.metadata`` (and ``filesystem._StorageInfo``), nothing else DCP
defines; the classes here stand in for them, attribute for attribute:

- :func:`load` unpickles a ``.metadata`` into them, allowing only those classes, torch sizes,
  dtypes and layouts, ``OrderedDict`` and paths (the same list DCP's own metadata holds). Anything
  else raises :class:`NotLight`: the caller then reads the file with DCP's real classes (and its
  own checks), as before.
- :func:`dumps` pickles a :class:`Metadata` built of them into the bytes ``pickle.dumps`` of the
  same metadata built of DCP's classes gives (protocol 2): the stand-ins pickle their state exactly
  as DCP's classes do (``__dict__``, ``TensorProperties``' tuple, ``_StorageInfo`` without its
  ``None`` field), and the class references (``GLOBAL`` opcodes) are renamed to DCP's.
  ``tests/test_offline_dcp.py`` checks the bytes equal those of DCP's classes, and that DCP loads
  them back into equal objects.
"""

from __future__ import annotations

import enum
import io
import os
import pickle
import pickletools
from typing import Any

import torch

__all__ = ["BytesStorageMetadata", "ChunkStorageMetadata", "Metadata", "MetadataIndex", "NotLight", "StorageMeta",
           "TensorProperties", "TensorStorageMetadata", "dumps", "index_class", "is_bytes", "is_tensor", "load",
           "plain_global", "real_classes"]

DCP_METADATA = "torch.distributed.checkpoint.metadata"
DCP_FILESYSTEM = "torch.distributed.checkpoint.filesystem"
VERSION = "1.0.0"  # filesystem.CURRENT_DCP_VERSION, what FileSystemWriter writes


class NotLight(Exception):
    """The ``.metadata`` refers to something the stand-ins do not cover: read it with DCP's classes."""


class _Record:
    """A record pickled as a dataclass is: its ``__dict__`` (fields missing from a pickle take the class default)."""

    def __init__(self, *args: Any, **fields: Any) -> None:  # every field set, in order, as a dataclass's __init__
        names = list(type(self).__dict__.get("__annotations__", {}))
        values = dict(zip(names, args)) | fields
        for name in names:
            value = values[name] if name in values else getattr(type(self), name)
            self.__dict__[name] = list(value) if isinstance(value, list) else value

    def __eq__(self, other: Any) -> bool:
        return type(other) is type(self) and vars(self) == vars(other)

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return f"{type(self).__name__}({', '.join(f'{k}={v!r}' for k, v in vars(self).items())})"


class ChunkStorageMetadata(_Record):
    offsets: torch.Size
    sizes: torch.Size


class _MEM_FORMAT_ENCODING(enum.Enum):  # noqa: N801  (DCP's name, pickled)
    TORCH_CONTIGUOUS_FORMAT = 0
    TORCH_CHANNELS_LAST = 1
    TORCH_PRESERVE_FORMAT = 2


class TensorProperties(_Record):
    """Pickled as DCP's: a tuple ``(dtype, layout, requires_grad, memory format code, pin_memory)``."""

    dtype: torch.dtype
    layout: torch.layout = torch.strided
    requires_grad: bool = False
    memory_format: torch.memory_format = torch.contiguous_format
    pin_memory: bool = False

    def __init__(self, dtype: torch.dtype) -> None:
        super().__init__(dtype=dtype, layout=torch.strided, requires_grad=False,
                         memory_format=torch.contiguous_format, pin_memory=False)

    def __getstate__(self) -> tuple:
        if self.memory_format != torch.contiguous_format:
            raise ValueError(f"memory format {self.memory_format} is not written here")
        return (self.dtype, self.layout, self.requires_grad, _MEM_FORMAT_ENCODING.TORCH_CONTIGUOUS_FORMAT,
                self.pin_memory)

    def __setstate__(self, state: tuple) -> None:
        self.dtype, self.layout, self.requires_grad, encoding, self.pin_memory = state
        self.memory_format = {_MEM_FORMAT_ENCODING.TORCH_CONTIGUOUS_FORMAT: torch.contiguous_format,
                              _MEM_FORMAT_ENCODING.TORCH_CHANNELS_LAST: torch.channels_last,
                              _MEM_FORMAT_ENCODING.TORCH_PRESERVE_FORMAT: torch.preserve_format}[encoding]


class TensorStorageMetadata(_Record):
    properties: TensorProperties
    size: torch.Size
    chunks: list


class BytesStorageMetadata(_Record):
    pass


class StorageMeta(_Record):
    checkpoint_id: Any = None
    save_id: Any = None
    load_id: Any = None
    modules: list = []  # noqa: RUF012  (a class default for pickles that lack it; never mutated)


class Metadata(_Record):
    state_dict_metadata: dict
    planner_data: Any = None
    storage_data: Any = None
    storage_meta: Any = None
    version: Any = None


class MetadataIndex(_Record):
    """A key of ``storage_data``: equal (and hashed) by ``fqn`` and ``offset``, as DCP's (``index`` is a hint)."""

    fqn: str
    offset: Any = None
    index: Any = None

    def __init__(self, fqn: str, offset: Any = None, index: int | None = None) -> None:
        self.__dict__.update(fqn=fqn, index=index)  # DCP's __init__: in this order, no offset unless given
        if offset is not None:
            self.__dict__["offset"] = torch.Size(offset)

    def __eq__(self, other: Any) -> bool:
        return type(other) is type(self) and (self.fqn, self.offset) == (other.fqn, other.offset)

    def __hash__(self) -> int:
        return hash((self.fqn, self.offset))


class _StorageInfo(_Record):
    """Where an item is: ``relative_path``, ``offset``, ``length`` (pickled without a ``None`` field, as DCP's)."""

    relative_path: str
    offset: int
    length: int
    transform_descriptors: Any = None

    def __getstate__(self) -> dict:
        return {k: v for k, v in self.__dict__.items() if v is not None}


_CLASSES: dict[tuple[str, str], type] = {
    **{(DCP_METADATA, c.__name__): c for c in (ChunkStorageMetadata, _MEM_FORMAT_ENCODING, TensorProperties,
                                                TensorStorageMetadata, BytesStorageMetadata, StorageMeta, Metadata,
                                                MetadataIndex)},
    (DCP_FILESYSTEM, "_StorageInfo"): _StorageInfo,
}
_OURS = {(c.__module__, c.__qualname__): key for key, c in _CLASSES.items()}


def plain_global(module: str, name: str) -> bool:
    """Whether a ``.metadata`` pickle may ask for ``module.name`` besides DCP's own classes: torch
    sizes, dtypes and layouts, ``OrderedDict`` and paths (what DCP's own metadata holds)."""
    if (module, name) in (("torch.serialization", "_get_layout"), ("collections", "OrderedDict")):
        return True
    if module == "torch":
        return name == "Size" or isinstance(getattr(torch, name, None), torch.dtype)
    return module == "pathlib" and name in ("Path", "PosixPath", "WindowsPath", "PurePosixPath")


class _Unpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        light = _CLASSES.get((module, name))
        if light is not None:
            return light
        if plain_global(module, name):
            return super().find_class(module, name)
        raise NotLight(f"{module}.{name}")


def load(data: bytes) -> Metadata:
    """The ``Metadata`` pickled in ``data``, of the stand-ins; :class:`NotLight` if it refers to anything else."""
    md = _Unpickler(io.BytesIO(data)).load()
    if not isinstance(md, Metadata) or not isinstance(md.state_dict_metadata, dict):
        raise NotLight(type(md).__name__)
    return md


def dumps(md: Metadata) -> bytes:
    """``pickle.dumps(md, 2)`` with the stand-ins' class references renamed to DCP's classes.

    Protocol 2 names a class in a ``GLOBAL`` opcode, ``c<module>\\n<name>\\n``, once (then by its memo
    index). The only other text in the pickle is the metadata's strings (keys, paths, ids): when
    none of them holds this module's name, every ``c<this module>\\n<class>\\n`` is such an opcode
    and is replaced as bytes; otherwise the opcodes are found by parsing the pickle
    (``pickletools``, exact but 10x slower: 1.3 s for 10,000 tensors).
    """
    data = pickle.dumps(md, protocol=2)
    ours = __name__.encode()
    if not any(__name__ in text for text in _strings(md)):
        for (module, name), real in _OURS.items():
            data = data.replace(b"c%s\n%s\n" % (module.encode(), name.encode()),
                                b"c%s\n%s\n" % (real[0].encode(), real[1].encode()))
        if ours not in data:
            return data
        data = pickle.dumps(md, protocol=2)
    out, last = [], 0
    ops = list(pickletools.genops(data))
    for (op, arg, pos), nxt in zip(ops, ops[1:] + [(None, None, len(data))]):
        if op.name == "GLOBAL":
            module, _, name = arg.partition(" ")
            real = _OURS.get((module, name))
            if real is not None:
                out += [data[last:pos], b"c", real[0].encode(), b"\n", real[1].encode(), b"\n"]
                last = nxt[2]
            elif module == __name__:
                raise AssertionError(f"internal error: {name} has no DCP name")
    out.append(data[last:])
    return b"".join(out)


def _strings(md: Metadata) -> list[str]:
    """Every string ``md`` holds (``[__name__]`` when it holds anything but the fields :mod:`.dcp_write` sets)."""
    texts = list(md.state_dict_metadata)
    for path in (md.planner_data or {}).values():
        texts += (p for p in path if isinstance(p, str))
        if not isinstance(path, tuple) or not all(isinstance(p, (str, int)) for p in path):
            return [__name__]
    for index, info in (md.storage_data or {}).items():
        if type(index) is not MetadataIndex or type(info) is not _StorageInfo or info.transform_descriptors:
            return [__name__]
        texts += (index.fqn, info.relative_path)
    meta = md.storage_meta
    if meta is not None:
        if meta.modules:
            return [__name__]
        texts += (os.fspath(v) for v in (meta.checkpoint_id, meta.save_id, meta.load_id) if v is not None)
    if md.version is not None:
        texts.append(md.version)
    return texts


def is_tensor(meta: Any) -> bool:
    """Whether ``meta`` (a ``state_dict_metadata`` value, stand-in or DCP's) describes a tensor."""
    real = real_classes(import_=False)
    return isinstance(meta, TensorStorageMetadata) or (real is not None
                                                       and isinstance(meta, real.TensorStorageMetadata))


def is_bytes(meta: Any) -> bool:
    real = real_classes(import_=False)
    return isinstance(meta, BytesStorageMetadata) or (real is not None and isinstance(meta, real.BytesStorageMetadata))


def index_class(md: Any) -> type:
    """The ``MetadataIndex`` class that keys ``md.storage_data`` (a stand-in's, or DCP's)."""
    return MetadataIndex if isinstance(md, Metadata) else real_classes().MetadataIndex


def real_classes(import_: bool = True):
    """DCP's ``metadata`` module (imported when ``import_``, else only if some code imported it already)."""
    import sys

    if not import_:
        return sys.modules.get(DCP_METADATA)
    import torch.distributed.checkpoint.metadata as real

    return real
