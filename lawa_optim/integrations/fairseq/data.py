"""How many optimizer updates one epoch of ``masked_lm`` training takes, counted the way fairseq batches.

A learning-rate schedule given as a fraction of the run (``--total-num-update`` for
``polynomial_decay``) needs the number of updates per epoch before training starts; this counts
it from the binarized data with fairseq's own dataset classes, as ``MaskedLMTask`` builds them.
"""

from __future__ import annotations

import math
import os

__all__ = ["masked_lm_updates_per_epoch"]


def masked_lm_updates_per_epoch(
    data_dir: str | os.PathLike,
    tokens_per_sample: int,
    batch_size: int,
    update_freq: int = 1,
    world_size: int = 1,
    sample_break_mode: str = "complete",
    split: str = "train",
) -> int:
    """Updates per epoch of ``fairseq-train --task masked_lm`` (or ``masked_lm_lawa``).

    Assumes ``--batch-size batch_size --required-batch-size-multiple 1``, no ``--max-tokens`` and a
    model accepting ``tokens_per_sample`` positions, so every batch but the last holds exactly
    ``batch_size`` of the blocks fairseq keeps.

    Args:
        data_dir (str or Path): the ``fairseq-preprocess --only-source`` output (``dict.txt``, ``train.bin``).
        tokens_per_sample (int): ``--tokens-per-sample``.
        batch_size (int): ``--batch-size`` (sequences per forward pass and process).
        update_freq (int): ``--update-freq`` (default: 1).
        world_size (int): data-parallel processes (default: 1).
        sample_break_mode (str): ``--sample-break-mode`` (default: ``"complete"``).
        split (str): the split to count (default: ``"train"``).
    """
    from . import root_logging_kept

    with root_logging_kept():  # importing fairseq sets the root logger to DEBUG
        from fairseq.data import Dictionary, TokenBlockDataset, data_utils

    dictionary = Dictionary.load(os.path.join(data_dir, "dict.txt"))
    dictionary.add_symbol("<mask>")
    dataset = data_utils.load_indexed_dataset(os.path.join(data_dir, split), dictionary, None)
    if dataset is None:
        raise FileNotFoundError(f"no binarized {split!r} split in {str(data_dir)!r}; run fairseq-preprocess first")
    blocks = TokenBlockDataset(
        dataset,
        dataset.sizes,
        tokens_per_sample - 1,  # MaskedLMTask keeps one position for <s>
        pad=dictionary.pad(),
        eos=dictionary.eos(),
        break_mode=sample_break_mode,
    )
    # the trainer drops training samples longer than --tokens-per-sample (a sentence longer than a
    # block in "complete" mode is a block of its own); <s> adds one token to every block
    kept = int(((blocks.sizes + 1) <= tokens_per_sample).sum())
    batches = math.ceil(kept / batch_size)
    per_rank = math.ceil(batches / world_size)
    return math.ceil(per_rank / update_freq)
