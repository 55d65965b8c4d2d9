"""``torch.save`` files read and written like safetensors: the structure, then each tensor in pieces at its offset.

A ``torch.save`` file (zip format, torch's default since 1.6) stores each tensor's bytes
uncompressed in its own record. Loading it with ``map_location="meta"`` (still
``weights_only=True``) unpickles only the structure, the tensors on the meta device, each storage
carrying its record's offset in the file (``_checkpoint_offset``, set by ``torch.load`` for meta
loads); no weight is read. The weights are then read in pieces with ``os.preadv`` into a reused
buffer, exactly as :class:`.safetensors_io.SafetensorsSource` reads safetensors: the peak memory
is one piece per checkpoint, and nothing is memory-mapped (a mapped page stays in the process's
resident memory while its file is open). The average is written the same way
(:func:`save_streamed`): the structure saved with every storage's place left empty, then each
piece written at its place as it is made, so the averaged model is never whole in memory.

A file this cannot address (the legacy non-zip format, a tensor that is a strided view, a file
that only ``trust_pickle`` loads) is loaded as before (``torch.load(mmap=True)``) and its pieces
copied from the loaded tensors: the same bits, more resident memory.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import zipfile
from collections import OrderedDict
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, BinaryIO

import torch

from ..io import CheckpointError, Writeback, safe_load
from .accumulate import average_sources, check_state, is_averaged, listing, tensor_ties
from .select import HF_WEIGHT_FILES

__all__ = ["PickledSource", "average_pickled_files", "file_offset", "hf_bin_files", "save_streamed",
           "without_crc32"]


def hf_bin_files(folder: Path) -> list[Path]:
    """The weight files of an HF folder of ``pytorch_model.bin``: the file, or the shards of its index."""
    index = folder / HF_WEIGHT_FILES[2]
    if not index.is_file():
        return [folder / HF_WEIGHT_FILES[3]]
    try:
        weight_map = json.loads(index.read_text())["weight_map"]
    except (ValueError, KeyError, TypeError) as err:
        raise CheckpointError(f"Index {str(index)!r} is not a checkpoint index ({type(err).__name__}: {err})") from err
    files = []
    for shard in sorted(set(weight_map.values())):
        if not (folder / shard).is_file():
            raise CheckpointError(f"Index {str(index)!r} names shard {shard!r}, which does not exist in "
                                  f"{str(folder)!r}; the checkpoint is incomplete (an interrupted save?)")
        files.append(folder / shard)
    return files


def file_offset(t: torch.Tensor) -> int | None:
    """Byte offset in its file of a meta tensor's first element (``None``: not readable in flat pieces)."""
    if t.device.type != "meta" or t.layout != torch.strided or t.is_quantized or not t.is_contiguous():
        return None
    base = getattr(t.untyped_storage(), "_checkpoint_offset", None)
    if base is None:
        return None
    return base + t.storage_offset() * t.element_size()


def load_header(path: Path, allow: Sequence[Any], load: Callable[[Path], Any]) -> tuple[Any, bool]:
    """``(object, True)`` with meta tensors that know their offsets, else ``(load(path), False)``."""
    if zipfile.is_zipfile(path):
        try:
            return safe_load(path, map_location="meta", allow=allow), True
        except CheckpointError:
            pass  # refused or unreadable: the real load names the reason (or trust_pickle loads it)
    return load(path), False


class PickledSource:
    """One pickled checkpoint (its files: one, or the shards of an HF folder) as a source of pieces.

    Args:
        name (str): the checkpoint, as messages name it.
        sd (mapping): its state dict, meta tensors (read from their file) or loaded ones (copied).
        files (mapping): ``{key: file}`` of the meta tensors.
    """

    def __init__(self, name: str, sd: Mapping[str, Any], files: Mapping[str, Path]) -> None:
        self.name, self.sd = name, sd
        self.offsets = {k: (files[k], file_offset(v)) for k, v in sd.items()
                        if is_averaged(v) and v.device.type == "meta"}
        self._fds: dict[Path, int] = {}
        self._flat: tuple[str, torch.Tensor] | None = None
        self._view: tuple[torch.Tensor, memoryview] | None = None  # the buffer read into last, as bytes

    def read_into(self, key: str, start: int, out: torch.Tensor) -> None:
        if out.numel() == 0:
            return
        where = self.offsets.get(key)
        if where is None:  # a loaded tensor: copy (a strided one made contiguous once)
            if self._flat is None or self._flat[0] != key:
                self._flat = (key, self.sd[key].detach().reshape(-1))
            out.copy_(self._flat[1][start:start + out.numel()])
            return
        path, offset = where
        fd = self._fds.get(path)
        if fd is None:
            fd = self._fds[path] = os.open(path, os.O_RDONLY)
        if self._view is None or self._view[0] is not out:
            self._view = (out, memoryview(out.view(torch.uint8).numpy()))
        view = self._view[1]
        if os.preadv(fd, [view], offset + start * out.element_size()) != len(view):
            raise CheckpointError(f"Checkpoint {str(path)!r}: tensor {key!r} ends early; the file was truncated "
                                  "while being read")

    def read(self, key: str) -> torch.Tensor:
        t = self.sd[key]
        if key not in self.offsets:
            return t
        out = torch.empty(math.prod(t.shape), dtype=t.dtype)
        self.read_into(key, 0, out)
        return out.reshape(t.shape)

    def close(self) -> None:
        for fd in self._fds.values():
            os.close(fd)
        self._fds.clear()
        self._view = self._flat = None


@contextlib.contextmanager
def without_crc32() -> Iterator[None]:
    """``torch.save`` without the zip records' CRC-32s, which ``torch.load`` never checks.

    torch computes them byte by byte: for an averaged checkpoint that took longer than reading all
    its inputs and averaging them (0.35 s of CPU for 170 MB here). The file stays a valid
    ``torch.save`` file (the tests load every output with ``torch.load``).
    """
    set_crc32 = getattr(torch.serialization, "set_crc32_options", None)
    if set_crc32 is None:  # torch < 2.5 always computes them
        yield
        return
    before = torch.serialization.get_crc32_options()
    set_crc32(False)
    try:
        yield
    finally:
        set_crc32(before)


def _storages(obj: Any) -> list[tuple[str, torch.UntypedStorage]]:
    """The storages ``torch.save(obj)`` writes, with their record names (``data/0``, ``data/1``, ...).

    ``torch.save`` names a storage by the order the pickler first meets it (its persistent id);
    pickling ``obj`` the same way meets them in the same order. :func:`save_streamed` checks the
    names and sizes against the file written before it trusts them.
    """
    import io
    import pickle

    found: dict[int, tuple[str, torch.UntypedStorage]] = {}

    class Pickler(pickle.Pickler):
        def persistent_id(self, o: Any) -> Any:
            if isinstance(o, torch.storage.TypedStorage):
                o = o._untyped_storage
            elif not torch.is_storage(o):
                return None
            found.setdefault(o._cdata, (f"data/{len(found)}", o))
            return found[o._cdata][0]

    Pickler(io.BytesIO(), protocol=torch.serialization.DEFAULT_PROTOCOL).dump(obj)
    return list(found.values())


def _record_offsets(f: BinaryIO, storages: Sequence[tuple[str, torch.UntypedStorage]]) -> list[int] | None:
    """Each storage's byte offset in the ``torch.save`` file ``f``, or ``None`` if its records are not
    exactly those storages (names and sizes)."""
    with os.fdopen(os.dup(f.fileno()), "rb") as r:  # f may be open for writing only
        r.seek(0)  # the duplicate shares f's position, at the end of what torch.save wrote
        reader = torch._C.PyTorchFileReader(r)  # the zip's central directory only
        records = {name for name in reader.get_all_records() if name.startswith("data/")}
        if records != {name for name, _ in storages} or any(reader.get_record_size(n) != s.nbytes()
                                                            for n, s in storages):
            return None
        return [reader.get_record_offset(name) for name, _ in storages]


def _bytes(t: torch.Tensor | torch.UntypedStorage) -> memoryview:
    if isinstance(t, torch.UntypedStorage):
        t = torch.empty(0, dtype=torch.uint8).set_(t)
    return memoryview(t.detach().reshape(-1).view(torch.uint8).numpy())


def _pwrite(fd: int, data: memoryview, offset: int) -> None:
    while data:
        n = os.pwrite(fd, data, offset)
        data, offset = data[n:], offset + n


def save_streamed(f: BinaryIO, obj: Any, holes: Mapping[str, torch.Tensor],
                  pieces: Iterator[tuple[str, torch.Tensor]]) -> None:
    """``torch.save(obj, f)``, the bytes of the tensors in ``holes`` written from ``pieces`` as they come.

    ``holes``: ``{key: tensor}``, tensors of ``obj`` allocated but never written (their pages are
    never touched); ``pieces`` yields ``(key, piece)``, each hole's contents in order (flattened).
    ``f`` (a file open for writing, from its start) receives ``obj``'s structure with
    every storage's place left empty (``torch.serialization.skip_data``), then every other storage
    is written at its record's offset, then each piece of the averages where it belongs: nothing
    the size of the model is built in memory. The file is the one ``torch.save`` writes (CRC-32s
    left out, which ``torch.load`` never checks, see :func:`without_crc32`).

    Should the file not hold the records this expects (a torch whose ``torch.save`` names
    storages otherwise), the pieces are copied into the holes and ``obj`` saved the plain way.
    """
    f.seek(0)
    f.truncate()
    with without_crc32(), torch.serialization.skip_data():
        torch.save(obj, f)
    f.flush()
    storages = _storages(obj)
    offsets = _record_offsets(f, storages)
    if offsets is None:
        for _, (dst, piece) in _pieces_into(holes, pieces):
            dst.copy_(piece)
        f.seek(0)
        f.truncate()
        with without_crc32():
            torch.save(obj, f)
        return
    fd = f.fileno()
    writeback = Writeback(fd)
    where = {s._cdata: offset for (_, s), offset in zip(storages, offsets)}
    hole_storages = {t.untyped_storage()._cdata for t in holes.values()}
    for (_, storage), offset in zip(storages, offsets):
        if storage._cdata not in hole_storages and storage.nbytes():
            _pwrite(fd, _bytes(storage.cpu()), offset)
    last: tuple[torch.Tensor, memoryview] | None = None  # the piece written last (the averaging reuses one buffer)
    for _, (dst, piece) in _pieces_into(holes, pieces):
        offset = where[dst.untyped_storage()._cdata] + dst.storage_offset() * dst.element_size()
        if last is None or last[0] is not piece:
            last = (piece, _bytes(piece))
        data = last[1]
        _pwrite(fd, data, offset)
        writeback(offset, len(data))
    writeback.flush()
    f.seek(0, os.SEEK_END)


def _pieces_into(holes: Mapping[str, torch.Tensor], pieces: Iterator[tuple[str, torch.Tensor]]
                 ) -> Iterator[tuple[str, tuple[torch.Tensor, torch.Tensor]]]:
    """``(key, (the stretch of the hole the piece fills, the piece))``; every hole checked filled exactly."""
    filled: dict[str, int] = {}
    for key, piece in pieces:
        hole = holes[key]
        a = filled.get(key, 0)
        flat = hole.view(-1) if hole.is_contiguous() else None
        if flat is None or a + piece.numel() > flat.numel():
            raise RuntimeError(f"internal error: the pieces of {key!r} do not fit its tensor of {tuple(hole.shape)}")
        filled[key] = a + piece.numel()
        yield key, (flat[a:a + piece.numel()], piece)
    done = {id(holes[k]) for k, n in filled.items() if n == holes[k].numel()}
    short = [k for k, t in holes.items() if id(t) not in done]  # a tied key shares its tensor's pieces
    if short:
        raise RuntimeError(f"internal error: no average was made for {listing(short)}")


def _storage_of(where: Mapping[str, Path]) -> Callable[[str, torch.Tensor], Any]:
    """A tensor's storage, for finding tied weights: its file and record offset, or its address in memory."""
    def storage(key: str, t: torch.Tensor) -> Any:
        if t.device.type == "meta":
            return ("file", where.get(key), getattr(t.untyped_storage(), "_checkpoint_offset", None))
        return ("memory", t.untyped_storage().data_ptr(), t.device)
    return storage


def _open(path: Path, files: list[Path], allow, load_file, extract) -> tuple[Any, Mapping, dict[str, Path]]:
    """The checkpoint at ``path`` (its ``files``): its object, state dict and each meta tensor's file."""
    objs, where = [], {}
    for f in files:
        obj, meta = load_header(f, allow, load_file)
        if meta and len(files) > 1:
            where.update({k: f for k, v in obj.items() if isinstance(v, torch.Tensor)})
        objs.append((obj, meta))
    obj = objs[0][0] if len(objs) == 1 else OrderedDict(kv for o, _ in objs for kv in o.items())
    sd = extract(obj, str(path))
    if any(meta for _, meta in objs):
        if len(files) == 1:
            where = {k: files[0] for k in sd} if isinstance(sd, Mapping) else {}
        unreadable = isinstance(sd, Mapping) and any(
            is_averaged(v) and v.device.type == "meta" and file_offset(v) is None for v in sd.values())
        if unreadable:  # a strided view or an unknown offset: load it as before
            obj = load_file(files[0]) if len(files) == 1 else OrderedDict(
                kv for f in files for kv in load_file(f).items())
            sd, where = extract(obj, str(path)), {}
    return obj, sd, where


def average_pickled_files(
    paths: Sequence[Path], files_of: Callable[[Path], list[Path]], load_file: Callable[[Path], Any],
    extract: Callable[[Any, str], Mapping[str, Any]], allow: Sequence[Any], weights, alpha: float, nonfinite: str,
    progress, consume: Callable[[OrderedDict, Any, Mapping[str, torch.Tensor], Iterator], Any] | None = None,
) -> tuple[Any, Any, list[str], list[str], list[float], tuple[str, ...]]:
    """Average pickled checkpoints tensor by tensor, reading each in pieces.

    Every file's structure is loaded (meta tensors) and checked against the first (keys, shapes,
    dtypes, the format ``extract`` finds) before any weight is read. ``files_of(path)``: the
    checkpoint's files; ``load_file(file)``: its full load (``torch.load(mmap=True)``), used for the
    newest checkpoint's other entries and for files the meta load cannot address; ``extract(obj,
    name)``: the state dict inside a checkpoint object (checking its format).

    Returns ``(state dict: the newest used checkpoint's, its floating tensors averaged; the newest
    used checkpoint object as loaded; names used; names skipped; normalized coefficients; the keys
    averaged)``.

    ``consume(state, newest, holes, pieces)``: stream the averages instead (:func:`save_streamed`):
    ``state`` holds, for the averaged keys, the tensors of ``holes`` (allocated, never written),
    whose contents ``pieces`` yields in order; what ``consume`` returns takes the place of the
    state dict in the returned tuple (and the newest object's place is ``None``).
    """
    sources: list[PickledSource] = []
    ties, first = [], None

    def newest_of(used: Sequence[PickledSource]) -> tuple[Any, Mapping[str, Any]]:
        path = paths[[s.name for s in sources].index(used[-1].name)]
        files = files_of(path)
        obj = load_file(files[0]) if len(files) == 1 else OrderedDict(kv for f in files for kv in load_file(f).items())
        return obj, extract(obj, str(path))

    def state_of(sd: Mapping[str, Any], averages: Mapping[str, torch.Tensor]) -> OrderedDict:
        state: OrderedDict = OrderedDict((k, averages[k] if k in averages else v) for k, v in sd.items())
        if getattr(sd, "_metadata", None) is not None:
            state._metadata = sd._metadata  # type: ignore[attr-defined]  # load_state_dict's versions
        return state

    def streamed(used, holes, pieces):
        newest, sd = newest_of(used)
        return consume(state_of(sd, holes), newest, holes, pieces)

    try:
        for path in paths:
            _, sd, where = _open(path, files_of(path), allow, load_file, extract)
            layout = check_state(sd, str(path), first)
            first = first or (layout, str(path))
            sources.append(PickledSource(str(path), sd, where))
            ties.append(tensor_ties(sd, _storage_of(where)))
        averages, used, skipped, coeffs, _ = average_sources(
            sources, sources[-1].sd, ties, weights, alpha, nonfinite, progress,
            None if consume is None else streamed)
    finally:
        for s in sources:
            s.close()
    names = [s.name for s in used]
    averaged = tuple(k for k, v in sources[-1].sd.items() if is_averaged(v))
    if consume is not None:
        return averages, None, names, skipped, coeffs, averaged
    newest, sd = newest_of(used)
    return state_of(sd, averages), newest, names, skipped, coeffs, averaged
