"""What a workload gives the runner: data, a model, a base optimizer, a loss and a metric.

A workload is small on purpose: the runner (:mod:`lawa_benchmarks.suite.runner`) owns seeds,
methods, schedules, evaluation, checkpoints and metrics, the same for every workload.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

import torch
from torch import nn

__all__ = ["Workload", "warmup_cosine"]


class Workload:
    """The interface; subclasses set the attributes and implement the methods.

    Attributes:
        name (str): the config section's name (``resnet``).
        label (str): one line for tables (``ResNet-10 / Fashion-MNIST``).
        metric (str): the validation metric column the target is measured on (``top1``, ``val_loss``).
        higher_is_better (bool): False for a loss.
        base_label (str): the baseline's display name (``SGD``, ``AdamW``).
        has_batchnorm (bool): the model has BatchNorm: averaged weights get their statistics
            recomputed over :meth:`bn_batches`, and the baseline is also reported recomputed.
        steps_per_epoch (int): optimizer steps between two evaluations (and LAWA snapshots).
    """

    name = ""
    label = ""
    metric = "top1"
    higher_is_better = True
    base_label = "SGD"
    has_batchnorm = False
    steps_per_epoch = 1

    def __init__(self, name: str, cfg: Any) -> None:
        self.name, self.cfg = name, cfg

    def describe(self) -> dict[str, Any]:
        """What the results should record about the data (sizes), JSON-ready."""
        return {}

    def build_model(self) -> nn.Module:
        """A fresh model (the global RNG is seeded by the runner just before)."""
        raise NotImplementedError

    def optimizer(self, model: nn.Module, lr: float | None = None) -> torch.optim.Optimizer:
        """The recipe's base optimizer (``lr`` overrides the recipe's: schedule-free's own run)."""
        raise NotImplementedError

    def train_batches(self, seed: int, epoch: int) -> Iterable[Any]:
        """The batches of one epoch: ``steps_per_epoch`` of them, their order a function of ``(seed, epoch)`` only."""
        raise NotImplementedError

    def loss(self, model: nn.Module, batch: Any) -> torch.Tensor:
        raise NotImplementedError

    def evaluate(self, model: nn.Module) -> dict[str, float]:
        """The validation metrics (model in eval mode, no grad), at least ``metric`` and ``val_loss``."""
        raise NotImplementedError

    def bn_batches(self) -> Iterable[Any] | None:
        """Inputs to recompute BatchNorm statistics over (None without BatchNorm)."""
        return None


def warmup_cosine(optimizer: Any, warmup_steps: int, total_steps: int) -> torch.optim.lr_scheduler.LRScheduler:
    """torch's schedulers stepped once per batch: linear warm-up over ``warmup_steps``, then cosine to 0."""
    from torch.optim import lr_scheduler as sch

    main = sch.CosineAnnealingLR(optimizer, T_max=max(total_steps - warmup_steps, 1))
    if not warmup_steps:
        return main
    warm = sch.LinearLR(optimizer, start_factor=1 / warmup_steps, end_factor=1.0, total_iters=max(warmup_steps - 1, 1))
    return sch.SequentialLR(optimizer, [warm, main], milestones=[warmup_steps])


def mean_or_nan(total: float, n: int) -> float:
    return total / n if n else math.nan
