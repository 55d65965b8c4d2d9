"""average_checkpoints / write_average: choose the files, average them with their format's reader, write alike.

Two paths through the numerics of :mod:`.accumulate`:

- safetensors files and Hugging Face folders of safetensors: every header is read and compared
  first; then each tensor is averaged over all checkpoints (read one at a time, one float64 sum)
  and written at once. Peak memory: one float64 tensor and one input tensor, whatever the model's
  size (plus the interpreter).
- pickled checkpoints (plain, fairseq, Lightning, timm, an HF folder of ``pytorch_model.bin``):
  one file at a time, added to float64 sums of every tensor (2x the fp32 model), then cast back.

Writing is atomic: a file goes through a temporary file renamed over it; a folder is written as a
hidden temporary folder beside it and renamed into place only once complete, so a folder named
``--out`` is always complete.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import shutil
import tempfile
from collections import OrderedDict
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ..io import CheckpointError, atomic_save, atomic_write_bytes, safe_load
from . import safetensors_io as st
from .accumulate import (
    average_tensor,
    check_nonfinite_arg,
    check_same_layout,
    coefficients,
    listing,
    nonfinite_error,
    stream,
    warn_skipped,
)
from .formats import detect_pickled, load_pickled
from .select import HF_WEIGHT_FILES, PROVENANCE, select

__all__ = ["AverageSummary", "average_checkpoints", "write_average"]


@dataclass(frozen=True)
class AverageSummary:
    """What :func:`write_average` (or :func:`average_checkpoints`) did.

    Attributes:
        files: the checkpoints averaged, oldest first.
        coefficients: the weight each of ``files`` got (sums to 1).
        skipped: files left out because they hold NaN/Inf (``nonfinite="skip"``).
        key: the entry whose weights were averaged (``"model"`` for fairseq, ``"state_dict"`` or
            ``"current_model_state"`` for Lightning, ...), or ``None`` when the file is the weights.
        averaged: names of the floating tensors averaged.
        copied: names of the entries copied from the newest checkpoint (integer/bool tensors and
            non-tensor values).
        dropped: top-level entries of the newest checkpoint left out of the result.
        out: the file or folder written (``None`` for :func:`average_checkpoints`).
        format: ``"huggingface"``, ``"safetensors"``, ``"lightning"``, ``"timm"``, ``"fairseq"``,
            ``"plain"`` or ``"checkpoint"`` (a dict whose entry was named with ``key``).
        ignored: entries of the folders given that were left out because their name holds no
            number (``last.ckpt``, ``model_best.pth.tar``) or they are an average written earlier.
    """

    files: tuple[str, ...]
    coefficients: tuple[float, ...]
    skipped: tuple[str, ...]
    key: str | None
    averaged: tuple[str, ...]
    copied: tuple[str, ...]
    dropped: tuple[str, ...]
    out: str | None = None
    format: str = "plain"
    ignored: tuple[str, ...] = ()


def _kind(path: Path) -> str:
    if path.is_dir():
        if (path / HF_WEIGHT_FILES[0]).is_file() or (path / HF_WEIGHT_FILES[1]).is_file():
            return "huggingface"
        return "huggingface-bin"
    return "safetensors" if path.name.endswith(".safetensors") else "pickled"


def _one_kind(paths: Sequence[Path]) -> str:
    kinds = [_kind(p) for p in paths]
    for p, kind in zip(paths, kinds):
        if kind != kinds[0]:
            raise CheckpointError(f"{p} is a {kind} checkpoint but {paths[0]} is a {kinds[0]} one; "
                                  "give checkpoints of one format")
    return kinds[0]


# ----------------------------------------------------------------------------- safetensors: tensor by tensor
def _describe(code: str, shape: tuple[int, ...]) -> str:
    return f"{shape} {str(st._dtype(code)).replace('torch.', '')}"


def _open_sources(paths: Sequence[Path], kind: str) -> list[st.SafetensorsSource]:
    sources = [st.HFSource(p) if kind == "huggingface" else st.SafetensorsSource(p) for p in paths]
    first = {k: _describe(*v) for k, v in sources[0].layout.items()}
    if not any(st._dtype(code).is_floating_point or st._dtype(code).is_complex
               for code, _ in sources[0].layout.values()):
        raise CheckpointError(f"{sources[0].name} holds no floating-point tensors: nothing to average")
    for s in sources[1:]:
        check_same_layout(first, {k: _describe(*v) for k, v in s.layout.items()}, sources[0].name, s.name)
    return sources


class _Skip(Exception):
    def __init__(self, index: int, key: str) -> None:
        super().__init__(index, key)
        self.index, self.key = index, key


def _averaged_tensors(
    sources: Sequence[st.SafetensorsSource], order: Sequence[str], coeffs: list[float] | None, total: float | None,
    nonfinite: str, progress: Callable[[int, str], None] | None,
) -> Iterator[tuple[str, torch.Tensor]]:
    """Yield ``(key, average)`` in ``order``; each tensor read from every checkpoint, one at a time."""
    newest = sources[-1]
    for n, key in enumerate(order):
        dtype = st._dtype(newest.layout[key][0])
        if not (dtype.is_floating_point or dtype.is_complex):
            yield key, newest.read(key)  # integer and bool tensors: the newest checkpoint's, never divided
        else:
            avg = average_tensor((s.read(key) for s in sources), coeffs, total)
            if not bool(torch.isfinite(avg).all()):  # a NaN/Inf input makes the float64 sum non-finite
                bad = [i for i, s in enumerate(sources) if not bool(torch.isfinite(s.read(key)).all())]
                if nonfinite == "raise":
                    raise nonfinite_error(sources[bad[0]].name, [key])
                raise _Skip(bad[0], key)
            yield key, avg
            del avg
        if progress is not None:
            progress(n, key)


def _with_skips(sources, weights, alpha, nonfinite, run):
    """Call ``run(sources, coeffs, total)``, again without a checkpoint found to hold NaN/Inf ("skip")."""
    coeffs_all = coefficients(weights, alpha, len(sources))
    kept = list(range(len(sources)))
    skipped: list[str] = []
    while True:
        used = [sources[i] for i in kept]
        coeffs = None if coeffs_all is None else [coeffs_all[i] for i in kept]
        total = None
        if coeffs is not None and skipped:
            total = 0.0
            for c in coeffs:  # summed as the Accumulator sums them
                total += c
        try:
            result = run(used, coeffs, total)
        except _Skip as skip:
            warn_skipped(used[skip.index].name, [skip.key])
            skipped.append(used[skip.index].name)
            del kept[skip.index]
            if not kept:
                raise CheckpointError(f"All {len(skipped)} checkpoints hold NaN or Inf ({listing(skipped)}): "
                                      "nothing to average") from None
            continue
        raw = [1.0] * len(used) if coeffs is None else coeffs
        norm = math.fsum(raw)
        return result, used, skipped, [c / norm for c in raw]


def _st_summary(sources, used, skipped, coeffs, kind) -> AverageSummary:
    layout = sources[-1].layout
    averaged = tuple(k for k, (code, _) in layout.items() if st._dtype(code).is_floating_point
                     or st._dtype(code).is_complex)
    return AverageSummary(
        files=tuple(s.name for s in used), coefficients=tuple(coeffs), skipped=tuple(skipped), key=None,
        averaged=averaged, copied=tuple(k for k in layout if k not in averaged), dropped=(), format=kind,
    )


def _st_order(source: st.SafetensorsSource) -> list[str]:
    return [k for keys in source.shards.values() for k in keys]


# ----------------------------------------------------------------------------- pickled: file by file
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


def _average_pickled(selected, kind, *, weights, alpha, key, trust_pickle, keep_optimizer, drop, nonfinite, progress):
    coeffs = coefficients(weights, alpha, len(selected))
    chosen: list = []

    def extract(obj: Any, name: str) -> Mapping[str, Any]:
        if kind == "huggingface-bin":
            if key is not None:
                raise ValueError(f"Invalid key: {key!r}; a Hugging Face folder holds one set of weights")
            found = (None, None)
        else:
            fmt, entry = detect_pickled(obj, name, key)
            found = (fmt, entry)
        if not chosen:
            _check_drop(drop, found[1], obj, name)
            chosen.append(found)
        elif (getattr(found[0], "name", None), found[1]) != (getattr(chosen[0][0], "name", None), chosen[0][1]):
            raise CheckpointError(f"{name} is a {_what(*found)} but the first file is a {_what(*chosen[0])}; "
                                  "give checkpoints of one format")
        return obj if found[1] is None else obj[found[1]]

    def load(p: Path) -> Any:
        return _load_hf_bin(p) if kind == "huggingface-bin" else load_pickled(p, trust_pickle)

    items = ((str(p), load(p)) for p in selected)  # a generator: one file loaded at a time
    acc, newest, used, skipped, used_coeffs = stream(items, coeffs, nonfinite, extract, progress)
    averaged = acc.averaged_keys()
    state = acc.result(uniform=coeffs is None, renormalize=bool(skipped))
    fmt, entry = chosen[0]
    dropped: tuple[str, ...] = ()
    if fmt is None or entry is None:
        result: Any = state
    else:
        result, dropped = fmt.output(newest, entry, state, keep_optimizer)
        for path in drop:
            if _find(result, path)[0] is not None:
                result = _without(result, path)
                dropped += (path,)
    summary = AverageSummary(
        files=tuple(used), coefficients=tuple(used_coeffs), skipped=tuple(skipped), key=entry,
        averaged=averaged, copied=tuple(k for k in state if k not in averaged), dropped=dropped,
        format="huggingface" if kind == "huggingface-bin" else fmt.name,
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


def _check_drop(drop: Sequence[str], container: str | None, obj: Any, name: str) -> None:
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


# ----------------------------------------------------------------------------- the API
def _check_args(nonfinite, drop) -> None:
    check_nonfinite_arg(nonfinite)
    if isinstance(drop, str) or any(not isinstance(d, str) or not d for d in drop):
        raise TypeError(f"Invalid drop: {drop!r}; give a list of entry names such as ['extra_state.ema']")


def _prepare(paths, last, sort, key, drop):
    selection = select(paths, last, sort)
    kind = _one_kind(selection.paths)
    if kind in ("huggingface", "safetensors"):
        if key is not None:
            raise ValueError(f"Invalid key: {key!r}; a {kind} checkpoint holds one set of weights (key chooses "
                             "the entry of a checkpoint dict such as Lightning's or timm's)")
        if drop:
            raise ValueError(f"Invalid drop: {list(drop)!r}; a {kind} checkpoint holds only weights")
    return selection, kind


def average_checkpoints(
    paths: Sequence[str | os.PathLike],
    last: int | None = None,
    weights: str | Sequence[float] = "uniform",
    alpha: float = 0.9,
    *,
    sort: bool = True,
    key: str | None = None,
    trust_pickle: bool = False,
    keep_optimizer: bool = False,
    drop: Sequence[str] = (),
    nonfinite: str = "raise",
    progress: Callable[[int, str], None] | None = None,
) -> Any:
    """Average the weights of saved checkpoints, one file (or one tensor) at a time.

    Args:
        paths (sequence of path): checkpoint files or folders (see :func:`write_average`).
        last (int, optional): average only the ``last`` newest (default: all).
        weights (str or sequence of float, optional): ``"uniform"`` (LAWA), ``"exp"`` (the paper's
            EXP, newest weighted most, see :func:`lawa_optim.averaging.exp_coefficients`), or one
            coefficient per averaged file, newest first (default: ``"uniform"``).
        alpha (float, optional): EXP's decay, in (0, 1] (default: 0.9).
        sort (bool, optional): order the checkpoints naturally (``checkpoint-500`` before
            ``checkpoint-1000``); ``False`` keeps the order given (default: ``True``).
        key (str, optional): the entry holding the weights to average where a checkpoint has
            several: ``"state_dict"`` or ``"current_model_state"`` (Lightning), ``"state_dict"`` or
            ``"state_dict_ema"`` (timm), or any entry of a checkpoint dict. Default: Lightning's
            ``current_model_state`` when present (the raw weights under ``WeightAveraging``) else
            ``state_dict``; timm's ``state_dict``; fairseq's ``model``; else the whole file.
        trust_pickle (bool, optional): unpickle fully a file that ``torch.load(weights_only=True)``
            refuses. Only for files you trust: a crafted pickle runs code (default: ``False``).
        keep_optimizer (bool, optional): keep the newest checkpoint's optimizer and scheduler state
            instead of dropping it (default: ``False``).
        drop (sequence of str, optional): more entries of the newest checkpoint to leave out, as
            dotted paths, e.g. ``["extra_state.ema"]``; checked on the first file (default: none).
        nonfinite (str, optional): ``"raise"`` on a file holding NaN/Inf, or ``"skip"`` it with
            a warning and renormalize the others' coefficients (default: ``"raise"``).
        progress (callable, optional): called as ``progress(i, name)`` after each file is added
            (pickled formats) or each tensor is averaged (safetensors, ``name`` the tensor's).

    Returns:
        The average in memory: for pickled formats an object of the inputs' format (the state dict,
        or the newest checkpoint dict with the average under its weights entry and without its
        optimizer state); for safetensors files and HF folders the averaged state dict.

    Raises:
        CheckpointError: a file is missing, truncated, refused as unsafe, of another format, or its
            keys, shapes or dtypes differ from the first file's (the message names the file).
        ValueError, TypeError: an invalid argument (named in the message).

    Example:
        >>> avg = average_checkpoints([f"checkpoint{e}.pt" for e in range(1, 21)], last=6)  # doctest: +SKIP
        >>> torch.save(avg, "checkpoint_lawa.pt")  # doctest: +SKIP
    """
    return _average(paths, None, last=last, weights=weights, alpha=alpha, force=False, sort=sort, key=key,
                    trust_pickle=trust_pickle, keep_optimizer=keep_optimizer, drop=drop, nonfinite=nonfinite,
                    progress=progress)[0]


def write_average(
    paths: Sequence[str | os.PathLike],
    out: str | os.PathLike,
    last: int | None = None,
    weights: str | Sequence[float] = "uniform",
    alpha: float = 0.9,
    *,
    force: bool = False,
    sort: bool = True,
    key: str | None = None,
    trust_pickle: bool = False,
    keep_optimizer: bool = False,
    drop: Sequence[str] = (),
    nonfinite: str = "raise",
    progress: Callable[[int, str], None] | None = None,
) -> AverageSummary:
    """Average saved checkpoints and write the result atomically to ``out``, in the inputs' format.

    ``paths`` are checkpoint files (``torch.save`` files: plain state dicts, fairseq, Lightning
    ``.ckpt``, timm ``.pth.tar``; or ``.safetensors`` files), Hugging Face checkpoint folders, or
    folders of checkpoints (their numbered entries, see :mod:`lawa_optim.offline.select`).

    The output is of the inputs' format: for HF folders a folder ``AutoModel.from_pretrained``
    loads (safetensors, sharded like the newest input when it was; its config, generation config
    and tokenizer files copied; no optimizer or trainer state); for ``.safetensors`` a
    ``.safetensors`` file with the newest input's metadata; for Lightning a ``.ckpt`` that
    ``load_from_checkpoint`` loads; for timm a file ``timm.models.load_checkpoint`` loads.

    ``out`` must not exist as a folder, nor be one of the inputs, unless ``force=True``. On any
    error nothing is written; a crash while writing leaves ``out`` as it was. The other
    arguments are those of :func:`average_checkpoints`.

    Returns:
        An :class:`AverageSummary` of what was averaged, copied and dropped.

    Example:
        >>> write_average(["runs/out"], "runs/lawa", last=6)  # doctest: +SKIP
    """
    if out is None or isinstance(out, bool):
        raise TypeError(f"Invalid out: {out!r}; give the file or folder to write the average to")
    return _average(paths, Path(out), last=last, weights=weights, alpha=alpha, force=force, sort=sort, key=key,
                    trust_pickle=trust_pickle, keep_optimizer=keep_optimizer, drop=drop, nonfinite=nonfinite,
                    progress=progress)[1]


def _check_out(out: Path, selected: Sequence[Path], kind: str, force: bool) -> None:
    if kind == "huggingface" or kind == "huggingface-bin":
        if out.exists() and not out.is_dir():
            raise ValueError(f"Invalid out: {str(out)!r} is a file; Hugging Face checkpoints average into a folder")
        if out.exists() and not force:
            raise ValueError(f"Invalid out: {str(out)!r} already exists; pick a new folder, or pass force=True "
                             "to replace it")
    elif out.is_dir():
        raise ValueError(f"Invalid out: {str(out)!r} is a directory; give a file name such as checkpoint_lawa.pt")
    if force:
        return
    for p in selected:
        same = os.path.realpath(p) == os.path.realpath(out) or (
            out.exists() and p.exists() and os.path.samefile(p, out)
        )
        if same:
            raise ValueError(f"Invalid out: {str(out)!r} is also an input ({str(p)!r}); writing there would "
                             "replace a checkpoint of the trajectory. Pick another file, or pass force=True")


def _average(paths, out: Path | None, *, last, weights, alpha, force, sort, key, trust_pickle, keep_optimizer, drop,
             nonfinite, progress) -> tuple[Any, AverageSummary]:
    _check_args(nonfinite, drop)
    selection, kind = _prepare(paths, last, sort, key, drop)
    selected = selection.paths
    if out is not None:
        _check_out(out, selected, kind, force)
    ignored = tuple(map(str, selection.ignored))
    if kind in ("pickled", "huggingface-bin"):
        result, summary = _average_pickled(
            selected, kind, weights=weights, alpha=alpha, key=key, trust_pickle=trust_pickle,
            keep_optimizer=keep_optimizer, drop=drop, nonfinite=nonfinite, progress=progress)
        summary = dataclasses.replace(summary, ignored=ignored)
        if out is None:
            return result, summary
        if kind == "huggingface-bin":
            source = _MemorySource(result, selected[-1])
            _write_hf_folder(out, [source], source, lambda *_: ((k, result[k]) for k in _st_order(source)), summary,
                             force)
        else:
            atomic_save(result, out)
        return result, dataclasses.replace(summary, out=str(out))

    sources = _open_sources(selected, kind)  # every header read and compared before any weight
    newest = sources[-1]
    order = _st_order(newest)

    def tensors(used, coeffs, total):
        return _averaged_tensors(used, order, coeffs, total, nonfinite, progress)

    if out is None:
        result, used, skipped, coeffs = _with_skips(sources, weights, alpha, nonfinite,
                                                    lambda *a: OrderedDict(tensors(*a)))
        return result, dataclasses.replace(_st_summary(sources, used, skipped, coeffs, kind), ignored=ignored)
    if kind == "safetensors":
        def run(used, coeffs, total):
            atomic_write_bytes(out, lambda f: st.write_shard(f, order, newest.layout, newest.metadata,
                                                             tensors(used, coeffs, total)))
        _, used, skipped, coeffs = _with_skips(sources, weights, alpha, nonfinite, run)
        summary = _st_summary(sources, used, skipped, coeffs, kind)
    else:
        summary = _write_hf_folder(out, sources, newest, tensors, None, force, weights=weights, alpha=alpha,
                                   nonfinite=nonfinite)
    return None, dataclasses.replace(summary, ignored=ignored, out=str(out))


class _MemorySource(st.SafetensorsSource):
    """An averaged state dict in memory, shaped like the HF folder of ``pytorch_model.bin`` it came from."""

    kind = "huggingface"

    def __init__(self, state: Mapping[str, Any], folder: Path) -> None:
        self.path, self.name, self.metadata = folder, str(folder), {"format": "pt"}
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


def _write_hf_folder(out: Path, sources, newest, tensors, summary, force, *, weights="uniform", alpha=0.9,
                     nonfinite="raise") -> AverageSummary:
    """Write the averaged folder into a hidden temporary folder beside ``out``, then rename it to ``out``."""
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent))
    try:
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
            _, used, skipped, coeffs = _with_skips(sources, weights, alpha, nonfinite, run)
            summary = _st_summary(sources, used, skipped, coeffs, "huggingface")
        else:
            run(None, None, None)
        st.copy_hf_side_files(Path(summary.files[-1]), tmp)
        (tmp / PROVENANCE).write_text(json.dumps(
            {"files": list(summary.files), "coefficients": list(summary.coefficients),
             "skipped": list(summary.skipped)}, indent=2) + "\n")
        st.fsync_tree(tmp)
        os.chmod(tmp, 0o777 & ~_umask())
        if out.exists():  # force=True: move the old folder aside, the new one in, then delete the old
            old = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".old", dir=out.parent))
            os.replace(out, old / out.name)
            os.replace(tmp, out)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return summary


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask

