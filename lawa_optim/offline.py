"""Offline LAWA: average a saved trajectory of checkpoints, streaming one file at a time.

The paper's own RoBERTa code averages offline: keep the epoch checkpoints, then average the k
latest. :func:`average_checkpoints` does that for plain PyTorch state dicts and for checkpoint
dicts that hold one under a key (``{"model": state_dict, ...}``, as fairseq saves them), and
:func:`write_average` writes the result atomically. The numerics, for every entry of the state
dict:

- floating tensors (fp16, bf16, fp32, fp64; complex too) are accumulated in float64 (complex128),
  whatever their stored dtype, and cast back to the stored dtype once, at the end;
- integer and bool tensors (``num_batches_tracked``, masks, step counters) and non-tensor
  entries are copied from the newest checkpoint, never divided;
- tied weights (one tensor under two keys, e.g. RoBERTa's embedding and LM head) share one sum
  and stay one tensor in the output, as long as every file ties them;
- files whose keys, shapes or dtypes differ are refused, naming the file and the keys.

For a checkpoint dict the other entries (config, ``extra_state``, ...) are the newest file's,
without ``last_optimizer_state`` and without the entries named in ``drop``.

Files are read with ``torch.load(weights_only=True)`` (memory-mapped where the format allows, so a
checkpoint's optimizer state is never read from disk) and only one is held at a time, beside the
float64 sums. ``argparse.Namespace`` (fairseq-train's config of a legacy architecture) is the one
class accepted beyond tensors and plain containers; a file that needs anything else is refused
unless ``trust_pickle=True``.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import os
import re
import warnings
from collections import OrderedDict
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from .averaging import resolve_weights, window_coefficients
from .io import CheckpointError, UnsafeCheckpointError, atomic_save, safe_load

__all__ = ["AverageSummary", "average_checkpoints", "average_state_dicts", "natural_key", "write_average"]

# Classes accepted when loading besides tensors and plain containers: fairseq-train stores a legacy
# architecture's config (e.g. roberta_base) as an argparse.Namespace in cfg["model"]; unpickling one
# only sets attributes, so it needs no trust_pickle.
SAFE_CLASSES = (argparse.Namespace,)
# Top-level entries of a fairseq checkpoint that hold optimizer state: dropped from the average
# (they belong to the newest raw weights, not to the average, and are the bulk of the file).
OPTIMIZER_KEYS = ("last_optimizer_state",)
_NONFINITE = ("raise", "skip")
_MAX_LISTED = 8


@dataclass(frozen=True)
class AverageSummary:
    """What :func:`write_average` (or :func:`average_checkpoints`) did.

    Attributes:
        files: the checkpoints averaged, oldest first.
        coefficients: the weight each of ``files`` got (sums to 1).
        skipped: files left out because they hold NaN/Inf (``nonfinite="skip"``).
        key: the entry holding the state dict (``"model"`` for fairseq), or ``None`` for a plain one.
        averaged: names of the floating tensors averaged.
        copied: names of the entries copied from the newest checkpoint (integer/bool tensors and
            non-tensor values).
        dropped: top-level entries of the newest checkpoint left out of the result.
        out: the file written (``None`` for :func:`average_checkpoints`).
    """

    files: tuple[str, ...]
    coefficients: tuple[float, ...]
    skipped: tuple[str, ...]
    key: str | None
    averaged: tuple[str, ...]
    copied: tuple[str, ...]
    dropped: tuple[str, ...]
    out: str | None = None


def natural_key(path: str | os.PathLike) -> tuple:
    """Sort key putting ``checkpoint9.pt`` before ``checkpoint10.pt`` (digit runs compare as numbers).

    Example:
        >>> sorted(["ckpt10.pt", "ckpt9.pt", "ckpt_best.pt"], key=natural_key)
        ['ckpt9.pt', 'ckpt10.pt', 'ckpt_best.pt']
    """
    parts = re.split(r"(\d+)", str(path))
    return tuple((0, int(p), p) if p.isdigit() else (1, 0, p) for p in parts)


def _describe(tensor: torch.Tensor) -> str:
    return f"{tuple(tensor.shape)} {str(tensor.dtype).replace('torch.', '')}"


def _listing(keys: Iterable[str]) -> str:
    keys = sorted(keys)
    shown = ", ".join(repr(k) for k in keys[:_MAX_LISTED])
    return shown + (f" and {len(keys) - _MAX_LISTED} more" if len(keys) > _MAX_LISTED else "")


def _is_averaged(value: Any) -> bool:
    return isinstance(value, torch.Tensor) and (value.is_floating_point() or value.is_complex())


def _ties(sd: Mapping[str, Any]) -> dict[str, str]:
    """Keys whose tensor is the very same view as an earlier key's (tied weights) -> that earlier key."""
    first: dict[tuple, str] = {}
    ties = {}
    for key, value in sd.items():
        if _is_averaged(value) and value.numel() > 0:
            view = (value.untyped_storage().data_ptr(), value.storage_offset(), value.shape, value.stride(),
                    value.dtype, value.device)
            if view in first:
                ties[key] = first[view]
            else:
                first[view] = key
    return ties


class _Accumulator:
    """Running weighted sums of the floating tensors of state dicts that all share one layout."""

    def __init__(self) -> None:
        self.layout: dict[str, str | None] | None = None  # key -> "shape dtype" or None (non-tensor)
        self.first_name = ""
        self.sums: dict[str, torch.Tensor] = {}
        self.tied: dict[str, str] | None = None  # tied key -> key it shares one sum with, while all files tie them
        self.dtypes: dict[str, torch.dtype] = {}
        self.newest_rest: dict[str, Any] = {}
        self.newest_metadata: Any = None
        self.total = 0.0
        self.count = 0

    def check(self, sd: Mapping[str, Any], name: str) -> None:
        """Refuse ``sd`` unless it has the keys, shapes and dtypes of the first state dict."""
        if not isinstance(sd, Mapping):
            raise CheckpointError(f"{name} holds a {type(sd).__name__}, not a state dict (a mapping of tensors)")
        for key, value in sd.items():
            if isinstance(value, torch.Tensor) and (value.layout != torch.strided or value.is_quantized):
                raise CheckpointError(
                    f"{name}: tensor {key!r} is {value.layout}{' quantized' if value.is_quantized else ''}; only "
                    "dense tensors can be averaged (convert it with .to_dense()/.dequantize() first)"
                )
        layout = {k: (_describe(v) if isinstance(v, torch.Tensor) else None) for k, v in sd.items()}
        if self.layout is None:
            if not any(_is_averaged(v) for v in sd.values()):
                raise CheckpointError(f"{name} holds no floating-point tensors: nothing to average")
            self.layout, self.first_name = layout, name
            return
        missing, extra = set(self.layout) - set(layout), set(layout) - set(self.layout)
        if missing or extra:
            parts = ([f"lacks {_listing(missing)}"] if missing else []) + (
                [f"has extra {_listing(extra)}"] if extra else []
            )
            raise CheckpointError(
                f"{name} does not match {self.first_name}: it {' and '.join(parts)}; "
                "only checkpoints of one model can be averaged"
            )
        differ = [k for k in self.layout if self.layout[k] != layout[k]]
        if differ:
            shown = "; ".join(
                f"{k!r}: {layout[k] or 'not a tensor'} vs {self.layout[k] or 'not a tensor'}"
                for k in differ[:_MAX_LISTED]
            )
            more = f" and {len(differ) - _MAX_LISTED} more" if len(differ) > _MAX_LISTED else ""
            raise CheckpointError(
                f"{name} does not match {self.first_name}: shapes or dtypes differ for {shown}{more}; "
                "only checkpoints of one model can be averaged"
            )

    def add(self, sd: Mapping[str, Any], coefficient: float | None) -> None:
        """Add ``coefficient * sd`` (or plain ``sd`` for uniform weights) to the sums; ``sd`` is the newest."""
        ties = _ties(sd)
        if self.tied is None:
            self.tied = ties
        for key, shared in list(self.tied.items()):
            if ties.get(key) != shared:  # this file unties them: from now on two sums (equal so far)
                self.sums[key] = self.sums[shared].clone()
                self.dtypes[key] = self.dtypes[shared]
                del self.tied[key]
        for key, value in sd.items():
            if not _is_averaged(value) or key in self.tied:
                continue
            acc = self.sums.get(key)
            if acc is None:
                acc_dtype = torch.complex128 if value.is_complex() else torch.float64
                acc = self.sums[key] = torch.zeros(value.shape, dtype=acc_dtype, device=value.device)
                self.dtypes[key] = value.dtype
            if coefficient is None:
                acc.add_(value)  # computed in float64: exact sums keep the uniform mean exact
            else:
                acc.add_(value, alpha=coefficient)
        self.newest_rest = {k: v for k, v in sd.items() if not _is_averaged(v)}
        self.newest_metadata = getattr(sd, "_metadata", None)
        self.total += 1.0 if coefficient is None else coefficient
        self.count += 1

    def result(self, uniform: bool, renormalize: bool) -> OrderedDict:
        """The average, in the stored dtypes and the key order of the state dicts."""
        assert self.layout is not None
        out: OrderedDict = OrderedDict()
        for key in self.layout:
            if self.tied and key in self.tied:
                out[key] = out[self.tied[key]]  # still one tensor: torch.save stores it once
            elif key in self.sums:
                acc = self.sums.pop(key)  # free each float64 sum as soon as it is cast back
                if uniform:
                    acc.div_(self.count)
                elif renormalize:
                    acc.div_(self.total)
                out[key] = acc.to(self.dtypes[key])
            else:
                out[key] = self.newest_rest[key]
        if self.newest_metadata is not None:
            out._metadata = self.newest_metadata  # type: ignore[attr-defined]  # load_state_dict's versions
        return out


def _nonfinite_keys(sd: Mapping[str, Any]) -> list[str]:
    return [k for k, v in sd.items() if _is_averaged(v) and not bool(torch.isfinite(v).all())]


def _check_nonfinite_arg(nonfinite: str) -> None:
    if nonfinite not in _NONFINITE:
        raise ValueError(f"Invalid nonfinite: {nonfinite!r}; use 'raise' (stop with an error) or 'skip' "
                         "(leave such checkpoints out with a warning)")


def _coefficients(weights: str | Sequence[float], alpha: float, n: int) -> list[float] | None:
    """Per-input coefficients, OLDEST first (``None``: uniform, summed and divided by the count)."""
    kind, coeffs = resolve_weights(weights, n, alpha)
    newest_first = window_coefficients(kind, coeffs, alpha, n)
    return None if newest_first is None else list(reversed(newest_first))


def _stream(
    items: Iterable[tuple[str, Any]],
    coefficients: list[float] | None,
    nonfinite: str,
    extract: Callable[[Any, str], Mapping[str, Any]],
    progress: Callable[[int, str], None] | None,
) -> tuple[_Accumulator, Any, list[str], list[str], list[float]]:
    """Accumulate ``items`` (name, loaded object), oldest first; returns what the result needs.

    Returns ``(accumulator, newest checkpoint without its state dict, names used, names skipped,
    normalized coefficients of the names used)``.
    """
    acc = _Accumulator()
    newest_obj, used, skipped, used_coeffs = None, [], [], []
    for i, (name, obj) in enumerate(items):
        sd = extract(obj, name)
        acc.check(sd, name)
        bad = _nonfinite_keys(sd)
        if bad:
            if nonfinite == "raise":
                raise CheckpointError(f"{name} holds NaN or Inf in {_listing(bad)}; remove it from the list, "
                                      "or pass nonfinite='skip' (--nonfinite skip) to leave such files out")
            warnings.warn(f"Skipping {name}: it holds NaN or Inf in {_listing(bad)}", RuntimeWarning, stacklevel=3)
            skipped.append(name)
        else:
            coefficient = None if coefficients is None else coefficients[i]
            acc.add(sd, coefficient)
            used.append(name)
            used_coeffs.append(1.0 if coefficient is None else coefficient)
            # keep the newest checkpoint's other entries, not its weights (one file in memory at a time)
            newest_obj = {k: (None if v is sd else v) for k, v in obj.items()} if obj is not sd else None
        del sd, obj
        if progress is not None:
            progress(i, name)
    if not used:
        raise CheckpointError(
            f"All {len(skipped)} checkpoints hold NaN or Inf ({_listing(skipped)}): nothing to average"
        )
    total = math.fsum(used_coeffs)
    return acc, newest_obj, used, skipped, [c / total for c in used_coeffs]


def average_state_dicts(
    state_dicts: Sequence[Mapping[str, Any]],
    weights: str | Sequence[float] = "uniform",
    alpha: float = 0.9,
    nonfinite: str = "raise",
) -> OrderedDict:
    """Average in-memory state dicts (oldest first) with the numerics of :func:`average_checkpoints`.

    Args:
        state_dicts (sequence of dict): ``model.state_dict()``-like mappings, oldest first.
        weights (str or sequence of float, optional): ``"uniform"`` (LAWA), ``"exp"`` (the paper's
            EXP: the newest gets the largest coefficient, see
            :func:`lawa_optim.averaging.exp_coefficients`), or one coefficient per state dict,
            newest first (default: ``"uniform"``).
        alpha (float, optional): EXP's decay, in (0, 1] (default: 0.9).
        nonfinite (str, optional): a state dict holding NaN/Inf makes this ``"raise"`` a
            :class:`~lawa_optim.io.CheckpointError`, or ``"skip"`` it with a warning (the others'
            coefficients are renormalized) (default: ``"raise"``).

    Returns:
        An ``OrderedDict`` with the keys of the inputs: floating tensors averaged (in float64,
        cast back to their dtype), everything else copied from the newest state dict.

    Example:
        >>> a, b = {"w": torch.tensor([1.0]), "n": torch.tensor(1)}, {"w": torch.tensor([2.0]), "n": torch.tensor(2)}
        >>> avg = average_state_dicts([a, b])
        >>> avg["w"], avg["n"]
        (tensor([1.5000]), tensor(2))
    """
    _check_nonfinite_arg(nonfinite)
    state_dicts = list(state_dicts)
    if not state_dicts:
        raise ValueError("Invalid state_dicts: an empty list; give at least one state dict")
    coefficients = _coefficients(weights, alpha, len(state_dicts))
    items = ((f"state dict #{i}", sd) for i, sd in enumerate(state_dicts))
    acc, _, _, skipped, _ = _stream(items, coefficients, nonfinite, lambda obj, name: obj, None)
    return acc.result(uniform=coefficients is None, renormalize=bool(skipped))


def _load(path: Path, trust_pickle: bool) -> Any:
    try:
        return safe_load(path, mmap=True, allow=SAFE_CLASSES)
    except UnsafeCheckpointError as err:
        if not trust_pickle:
            raise UnsafeCheckpointError(
                f"{err}. If you made this file yourself or trust its source, pass trust_pickle=True "
                "(--trust-pickle on the command line) to unpickle it fully, which can run code"
            ) from err
    try:  # the user vouched for the file: full unpickling, as torch.load did before torch 2.6
        return torch.load(path, map_location="cpu", weights_only=False)
    except Exception as err:
        raise CheckpointError(f"Checkpoint {str(path)!r} could not be unpickled ({type(err).__name__}: {err})") from err


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
            keys = f"; {parent or 'its top level'} holds {_listing(map(str, holder))}" if isinstance(
                holder, Mapping) else ""
            raise ValueError(f"Invalid drop: {path!r} is not in {name}{keys}")


def _extractor(key: str | None, drop: Sequence[str] = ()) -> Callable[[Any, str], Mapping[str, Any]]:
    """``extract(obj, name)``: the state dict inside a loaded checkpoint; fixes the format on first use.

    On the first file it also checks that the entries to ``drop`` exist (an error before any averaging).
    """
    chosen: list[str | None] = []

    def detect(obj: Any, name: str) -> str | None:
        if not isinstance(obj, Mapping):
            raise CheckpointError(f"{name} holds a {type(obj).__name__}, not a state dict or a checkpoint dict")
        if key is not None:
            if key not in obj:
                raise CheckpointError(f"{name} has no entry {key!r}; its top-level keys are {_listing(map(str, obj))}")
            return key
        if isinstance(obj.get("model"), Mapping):
            return "model"
        return None

    def extract(obj: Any, name: str) -> Mapping[str, Any]:
        found = detect(obj, name)
        if not chosen:
            _check_drop(drop, found, obj, name)
            chosen.append(found)
        elif found != chosen[0]:
            raise CheckpointError(
                f"{name} is a {'plain state dict' if found is None else f'checkpoint with {found!r}'} but the "
                f"first file is a {'plain state dict' if chosen[0] is None else f'checkpoint with {chosen[0]!r}'}; "
                "give checkpoints of one format"
            )
        return obj if found is None else obj[found]

    extract.chosen = chosen  # type: ignore[attr-defined]
    return extract


def _select(paths: Sequence[str | os.PathLike], last: int | None, sort: bool) -> list[Path]:
    if isinstance(paths, (str, os.PathLike)):
        raise TypeError(f"Invalid paths: {paths!r}; give a list of checkpoint files, oldest first")
    chosen = [Path(p) for p in paths]
    if not chosen:
        raise ValueError("Invalid paths: no checkpoints given; give at least one file")
    seen: dict[str, Path] = {}
    for p in chosen:
        real = os.path.realpath(p)
        if real in seen:
            raise ValueError(f"Invalid paths: {str(p)!r} is given twice (as {str(seen[real])!r} too); "
                             "give each checkpoint once")
        seen[real] = p
    if sort:
        chosen.sort(key=natural_key)
    if last is not None:
        if isinstance(last, bool) or not isinstance(last, int) or last < 1:
            raise ValueError(f"Invalid last: {last!r}; it must be a positive integer (how many newest to average)")
        if last > len(chosen):
            raise ValueError(f"Invalid last: {last} but only {len(chosen)} checkpoints were given; "
                             "give more files or a smaller last")
        chosen = chosen[-last:]
    return chosen


def _average_files(
    paths, *, last, sort, weights, alpha, key, trust_pickle, keep_optimizer, drop, nonfinite, progress
) -> tuple[Any, AverageSummary]:
    _check_nonfinite_arg(nonfinite)
    if isinstance(drop, str) or any(not isinstance(d, str) or not d for d in drop):
        raise TypeError(f"Invalid drop: {drop!r}; give a list of entry names such as ['extra_state.ema']")
    chosen = _select(paths, last, sort)
    coefficients = _coefficients(weights, alpha, len(chosen))
    extract = _extractor(key, drop)
    items = ((str(p), _load(p, trust_pickle)) for p in chosen)  # a generator: one file loaded at a time
    acc, newest, used, skipped, coeffs = _stream(items, coefficients, nonfinite, extract, progress)
    averaged = tuple(k for k in acc.layout if k in acc.sums or k in (acc.tied or {}))
    state = acc.result(uniform=coefficients is None, renormalize=bool(skipped))
    container = extract.chosen[0]  # type: ignore[attr-defined]
    dropped: tuple[str, ...] = ()
    if container is None:
        result: Any = state
    else:
        result = {k: v for k, v in newest.items() if keep_optimizer or k not in OPTIMIZER_KEYS}
        dropped = tuple(k for k in newest if k not in result)
        for path in drop:
            if _find(result, path)[0] is not None:
                result = _without(result, path)
                dropped += (path,)
        result[container] = state
    summary = AverageSummary(
        files=tuple(used), coefficients=tuple(coeffs), skipped=tuple(skipped), key=container,
        averaged=averaged, copied=tuple(k for k in state if k not in averaged), dropped=dropped,
    )
    return result, summary


def average_checkpoints(
    paths: Sequence[str | os.PathLike],
    last: int | None = None,
    weights: str | Sequence[float] = "uniform",
    alpha: float = 0.9,
    *,
    sort: bool = False,
    key: str | None = None,
    trust_pickle: bool = False,
    keep_optimizer: bool = False,
    drop: Sequence[str] = (),
    nonfinite: str = "raise",
    progress: Callable[[int, str], None] | None = None,
) -> Any:
    """Average the weights of saved checkpoints, loading one file at a time.

    Args:
        paths (sequence of path): checkpoint files, oldest first (or any order with ``sort=True``).
        last (int, optional): average only the ``last`` newest of ``paths`` (default: all).
        weights (str or sequence of float, optional): ``"uniform"`` (LAWA), ``"exp"`` (the paper's
            EXP, newest weighted most, see :func:`lawa_optim.averaging.exp_coefficients`), or one
            coefficient per averaged file, newest first (default: ``"uniform"``).
        alpha (float, optional): EXP's decay, in (0, 1] (default: 0.9).
        sort (bool, optional): order ``paths`` naturally (``checkpoint9`` before ``checkpoint10``)
            instead of as given (default: ``False``).
        key (str, optional): the entry holding the state dict, e.g. ``"state_dict"`` for Lightning;
            by default ``"model"`` when the files have a mapping there (fairseq), else the whole
            file is the state dict (default: ``None``).
        trust_pickle (bool, optional): unpickle fully a file that ``torch.load(weights_only=True)``
            refuses. Only for files you trust: a crafted pickle runs code (default: ``False``).
        keep_optimizer (bool, optional): keep the newest checkpoint's ``last_optimizer_state``
            (fairseq) instead of dropping it (default: ``False``).
        drop (sequence of str, optional): more entries of the newest checkpoint to leave out, as
            dotted paths, e.g. ``["extra_state.ema"]`` (a training-time copy of a model that the
            averaged file does not need); checked on the first file (default: none).
        nonfinite (str, optional): ``"raise"`` on a file holding NaN/Inf, or ``"skip"`` it with
            a warning and renormalize the others' coefficients (default: ``"raise"``).
        progress (callable, optional): called as ``progress(i, path)`` after each file.

    Returns:
        An object of the inputs' format: the averaged state dict, or the newest checkpoint dict
        with its ``key`` entry replaced by the average (and its optimizer state dropped).

    Raises:
        CheckpointError: a file is missing, truncated, refused as unsafe, of another format, or its
            keys, shapes or dtypes differ from the first file's (the message names the file).
        ValueError, TypeError: an invalid argument (named in the message).

    Example:
        >>> avg = average_checkpoints([f"checkpoint{e}.pt" for e in range(1, 21)], last=6)  # doctest: +SKIP
        >>> torch.save(avg, "checkpoint_lawa.pt")  # doctest: +SKIP
    """
    return _average_files(
        paths, last=last, sort=sort, weights=weights, alpha=alpha, key=key, trust_pickle=trust_pickle,
        keep_optimizer=keep_optimizer, drop=drop, nonfinite=nonfinite, progress=progress,
    )[0]


def write_average(
    paths: Sequence[str | os.PathLike],
    out: str | os.PathLike,
    last: int | None = None,
    weights: str | Sequence[float] = "uniform",
    alpha: float = 0.9,
    *,
    force: bool = False,
    sort: bool = False,
    key: str | None = None,
    trust_pickle: bool = False,
    keep_optimizer: bool = False,
    drop: Sequence[str] = (),
    nonfinite: str = "raise",
    progress: Callable[[int, str], None] | None = None,
) -> AverageSummary:
    """:func:`average_checkpoints`, then write the result atomically to ``out``.

    ``out`` must not be one of the inputs unless ``force=True``. On any error nothing is written;
    a crash while writing leaves ``out`` as it was (see :func:`lawa_optim.io.atomic_save`). The
    other arguments are those of :func:`average_checkpoints`.

    Returns:
        An :class:`AverageSummary` of what was averaged, copied and dropped.

    Example:
        >>> write_average(["ckpt18.pt", "ckpt19.pt", "ckpt20.pt"], "checkpoint_lawa.pt")  # doctest: +SKIP
    """
    out = Path(out)
    if out.is_dir():
        raise ValueError(f"Invalid out: {str(out)!r} is a directory; give a file name such as checkpoint_lawa.pt")
    if not force and not isinstance(paths, (str, os.PathLike)):
        for p in paths:
            same = os.path.realpath(p) == os.path.realpath(out) or (
                out.exists() and Path(p).exists() and os.path.samefile(p, out)
            )
            if same:
                raise ValueError(f"Invalid out: {str(out)!r} is also an input ({str(p)!r}); writing there would "
                                 "replace a checkpoint of the trajectory. Pick another file, or pass force=True")
    result, summary = _average_files(
        paths, last=last, sort=sort, weights=weights, alpha=alpha, key=key, trust_pickle=trust_pickle,
        keep_optimizer=keep_optimizer, drop=drop, nonfinite=nonfinite, progress=progress,
    )
    atomic_save(result, out)
    return dataclasses.replace(summary, out=str(out))
