"""A one-rank DCP folder written tensor by tensor as the averages come, without ``dcp.save``.

The folder is the one ``dcp.save`` writes from one process with ``FileSystemWriter``'s defaults:
``__0_0.distcp`` holding every item back to back (non-tensor values first: each the bytes of its
``torch.save``; then each tensor: the ``torch.save`` record of the tensor, whole), and
``.metadata``, the pickled ``Metadata`` whose ``storage_data`` says where each item is
(``_StorageInfo(relative_path, offset, length)``, keyed by ``MetadataIndex(fqn, chunk offsets)``),
which ``FileSystemReader`` slices out of the file and ``torch.load``\\ s. So ``dcp.load`` and
``format_utils.dcp_to_torch_save`` read it as any other.

A tensor's record is written around its data: ``torch.save`` of an empty tensor of its shape and
dtype under ``torch.serialization.skip_data`` into a recorder gives the record's bytes before and
after the data (the data's place is skipped, one seek of its length); those are written, then the
average's pieces between them as they come: the averaged model is never in memory, and nothing is
written twice. (Should a torch write the record otherwise, the tensor is collected from its pieces
and saved the plain way.) The metadata is built of :mod:`.dcp_meta`'s stand-ins and pickled into
the bytes DCP's own classes give, so nothing here imports ``torch.distributed.checkpoint``.
"""

from __future__ import annotations

import io
import math
import os
import uuid
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from ..io import Writeback
from . import dcp_meta as m

__all__ = ["DATA_FILE", "write_folder"]

DATA_FILE = "__0_0.distcp"  # rank 0's first file: FileSystemWriter's name for it
METADATA = ".metadata"


class _Recorder:
    """A file-like object that keeps what ``torch.save`` writes and where, and lets it seek past what it skips."""

    def __init__(self) -> None:
        self.pos, self.writes, self.seeks = 0, [], []

    def write(self, data: Any) -> int:
        data = memoryview(data).cast("B")
        self.writes.append((self.pos, bytes(data)))
        self.pos += len(data)
        return len(data)

    def seek(self, offset: int, whence: int = 0) -> int:
        start = self.pos
        self.pos = offset if whence == 0 else self.pos + offset if whence == 1 else -1
        if self.pos < 0:
            raise io.UnsupportedOperation("seek from the end")
        self.seeks.append((start, self.pos))
        return self.pos

    def tell(self) -> int:
        return self.pos

    def flush(self) -> None:
        pass


def record_around(dtype: torch.dtype, shape: Sequence[int]) -> tuple[bytes, bytes] | None:
    """``torch.save``'s record of a tensor of ``dtype`` and ``shape`` as ``(bytes before its data, bytes after)``;
    ``None`` if torch did not write it as that, with the data's place skipped in one stretch."""
    tensor = torch.empty(tuple(shape), dtype=dtype)  # never touched: its pages are never allocated
    nbytes = tensor.numel() * tensor.element_size()
    rec = _Recorder()
    with torch.serialization.skip_data():
        torch.save(tensor, rec)
    gaps = [(a, b) for a, b in rec.seeks if b != a]
    if nbytes == 0 and not gaps:
        gaps = [(rec.pos, rec.pos)]
    if len(gaps) != 1 or gaps[0][1] - gaps[0][0] != nbytes:
        return None
    (a, b), head, tail = gaps[0], [], []
    for where, data in rec.writes:
        if where + len(data) <= a:
            head.append((where, data))
        elif where >= b:
            tail.append((where, data))
        else:
            return None
    for part, start, end in ((head, 0, a), (tail, b, rec.pos)):  # each byte written once, in order
        for where, data in part:
            if where != start:
                return None
            start += len(data)
        if start != end:
            return None
    return b"".join(d for _, d in head), b"".join(d for _, d in tail)


def _write(fd: int, data: Any) -> int:
    view = memoryview(data).cast("B")
    n = len(view)
    while view:
        view = view[os.write(fd, view):]
    return n


def _bytes(t: torch.Tensor) -> memoryview:
    return memoryview(t.reshape(-1).view(torch.uint8).numpy())


def write_folder(folder: Path, order: Sequence[str], layout: Mapping[str, tuple[torch.dtype, tuple[int, ...]]],
                 fqns: Mapping[str, str], paths: Mapping[str, tuple], objects: Mapping[str, Any],
                 pieces: Iterator[tuple[str, torch.Tensor]], checkpoint_id: Any = None) -> None:
    """Write the DCP folder of one rank holding the tensors of ``order`` and the non-tensor ``objects``.

    Args:
        folder: an empty folder (the caller stages it and renames it into place).
        order: the tensors' keys, in the order ``pieces`` yields them.
        layout: ``{key: (dtype, shape)}`` of those tensors.
        fqns: ``{key: DCP's flat key}`` for every tensor and object.
        paths: ``{key: its path in the nested state dict}`` (DCP's ``planner_data``), in state-dict order.
        objects: ``{key: value}`` of the non-tensor values (each ``torch.save``\\ d as a bytes item).
        pieces: ``(key, piece)``: each tensor's values, flattened, in order (reused buffers: written at once).
        checkpoint_id: recorded in the metadata's ``storage_meta``, as ``FileSystemWriter`` records its path.
    """
    state_md: dict[str, Any] = {}
    storage: dict[m.MetadataIndex, m._StorageInfo] = {}
    fd = os.open(folder / DATA_FILE, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    writeback = Writeback(fd)  # the disk started on every 8 MiB: the staged folder's fsync waits little
    pos = 0

    def write(data: Any) -> int:
        n = _write(fd, data)
        writeback(pos, n)
        return n

    try:
        for key, value in objects.items():  # FileSystemWriter writes the bytes items first
            buf = io.BytesIO()
            torch.save(value, buf)
            n = write(buf.getbuffer())
            storage[m.MetadataIndex(fqns[key])] = m._StorageInfo(DATA_FILE, pos, n)
            state_md[fqns[key]] = m.BytesStorageMetadata()
            pos += n
        expected = iter(order)
        current: str | None = None
        filled = numel = 0
        held: list[torch.Tensor] | None = None  # a tensor saved the plain way: its pieces, copied
        tail = b""
        start = pos

        def finish() -> None:
            nonlocal pos
            if current is None:
                return
            if filled != numel:
                raise RuntimeError(f"internal error: {filled} values of {numel} written for {current!r}")
            dtype, shape = layout[current]
            if held is not None:
                buf = io.BytesIO()
                torch.save((torch.cat(held) if held else torch.empty(0, dtype=dtype)).reshape(shape), buf)
                pos += write(buf.getbuffer())
            else:
                pos += write(tail) if tail else 0
            offsets = torch.Size([0] * len(shape))
            size = torch.Size(shape)
            state_md[fqns[current]] = m.TensorStorageMetadata(m.TensorProperties(dtype=dtype), size,
                                                              [m.ChunkStorageMetadata(offsets, size)])
            storage[m.MetadataIndex(fqns[current], offsets, 0)] = m._StorageInfo(DATA_FILE, start, pos - start)

        for key, piece in pieces:
            if key != current:
                finish()
                want = next(expected, None)
                if key != want:
                    raise RuntimeError(f"internal error: the averages came as {key!r}, not {want!r}")
                current, filled, start = key, 0, pos
                dtype, shape = layout[key]
                numel = math.prod(shape)
                around = record_around(dtype, shape)
                held = None if around is not None else []
                if around is not None:
                    head, tail = around
                    pos += write(head)
            if piece.numel() + filled > numel:
                raise RuntimeError(f"internal error: more values than {numel} for {key!r}")
            filled += piece.numel()
            if held is not None:
                held.append(piece.reshape(-1).clone())
            elif piece.numel():
                pos += write(_bytes(piece.contiguous()))
        finish()
        left = list(expected)
        if left:
            raise RuntimeError(f"internal error: no averages came for {left[:3]!r}")
        writeback.flush()
    finally:
        os.close(fd)
    state_md = {fqns[k]: state_md[fqns[k]] for k in paths}  # in the state dict's order, as dcp.save's
    md = m.Metadata(state_md, {fqns[k]: tuple(p) for k, p in paths.items()}, storage,
                    m.StorageMeta(checkpoint_id=checkpoint_id, save_id=str(uuid.uuid4())), m.VERSION)
    with open(folder / METADATA, "wb") as f:
        f.write(m.dumps(md))
