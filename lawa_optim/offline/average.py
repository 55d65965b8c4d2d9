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
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from ..io import CheckpointError, atomic_save, atomic_write_bytes
from . import safetensors_io as st
from .accumulate import check_nonfinite_arg
from .pickled import average_pickled
from .select import HF_WEIGHT_FILES, select
from .streamed import (
    MemorySource,
    averaged_tensors,
    collect,
    open_sources,
    st_order,
    st_summary,
    with_skips,
    write_hf_folder,
)
from .summary import AverageSummary

__all__ = ["AverageSummary", "average_checkpoints", "write_average"]


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
        result, summary = average_pickled(
            selected, kind, weights=weights, alpha=alpha, key=key, trust_pickle=trust_pickle,
            keep_optimizer=keep_optimizer, drop=drop, nonfinite=nonfinite, progress=progress)
        summary = dataclasses.replace(summary, ignored=ignored)
        if out is None:
            return result, summary
        if kind == "huggingface-bin":
            source = MemorySource(result, selected[-1])
            write_hf_folder(out, [source], source, lambda *_: averaged_tensors([source], st_order(source), None, None,
                                                                               nonfinite, None), summary, force)
        else:
            atomic_save(result, out)
        return result, dataclasses.replace(summary, out=str(out))

    sources = open_sources(selected, kind)  # every header read and compared before any weight
    try:
        newest = sources[-1]
        order = st_order(newest)

        def tensors(used, coeffs, total):
            return averaged_tensors(used, order, coeffs, total, nonfinite, progress)

        if out is None:
            result, used, skipped, coeffs = with_skips(sources, weights, alpha, nonfinite,
                                                        lambda *a: collect(tensors(*a), newest.layout))
            return result, dataclasses.replace(st_summary(sources, used, skipped, coeffs, kind), ignored=ignored)
        if kind == "safetensors":
            def run(used, coeffs, total):
                atomic_write_bytes(out, lambda f: st.write_shard(f, order, newest.layout, newest.metadata,
                                                                 tensors(used, coeffs, total)))
            _, used, skipped, coeffs = with_skips(sources, weights, alpha, nonfinite, run)
            summary = st_summary(sources, used, skipped, coeffs, kind)
        else:
            summary = write_hf_folder(out, sources, newest, tensors, None, force, weights=weights, alpha=alpha,
                                      nonfinite=nonfinite)
    finally:
        for source in sources:
            source.close()
    return None, dataclasses.replace(summary, ignored=ignored, out=str(out))


