"""What an offline average did: the files, their coefficients, the entry averaged, what was left out."""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["AverageSummary"]


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
        format: ``"huggingface"``, ``"safetensors"``, ``"dcp"`` (a distributed checkpoint),
            ``"lightning"``, ``"timm"``, ``"fairseq"``, ``"plain"`` or ``"checkpoint"`` (a dict whose
            entry was named with ``key``).
        ignored: entries of the folders given that were left out because their name holds no
            number (``last.ckpt``, ``model_best.pth.tar``) or they are an average written earlier.
        copies: entries of the folders given that were left out as copies of a numbered checkpoint
            (``best-epoch=3.ckpt``, ``last-v1.ckpt``: names starting with ``best`` or ``last``;
            ``include_copies=True`` averages them too).
        description: what was averaged, in words (``"Lightning checkpoints (weights from ...)"``).
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
    copies: tuple[str, ...] = ()
    description: str = ""
