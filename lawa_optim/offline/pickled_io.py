"""``torch.save`` files read like safetensors: the structure first, then each tensor in pieces at its offset.

A ``torch.save`` file (zip format, torch's default since 1.6) stores each tensor's bytes
uncompressed in its own record. Loading it with ``map_location="meta"`` (still
``weights_only=True``) unpickles only the structure, the tensors on the meta device, each storage
carrying its record's offset in the file (``_checkpoint_offset``, set by ``torch.load`` for meta
loads); no weight is read. The weights are then read in pieces with ``os.preadv`` into a reused
buffer, exactly as :class:`.safetensors_io.SafetensorsSource` reads safetensors: the peak memory
is one piece per checkpoint plus the average, and nothing is memory-mapped (a mapped page stays
in the process's resident memory while its file is open).

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
from typing import Any

import torch

from ..io import CheckpointError, safe_load
from .accumulate import average_sources, check_state, is_averaged, tensor_ties
from .select import HF_WEIGHT_FILES

__all__ = ["PickledSource", "average_pickled_files", "file_offset", "hf_bin_files", "without_crc32"]


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
    progress,
) -> tuple[OrderedDict, Any, list[str], list[str], list[float], tuple[str, ...]]:
    """Average pickled checkpoints tensor by tensor, reading each in pieces.

    Every file's structure is loaded (meta tensors) and checked against the first (keys, shapes,
    dtypes, the format ``extract`` finds) before any weight is read. ``files_of(path)``: the
    checkpoint's files; ``load_file(file)``: its full load (``torch.load(mmap=True)``), used for the
    newest checkpoint's other entries and for files the meta load cannot address; ``extract(obj,
    name)``: the state dict inside a checkpoint object (checking its format).

    Returns ``(state dict: the newest used checkpoint's, its floating tensors averaged; the newest
    used checkpoint object as loaded; names used; names skipped; normalized coefficients; the keys
    averaged)``.
    """
    sources: list[PickledSource] = []
    ties, first = [], None
    try:
        for path in paths:
            _, sd, where = _open(path, files_of(path), allow, load_file, extract)
            layout = check_state(sd, str(path), first)
            first = first or (layout, str(path))
            sources.append(PickledSource(str(path), sd, where))
            ties.append(tensor_ties(sd, _storage_of(where)))
        averages, used, skipped, coeffs, _ = average_sources(
            sources, sources[-1].sd, ties, weights, alpha, nonfinite, progress)
    finally:
        for s in sources:
            s.close()
    newest_path = paths[[s.name for s in sources].index(used[-1].name)]
    files = files_of(newest_path)
    newest = load_file(files[0]) if len(files) == 1 else OrderedDict(kv for f in files for kv in load_file(f).items())
    sd = extract(newest, str(newest_path))
    state: OrderedDict = OrderedDict((k, averages[k] if k in averages else v) for k, v in sd.items())
    if getattr(sd, "_metadata", None) is not None:
        state._metadata = sd._metadata  # type: ignore[attr-defined]  # load_state_dict's versions
    return state, newest, [s.name for s in used], skipped, coeffs, tuple(averages)
