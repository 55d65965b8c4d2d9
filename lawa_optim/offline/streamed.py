"""Averaging safetensors checkpoints tensor by tensor, and writing the result the same way.

Every header is read and compared first; then each tensor is averaged over all checkpoints, piece
by piece (each checkpoint's piece read in turn into a float64 sum, :func:`.accumulate.average_pieces`)
and written at once, so the peak memory is a few pieces, whatever the model's size. A checkpoint
found to hold NaN/Inf with ``nonfinite="skip"`` restarts the pass without it.
"""

from __future__ import annotations

import json
from collections import OrderedDict
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from ..io import CheckpointError
from . import accumulate
from . import safetensors_io as st
from .accumulate import check_same_layout, with_skips
from .base import staged_folder
from .select import HF_WEIGHT_FILES, PROVENANCE
from .summary import AverageSummary

__all__ = ["MemorySource", "averaged_tensors", "collect", "open_sources", "st_order", "st_summary", "with_skips",
           "write_hf_folder"]


def open_sources(paths: Sequence[Path], kind: str) -> list[st.SafetensorsSource]:
    sources = [st.HFSource(p) if kind == "huggingface" else st.SafetensorsSource(p) for p in paths]
    first = {k: st.describe(*v) for k, v in sources[0].layout.items()}
    if not st.averaged_keys(sources[0].layout):
        raise CheckpointError(f"{sources[0].name} holds no floating-point tensors: nothing to average")
    for s in sources[1:]:
        check_same_layout(first, {k: st.describe(*v) for k, v in s.layout.items()}, sources[0].name, s.name)
    return sources


def _torch_layout(layout) -> dict[str, tuple[torch.dtype, tuple[int, ...]]]:
    return {key: (st.torch_dtype(code), tuple(shape)) for key, (code, shape) in layout.items()}


def averaged_tensors(
    sources: Sequence[st.SafetensorsSource], order: Sequence[str], coeffs: list[float] | None, total: float | None,
    nonfinite: str, progress: Callable[[int, str], None] | None,
) -> Iterator[tuple[str, torch.Tensor]]:
    """Yield ``(key, piece)``: each tensor of ``order`` averaged, in pieces (:func:`.accumulate.averaged_tensors`)."""
    layout = _torch_layout(sources[-1].layout)
    return accumulate.averaged_tensors(sources, layout, order, coeffs, total, nonfinite, progress)


def collect(parts: Iterator[tuple[str, torch.Tensor]], layout) -> OrderedDict:
    """The pieces put together: ``{key: tensor}`` in memory, in the order of ``layout``."""
    got = accumulate.collect(parts, _torch_layout(layout))
    return OrderedDict((key, got[key]) for key in layout)


def st_summary(sources, used, skipped, coeffs, kind) -> AverageSummary:
    layout = sources[-1].layout
    averaged = st.averaged_keys(layout)
    return AverageSummary(
        files=tuple(s.name for s in used), coefficients=tuple(coeffs), skipped=tuple(skipped), key=None,
        averaged=averaged, copied=tuple(k for k in layout if k not in averaged), dropped=(), format=kind,
    )


def st_order(source: st.SafetensorsSource) -> list[str]:
    return [k for keys in source.shards.values() for k in keys]


class MemorySource(st.SafetensorsSource):
    """An averaged state dict in memory, shaped like the HF folder of ``pytorch_model.bin`` it came from."""

    kind = "huggingface"

    def __init__(self, state: Mapping[str, Any], folder: Path) -> None:
        self.path, self.name, self.metadata, self.state = folder, str(folder), {"format": "pt"}, state
        seen: dict[tuple, str] = {}
        self.layout, self.index = {}, None
        for k, v in state.items():
            if not isinstance(v, torch.Tensor):
                raise CheckpointError(f"{folder}: entry {k!r} is a {type(v).__name__}, not a tensor; a Hugging Face "
                                      "checkpoint holds only tensors")
            view = (v.untyped_storage().data_ptr(), v.storage_offset(), v.shape, v.dtype)
            if v.numel() and view in seen:
                continue  # a tied weight: safetensors stores it once; from_pretrained ties it again
            seen[view] = k
            self.layout[k] = (st.dtype_code(v.dtype), tuple(v.shape))
        index = folder / HF_WEIGHT_FILES[2]
        if index.is_file():
            weight_map = json.loads(index.read_text())["weight_map"]
            self.shards = {}
            for k in self.layout:
                shard = weight_map[k].replace("pytorch_model", "model").removesuffix(".bin") + ".safetensors"
                self.shards.setdefault(shard, []).append(k)
            n = len(self.shards)
            self.index = {"metadata": {}, "weight_map": {k: s for s, keys in self.shards.items() for k in keys}}
            assert n >= 1
        else:
            self.shards = {"model.safetensors": list(self.layout)}

    def read_into(self, key: str, start: int, out: torch.Tensor) -> None:
        out.copy_(self.state[key].reshape(-1)[start:start + out.numel()])

    def close(self) -> None:
        pass


def write_hf_folder(out: Path, sources, newest, tensors, summary, *, weights="uniform", alpha=0.9,
                     nonfinite="raise") -> AverageSummary:
    """Write the averaged folder into a hidden temporary folder beside ``out``, then rename it to ``out``
    (:func:`.base.staged_folder`).

    An existing ``out`` is replaced (the caller refused it unless ``force``)."""
    with staged_folder(out) as tmp:
        def run(used, coeffs, total):
            for p in tmp.iterdir():  # a restart after a skipped checkpoint starts from an empty folder
                p.unlink()
            stream_ = tensors(used, coeffs, total)
            for shard, keys in newest.shards.items():
                with open(tmp / shard, "wb") as f:
                    st.write_shard(f, keys, newest.layout, newest.metadata, stream_)
            if newest.index is not None:
                (tmp / HF_WEIGHT_FILES[0]).write_text(st.index_json(newest, newest.layout))

        if summary is None:
            _, used, skipped, coeffs = with_skips(sources, weights, alpha, nonfinite, run)
            summary = st_summary(sources, used, skipped, coeffs, "huggingface")
        else:
            run(None, None, None)
        st.copy_hf_side_files(Path(summary.files[-1]), tmp)
        (tmp / PROVENANCE).write_text(json.dumps(
            {"files": list(summary.files), "coefficients": list(summary.coefficients),
             "skipped": list(summary.skipped)}, indent=2) + "\n")
    return summary
