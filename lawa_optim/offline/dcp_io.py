"""Distributed checkpoint folders (``torch.distributed.checkpoint``): averaged tensor by tensor.

A DCP folder (``.metadata`` plus one ``__R_0.distcp`` file per rank that saved it, as written by
``dcp.save``, Lightning's ``ModelParallelStrategy``, torchtitan, accelerate's FSDP2 path) holds a
nested state dict, flattened: ``model.layer.weight`` is ``{"model": {"layer.weight": ...}}``. The
weights are one entry of it, chosen like the other formats choose theirs: ``key`` when given,
else ``model``, ``state_dict`` (Lightning) or ``model_state_dict``, else the top-level tensors.
Optimizer state (and LAWA's ring, saved in the optimizer's entry) is never read.

Reading: ``.metadata`` is unpickled into :mod:`.dcp_meta`'s stand-ins for DCP's classes, allowing
only those (no import of ``torch.distributed.checkpoint``, which costs 0.6 s: its package imports
DTensor and sympy); one that refers to anything else is read by DCP, allowing DCP's own classes
only (``trust_pickle`` for more). Every file it names must exist and be long enough
(:func:`lawa_optim.dcp_atomic.check_files`: a rank's missing file is named). A tensor is held by
one storage item per chunk: a ``torch.save`` record at an offset of a ``.distcp`` file. When its
chunks are plain contiguous tensor records (untransformed) that tile it in its flattened order (a
tensor saved whole by one rank: ``dcp.save`` from one process, any rank-0-only save; or in shards
of its first dimension, FSDP's), the offset of each record's bytes is read from its zip directory
and small pickle (``torch.load`` onto the meta device where that is not plain), and the tensor's
pieces are read there with ``os.preadv``, like every other format's: no ``dcp.load`` call, no copy
of the tensor. Any other tensor (sharded along another dimension, compressed, a strided view) is
loaded whole, one at a time, by DCP itself (``dcp.load`` of a one-tensor state dict, in this
process: no process group), which puts the shards back together. Non-tensor values are read from
their bytes item and unpickled ``weights_only`` (``trust_pickle`` for more). The float64 sums are
those of every format (:mod:`.streamed`, :mod:`.accumulate`), the same bits either way. Memory: one
piece per checkpoint plus the float64 sum; for a tensor DCP loads, that tensor once per
checkpoint, never the model (every checkpoint's copy of a tensor is freed before the next tensor is
read).

Writing (``out_format``): ``"dcp"`` (default) a DCP folder holding only the weights entry, which
``dcp.load({"model": model.state_dict()}, checkpoint_id=out)`` (the same entry name) reads into the
model at any world size; ``"safetensors"`` a file of the weights; ``"huggingface"`` a folder
holding ``model.safetensors`` (add the model's ``config.json`` to load it with
``from_pretrained``). The DCP folder is the one ``dcp.save`` writes from one process
(:mod:`.dcp_write`): one ``__0_0.distcp`` file written piece by piece as the averages come, and its
``.metadata``, so it never holds more than a piece of an averaged tensor; every output is staged
beside ``out`` and renamed into place once complete.
"""

from __future__ import annotations

import contextlib
import io
import json
import math
import os
import pickle
import sys
import warnings
from collections import OrderedDict
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import torch

from ..io import CheckpointError, UnsafeCheckpointError, atomic_write_bytes
from . import dcp_meta
from . import safetensors_io as st
from .accumulate import check_same_layout, listing
from .base import Format, staged_folder
from .dcp_write import write_folder
from .layouts import unpickle_trusted
from .pickled_io import file_offset
from .select import PROVENANCE
from .streamed import averaged_tensors, collect, with_skips
from .summary import AverageSummary

__all__ = ["DCPFolder", "DCPSource", "read_metadata"]

METADATA = ".metadata"
# The entries that hold a model's weights in the state dicts trainers save, in order of preference.
WEIGHT_ENTRIES = ("model", "state_dict", "model_state_dict")
_DCP_MODULES = ("torch.distributed.checkpoint.metadata", "torch.distributed.checkpoint.filesystem")


class _MetadataUnpickler(pickle.Unpickler):
    """Unpickles DCP's ``.metadata``: DCP's own classes, torch sizes, dtypes and layouts, paths; nothing else."""

    def find_class(self, module: str, name: str) -> Any:
        if module in _DCP_MODULES or dcp_meta.plain_global(module, name):
            return super().find_class(module, name)
        raise UnsafeCheckpointError(f"asks for {module}.{name}")


def read_metadata(folder: Path, trust_pickle: bool = False, light: bool = True):
    """The ``Metadata`` of DCP folder ``folder``, checked complete: each file it names exists and is long enough.

    ``light``: read into :mod:`.dcp_meta`'s stand-ins for DCP's classes (no import of
    ``torch.distributed.checkpoint``), which allow DCP's own classes only. A ``.metadata`` they do
    not cover (or cannot read) is read by DCP: first unpickled allowing DCP's own classes only
    (unless ``trust_pickle``), then by :func:`lawa_optim.dcp_atomic.check`, which names what is wrong.
    """
    from ..dcp_atomic import check, check_files

    path = folder / METADATA
    if light and folder.is_dir() and path.is_file():
        try:
            md = dcp_meta.load(path.read_bytes())
        except Exception:  # something else (refused or allowed below), truncated: DCP's reader and check() say
            md = None
        if md is not None and isinstance(md.storage_data, Mapping):
            check_files(folder, md)
            return md
    if not trust_pickle and path.is_file():
        try:
            with open(path, "rb") as f:
                _MetadataUnpickler(f).load()
        except UnsafeCheckpointError as err:
            raise UnsafeCheckpointError(
                f"{str(path)!r} {err}, which DCP's metadata does not hold. If you made this checkpoint yourself or "
                "trust its source, pass trust_pickle=True (--trust-pickle on the command line) to unpickle it fully, "
                "which can run code") from err
        except Exception:  # truncated, not a pickle: check() names it
            pass
    md = check(folder)
    if not hasattr(md, "state_dict_metadata") or not isinstance(getattr(md, "storage_data", None), Mapping):
        raise CheckpointError(f"Distributed checkpoint {str(folder)!r}: {METADATA} holds a {type(md).__name__}, "
                              "not DCP's Metadata with its storage index")
    return md


class _FileView(io.RawIOBase):
    """Bytes ``offset .. offset + length`` of the file open at ``fd``, as a file of their own (``os.preadv``)."""

    def __init__(self, fd: int, offset: int, length: int) -> None:
        super().__init__()
        self.fd, self.offset, self.length, self.pos = fd, offset, length, 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def seek(self, offset: int, whence: int = os.SEEK_SET) -> int:
        base = {os.SEEK_SET: 0, os.SEEK_CUR: self.pos, os.SEEK_END: self.length}[whence]
        if base + offset < 0:
            raise ValueError("negative seek position")
        self.pos = base + offset
        return self.pos

    def tell(self) -> int:
        return self.pos

    def readinto(self, b) -> int:
        view = memoryview(b).cast("B")[:max(0, self.length - self.pos)]
        n = os.preadv(self.fd, [view], self.offset + self.pos) if len(view) else 0
        self.pos += n
        return n


_STORAGE_DTYPES = {"FloatStorage": torch.float32, "DoubleStorage": torch.float64, "HalfStorage": torch.float16,
                   "BFloat16Storage": torch.bfloat16, "LongStorage": torch.int64, "IntStorage": torch.int32,
                   "ShortStorage": torch.int16, "CharStorage": torch.int8, "ByteStorage": torch.uint8,
                   "BoolStorage": torch.bool, "ComplexFloatStorage": torch.complex64,
                   "ComplexDoubleStorage": torch.complex128}


class _Unexpected(Exception):
    pass


class _TensorPickle(pickle.Unpickler):
    """``data.pkl`` of a ``torch.save``-d plain tensor, as ``(storage, storage offset, size, stride, hooks)``;
    anything else raises :class:`_Unexpected`."""

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) == ("torch._utils", "_rebuild_tensor_v2"):
            return lambda storage, offset, size, stride, requires_grad, hooks, *metadata: (
                storage, offset, size, stride, hooks, metadata)
        if (module, name) == ("collections", "OrderedDict"):
            return OrderedDict
        if module == "torch" and name in _STORAGE_DTYPES:
            return _STORAGE_DTYPES[name]
        raise _Unexpected(f"{module}.{name}")

    def persistent_load(self, pid: Any) -> Any:
        if isinstance(pid, tuple) and len(pid) == 5 and pid[0] == "storage" and isinstance(pid[1], torch.dtype):
            return pid  # ("storage", dtype, key, location, elements)
        raise _Unexpected(repr(pid))


def _plain_record(view: _FileView, dtype: torch.dtype, sizes: tuple) -> int | None:
    """The offset in the ``torch.save`` record ``view`` of the bytes of the tensor it holds, when that is a plain
    contiguous tensor of ``dtype`` and ``sizes`` in this machine's byte order; else ``None`` (``torch.load`` decides).

    The fast way to what ``torch.load(map_location="meta")`` and :func:`.pickled_io.file_offset` find (0.06 ms
    instead of 0.3 ms a record: torch's zip reader, and the record's small pickle read with the C unpickler).
    """
    reader = torch._C.PyTorchFileReader(view)
    if not reader.has_record("byteorder") or reader.get_record("byteorder") != sys.byteorder.encode():
        return None
    try:
        storage, offset, size, stride, hooks, metadata = _TensorPickle(io.BytesIO(reader.get_record("data.pkl"))).load()
    except (_Unexpected, TypeError, ValueError):
        return None
    _, stored, key, _, _ = storage
    numel = math.prod(sizes)
    contiguous = tuple(math.prod(sizes[i + 1:]) for i in range(len(sizes)))
    if (stored != dtype or tuple(size) != tuple(sizes) or tuple(stride) != contiguous or hooks or metadata
            or not isinstance(key, str) or not isinstance(offset, int)):
        return None
    name = f"data/{key}"
    if not reader.has_record(name) or reader.get_record_size(name) < (offset + numel) * dtype.itemsize:
        return None
    return reader.get_record_offset(name) + offset * dtype.itemsize


def _nest(paths: Mapping[str, tuple], values: Mapping[str, Any]) -> dict:
    """The nested state dict holding ``values[k]`` at path ``paths[k]`` (DCP's flattening undone)."""
    out: dict = {}
    for key, value in values.items():
        *parents, last = paths[key]
        node = out
        for part in parents:
            node = node.setdefault(part, {})
        node[last] = value
    return out


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """DCP warns on every single-process load/save ("assuming the intent is to ... in a single process")."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*torch.distributed is disabled.*")
        yield


class DCPSource:
    """One DCP folder's weights entry as a source for :func:`.streamed.averaged_tensors`.

    Attributes:
        entry: the top-level entry averaged (``None``: the top-level tensors).
        layout: ``{key: (safetensors dtype code, shape)}`` of its tensors, keys relative to the entry.
        objects: its non-tensor values' keys (copied from the newest checkpoint).
        paths: ``{key: path in the nested state dict}`` for every key of ``layout`` and ``objects``.
        others: the top-level entries not averaged (optimizer state, training progress, ...).
    """

    kind = "dcp"

    def __init__(self, folder: Path, key: str | None, trust_pickle: bool) -> None:
        self.path, self.name, self.trust_pickle = folder, str(folder), trust_pickle
        self.metadata = md = read_metadata(folder, trust_pickle)
        planner_data = getattr(md, "planner_data", None) or {}
        flat = {k: tuple(planner_data.get(k, (k,))) for k in md.state_dict_metadata}
        top = list(dict.fromkeys(p[0] for p in flat.values()))
        nested = {p[0] for p in flat.values() if len(p) > 1}
        if key is not None:
            if key not in nested:
                raise CheckpointError(f"{folder} has no entry {key!r} holding a state dict; its top-level entries are "
                                      f"{listing(map(str, top))}")
            self.entry: str | None = key
        else:
            self.entry = next((e for e in WEIGHT_ENTRIES if e in nested), None)
        if self.entry is None:
            mine = {k: p for k, p in flat.items() if len(p) == 1 and dcp_meta.is_tensor(md.state_dict_metadata[k])}
            if not mine:
                raise CheckpointError(f"{folder} holds no entry {' or '.join(map(repr, WEIGHT_ENTRIES))} and no "
                                      f"top-level tensors; its entries are {listing(map(str, top))}: pass key= "
                                      "(--key) naming the one that holds the weights")
        else:
            mine = {k: p for k, p in flat.items() if len(p) > 1 and p[0] == self.entry}
        self.paths: dict[str, tuple] = {}
        self.layout: dict[str, tuple[str, tuple[int, ...]]] = {}
        self.objects: list[str] = []
        self._flat: dict[str, str] = {}  # key -> DCP's flat key
        for flat_key, path in mine.items():
            k = ".".join(map(str, path[1:])) if self.entry is not None else path[0]
            self.paths[k], self._flat[k] = path, flat_key
            meta = md.state_dict_metadata[flat_key]
            if dcp_meta.is_tensor(meta):
                self.layout[k] = (st.dtype_code(meta.properties.dtype), tuple(meta.size))
            else:
                self.objects.append(k)
        self.others = tuple(e for e in top if e != self.entry) if self.entry is not None else tuple(
            e for e in top if e not in self.layout and e not in self.objects)
        self._reader = None  # DCP's FileSystemReader, made when DCP has a tensor or value to load
        self._cache: tuple[str, torch.Tensor] | None = None
        # key -> its chunks [(first element, elements, fd, offset of their bytes)] in order, or None: DCP loads it
        self._where: dict[str, list[tuple[int, int, int, int]] | None] = {}
        self._fds: dict[str, int] = {}
        self._view: tuple[torch.Tensor, memoryview] | None = None  # the buffer read into last, as bytes
        self.group: list[DCPSource] = [self]  # the checkpoints averaged together (they free their tensors together)

    def _dcp_reader(self):
        """DCP's reader of this folder, with the metadata read by DCP's classes (imported now, 0.6 s, once)."""
        if self._reader is None:
            from torch.distributed.checkpoint import FileSystemReader

            md = self.metadata
            if isinstance(md, dcp_meta.Metadata):
                md = read_metadata(self.path, self.trust_pickle, light=False)
            reader = FileSystemReader(self.path)
            reader.read_metadata = lambda *a, **kw: md  # read once, checked
            self._reader = reader
        return self._reader

    def _load(self, values: Mapping[str, Any]) -> dict:
        from torch.distributed.checkpoint import load
        from torch.distributed.checkpoint.api import CheckpointException
        from torch.distributed.checkpoint.default_planner import DefaultLoadPlanner

        unpickle = self._unpickle

        class Planner(DefaultLoadPlanner):
            def load_bytes(self, read_item, value: io.BytesIO) -> None:  # DCP's own unpickles fully
                obj = unpickle(value, read_item.dest_index.fqn)
                from torch.distributed.checkpoint._nested_dict import set_element

                set_element(self.original_state_dict, self.mappings[read_item.dest_index.fqn], obj)

        state = _nest(self.paths, values)
        try:
            with _quiet():
                load(state, storage_reader=self._dcp_reader(), planner=Planner(), no_dist=True)
        except (Exception, CheckpointException) as err:  # DCP's CheckpointException is a BaseException
            cause = getattr(err, "failures", None)  # {rank: (exception, traceback)}
            first = next(iter(cause.values()), None) if isinstance(cause, Mapping) else None
            first = first[0] if isinstance(first, tuple) and first else first
            if isinstance(first, CheckpointError):
                raise first from err
            raise CheckpointError(f"Distributed checkpoint {self.name!r} could not be read ({type(err).__name__}: "
                                  f"{err})") from err
        return state

    def _locate(self, key: str) -> list[tuple[int, int, int, int]] | None:
        """Where tensor ``key``'s bytes are: ``[(first element, elements, fd, offset)]``, one per chunk in order, when
        its chunks are untransformed plain tensor records that tile it in its flattened order (saved whole, or in
        shards of its first dimension: FSDP's); ``None`` otherwise (DCP loads it)."""
        if key in self._where:
            return self._where[key]
        code, shape = self.layout[key]
        where: list[tuple[int, int, int, int]] | None = []
        chunks = self.metadata.state_dict_metadata[self._flat[key]].chunks
        row = math.prod(shape[1:])
        index = dcp_meta.index_class(self.metadata)
        end = 0
        for chunk in sorted(chunks, key=lambda c: tuple(c.offsets)):
            sizes, offsets = tuple(chunk.sizes), tuple(chunk.offsets)
            if len(sizes) != len(shape) or len(offsets) != len(shape) or any(offsets[1:]) or sizes[1:] != shape[1:]:
                where = None  # not a stretch of the flattened tensor
                break
            numel = math.prod(sizes)
            first = offsets[0] * row if shape else 0
            if numel == 0:
                continue
            if first != end:  # a gap or an overlap
                where = None
                break
            located = self._record(key, self.metadata.storage_data.get(index(self._flat[key], chunk.offsets)),
                                   st.torch_dtype(code), sizes)
            if located is None:
                where = None
                break
            where.append((first, numel, *located))
            end = first + numel
        if where is not None and end != math.prod(shape):
            where = None
        self._where[key] = where
        return where

    def _record(self, key: str, info: Any, dtype: torch.dtype, sizes: tuple) -> tuple[int, int] | None:
        """``(fd, offset)`` of the bytes of storage item ``info``: a plain tensor record of ``dtype`` and ``sizes``."""
        if info is None or getattr(info, "transform_descriptors", None):
            return None
        fd = self._fd(info.relative_path)
        try:
            offset = _plain_record(_FileView(fd, info.offset, info.length), dtype, sizes)
            if offset is not None:
                return fd, info.offset + offset
        except Exception:  # torch.load says
            pass
        try:
            t = torch.load(_FileView(fd, info.offset, info.length), map_location="meta", weights_only=True)
            offset = file_offset(t) if isinstance(t, torch.Tensor) else None
            if (offset is not None and t.dtype == dtype and tuple(t.shape) == sizes
                    and offset + t.numel() * t.element_size() <= info.length):
                return fd, info.offset + offset
        except Exception:  # not a plain tensor record: DCP's own load reads it (or names what is wrong)
            pass
        return None

    def read(self, key: str) -> torch.Tensor:
        """The whole tensor ``key`` (one that DCP loads is kept for the pieces that follow)."""
        if self._locate(key) is not None:
            code, shape = self.layout[key]
            out = torch.empty(math.prod(shape), dtype=st.torch_dtype(code))
            self.read_into(key, 0, out)
            return out.reshape(shape)
        if self._cache is None or self._cache[0] != key:
            for source in self.group:  # a new tensor: every checkpoint's copy of the previous one is freed first
                if source._cache is not None and source._cache[0] != key:
                    source._cache = None
            code, shape = self.layout[key]
            tensor = torch.empty(shape, dtype=st.torch_dtype(code))
            self._load({key: tensor})
            self._cache = (key, tensor)
        return self._cache[1]

    def read_into(self, key: str, start: int, out: torch.Tensor) -> None:
        where = self._locate(key)
        if where is None:
            out.copy_(self.read(key).reshape(-1)[start:start + out.numel()])
            return
        if out.numel() == 0:
            return
        if self._view is None or self._view[0] is not out:
            self._view = (out, memoryview(out.view(torch.uint8).numpy()))
        view, size = self._view[1], out.element_size()
        if len(where) == 1:  # saved whole
            _, _, fd, offset = where[0]
            if os.preadv(fd, [view], offset + start * size) != len(view):
                self._truncated(key)
            return
        stop = start + out.numel()
        for first, numel, fd, offset in where:  # shards: the stretch of each that the piece covers
            a, b = max(start, first), min(stop, first + numel)
            if a < b:
                part = view[(a - start) * size:(b - start) * size]
                if os.preadv(fd, [part], offset + (a - first) * size) != len(part):
                    self._truncated(key)

    def _truncated(self, key: str) -> None:
        raise CheckpointError(f"Distributed checkpoint {self.name!r}: tensor {key!r} ends early; a file was "
                              "truncated while being read")

    def _fd(self, relative_path: str) -> int:
        fd = self._fds.get(relative_path)
        if fd is None:
            fd = self._fds[relative_path] = os.open(self.path / relative_path, os.O_RDONLY)
        return fd

    def _unpickle(self, value: io.BytesIO, fqn: str) -> Any:
        """A non-tensor value's bytes (its ``torch.save``), loaded ``weights_only`` unless ``trust_pickle``."""
        try:
            return torch.load(value, weights_only=True)
        except pickle.UnpicklingError as err:
            if self.trust_pickle:
                value.seek(0)
                return unpickle_trusted(value, f"{self.name}: {fqn}")
            why = [line.strip() for line in str(err).splitlines() if "Unsupported global" in line]
            raise UnsafeCheckpointError(
                f"{self.name}: {fqn!r} is not a tensor and needs more than weights_only unpickling "
                f"({why[0] if why else type(err).__name__}); if you made this checkpoint yourself or trust its "
                "source, pass trust_pickle=True (--trust-pickle on the command line) to unpickle it fully, which "
                "can run code") from err

    def read_object(self, key: str) -> Any:
        fqn = self._flat[key]
        info = self.metadata.storage_data.get(dcp_meta.index_class(self.metadata)(fqn))
        if (dcp_meta.is_bytes(self.metadata.state_dict_metadata[fqn]) and info is not None
                and not getattr(info, "transform_descriptors", None)):  # its bytes, read as DCP's reader does
            fd = self._fd(info.relative_path)
            data = os.pread(fd, info.length, info.offset)
            if len(data) != info.length:
                self._truncated(key)
            return self._unpickle(io.BytesIO(data), fqn)
        state = self._load({key: None})
        for part in self.paths[key]:
            state = state[part]
        return state

    def close(self) -> None:
        for fd in self._fds.values():
            os.close(fd)
        self._fds.clear()
        self._where.clear()
        self._cache = self._view = None


class DCPFolder(Format):
    """A ``torch.distributed.checkpoint`` folder; its weights entry averaged into a DCP folder (or safetensors)."""

    name = "dcp"
    order = 10
    folder = True
    out_formats = ("safetensors", "huggingface")

    def matches(self, path: Path) -> bool:
        return path.is_dir() and (path / METADATA).is_file()

    def writes_folder(self, opts) -> bool:
        return opts.out_format in (None, "dcp", "huggingface")

    def check_options(self, opts) -> None:
        super().check_options(opts)
        if opts.drop:
            raise ValueError(f"Invalid drop: {list(opts.drop)!r}; the average of a distributed checkpoint holds only "
                             "its weights entry (the other entries are left out)")

    def _open(self, paths, opts) -> list[DCPSource]:
        sources: list[DCPSource] = []
        for p in paths:
            sources.append(DCPSource(p, opts.key, opts.trust_pickle))
            first, s = sources[0], sources[-1]
            if s.entry != first.entry:
                raise CheckpointError(f"{s.name} holds its weights in {s.entry!r} but {first.name} in "
                                      f"{first.entry!r}; give checkpoints of one kind, or pass key=")
            check_same_layout({k: st.describe(*v) for k, v in first.layout.items()} | dict.fromkeys(first.objects),
                              {k: st.describe(*v) for k, v in s.layout.items()} | dict.fromkeys(s.objects),
                              first.name, s.name)
        for s in sources:
            s.group = sources
        if not st.averaged_keys(sources[0].layout):
            raise CheckpointError(f"{sources[0].name} holds no floating-point tensors in its weights entry: "
                                  "nothing to average")
        return sources

    def _run(self, paths, opts, run, tensors_only: bool = False) -> tuple[Any, AverageSummary]:
        sources = self._open(paths, opts)
        try:
            newest = sources[-1]
            order = list(newest.layout)

            def tensors(used, coeffs, total, keys=order):
                return averaged_tensors(used, keys, coeffs, total, opts.nonfinite, opts.progress)

            result, used, skipped, coeffs = with_skips(sources, opts.weights, opts.alpha, opts.nonfinite,
                                                       lambda *a: run(newest, tensors, *a))
        finally:
            for source in sources:
                source.close()
        averaged = st.averaged_keys(newest.layout)
        entry = f"weights from {newest.entry!r}" if newest.entry else "its top-level tensors"
        copied = [k for k in newest.layout if k not in averaged]
        dropped = list(newest.others)
        if tensors_only:  # safetensors holds tensors only
            dropped += [f"{k} (not a tensor)" for k in newest.objects]
        else:
            copied += newest.objects
        summary = AverageSummary(
            files=tuple(s.name for s in used), coefficients=tuple(coeffs), skipped=tuple(skipped), key=newest.entry,
            averaged=averaged, copied=tuple(copied), dropped=tuple(dropped), format=self.name,
            description=f"distributed checkpoints ({entry})")
        return result, summary

    def average(self, paths, opts):
        def run(newest, tensors, used, coeffs, total):
            averaged = collect(tensors(used, coeffs, total), newest.layout)
            values = {k: averaged[k] if k in averaged else used[-1].read_object(k) for k in newest.paths}
            # nested as in the checkpoint (DCP flattens a dict value, e.g. a module's extra state, into its items)
            inside = {k: p[1:] if newest.entry is not None else p for k, p in newest.paths.items()}
            return _nest(inside, values)

        return self._run(paths, opts, run)

    def write(self, paths, out, opts):
        fmt = opts.out_format or self.name
        if fmt == "safetensors":
            def run(newest, tensors, used, coeffs, total):
                order = list(newest.layout)
                atomic_write_bytes(out, lambda f: st.write_shard(f, order, newest.layout, {"format": "pt"},
                                                                 tensors(used, coeffs, total)))
        else:
            def run(newest, tensors, used, coeffs, total):
                with staged_folder(out) as tmp:
                    if fmt == "huggingface":
                        with open(tmp / "model.safetensors", "wb") as f:
                            st.write_shard(f, list(newest.layout), newest.layout, {"format": "pt"},
                                           tensors(used, coeffs, total))
                    else:
                        write_folder(tmp, list(newest.layout), _dtypes(newest.layout), newest._flat, newest.paths,
                                     {k: used[-1].read_object(k) for k in newest.objects},
                                     tensors(used, coeffs, total), checkpoint_id=out)
                    (tmp / PROVENANCE).write_text(json.dumps(
                        {"files": [s.name for s in used], "entry": newest.entry}, indent=2) + "\n")

        return self._run(paths, opts, run, tensors_only=fmt != "dcp")[1]


def _dtypes(layout: Mapping[str, tuple[str, tuple[int, ...]]]) -> dict[str, tuple[torch.dtype, tuple[int, ...]]]:
    return {k: (st.torch_dtype(code), tuple(shape)) for k, (code, shape) in layout.items()}
