"""average_checkpoints / write_average: choose the files, find their format, let it average and write.

The formats are the table of :mod:`.formats` (a reader/writer pair each); the options are one
:class:`.options.AverageOptions`. Two ways through the numerics of :mod:`.accumulate`:

- tensor by tensor (safetensors files, Hugging Face folders of safetensors, distributed
  checkpoint folders): every header read and compared first; then each tensor averaged over all
  checkpoints (read one at a time into one float64 sum) and written at once. Peak memory: one
  float64 tensor and one input tensor, whatever the model's size (plus the interpreter).
- file by file (pickled checkpoints: plain, fairseq, Lightning, timm, an HF folder of
  ``pytorch_model.bin``): one file at a time, added to float64 sums of every tensor (2x the fp32
  model), then cast back.

Writing is atomic: a file goes through a temporary file renamed over it; a folder is written as a
hidden temporary folder beside it and renamed into place only once complete, so a folder named
``--out`` is always complete.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from .formats import format_of, one_format
from .options import AverageOptions
from .select import select
from .summary import AverageSummary

__all__ = ["AverageOptions", "AverageSummary", "average_checkpoints", "write_average"]


def average_checkpoints(paths: Sequence[str | os.PathLike], options: AverageOptions | None = None,
                        **fields: Any) -> Any:
    """Average the weights of saved checkpoints, one file (or one tensor) at a time.

    Args:
        paths (sequence of path): checkpoint files or folders (see :func:`write_average`).
        options (AverageOptions, optional): how to average (default: ``AverageOptions()``).
        **fields: fields of :class:`AverageOptions` to set, e.g. ``last=6``, ``weights="exp"``,
            ``key="state_dict_ema"``, ``nonfinite="skip"`` (they replace those of ``options``).

    Returns:
        The average in memory: for pickled formats an object of the inputs' format (the state dict,
        or the newest checkpoint dict with the average under its weights entry and without its
        optimizer state); for safetensors files, HF folders and distributed checkpoints the
        averaged state dict (of the weights entry, for a distributed checkpoint).

    Raises:
        CheckpointError: a file is missing, truncated, refused as unsafe, of another format, or its
            keys, shapes or dtypes differ from the first file's (the message names the file).
        ValueError, TypeError: an invalid argument (named in the message).

    Example:
        >>> avg = average_checkpoints([f"checkpoint{e}.pt" for e in range(1, 21)], last=6)  # doctest: +SKIP
        >>> torch.save(avg, "checkpoint_lawa.pt")  # doctest: +SKIP
    """
    opts = AverageOptions.of(options, **fields)
    fmt, selection = _prepare(paths, opts)
    return fmt.average(selection.paths, opts)[0]


def write_average(paths: Sequence[str | os.PathLike], out: str | os.PathLike, options: AverageOptions | None = None,
                  **fields: Any) -> AverageSummary:
    """Average saved checkpoints and write the result atomically to ``out``, in the inputs' format.

    ``paths`` are checkpoint files (``torch.save`` files: plain state dicts, fairseq, Lightning
    ``.ckpt``, timm ``.pth.tar``; or ``.safetensors`` files), Hugging Face checkpoint folders,
    distributed checkpoint folders (``torch.distributed.checkpoint``), or folders of checkpoints
    (their numbered entries, see :mod:`lawa_optim.offline.select`).

    The output is of the inputs' format: for HF folders a folder ``AutoModel.from_pretrained``
    loads (safetensors, sharded like the newest input when it was; its config, generation config
    and tokenizer files copied; no optimizer or trainer state); for ``.safetensors`` a
    ``.safetensors`` file with the newest input's metadata; for Lightning a ``.ckpt`` that
    ``load_from_checkpoint`` loads (without optimizer or callback state); for timm a file
    ``timm.models.load_checkpoint`` loads; for a distributed checkpoint a folder ``dcp.load``
    reads into the model (its weights entry only), or with ``out_format`` a ``.safetensors`` file
    or an HF-style folder.

    ``out`` must not exist, nor be one of the inputs, unless ``force=True``. On any error nothing
    is written; a crash while writing leaves ``out`` as it was.

    Args:
        paths (sequence of path): the checkpoints, oldest first (or naturally sorted, ``sort``).
        out (path): the file or folder to write.
        options (AverageOptions, optional): how to average (default: ``AverageOptions()``).
        **fields: fields of :class:`AverageOptions` to set (``last=6``, ``force=True``, ...).

    Returns:
        An :class:`AverageSummary` of what was averaged, copied and dropped.

    Example:
        >>> write_average(["runs/out"], "runs/lawa", last=6)  # doctest: +SKIP
    """
    if out is None or isinstance(out, bool):
        raise TypeError(f"Invalid out: {out!r}; give the file or folder to write the average to")
    out = Path(out)
    opts = AverageOptions.of(options, **fields)
    fmt, selection = _prepare(paths, opts)
    fmt.check_out(out, selection.paths, opts)
    summary = fmt.write(selection.paths, out, opts)
    return _with_selection(summary, selection, out)


def _prepare(paths, opts: AverageOptions):
    """The files chosen and their format, with the options checked against it (before anything is read)."""
    selection = select(paths, opts.last, opts.sort, format_of, opts.include_copies)
    fmt = one_format(selection.paths)
    fmt.check_options(opts)
    return fmt, selection


def _with_selection(summary: AverageSummary, selection, out: Path | None) -> AverageSummary:
    return dataclasses.replace(summary, ignored=tuple(map(str, selection.ignored)),
                               copies=tuple(map(str, selection.copies)), out=None if out is None else str(out))
