"""The ``torch.save`` file format (plain, fairseq, Lightning, timm), averaged tensor by tensor.

Every file's structure is loaded first (``torch.load(weights_only=True)`` onto the meta device: no
weight read) and checked against the first; then each tensor is averaged over all files, read in
pieces at its offset in the file (:mod:`.pickled_io`, :mod:`.accumulate`); the result is the newest
checkpoint with its weights entry replaced by the average (:mod:`.layouts` says which entries).
Written to a file, the average is never whole in memory: each piece goes to its place in the
output file as soon as it is made (:func:`.pickled_io.save_streamed`). :func:`average_pickled`
also averages HF folders of ``pytorch_model.bin`` (:mod:`.hf`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from ..io import CheckpointError, atomic_write_bytes, safe_load
from .accumulate import coefficients, listing
from .base import Format
from .layouts import SAFE_CLASSES, detect_pickled, load_pickled
from .options import AverageOptions
from .pickled_io import average_pickled_files, hf_bin_files, save_streamed
from .summary import AverageSummary

__all__ = ["PickledFile", "average_pickled", "check_drop"]


class PickledFile(Format):
    """A ``torch.save`` file (any name when given; ``.ckpt``, ``.pth.tar``, ``.pt``, ``.pth``, ``.bin`` in a folder)."""

    name = "pickled"
    order = 100  # any file: tried last
    suffixes = (".ckpt", ".pth.tar", ".pt", ".pth", ".bin")

    def matches(self, path: Path) -> bool:
        return not path.is_dir()  # any file; a missing one is named by the loader

    def average(self, paths, opts):
        return average_pickled(paths, opts, hf_bin=False)

    def write(self, paths, out, opts):
        return average_pickled(paths, opts, hf_bin=False, out=out)[1]


def average_pickled(selected: Sequence[Path], opts: AverageOptions, hf_bin: bool,
                    out: Path | None = None) -> tuple[Any, AverageSummary]:
    """Average pickled checkpoints (``hf_bin``: HF folders of ``pytorch_model.bin``) tensor by tensor.

    Into memory; or, with ``out``, into the file ``out`` as the pieces are made (atomically,
    :func:`.pickled_io.save_streamed`: the average is never whole in memory), returning ``None``
    in the place of the result.
    """
    key, drop = opts.key, opts.drop
    coefficients(opts.weights, opts.alpha, len(selected))  # bad weights refused before any file is read
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

    def load_file(f: Path) -> Any:
        return safe_load(f, mmap=True) if hf_bin else load_pickled(f, opts.trust_pickle)

    def build(state: Mapping[str, Any], newest: Any) -> tuple[Any, tuple[str, ...]]:
        """The checkpoint written: the newest with the average as its weights, and what it leaves out."""
        fmt, entry = chosen[0]
        if fmt is None or entry is None:
            return state, ()
        result, dropped = fmt.output(newest, entry, state, opts.keep_optimizer, opts.keep_callbacks)
        for path in drop:
            if _find(result, path)[0] is not None:
                result = _without(result, path)
                dropped += (path,)
        return result, dropped

    def stream(state, newest, holes, pieces) -> tuple[tuple[str, ...], tuple[str, ...]]:
        result, dropped = build(state, newest)
        atomic_write_bytes(out, lambda f: save_streamed(f, result, holes, pieces))
        return dropped, tuple(state)

    # every file's structure first (meta tensors), then each tensor averaged in pieces read from the files
    got, newest, used, skipped, used_coeffs, averaged = average_pickled_files(
        selected, hf_bin_files if hf_bin else lambda p: [p], load_file, extract, SAFE_CLASSES, opts.weights,
        opts.alpha, opts.nonfinite, opts.progress, None if out is None else stream)
    fmt, entry = chosen[0]
    if out is None:
        (result, dropped), keys = build(got, newest), tuple(got)
    else:
        result, (dropped, keys) = None, got  # written: stream() returned what it left out and the keys
    summary = AverageSummary(
        files=tuple(used), coefficients=tuple(used_coeffs), skipped=tuple(skipped), key=entry,
        averaged=averaged, copied=tuple(k for k in keys if k not in averaged), dropped=dropped,
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
