"""The ``torch.save`` file format (plain, fairseq, Lightning, timm), averaged file by file.

One file is loaded at a time (``torch.load(weights_only=True)``, memory-mapped) and added to the
float64 sums of every tensor (:class:`.accumulate.Accumulator`); the result is the newest
checkpoint with its weights entry replaced by the average (:mod:`.layouts` says which entries).
:func:`average_pickled` also averages HF folders of ``pytorch_model.bin`` (:mod:`.hf`).
"""

from __future__ import annotations

import json
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from ..io import CheckpointError, atomic_save, safe_load
from .accumulate import coefficients, listing, stream
from .base import Format
from .layouts import detect_pickled, load_pickled
from .options import AverageOptions
from .select import HF_WEIGHT_FILES
from .summary import AverageSummary

__all__ = ["PickledFile", "average_pickled", "check_drop"]


def _load_hf_bin(folder: Path) -> OrderedDict:
    """The state dict of an HF folder of ``pytorch_model.bin`` (one file or shards), memory-mapped."""
    index = folder / HF_WEIGHT_FILES[2]
    if not index.is_file():
        return safe_load(folder / HF_WEIGHT_FILES[3], mmap=True)
    try:
        weight_map = json.loads(index.read_text())["weight_map"]
    except (ValueError, KeyError, TypeError) as err:
        raise CheckpointError(f"Index {str(index)!r} is not a checkpoint index ({type(err).__name__}: {err})") from err
    sd: OrderedDict = OrderedDict()
    for shard in sorted(set(weight_map.values())):
        if not (folder / shard).is_file():
            raise CheckpointError(f"Index {str(index)!r} names shard {shard!r}, which does not exist in "
                                  f"{str(folder)!r}; the checkpoint is incomplete (an interrupted save?)")
        sd.update(safe_load(folder / shard, mmap=True))
    return sd


class PickledFile(Format):
    """A ``torch.save`` file (any name when given; ``.ckpt``, ``.pth.tar``, ``.pt``, ``.pth``, ``.bin`` in a folder)."""

    name = "pickled"
    suffixes = (".ckpt", ".pth.tar", ".pt", ".pth", ".bin")

    def matches(self, path: Path) -> bool:
        return not path.is_dir()  # any file; a missing one is named by the loader

    def average(self, paths, opts):
        return average_pickled(paths, opts, hf_bin=False)

    def write(self, paths, out, opts):
        result, summary = self.average(paths, opts)
        atomic_save(result, out)
        return summary


def average_pickled(selected: Sequence[Path], opts: AverageOptions, hf_bin: bool) -> tuple[Any, AverageSummary]:
    """Average pickled checkpoints (``hf_bin``: HF folders of ``pytorch_model.bin``) file by file, into memory."""
    key, drop = opts.key, opts.drop
    coeffs = coefficients(opts.weights, opts.alpha, len(selected))
    chosen: list = []

    def extract(obj: Any, name: str) -> Mapping[str, Any]:
        if hf_bin:
            found = (None, None)
        else:
            fmt, entry = detect_pickled(obj, name, key)
            found = (fmt, entry)
        if not chosen:
            check_drop(drop, found[1], obj, name)
            chosen.append(found)
        elif (getattr(found[0], "name", None), found[1]) != (getattr(chosen[0][0], "name", None), chosen[0][1]):
            raise CheckpointError(f"{name} is a {_what(*found)} but the first file is a {_what(*chosen[0])}; "
                                  "give checkpoints of one format")
        return obj if found[1] is None else obj[found[1]]

    def load(p: Path) -> Any:
        return _load_hf_bin(p) if hf_bin else load_pickled(p, opts.trust_pickle)

    items = ((str(p), load(p)) for p in selected)  # a generator: one file loaded at a time
    acc, newest, used, skipped, used_coeffs = stream(items, coeffs, opts.nonfinite, extract, opts.progress)
    averaged = acc.averaged_keys()
    state = acc.result(uniform=coeffs is None, renormalize=bool(skipped))
    fmt, entry = chosen[0]
    dropped: tuple[str, ...] = ()
    if fmt is None or entry is None:
        result: Any = state
    else:
        result, dropped = fmt.output(newest, entry, state, opts.keep_optimizer, opts.keep_callbacks)
        for path in drop:
            if _find(result, path)[0] is not None:
                result = _without(result, path)
                dropped += (path,)
    summary = AverageSummary(
        files=tuple(used), coefficients=tuple(used_coeffs), skipped=tuple(skipped), key=entry,
        averaged=averaged, copied=tuple(k for k in state if k not in averaged), dropped=dropped,
        format="huggingface" if hf_bin else fmt.name,
        description="Hugging Face checkpoints" if hf_bin else fmt.describe(entry),
    )
    return result, summary


def _what(fmt, entry) -> str:
    if fmt is None:
        return "Hugging Face folder"
    return "plain state dict" if entry is None else f"{fmt.name} checkpoint with {entry!r}"


def _find(obj: Any, path: str) -> tuple[Mapping | None, str]:
    """The mapping holding the dotted ``path`` (``"extra_state.ema"``) in ``obj`` and its last part."""
    *parents, last = path.split(".")
    for part in parents:
        if not isinstance(obj, Mapping) or part not in obj:
            return None, last
        obj = obj[part]
    return (obj, last) if isinstance(obj, Mapping) and last in obj else (None, last)


def _without(obj: Mapping, path: str) -> dict:
    """A copy of ``obj`` without the dotted ``path`` (the mappings along the path are copied, not changed)."""
    head, _, rest = path.partition(".")
    out = dict(obj)
    if head in out:
        if not rest:
            del out[head]
        elif isinstance(out[head], Mapping):
            out[head] = _without(out[head], rest)
    return out


def check_drop(drop: Sequence[str], container: str | None, obj: Any, name: str) -> None:
    if not drop:
        return
    if container is None:
        raise ValueError(f"Invalid drop: {list(drop)!r}; {name} is a plain state dict, and drop only removes "
                         "entries around the weights of a checkpoint dict such as fairseq's")
    for path in drop:
        if path == container:
            raise ValueError(f"Invalid drop: {path!r} holds the weights being averaged; drop other entries")
        if _find(obj, path)[0] is None:
            parent = path.rpartition(".")[0]
            holder = obj
            for part in parent.split(".") if parent else ():
                holder = holder.get(part) if isinstance(holder, Mapping) else None
            keys = f"; {parent or 'its top level'} holds {listing(map(str, holder))}" if isinstance(
                holder, Mapping) else ""
            raise ValueError(f"Invalid drop: {path!r} is not in {name}{keys}")
