"""The fairseq task hooks that run LAWA inside ``fairseq-train``.

fairseq wraps any registered optimizer in ``FP16Optimizer``/``MemoryEfficientFP16Optimizer``
under ``--fp16`` (flat fp32 master copies), so LAWA lives in the task instead: a
:class:`~lawa_optim.LAWAWrapper` observes the *model's* parameters (the weights fairseq saves in
its checkpoints, fp16 under ``--fp16``), and fairseq's own optimizer, trainer, distributed
wrappers and checkpointing stay untouched. The hooks used, all of them fairseq's task API:

- ``optimizer_step``: after fairseq's step, take a snapshot at the end of every epoch (the
  train iterator says when) or every ``--lawa-period-updates`` updates. A step that AMP skips
  (its loss scale went down) takes none.
- ``valid_step`` / ``reduce_metrics``: every validation batch is evaluated with the raw weights
  and again with the average swapped in (in place, the training weights restored bit-exactly),
  logged as ``lawa_loss``/``lawa_ppl`` beside ``loss``/``ppl`` from the first validation that
  has a snapshot; ``post_validate`` adds ``lawa_best_loss``.
- ``get_checkpoint_dict`` / ``set_checkpoint_dict``: fairseq stores the returned dict in every
  checkpoint's ``extra_state`` and hands it back on ``--restore-file`` resume, so the ring
  resumes exactly. When fairseq saves, ``checkpoint_lawa.pt`` (and ``checkpoint_lawa_best.pt``
  after a new best LAWA validation loss) are written into ``--save-dir``.

Every rank of a distributed run keeps the same ring (the parameters are identical on all
ranks); only the rank that saves checkpoints writes the LAWA files. Fully sharded training
(``--ddp-backend fully_sharded``) is not supported: each rank holds a shard of the parameters.

(No ``from __future__ import annotations`` here: fairseq reads the config dataclass's field
types at run time to build its command line.)
"""


import argparse
import logging
import math
import os
from dataclasses import dataclass, field
from typing import Any, Optional

import torch
from fairseq import metrics, utils
from fairseq.dataclass import ChoiceEnum, FairseqDataclass
from fairseq.tasks import register_task
from fairseq.tasks.masked_lm import MaskedLMConfig, MaskedLMTask
from omegaconf import II

from ..._checks import is_int
from ..._tensors import move_to
from ...averaging import WEIGHT_NAMES, resolve_weights
from ...io import atomic_save
from ...offload import OFFLOAD_NAMES, check_offload, parse_offload
from ...protocol import STATE_KEY
from ...wrapper import LAWAWrapper
from . import checkpoint as ckpt

__all__ = ["LAWAConfig", "LAWATaskMixin", "MaskedLMLAWAConfig", "MaskedLMLAWATask", "fairseq_checkpoints_loadable"]

logger = logging.getLogger(__name__)

STATE_FORMAT = 1


def fairseq_checkpoints_loadable() -> Any:
    """``with fairseq_checkpoints_loadable(): RobertaModel.from_pretrained(...)``.

    fairseq 0.12 stores the legacy model arguments as an ``argparse.Namespace`` in every
    checkpoint, and torch >= 2.6 loads with ``weights_only=True`` by default, which refuses it: fairseq
    could neither resume (``--restore-file``) nor validate any checkpoint. A Namespace is a plain
    attribute container (unpickling it runs no code): this context manager allows it for the loads
    inside (``torch.serialization.safe_globals``); everything else stays refused. Importing this
    module changes nothing; the ``--user-dir`` entry point (``lawa_fairseq``), which configures the
    fairseq process it is passed to, allows it for that process's own loads.
    """
    return torch.serialization.safe_globals([argparse.Namespace])


@dataclass
class LAWAConfig(FairseqDataclass):
    """The LAWA options (``--lawa-*``); combine with a task's config to add LAWA to it."""

    lawa_k: int = field(
        default=10, metadata={"help": "number of latest snapshots to average (the paper's RoBERTa recipe: 10)"}
    )
    lawa_period_updates: int = field(
        default=0,
        metadata={"help": "take a snapshot every N optimizer updates; 0 takes one at the end of every epoch"},
    )
    lawa_weights: ChoiceEnum(list(WEIGHT_NAMES)) = field(  # type: ignore[valid-type]
        default="uniform",
        metadata={"help": "uniform: LAWA; exp: the paper's EXP comparator, alpha*(1-alpha)^i for the i-th newest; "
                          "linear, cosine, 1-sqrt: the merge that emulates that decay of the learning rate (WSM)"},
    )
    lawa_alpha: float = field(default=0.9, metadata={"help": "EXP's decay, in (0, 1]"})
    lawa_offload: ChoiceEnum(list(OFFLOAD_NAMES)) = field(  # type: ignore[valid-type]
        default="none",
        metadata={
            "help": "keep the snapshots on the model's device (none), in host memory (cpu) or in memory-mapped "
            "files under --lawa-offload-dir (disk)"
        },
    )
    lawa_offload_dir: Optional[str] = field(  # noqa: UP045 - fairseq reads typing's Optional
        default=None, metadata={"help": "an existing directory for --lawa-offload disk"}
    )
    lawa_save_dir: str = II("checkpoint.save_dir")
    lawa_train_subset: str = II("dataset.train_subset")


def check_lawa_config(cfg: Any) -> None:
    """Raise ``ValueError`` naming the flag for invalid LAWA options."""
    k = cfg.lawa_k
    if not is_int(k, 1):
        raise ValueError(f"Invalid --lawa-k {k!r}: use a positive number of snapshots (the paper uses 5 to 10)")
    period = cfg.lawa_period_updates
    if not is_int(period, 0):
        raise ValueError(
            f"Invalid --lawa-period-updates {period!r}: use 0 (a snapshot per epoch) or a positive number of updates"
        )
    try:
        resolve_weights(str(cfg.lawa_weights), k, float(cfg.lawa_alpha))
    except ValueError as err:
        raise ValueError(f"Invalid --lawa-weights/--lawa-alpha: {err}") from err
    try:
        check_offload(parse_offload(str(cfg.lawa_offload)), getattr(cfg, "lawa_offload_dir", None))
    except (TypeError, ValueError) as err:
        raise ValueError(f"Invalid --lawa-offload/--lawa-offload-dir: {err}") from err


class _Observed(torch.optim.Optimizer):
    """Holds the model's parameters for :class:`LAWAWrapper`; fairseq's own optimizer steps them."""

    def __init__(self, params: list[torch.Tensor]) -> None:
        super().__init__(params, {})

    def step(self, closure: Any = None) -> None:  # pragma: no cover - never called
        raise RuntimeError("the LAWA observer never steps: fairseq's optimizer updates the parameters")


def _amp_scale(optimizer: Any) -> float | None:
    scaler = getattr(optimizer, "_grad_scaler", None)  # fairseq's AMPOptimizer
    return None if scaler is None else float(scaler.get_scale())


class LAWATaskMixin:
    """Adds LAWA to a fairseq task; list it before the task class among the bases.

    The task's config must also carry :class:`LAWAConfig`'s fields, and ``lawa_base_task`` names
    the registered task that ``checkpoint_lawa.pt`` records (so it loads without the plugin).

    Example:
        >>> @dataclass
        ... class MyLAWAConfig(MyTaskConfig, LAWAConfig):
        ...     pass
        >>> @register_task("my_task_lawa", dataclass=MyLAWAConfig)
        ... class MyLAWATask(LAWATaskMixin, MyTask):
        ...     lawa_base_task = "my_task"
    """

    lawa_base_task: str = ""

    def __init__(self, cfg: Any, *args: Any, **kwargs: Any) -> None:
        check_lawa_config(cfg)
        super().__init__(cfg, *args, **kwargs)
        self._lawa: LAWAWrapper | None = None
        self._lawa_model: torch.nn.Module | None = None
        self._lawa_pending: dict | None = None  # loaded state waiting for the ring
        self._lawa_labels: list[int] = []  # epoch (or update) of each snapshot in the ring, oldest first
        self._lawa_best: float | None = None
        self._lawa_val_loss: float | None = None
        self._lawa_best_unsaved = False
        self._lawa_first_subset = False
        self._lawa_train_itr: Any = None
        self._lawa_num_updates = 0

    # ------------------------------------------------------------------------------ setup
    @property
    def lawa_unit(self) -> str:
        return "update" if self.cfg.lawa_period_updates else "epoch"

    def build_model(self, cfg: Any, from_checkpoint: bool = False) -> Any:
        model = super().build_model(cfg, from_checkpoint)
        self._lawa_model = model
        return model

    def get_batch_iterator(self, dataset: Any, *args: Any, **kwargs: Any) -> Any:
        itr = super().get_batch_iterator(dataset, *args, **kwargs)
        train = getattr(self, "datasets", {}).get(self.cfg.lawa_train_subset)
        if train is not None and dataset is train:
            self._lawa_train_itr = itr  # its end_of_epoch() marks the epoch's last update
        return itr

    def lawa_wrapper(self) -> LAWAWrapper | None:
        """The wrapper holding the ring, created on first use (after fairseq placed the model)."""
        if self._lawa is None and self._lawa_model is not None:
            params = list(self._lawa_model.parameters())
            self._lawa = LAWAWrapper(
                _Observed(params),
                k=self.cfg.lawa_k,
                period=None,
                weights=str(self.cfg.lawa_weights),
                alpha=float(self.cfg.lawa_alpha),
                offload=parse_offload(str(self.cfg.lawa_offload)),
                offload_dir=getattr(self.cfg, "lawa_offload_dir", None),
            )
        if self._lawa is not None and self._lawa_pending is not None:
            pending, self._lawa_pending = self._lawa_pending, None
            self._lawa.load_state_dict(pending["wrapper"])
        return self._lawa

    def _lawa_ready(self) -> bool:
        wrapper = self.lawa_wrapper()
        return wrapper is not None and wrapper.num_snapshots > 0

    # ------------------------------------------------------------------------------ training
    def optimizer_step(self, optimizer: Any, model: Any, update_num: int) -> None:
        scale = _amp_scale(optimizer)
        super().optimizer_step(optimizer, model, update_num)
        if scale is not None and _amp_scale(optimizer) < scale:
            return  # AMP found inf/NaN gradients and skipped the step
        self._lawa_num_updates = update_num + 1
        if self.cfg.lawa_period_updates:
            if self._lawa_num_updates % self.cfg.lawa_period_updates == 0:
                self._lawa_snapshot(self._lawa_num_updates)
        elif self._lawa_train_itr is not None and self._lawa_train_itr.end_of_epoch():
            self._lawa_snapshot(int(self._lawa_train_itr.epoch))

    def _lawa_snapshot(self, label: int) -> None:
        if self._lawa_labels and self._lawa_labels[-1] == label:
            return  # the same epoch/update seen twice (an AMP retry of the last batch)
        wrapper = self.lawa_wrapper()
        if wrapper is None:
            raise RuntimeError("LAWA snapshot before the task built a model: call task.build_model() first")
        wrapper.snapshot()
        self._lawa_labels = (self._lawa_labels + [label])[-self.cfg.lawa_k :]

    # ------------------------------------------------------------------------------ validation
    def begin_valid_epoch(self, epoch: int, model: Any) -> None:
        super().begin_valid_epoch(epoch, model)
        self._lawa_first_subset = True
        self.lawa_wrapper()

    def valid_step(self, sample: Any, model: Any, criterion: Any, **kwargs: Any) -> Any:
        loss, sample_size, logging_output = super().valid_step(sample, model, criterion, **kwargs)
        if self._lawa_ready():
            assert self._lawa is not None
            with self._lawa.averaged():
                _, lawa_size, lawa_output = super().valid_step(sample, model, criterion, **kwargs)
            logging_output = dict(logging_output)
            logging_output["lawa_loss"] = lawa_output.get("loss", 0.0)
            logging_output["lawa_sample_size"] = lawa_size
            if "nll_loss" in lawa_output:
                logging_output["lawa_nll_loss"] = lawa_output["nll_loss"]
        return loss, sample_size, logging_output

    def reduce_metrics(self, logging_outputs: list[dict], criterion: Any) -> None:
        super().reduce_metrics(logging_outputs, criterion)
        if not any("lawa_loss" in log for log in logging_outputs):
            return
        loss = utils.item(sum(log.get("lawa_loss", 0) for log in logging_outputs))
        size = utils.item(sum(log.get("lawa_sample_size", 0) for log in logging_outputs))
        if not size:
            return
        # the same units as fairseq's criteria: loss in base 2 per sample-size unit
        metrics.log_scalar("lawa_loss", loss / size / math.log(2), size, round=3)
        if any("lawa_nll_loss" in log for log in logging_outputs):
            nll = utils.item(sum(log.get("lawa_nll_loss", 0) for log in logging_outputs))
            ntokens = utils.item(sum(log.get("ntokens", 0) for log in logging_outputs))
            metrics.log_scalar("lawa_nll_loss", nll / max(ntokens, 1) / math.log(2), ntokens, round=3)
            metrics.log_derived("lawa_ppl", lambda meters: utils.get_perplexity(meters["lawa_nll_loss"].avg))
        else:
            metrics.log_derived("lawa_ppl", lambda meters: utils.get_perplexity(meters["lawa_loss"].avg))

    def post_validate(self, model: Any, stats: dict, agg: Any) -> None:
        parent = getattr(super(), "post_validate", None)
        if parent is not None:
            parent(model, stats, agg)
        first, self._lawa_first_subset = self._lawa_first_subset, False
        if not first or "lawa_loss" not in stats:
            return  # fairseq tracks the best on the first validation subset; so does LAWA
        value = float(stats["lawa_loss"])
        self._lawa_val_loss = value
        if self._lawa_best is None or value <= self._lawa_best:
            self._lawa_best = value
            self._lawa_best_unsaved = True
        stats["lawa_best_loss"] = round(self._lawa_best, 3)

    # ------------------------------------------------------------------------------ checkpoints
    def get_checkpoint_dict(self) -> dict:
        """Called by fairseq's ``save_checkpoint`` on the saving rank: the ring, and the LAWA files."""
        wrapper = self.lawa_wrapper()
        if wrapper is not None and wrapper.num_snapshots > 0:
            self._lawa_write_checkpoints(wrapper)
        state: dict[str, Any] = {
            "format": STATE_FORMAT,
            "labels": list(self._lawa_labels),
            "unit": self.lawa_unit,
            "best": self._lawa_best,
            "val_loss": self._lawa_val_loss,
            "num_updates": self._lawa_num_updates,
        }
        if wrapper is not None:
            state["wrapper"] = move_to(wrapper.state_dict(), "cpu")  # the ring keeps the parameters' dtype
        elif self._lawa_pending is not None:
            state["wrapper"] = self._lawa_pending["wrapper"]
        return {type(self).__name__: state}

    def set_checkpoint_dict(self, state: dict) -> None:
        """Called by fairseq's ``load_checkpoint`` on every rank with what :meth:`get_checkpoint_dict` saved."""
        if not state or "wrapper" not in state:
            return
        if state.get("format") != STATE_FORMAT:
            raise ValueError(
                f"Invalid LAWA state in the checkpoint: format {state.get('format')!r}, this plugin reads "
                f"{STATE_FORMAT}; resume with the version that saved it or pass --reset-dataloader to start a new ring"
            )
        saved_k = state["wrapper"].get(STATE_KEY, {}).get("k")
        if saved_k != self.cfg.lawa_k:
            raise ValueError(
                f"Invalid --lawa-k {self.cfg.lawa_k}: the checkpoint's ring was saved with --lawa-k {saved_k}; "
                "resume with the same --lawa-k"
            )
        self._lawa_pending = state
        self._lawa_labels = list(state.get("labels", []))
        self._lawa_best = state.get("best")
        self._lawa_val_loss = state.get("val_loss")
        self._lawa_num_updates = int(state.get("num_updates", 0))
        self.lawa_wrapper()  # load now when the model exists, so a mismatch fails at start-up

    def _lawa_write_checkpoints(self, wrapper: LAWAWrapper) -> None:
        cfg = ckpt.root_config(self.cfg)
        if cfg is None or not self.lawa_base_task:
            logger.warning("LAWA: no fairseq root config or base task; checkpoint_lawa.pt not written")
            return
        assert self._lawa_model is not None
        model_state = utils.move_to_cpu(wrapper.averaged_state_dict(self._lawa_model))
        meta = {
            "k": self.cfg.lawa_k,
            "weights": str(self.cfg.lawa_weights),
            "alpha": float(self.cfg.lawa_alpha),
            "unit": self.lawa_unit,
            "snapshots": list(self._lawa_labels),
            "num_updates": self._lawa_num_updates,
            "val_loss": self._lawa_val_loss,
        }
        task_state = self.state_dict() if hasattr(self, "state_dict") else {}
        path = os.path.join(self.cfg.lawa_save_dir, ckpt.LAWA_NAME)
        atomic_save(ckpt.lawa_checkpoint(cfg, self.lawa_base_task, model_state, task_state,
                                       self._lawa_num_updates, meta), path)
        logger.info(f"LAWA: saved the average of {self.lawa_unit}s {self._lawa_labels} to {path}")
        if self._lawa_best_unsaved:
            self._lawa_best_unsaved = False
            best = os.path.join(self.cfg.lawa_save_dir, ckpt.LAWA_BEST_NAME)
            ckpt.copy_atomic(path, best)
            logger.info(f"LAWA: new best LAWA validation loss {self._lawa_best}: copied to {best}")


@dataclass
class MaskedLMLAWAConfig(MaskedLMConfig, LAWAConfig):
    """fairseq's ``masked_lm`` options plus the LAWA options."""


@register_task("masked_lm_lawa", dataclass=MaskedLMLAWAConfig)
class MaskedLMLAWATask(LAWATaskMixin, MaskedLMTask):
    """fairseq's ``masked_lm`` task (RoBERTa pre-training) with LAWA; see the module docstring."""

    lawa_base_task = "masked_lm"
