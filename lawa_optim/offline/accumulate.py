"""The summing maths of offline LAWA: every tensor averaged piece by piece over all checkpoints, in float64.

One way through, for every format: a checkpoint is a *source* that can copy any stretch of any of
its tensors into a buffer (``read_into(key, start, out)``: safetensors and ``torch.save`` files
read at the tensor's offset in the file, in-memory state dicts copy). Each floating tensor
(fp16, bf16, fp32, fp64; complex too) is averaged one piece of :data:`CHUNK` elements at a time:
the piece of every checkpoint is read into one reused buffer and added to a float64 (complex128)
sum of the piece, which stays in the CPU cache; the sum is divided once and cast back to the
stored dtype once. Uniform weights are a plain sum divided by the count, other weights
``sum(c_i * x_i)`` (divided by the sum of the coefficients used when a checkpoint was skipped).
Integer and bool tensors (``num_batches_tracked``, masks, step counters) and non-tensor entries
are copied from the newest checkpoint, never divided. Memory: one float64 piece and one input
piece, whatever the model's size and the number of checkpoints.

Non-finite inputs cost no pass of their own: a NaN or Inf in any checkpoint makes the float64 sum
of its piece NaN or Inf (and it stays so), which one reduction of the piece (``sum``) shows. Only
then are the checkpoints read again to name the ones holding NaN/Inf, and the tensors they hold
it in (:func:`find_nonfinite`).
"""

from __future__ import annotations

import math
import threading
import warnings
from collections import OrderedDict, deque
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import Any, Protocol

import torch

from ..averaging import resolve_weights, window_coefficients
from ..io import CheckpointError

__all__ = ["CHUNK", "Source", "average_pieces", "average_sources", "average_state_dicts", "averaged_tensors",
           "coefficients", "find_nonfinite", "is_averaged", "listing", "with_skips"]

_NONFINITE = ("raise", "skip")
_MAX_LISTED = 8

# Elements per piece: a float64 sum of 512 KiB and its input stay in the L2 cache between the k
# adds (on this machine a mixed float32 -> float64 add ran 4x faster on 2**16 elements than on 2**18).
CHUNK = 1 << 16


def describe(tensor: torch.Tensor) -> str:
    return f"{tuple(tensor.shape)} {str(tensor.dtype).replace('torch.', '')}"


def listing(keys: Iterable[str]) -> str:
    """``'a', 'b' and 3 more``: a short, sorted list of names for error messages."""
    keys = sorted(keys)
    shown = ", ".join(repr(k) for k in keys[:_MAX_LISTED])
    return shown + (f" and {len(keys) - _MAX_LISTED} more" if len(keys) > _MAX_LISTED else "")


def is_averaged(value: Any) -> bool:
    return isinstance(value, torch.Tensor) and (value.is_floating_point() or value.is_complex())


def averaged_dtype(dtype: torch.dtype) -> bool:
    return dtype.is_floating_point or dtype.is_complex


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
    warnings.warn(f"Skipping {name}: it holds NaN or Inf in {listing(bad)}", RuntimeWarning, stacklevel=5)


class Source(Protocol):
    """One checkpoint, as the averaging reads it."""

    name: str

    def read_into(self, key: str, start: int, out: torch.Tensor) -> None:
        """Copy elements ``start .. start + out.numel()`` of tensor ``key`` (flattened) into the 1-D ``out``."""

    def read(self, key: str) -> torch.Tensor:
        """The whole tensor ``key`` (for integer tensors and error messages)."""


def average_pieces(
    read_into: Callable[[int, int, torch.Tensor], None], count: int, numel: int, dtype: torch.dtype,
    coeffs: Sequence[float] | None, total: float | None = None, chunk: int = CHUNK, out: torch.Tensor | None = None,
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """The average of one tensor over ``count`` checkpoints, piece by piece (flattened, in order).

    ``read_into(i, start, buf)`` fills the 1-D ``buf`` with elements ``start ..`` of checkpoint
    ``i``'s tensor (oldest first). ``coeffs``: the checkpoints' coefficients (``None``: uniform,
    the sum divided by ``count``); a weighted sum is divided by ``total`` when given (the
    coefficients' sum, after a checkpoint was skipped). ``out``: a flat ``dtype`` tensor of
    ``numel`` elements to write the average into (default: a reused buffer).

    Yields ``(sum, average)`` per piece: the float64 sum before the division (for the non-finite
    check) and the average in ``dtype`` (a view of ``out``, or a reused buffer: use it before
    taking the next). The fp32 (fp16, bf16) piece is added to the float64 sum directly (``add_``
    converts each element exactly as it adds: no conversion pass, no float64 copy of the input),
    and the division writes the rounded result straight into the output (one pass, no float64
    temporary).
    """
    if numel == 0:
        yield torch.empty(0, dtype=_sum_dtype(dtype)), torch.empty(0, dtype=dtype) if out is None else out
        return
    size = min(chunk, numel)
    acc_all = torch.empty(size, dtype=_sum_dtype(dtype))
    buf_all = torch.empty(size, dtype=dtype)
    out_all = torch.empty(size, dtype=dtype) if out is None else None
    views: dict[int, tuple] = {}  # made once per piece length: read_into and the writers may cache by identity
    for start in range(0, numel, chunk):
        m = min(chunk, numel - start)
        if m not in views:
            views[m] = (acc_all[:m], buf_all[:m], None if out_all is None else out_all[:m])
        acc, buf, dst = views[m]
        if dst is None:
            dst = out[start:start + m]
        _average_piece(read_into, count, start, coeffs, total, acc, buf, dst)
        yield acc, dst


def _average_piece(read_into, count: int, start: int, coeffs, total, acc: torch.Tensor, buf: torch.Tensor,
                   dst: torch.Tensor) -> None:
    """One piece: ``acc`` = the float64 sum of the ``count`` checkpoints' pieces, ``dst`` = the average."""
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
        torch.div(acc, count, out=dst)  # computed in float64, rounded once to the stored dtype
    elif total is not None:
        torch.div(acc, total, out=dst)
    else:
        dst.copy_(acc)


class _Skip(Exception):
    """Checkpoints found to hold NaN/Inf under ``nonfinite="skip"``: ``[(index, keys)]``, oldest first."""

    def __init__(self, bad: list[tuple[int, list[str]]]) -> None:
        super().__init__(bad)
        self.bad = bad


def find_nonfinite(sources: Sequence[Source], keys: Iterable[str]) -> list[tuple[int, list[str]]]:
    """``[(index, keys holding NaN/Inf)]`` of the ``sources`` that hold any, reading every tensor again.

    Runs only after a sum turned out non-finite: it costs a full read, never paid by finite inputs.
    """
    keys = list(keys)
    found = []
    for i, source in enumerate(sources):
        bad = [key for key in keys if not bool(torch.isfinite(source.read(key)).all())]
        if bad:
            found.append((i, bad))
    return found


def averaged_tensors(
    sources: Sequence[Source], layout: Mapping[str, tuple[torch.dtype, tuple[int, ...]]], order: Sequence[str],
    coeffs: list[float] | None, total: float | None, nonfinite: str, progress: Callable[[int, str], None] | None,
    outputs: Mapping[str, torch.Tensor] | None = None,
) -> Iterator[tuple[str, torch.Tensor]]:
    """Yield ``(key, piece)``: the average of each tensor of ``order``, in pieces (flattened, in order).

    ``layout``: ``{key: (dtype, shape)}`` shared by the sources (oldest first). Integer and bool
    tensors are the newest source's. A NaN/Inf input raises :class:`~lawa_optim.io.CheckpointError`
    naming the oldest checkpoint holding one (``nonfinite="raise"``), or :class:`_Skip` with all of
    them (``"skip"``; :func:`with_skips` runs again without them). ``outputs``: flat tensors to
    write the averages of their keys into (the pieces yielded are views of them).

    Threads: ``torch.get_num_threads()`` (``lawa average --threads``). With more than one, the
    pieces of a tensor are averaged by that many worker threads, each with its own cache-sized
    buffers, while torch's own intra-op threads are set to 1 for the time of the call: a piece is
    too small for torch to split it across threads without waiting at a barrier for every
    operation (which made 2 threads 3-10x slower than 1 on this shared machine).
    """
    threads = torch.get_num_threads()
    if threads > 1:
        torch.set_num_threads(1)
        try:
            yield from _parallel(sources, layout, order, coeffs, total, nonfinite, progress, outputs, threads)
        finally:
            torch.set_num_threads(threads)
        return
    newest = sources[-1]
    for n, key in enumerate(order):
        dtype, shape = layout[key]
        if not averaged_dtype(dtype):
            yield key, newest.read(key).reshape(-1)  # integer and bool tensors: the newest's, never divided
        else:
            def read_into(i: int, start: int, out: torch.Tensor, key: str = key) -> None:
                sources[i].read_into(key, start, out)

            out = None if outputs is None else outputs.get(key)
            for acc, piece in average_pieces(read_into, len(sources), math.prod(shape), dtype, coeffs, total, out=out):
                # a NaN/Inf input makes the float64 sum non-finite, and so the piece's sum (one cheap reduction)
                if not bool(torch.isfinite(acc.sum())) and not bool(torch.isfinite(acc).all()):
                    _nonfinite(sources, layout, key, nonfinite)
                yield key, piece
        if progress is not None:
            progress(n, key)


def _parallel(sources, layout, order, coeffs, total, nonfinite, progress, outputs, threads):
    """:func:`averaged_tensors` with ``threads`` workers over the pieces of each tensor, yielded in order.

    A checkpoint is read by one thread at a time (its lock); the pieces of one tensor are in flight
    together, never two tensors at once (a source may keep the tensor it reads whole). At most
    ``4 * threads`` pieces wait, so the memory stays a few pieces per thread.
    """
    from concurrent.futures import ThreadPoolExecutor

    locks = [threading.Lock() for _ in sources]
    local = threading.local()
    newest, count = sources[-1], len(sources)

    def work(key: str, dtype: torch.dtype, start: int, m: int, dst: torch.Tensor | None):
        scratch = getattr(local, "scratch", None)
        if scratch is None or scratch[0] != dtype:
            scratch = local.scratch = (dtype, torch.empty(CHUNK, dtype=_sum_dtype(dtype)),
                                       torch.empty(CHUNK, dtype=dtype))
        acc, buf = scratch[1][:m], scratch[2][:m]

        def read_into(i: int, start: int, out: torch.Tensor) -> None:
            with locks[i]:
                sources[i].read_into(key, start, out)

        dst = torch.empty(m, dtype=dtype) if dst is None else dst
        _average_piece(read_into, count, start, coeffs, total, acc, buf, dst)
        return dst, bool(torch.isfinite(acc.sum())) or bool(torch.isfinite(acc).all())

    with ThreadPoolExecutor(threads, thread_name_prefix="lawa-average") as pool:
        for n, key in enumerate(order):
            dtype, shape = layout[key]
            if not averaged_dtype(dtype):
                yield key, newest.read(key).reshape(-1)
            else:
                numel = math.prod(shape)
                out = None if outputs is None else outputs.get(key)
                starts = iter(range(0, numel, CHUNK))
                pending: deque = deque()
                while True:
                    while len(pending) < 4 * threads and (start := next(starts, None)) is not None:
                        m = min(CHUNK, numel - start)
                        dst = None if out is None else out[start:start + m]
                        pending.append(pool.submit(work, key, dtype, start, m, dst))
                    if not pending:
                        break
                    piece, finite = pending.popleft().result()
                    if not finite:
                        for f in pending:
                            f.cancel()
                        wait = [f for f in pending if not f.cancelled()]
                        for f in wait:
                            f.exception()  # let running pieces finish before the sources are read again
                        _nonfinite(sources, layout, key, nonfinite)
                    yield key, piece
                if numel == 0:
                    yield key, torch.empty(0, dtype=dtype) if out is None else out
            if progress is not None:
                progress(n, key)


def _nonfinite(sources, layout, key, nonfinite) -> None:
    bad = find_nonfinite(sources, [k for k, (dtype, _) in layout.items() if averaged_dtype(dtype)])
    if not bad:  # finite inputs, float64 sum beyond 1.8e308: only float64 weights near the limit
        raise CheckpointError(f"Tensor {key!r} overflows float64 when summed over the checkpoints; "
                              "its values are too large to average")
    if nonfinite == "raise":
        index, keys = bad[0]
        raise nonfinite_error(sources[index].name, keys)
    raise _Skip(bad)


def with_skips(sources, weights, alpha, nonfinite, run):
    """``run(sources, coeffs, total)``, again without the checkpoints found to hold NaN/Inf ("skip").

    Returns ``(result, sources used, names skipped, normalized coefficients of those used)``.
    """
    coeffs_all = coefficients(weights, alpha, len(sources))
    kept = list(range(len(sources)))
    skipped: list[str] = []
    while True:
        used = [sources[i] for i in kept]
        coeffs = None if coeffs_all is None else [coeffs_all[i] for i in kept]
        total = None
        if coeffs is not None and skipped:
            total = 0.0
            for c in coeffs:  # summed in order, as a running sum would
                total += c
        try:
            result = run(used, coeffs, total)
        except _Skip as skip:
            for index, keys in skip.bad:
                warn_skipped(used[index].name, keys)
                skipped.append(used[index].name)
            gone = {kept[index] for index, _ in skip.bad}
            kept = [i for i in kept if i not in gone]
            if not kept:
                raise CheckpointError(f"All {len(skipped)} checkpoints hold NaN or Inf ({listing(skipped)}): "
                                      "nothing to average") from None
            continue
        raw = [1.0] * len(used) if coeffs is None else coeffs
        norm = math.fsum(raw)
        return result, used, skipped, [c / norm for c in raw]


def average_into(
    sources: Sequence[Source], layout: Mapping[str, tuple[torch.dtype, tuple[int, ...]]], order: Sequence[str],
    coeffs: list[float] | None, total: float | None, nonfinite: str, progress: Callable[[int, str], None] | None,
) -> OrderedDict:
    """``{key: average}`` of the floating tensors of ``order`` in memory, each written in place piece by piece."""
    outputs = OrderedDict((key, torch.empty(math.prod(layout[key][1]), dtype=layout[key][0]))
                          for key in order if averaged_dtype(layout[key][0]))
    for _ in averaged_tensors(sources, layout, [k for k in order if k in outputs], coeffs, total, nonfinite,
                              progress, outputs):
        pass
    return OrderedDict((key, flat.reshape(layout[key][1])) for key, flat in outputs.items())


def collect(parts: Iterator[tuple[str, torch.Tensor]], layout) -> OrderedDict:
    """The pieces put together, ``{key: tensor}`` in the order they come (each piece copied into place)."""
    out: OrderedDict = OrderedDict()
    filled: dict[str, int] = {}
    for key, part in parts:
        flat = out.get(key)
        if flat is None:
            dtype, shape = layout[key]
            flat = out[key] = torch.empty(math.prod(shape), dtype=dtype)
            filled[key] = 0
        a = filled[key]
        flat[a:a + part.numel()].copy_(part)  # the pieces are reused buffers
        filled[key] = a + part.numel()
    for key in out:
        out[key] = out[key].reshape(layout[key][1])
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


def check_state(sd: Any, name: str, first: tuple[dict, str] | None) -> dict[str, str | None]:
    """Refuse ``sd`` unless it is a state dict of dense tensors with the layout of ``first`` (its layout,
    name); return its layout (key -> ``"shape dtype"`` or ``None`` for a non-tensor)."""
    if not isinstance(sd, Mapping):
        raise CheckpointError(f"{name} holds a {type(sd).__name__}, not a state dict (a mapping of tensors)")
    for key, value in sd.items():
        if isinstance(value, torch.Tensor) and (value.layout != torch.strided or value.is_quantized):
            raise CheckpointError(
                f"{name}: tensor {key!r} is {value.layout}{' quantized' if value.is_quantized else ''}; only "
                "dense tensors can be averaged (convert it with .to_dense()/.dequantize() first)"
            )
    layout = {k: (describe(v) if isinstance(v, torch.Tensor) else None) for k, v in sd.items()}
    if first is None:
        if not any(is_averaged(v) for v in sd.values()):
            raise CheckpointError(f"{name} holds no floating-point tensors: nothing to average")
    else:
        check_same_layout(first[0], layout, first[1], name)
    return layout


def common_ties(ties: Sequence[Mapping[str, str]]) -> dict[str, str]:
    """The ties (key -> the earlier key it is the very same tensor as) that every checkpoint has."""
    out = dict(ties[0]) if ties else {}
    for t in ties[1:]:
        out = {k: v for k, v in out.items() if t.get(k) == v}
    return out


def average_sources(
    sources: Sequence[Source], sd: Mapping[str, Any], ties: Sequence[Mapping[str, str]], weights, alpha: float,
    nonfinite: str, progress, consume: Callable[[list, OrderedDict, Iterator], Any] | None = None,
) -> tuple[Any, list, list[str], list[float], OrderedDict]:
    """Average state dicts given as sources, all of the layout of ``sd`` (any of them: only keys,
    dtypes and shapes are used); ``ties[i]``: source i's tied keys.

    Returns ``(averages {key: tensor} of the floating tensors, tied keys included, in ``sd``'s order;
    sources used; names skipped; normalized coefficients; the ties kept)``. Tied weights (one tensor
    under two keys, e.g. an embedding and an LM head) stay one tensor as long as every checkpoint
    used ties them.

    ``consume(used, holes, pieces)``: instead of averaging into memory, hand the averages on as
    they are made: ``holes`` are the averages' tensors allocated but never written (ties
    included), ``pieces`` yields ``(key, piece)`` in order (:func:`averaged_tensors`); its result
    replaces the averages in the returned tuple. It runs again from the start without the
    checkpoints found to hold NaN/Inf (``nonfinite="skip"``).
    """
    layout = {k: (v.dtype, tuple(v.shape)) for k, v in sd.items() if is_averaged(v)}
    index = {id(s): i for i, s in enumerate(sources)}

    def with_ties(tensors: Mapping[str, torch.Tensor], tied: Mapping[str, str]) -> OrderedDict:
        out: OrderedDict = OrderedDict()
        for key in layout:
            out[key] = out[tied[key]] if key in tied else tensors[key]  # a tie stays one tensor: saved once
        return out

    def run(used, coeffs, total):
        tied = common_ties([ties[index[id(s)]] for s in used])
        order = [k for k in layout if k not in tied]
        if consume is None:
            return with_ties(average_into(used, layout, order, coeffs, total, nonfinite, progress), tied), tied
        holes = {k: torch.empty(layout[k][1], dtype=layout[k][0]) for k in order}  # pages never touched
        pieces = averaged_tensors(used, layout, order, coeffs, total, nonfinite, progress)
        return consume(used, with_ties(holes, tied), pieces), tied

    (out, tied), used, skipped, coeffs = with_skips(sources, weights, alpha, nonfinite, run)
    return out, used, skipped, coeffs, tied


def tensor_ties(sd: Mapping[str, Any], where: Callable[[str, torch.Tensor], Any]) -> dict[str, str]:
    """Keys whose tensor is the very same view as an earlier key's (tied weights) -> that earlier key.

    ``where(key, t)``: the identity of ``t``'s storage (its address in memory, or its file and offset).
    """
    first: dict[tuple, str] = {}
    ties = {}
    for key, value in sd.items():
        if is_averaged(value) and value.numel() > 0:
            view = (where(key, value), value.storage_offset(), value.shape, value.stride(), value.dtype)
            if view in first:
                ties[key] = first[view]
            else:
                first[view] = key
    return ties


class MemorySource:
    """A state dict in memory as a source (pieces copied out of its tensors)."""

    def __init__(self, name: str, sd: Mapping[str, Any]) -> None:
        self.name, self.sd = name, sd
        self._flat: tuple[str, torch.Tensor] | None = None

    def _flatten(self, key: str) -> torch.Tensor:
        if self._flat is None or self._flat[0] != key:  # a strided tensor is made contiguous once
            self._flat = (key, self.sd[key].detach().reshape(-1))
        return self._flat[1]

    def read_into(self, key: str, start: int, out: torch.Tensor) -> None:
        out.copy_(self._flatten(key)[start:start + out.numel()])

    def read(self, key: str) -> torch.Tensor:
        return self.sd[key]


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
    coefficients(weights, alpha, len(state_dicts))  # refuse bad weights before reading anything
    first = None
    for i, sd in enumerate(state_dicts):
        layout = check_state(sd, f"state dict #{i}", first)
        first = first or (layout, f"state dict #{i}")
    sources = [MemorySource(f"state dict #{i}", sd) for i, sd in enumerate(state_dicts)]
    ties = [tensor_ties(sd, lambda _, t: (t.untyped_storage().data_ptr(), t.device)) for sd in state_dicts]
    averages, used, _, _, _ = average_sources(sources, state_dicts[-1], ties, weights, alpha, nonfinite, None)
    newest = used[-1].sd
    out: OrderedDict = OrderedDict((k, averages[k] if k in averages else v) for k, v in newest.items())
    if getattr(newest, "_metadata", None) is not None:
        out._metadata = newest._metadata  # type: ignore[attr-defined]  # load_state_dict's versions
    return out
