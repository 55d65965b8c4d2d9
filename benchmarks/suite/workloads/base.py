"""What a workload gives the runner: data, a model, a base optimizer, a loss and a metric.

A workload is small on purpose: the runner (:mod:`lawa_benchmarks.suite.runner`) owns seeds,
methods, schedules, evaluation, checkpoints and metrics, the same for every workload.

Adding one is two files: a module in this folder and its section in ``configs/suite.yaml``. The
module defines the section's options (a :class:`WorkloadSection`), the workload (a
:class:`Workload` whose ``Config`` is that section) and ``WORKLOADS = {"<name>": TheWorkload}``;
:mod:`lawa_benchmarks.suite.workloads` finds it there, the config gets a ``workloads.<name>``
section, and ``lawa bench suite --workloads <name>`` runs it. A workload that another program
trains (``roberta``: fairseq) is an :class:`ExternalWorkload` instead.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Annotated, Any, ClassVar

import torch
from pydantic import Field, model_validator
from torch import nn

from ...config_base import Section

__all__ = ["ExternalWorkload", "Workload", "WorkloadSection", "lr_schedule"]

PosInt = Annotated[int, Field(gt=0)]
NonNegInt = Annotated[int, Field(ge=0)]
PosFloat = Annotated[float, Field(gt=0)]
NonNegFloat = Annotated[float, Field(ge=0)]


class WorkloadSection(Section):
    """What every workload's section states: its length, its recipe's learning rate and warm-up, its target."""

    enabled: bool = True
    epochs: PosInt = 12  # evaluation periods; an LM's "epoch" is steps_per_epoch steps, not a pass over the text
    batch_size: PosInt = 128
    lr: PosFloat = 0.1
    weight_decay: NonNegFloat = 5e-4
    warmup_epochs: NonNegInt = 0  # linear warm-up, then cosine to 0 over the remaining steps
    target: float | None = None  # null: the baseline's final validation metric averaged over seeds
    methods: dict[str, Any] = Field(default_factory=dict)  # merged over the top-level methods

    @model_validator(mode="after")
    def _warmup_within_run(self) -> WorkloadSection:
        if self.warmup_epochs >= self.epochs:
            raise ValueError(f"warmup_epochs={self.warmup_epochs} must be below epochs={self.epochs}")
        return self


class Workload:
    """The interface; subclasses set the attributes and implement the methods.

    Attributes:
        Config (class): the options of its ``workloads.<name>`` section (a :class:`WorkloadSection`).
        name (str): the config section's name (``resnet``).
        label (str): one line for tables (``ResNet-10 / Fashion-MNIST``).
        metric (str): the validation metric column the target is measured on (``top1``, ``val_loss``).
        higher_is_better (bool): False for a loss.
        base_label (str): the baseline's display name (``SGD``, ``AdamW``).
        has_batchnorm (bool): the model has BatchNorm: averaged weights get their statistics
            recomputed over :meth:`bn_batches`, and the baseline is also reported recomputed.
        steps_per_epoch (int): optimizer steps between two evaluations (and LAWA snapshots).
        epochs (int): evaluations in a run (default: the section's ``epochs``).
    """

    Config: ClassVar[type[Section]] = WorkloadSection
    name = ""
    label = ""
    metric = "top1"
    higher_is_better = True
    base_label = "SGD"
    has_batchnorm = False
    steps_per_epoch = 1

    def __init__(self, name: str, cfg: Any, data_dir: str | None = None) -> None:
        self.name, self.cfg = name, cfg

    @property
    def epochs(self) -> int:
        return self.cfg.epochs

    def describe(self) -> dict[str, Any]:
        """What the results should record about the data (sizes), JSON-ready."""
        return {}

    def build_model(self) -> nn.Module:
        """A fresh model (the global RNG is seeded by the runner just before)."""
        raise NotImplementedError

    def optimizer(self, model: nn.Module, lr: float | None = None) -> torch.optim.Optimizer:
        """The recipe's base optimizer (``lr`` overrides the recipe's: schedule-free's own run)."""
        raise NotImplementedError

    def lr_scheduler(self, optimizer: Any) -> torch.optim.lr_scheduler.LRScheduler:
        """The recipe's schedule, stepped once per batch (default: the section's warm-up, then cosine to 0)."""
        return lr_schedule(optimizer, self.steps_per_epoch, self.epochs, self.cfg.warmup_epochs)

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

    # ---------------------------------------------------- optional: what `lawa bench beyond` needs
    selection_size = 0  # the default size of its selection split (0: the workload has none)

    def selection_batches(self, n: int) -> list[Any]:
        """``n`` held-out items (never trained on, never reported) in batches, for choosing LAWA's window online."""
        raise NotImplementedError

    def val_batches(self) -> list[Any]:
        """The validation batches, as :meth:`evaluate` sees them."""
        raise NotImplementedError

    def score(self, model: nn.Module, batches: Iterable[Any]) -> dict[str, float]:
        """Mean ``loss`` and ``top1`` (%) of ``model`` (in eval mode, no grad) over ``batches``."""
        raise NotImplementedError


class ExternalWorkload:
    """A workload another program trains (``roberta``: fairseq's trainer with the LAWA plugin).

    The suite's methods do not apply to it; :meth:`run` trains (or resumes) every seed of the
    suite's config into ``OUT/<name>/`` and writes its rows in the suite's schema.
    """

    Config: ClassVar[type[Section]] = Section

    @staticmethod
    def run(cfg: Any, out_dir: str | Path, *, fresh: bool = False, progress: bool = True) -> dict[str, Any]:
        """Returns ``{"rows", "meta", "run_dir"}`` like :func:`lawa_benchmarks.suite.runner.run_workload`."""
        raise NotImplementedError


def lr_schedule(optimizer: Any, steps_per_epoch: int, epochs: int, warmup_epochs: int = 0, schedule: str = "cosine",
                step_epochs: Iterable[int] = ()) -> torch.optim.lr_scheduler.LRScheduler:
    """torch's schedulers, stepped once per batch: linear warm-up over ``warmup_epochs``, then ``schedule``.

    Warm-up multiplies the learning rate by (step + 1) / warm-up steps; then ``cosine`` decays it to 0
    over the remaining steps, ``step`` multiplies it by 0.1 at each of ``step_epochs``, ``constant`` keeps it.
    """
    from torch.optim import lr_scheduler as sch

    warm = warmup_epochs * steps_per_epoch
    if schedule == "cosine":
        main = sch.CosineAnnealingLR(optimizer, T_max=max(epochs * steps_per_epoch - warm, 1))
    elif schedule == "step":
        main = sch.MultiStepLR(optimizer, [e * steps_per_epoch - warm for e in step_epochs], gamma=0.1)
    elif schedule == "constant":
        main = sch.ConstantLR(optimizer, factor=1.0, total_iters=0)
    else:
        raise ValueError(f"Invalid schedule={schedule!r}; use cosine, step or constant")
    if not warm:
        return main
    warmup = sch.LinearLR(optimizer, start_factor=1 / warm, end_factor=1.0, total_iters=max(warm - 1, 1))
    return sch.SequentialLR(optimizer, [warmup, main], milestones=[warm])
