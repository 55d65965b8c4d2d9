"""Distributed checkpoint folders (``torch.distributed.checkpoint``): averaged tensor by tensor.

A DCP folder (``.metadata`` plus one ``__R_0.distcp`` file per rank that saved it, as written by
``dcp.save``, Lightning's ``ModelParallelStrategy``, torchtitan, accelerate's FSDP2 path) holds a
nested state dict, flattened: ``model.layer.weight`` is ``{"model": {"layer.weight": ...}}``. The
weights are one entry of it, chosen like the other formats choose theirs: ``key`` when given,
else ``model``, ``state_dict`` (Lightning) or ``model_state_dict``, else the top-level tensors.
Optimizer state (and LAWA's ring, saved in the optimizer's entry) is never read.

Reading: ``.metadata`` is unpickled allowing only DCP's own classes (``trust_pickle`` for more),
and every file it names must exist and be long enough (:func:`lawa_optim.dcp_atomic.check`: a
rank's missing file is named). A
tensor saved whole, by one rank, untransformed (``dcp.save`` from one process, any rank-0-only
save), is one storage item: a ``torch.save`` blob at an offset of a ``.distcp`` file. Loading that
blob onto the meta device (``weights_only=True``) gives the offset of the tensor's bytes without
reading them (as :mod:`.pickled_io` does for ``torch.save`` files), and its pieces are then read
there with ``os.preadv``, like every other format's: no ``dcp.load`` call, no copy of the tensor.
Any other tensor (saved in shards by several ranks, compressed, a strided view) is loaded whole,
one at a time, by DCP itself (``dcp.load`` of a one-tensor state dict, in this process: no process
group), which puts the shards back together. The float64 sums are those of every format
(:mod:`.streamed`, :mod:`.accumulate`), the same bits either way. Memory: one piece per checkpoint
plus the float64 sum; for a tensor DCP loads, that tensor once per checkpoint, never the model
(every checkpoint's copy of a tensor is freed before the next tensor is read).

Writing (``out_format``): ``"dcp"`` (default) a DCP folder holding only the weights entry, which
``dcp.load({"model": model.state_dict()}, checkpoint_id=out)`` (the same entry name) reads into the
model at any world size; ``"safetensors"`` a file of the weights; ``"huggingface"`` a folder
holding ``model.safetensors`` (add the model's ``config.json`` to load it with
``from_pretrained``). The DCP folder is written by ``dcp.save`` with a planner that averages each
tensor when DCP asks for its bytes, one file per tensor (DCP's writer keeps every tensor of a file
referenced until it closes the file), so it never holds more than one averaged tensor; every output
is staged beside ``out`` and renamed into place once complete.
"""

from __future__ import annotations

import contextlib
import io
import json
import math
import os
import pickle
import warnings
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import torch

from ..io import CheckpointError, UnsafeCheckpointError, atomic_write_bytes
from . import safetensors_io as st
from .accumulate import check_same_layout, listing
from .base import Format, staged_folder
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
        if module in _DCP_MODULES or (module, name) in (("torch.serialization", "_get_layout"),
                                                          ("collections", "OrderedDict")):
            return super().find_class(module, name)
        if module == "torch" and (name == "Size" or isinstance(getattr(torch, name, None), torch.dtype)):
            return super().find_class(module, name)
        if module == "pathlib" and name in ("Path", "PosixPath", "WindowsPath", "PurePosixPath"):
            return super().find_class(module, name)
        raise UnsafeCheckpointError(f"asks for {module}.{name}")


def read_metadata(folder: Path, trust_pickle: bool = False):
    """The ``Metadata`` of DCP folder ``folder``, checked complete: each file it names exists and is long enough.

    The pickle is first unpickled allowing DCP's own classes only (unless ``trust_pickle``); the
    completeness check is :func:`lawa_optim.dcp_atomic.check`'s (which then reads it with DCP).
    """
    from ..dcp_atomic import check

    path = folder / METADATA
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
        from torch.distributed.checkpoint import FileSystemReader
        from torch.distributed.checkpoint.metadata import TensorStorageMetadata

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
            mine = {k: p for k, p in flat.items() if len(p) == 1 and isinstance(md.state_dict_metadata[k],
                                                                                 TensorStorageMetadata)}
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
            if isinstance(meta, TensorStorageMetadata):
                self.layout[k] = (st.dtype_code(meta.properties.dtype), tuple(meta.size))
            else:
                self.objects.append(k)
        self.others = tuple(e for e in top if e != self.entry) if self.entry is not None else tuple(
            e for e in top if e not in self.layout and e not in self.objects)
        reader = FileSystemReader(folder)
        reader.read_metadata = lambda *a, **kw: md  # read once, checked above
        self._reader = reader
        self._cache: tuple[str, torch.Tensor] | None = None
        self._where: dict[str, tuple[int, int] | None] = {}  # key -> (fd, offset of its bytes) or None: DCP loads it
        self._fds: dict[str, int] = {}
        self._view: tuple[torch.Tensor, memoryview] | None = None  # the buffer read into last, as bytes
        self.group: list[DCPSource] = [self]  # the checkpoints averaged together (they free their tensors together)

    def _load(self, values: Mapping[str, Any]) -> dict:
        from torch.distributed.checkpoint import load
        from torch.distributed.checkpoint.api import CheckpointException
        from torch.distributed.checkpoint.default_planner import DefaultLoadPlanner

        trust, name = self.trust_pickle, self.name

        class Planner(DefaultLoadPlanner):
            def load_bytes(self, read_item, value: io.BytesIO) -> None:  # DCP's own unpickles fully
                try:
                    obj = torch.load(value, weights_only=True)
                except pickle.UnpicklingError as err:
                    if trust:
                        value.seek(0)
                        obj = unpickle_trusted(value, f"{name}: {read_item.dest_index.fqn}")
                    else:
                        why = [line.strip() for line in str(err).splitlines() if "Unsupported global" in line]
                        raise UnsafeCheckpointError(
                            f"{name}: {read_item.dest_index.fqn!r} is not a tensor and needs more than weights_only "
                            f"unpickling ({why[0] if why else type(err).__name__}); if you made this checkpoint "
                            "yourself or trust its source, pass trust_pickle=True (--trust-pickle on the command "
                            "line) to unpickle it fully, which can run code") from err
                from torch.distributed.checkpoint._nested_dict import set_element

                set_element(self.original_state_dict, self.mappings[read_item.dest_index.fqn], obj)

        state = _nest(self.paths, values)
        try:
            with _quiet():
                load(state, storage_reader=self._reader, planner=Planner(), no_dist=True)
        except (Exception, CheckpointException) as err:  # DCP's CheckpointException is a BaseException
            cause = getattr(err, "failures", None)  # {rank: (exception, traceback)}
            first = next(iter(cause.values()), None) if isinstance(cause, Mapping) else None
            first = first[0] if isinstance(first, tuple) and first else first
            if isinstance(first, CheckpointError):
                raise first from err
            raise CheckpointError(f"Distributed checkpoint {self.name!r} could not be read ({type(err).__name__}: "
                                  f"{err})") from err
        return state

    def _locate(self, key: str) -> tuple[int, int] | None:
        """``(fd, offset)`` of tensor ``key``'s bytes, when stored whole and contiguous in one untransformed item."""
        if key in self._where:
            return self._where[key]
        from torch.distributed.checkpoint.metadata import MetadataIndex

        where = None
        meta = self.metadata.state_dict_metadata[self._flat[key]]
        code, shape = self.layout[key]
        chunk = meta.chunks[0] if len(meta.chunks) == 1 else None
        if chunk is not None and not any(chunk.offsets) and tuple(chunk.sizes) == shape:
            info = self.metadata.storage_data.get(MetadataIndex(self._flat[key], chunk.offsets))
            if info is not None and not getattr(info, "transform_descriptors", None):
                fd = self._fds.get(info.relative_path)
                if fd is None:
                    fd = self._fds[info.relative_path] = os.open(self.path / info.relative_path, os.O_RDONLY)
                try:
                    with os.fdopen(os.dup(fd), "rb") as f:
                        t = torch.load(self._reader._slice_file(f, info), map_location="meta", weights_only=True)
                    offset = file_offset(t) if isinstance(t, torch.Tensor) else None
                    if (offset is not None and t.dtype == st.torch_dtype(code) and tuple(t.shape) == shape
                            and offset + t.numel() * t.element_size() <= info.length):
                        where = (fd, info.offset + offset)
                except Exception:  # not a plain tensor record: DCP's own load reads it (or names what is wrong)
                    where = None
        self._where[key] = where
        return where

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
        view = self._view[1]
        if os.preadv(where[0], [view], where[1] + start * out.element_size()) != len(view):
            raise CheckpointError(f"Distributed checkpoint {self.name!r}: tensor {key!r} ends early; a file was "
                                  "truncated while being read")

    def read_object(self, key: str) -> Any:
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
                        _save_dcp(tmp, newest, lambda key: tensors(used, coeffs, total, [key]), used[-1])
                    (tmp / PROVENANCE).write_text(json.dumps(
                        {"files": [s.name for s in used], "entry": newest.entry}, indent=2) + "\n")

        return self._run(paths, opts, run, tensors_only=fmt != "dcp")[1]


def _save_dcp(folder: Path, newest: DCPSource, average, source: DCPSource) -> None:
    """``dcp.save`` of the weights entry (nested as in the inputs) into ``folder``, each tensor averaged on demand."""
    from torch.distributed.checkpoint import FileSystemWriter, save
    from torch.distributed.checkpoint.api import CheckpointException
    from torch.distributed.checkpoint.default_planner import DefaultSavePlanner
    from torch.distributed.checkpoint.planner import WriteItemType

    keys = {newest._flat[k]: k for k in newest.layout}
    errors: list[BaseException] = []

    class Planner(DefaultSavePlanner):
        def resolve_data(self, write_item):
            if write_item.type == WriteItemType.BYTE_IO:
                return super().resolve_data(write_item)
            key = keys[write_item.index.fqn]
            try:
                code, shape = newest.layout[key]
                return collect(average(key), {key: (code, shape)})[key].reshape(shape)
            except BaseException as err:  # DCP wraps what fails here: keep it to raise it as it is
                errors.append(err)
                raise

    values: dict[str, Any] = {k: torch.empty(shape, dtype=st.torch_dtype(code), device="meta")
                              for k, (code, shape) in newest.layout.items()}
    values.update({k: source.read_object(k) for k in newest.objects})
    state = _nest(newest.paths, values)
    # one file per tensor: DCP's writer keeps every tensor of a file referenced until the file is closed
    writer = FileSystemWriter(folder, single_file_per_rank=False, thread_count=1, per_thread_copy_ahead=0)
    try:
        with _quiet():
            save(state, storage_writer=writer, planner=Planner(), no_dist=True)
    except (Exception, CheckpointException):  # DCP's CheckpointException is a BaseException
        if errors:
            raise errors[0] from None
        raise
