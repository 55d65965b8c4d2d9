"""The summing maths of offline LAWA: float64 sums, cast back once, for whole state dicts or one tensor.

Two ways through the same numerics, for every entry of a state dict:

- floating tensors (fp16, bf16, fp32, fp64; complex too) are accumulated in float64 (complex128),
  whatever their stored dtype, and cast back to the stored dtype once, at the end; uniform weights
  are a plain sum divided by the count, other weights ``sum(c_i * x_i)`` (divided by the sum of the
  coefficients used when a non-finite checkpoint was skipped);
- integer and bool tensors (``num_batches_tracked``, masks, step counters) and non-tensor entries
  are copied from the newest checkpoint, never divided.

:class:`Accumulator` adds whole state dicts, one file after the other (pickled formats, where a
file is loaded at once): the float64 sums of every tensor are held. :func:`average_pieces` sums
one piece of one tensor over all files at a time (safetensors, which can be read at any offset):
one float64 piece of a few MiB is held. Both give bit-identical results for the same inputs.
"""

from __future__ import annotations

import math
import warnings
from collections import OrderedDict
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import Any

import torch

from ..averaging import resolve_weights, window_coefficients
from ..io import CheckpointError

__all__ = ["Accumulator", "average_pieces", "average_state_dicts", "coefficients", "is_averaged", "listing"]

_NONFINITE = ("raise", "skip")
_MAX_LISTED = 8


def describe(tensor: torch.Tensor) -> str:
    return f"{tuple(tensor.shape)} {str(tensor.dtype).replace('torch.', '')}"


def listing(keys: Iterable[str]) -> str:
    """``'a', 'b' and 3 more``: a short, sorted list of names for error messages."""
    keys = sorted(keys)
    shown = ", ".join(repr(k) for k in keys[:_MAX_LISTED])
    return shown + (f" and {len(keys) - _MAX_LISTED} more" if len(keys) > _MAX_LISTED else "")


def is_averaged(value: Any) -> bool:
    return isinstance(value, torch.Tensor) and (value.is_floating_point() or value.is_complex())


def _sum_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.complex128 if dtype.is_complex else torch.float64


def check_nonfinite_arg(nonfinite: str) -> None:
    if nonfinite not in _NONFINITE:
        raise ValueError(f"Invalid nonfinite: {nonfinite!r}; use 'raise' (stop with an error) or 'skip' "
                         "(leave such checkpoints out with a warning)")


def coefficients(weights: str | Sequence[float], alpha: float, n: int) -> list[float] | None:
    """Per-input coefficients, OLDEST first (``None``: uniform, summed and divided by the count)."""
    kind, coeffs = resolve_weights(weights, n, alpha)
    newest_first = window_coefficients(kind, coeffs, alpha, n)
    return None if newest_first is None else list(reversed(newest_first))


def nonfinite_error(name: str, bad: Iterable[str]) -> CheckpointError:
    return CheckpointError(f"{name} holds NaN or Inf in {listing(bad)}; remove it from the list, "
                           "or pass nonfinite='skip' (--nonfinite skip) to leave such files out")


def warn_skipped(name: str, bad: Iterable[str]) -> None:
    warnings.warn(f"Skipping {name}: it holds NaN or Inf in {listing(bad)}", RuntimeWarning, stacklevel=4)


# Elements per piece of :func:`average_pieces`: a float64 sum of 2 MiB and its input stay in the cache.
CHUNK = 1 << 18


def average_pieces(
    read_into: Callable[[int, int, torch.Tensor], None], count: int, numel: int, dtype: torch.dtype,
    coeffs: Sequence[float] | None, total: float | None = None, chunk: int = CHUNK,
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """The average of one tensor over ``count`` checkpoints, piece by piece (flattened, in order).

    ``read_into(i, start, out)`` fills the 1-D ``out`` with elements ``start ..`` of checkpoint
    ``i``'s tensor (oldest first). ``coeffs``: the checkpoints' coefficients (``None``: uniform,
    the sum divided by ``count``); a weighted sum is divided by ``total`` when given (the
    coefficients' sum, after a checkpoint was skipped). Yields ``(sum, average)`` per piece: the
    float64 average (for checks) and the average in ``dtype``, both reused buffers (use them before
    taking the next). The same operations, element by element, as :class:`Accumulator`, so both
    give the same bits.
    """
    if numel == 0:
        yield torch.empty(0, dtype=_sum_dtype(dtype)), torch.empty(0, dtype=dtype)
        return
    size = min(chunk, numel)
    acc_all = torch.empty(size, dtype=_sum_dtype(dtype))
    buf_all = torch.empty(size, dtype=dtype)
    out_all = torch.empty(size, dtype=dtype)
    for start in range(0, numel, chunk):
        m = min(chunk, numel - start)
        acc, buf, out = acc_all[:m], buf_all[:m], out_all[:m]
        for i in range(count):
            read_into(i, start, buf)
            if i == 0:
                acc.copy_(buf)  # exactly 0 + x
                if coeffs is not None:
                    acc.mul_(coeffs[0])
            elif coeffs is None:
                acc.add_(buf)  # in float64: exact sums keep the uniform mean exact
            else:
                acc.add_(buf, alpha=coeffs[i])
        if coeffs is None:
            acc.div_(count)
        elif total is not None:
            acc.div_(total)
        out.copy_(acc)  # rounded once to the stored dtype
        yield acc, out


def _ties(sd: Mapping[str, Any]) -> dict[str, str]:
    """Keys whose tensor is the very same view as an earlier key's (tied weights) -> that earlier key."""
    first: dict[tuple, str] = {}
    ties = {}
    for key, value in sd.items():
        if is_averaged(value) and value.numel() > 0:
            view = (value.untyped_storage().data_ptr(), value.storage_offset(), value.shape, value.stride(),
                    value.dtype, value.device)
            if view in first:
                ties[key] = first[view]
            else:
                first[view] = key
    return ties


class Accumulator:
    """Running weighted sums of the floating tensors of state dicts that all share one layout.

    Tied weights (one tensor under two keys, e.g. an embedding and an LM head) share one sum and
    stay one tensor in the result, as long as every state dict ties them.
    """

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
        layout = {k: (describe(v) if isinstance(v, torch.Tensor) else None) for k, v in sd.items()}
        if self.layout is None:
            if not any(is_averaged(v) for v in sd.values()):
                raise CheckpointError(f"{name} holds no floating-point tensors: nothing to average")
            self.layout, self.first_name = layout, name
            return
        check_same_layout(self.layout, layout, self.first_name, name)

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
            if not is_averaged(value) or key in self.tied:
                continue
            acc = self.sums.get(key)
            if acc is None:
                acc = self.sums[key] = torch.zeros(value.shape, dtype=_sum_dtype(value.dtype), device=value.device)
                self.dtypes[key] = value.dtype
            if coefficient is None:
                acc.add_(value)  # computed in float64: exact sums keep the uniform mean exact
            else:
                acc.add_(value, alpha=coefficient)
        self.newest_rest = {k: v for k, v in sd.items() if not is_averaged(v)}
        self.newest_metadata = getattr(sd, "_metadata", None)
        self.total += 1.0 if coefficient is None else coefficient
        self.count += 1

    def averaged_keys(self) -> tuple[str, ...]:
        assert self.layout is not None
        return tuple(k for k in self.layout if k in self.sums or k in (self.tied or {}))

    def result(self, uniform: bool, renormalize: bool) -> OrderedDict:
        """The average, in the stored dtypes and the key order of the state dicts (frees the sums)."""
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


def check_same_layout(first: Mapping[str, Any], layout: Mapping[str, Any], first_name: str, name: str) -> None:
    """Refuse ``layout`` (key -> description) unless it equals ``first``'s, naming the keys that differ."""
    missing, extra = set(first) - set(layout), set(layout) - set(first)
    if missing or extra:
        parts = ([f"lacks {listing(missing)}"] if missing else []) + ([f"has extra {listing(extra)}"] if extra else [])
        raise CheckpointError(
            f"{name} does not match {first_name}: it {' and '.join(parts)}; "
            "only checkpoints of one model can be averaged"
        )
    differ = [k for k in first if first[k] != layout[k]]
    if differ:
        shown = "; ".join(f"{k!r}: {layout[k] or 'not a tensor'} vs {first[k] or 'not a tensor'}"
                          for k in differ[:_MAX_LISTED])
        more = f" and {len(differ) - _MAX_LISTED} more" if len(differ) > _MAX_LISTED else ""
        raise CheckpointError(
            f"{name} does not match {first_name}: shapes or dtypes differ for {shown}{more}; "
            "only checkpoints of one model can be averaged"
        )


def nonfinite_keys(sd: Mapping[str, Any]) -> list[str]:
    return [k for k, v in sd.items() if is_averaged(v) and not bool(torch.isfinite(v).all())]


def stream(
    items: Iterable[tuple[str, Any]],
    coeffs: list[float] | None,
    nonfinite: str,
    extract: Callable[[Any, str], Mapping[str, Any]],
    progress: Callable[[int, str], None] | None,
) -> tuple[Accumulator, Any, list[str], list[str], list[float]]:
    """Accumulate ``items`` (name, loaded object), oldest first, one at a time.

    Returns ``(accumulator, newest object without its state dict, names used, names skipped,
    normalized coefficients of the names used)``.
    """
    acc = Accumulator()
    newest_obj, used, skipped, used_coeffs = None, [], [], []
    for i, (name, obj) in enumerate(items):
        sd = extract(obj, name)
        acc.check(sd, name)
        bad = nonfinite_keys(sd)
        if bad:
            if nonfinite == "raise":
                raise nonfinite_error(name, bad)
            warn_skipped(name, bad)
            skipped.append(name)
        else:
            coefficient = None if coeffs is None else coeffs[i]
            acc.add(sd, coefficient)
            used.append(name)
            used_coeffs.append(1.0 if coefficient is None else coefficient)
            # keep the newest checkpoint's other entries, not its weights (one file in memory at a time)
            newest_obj = {k: (None if v is sd else v) for k, v in obj.items()} if obj is not sd else None
        del sd, obj
        if progress is not None:
            progress(i, name)
    if not used:
        raise CheckpointError(f"All {len(skipped)} checkpoints hold NaN or Inf ({listing(skipped)}): "
                              "nothing to average")
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
    check_nonfinite_arg(nonfinite)
    state_dicts = list(state_dicts)
    if not state_dicts:
        raise ValueError("Invalid state_dicts: an empty list; give at least one state dict")
    coeffs = coefficients(weights, alpha, len(state_dicts))
    items = ((f"state dict #{i}", sd) for i, sd in enumerate(state_dicts))
    acc, _, _, skipped, _ = stream(items, coeffs, nonfinite, lambda obj, name: obj, None)
    return acc.result(uniform=coeffs is None, renormalize=bool(skipped))
