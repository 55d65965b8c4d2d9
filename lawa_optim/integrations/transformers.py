"""LAWA for the Hugging Face ``Trainer``: :class:`LAWATrainerCallback`.

The ``Trainer`` (on top of accelerate) owns its optimizer; the callback leaves it alone and puts an
:class:`~lawa_optim.integrations.observer.Observer` beside it, which counts the optimizer's real
steps (gradient accumulation and AMP-skipped steps excluded) and keeps the ring of snapshots. What
each ``Trainer`` event does:

- ``on_train_begin``: build the observer around the trainer's optimizer (accelerate's
  ``AcceleratedOptimizer`` around a plain torch optimizer); on a resumed run, load the ring from
  ``checkpoint-N/lawa_state.pt`` (the ``Trainer`` has just loaded the model, optimizer and
  scheduler from that folder). A checkpoint without it starts a fresh ring, with a warning.
- ``on_epoch_end``: with ``period=None``, take one snapshot per epoch (the paper's setting); with
  ``period=N`` the observer takes one every N optimizer steps by itself.
- ``on_evaluate``: after every evaluation of the raw weights, the average is swapped into the same
  parameters in place and evaluated by the trainer's own ``evaluation_loop`` on the same dataloader,
  with the same ``compute_metrics``; the ``eval_lawa_*`` metrics are added to the evaluation's
  metrics (so ``metric_for_best_model="eval_lawa_loss"``, ``EarlyStoppingCallback`` and
  ``trainer.evaluate()``'s result see them: the callback moves itself to the front of the
  trainer's callbacks when training starts) and logged at the same step. The training weights are
  restored bit-exactly afterwards.
- ``on_save``: the ring and the callback's own state go to ``checkpoint-N/lawa_state.pt``
  (tensors and plain values, ``weights_only`` loads it), and the average, written with
  ``save_pretrained`` (its config beside it), to ``checkpoint-N/lawa/``.
- ``on_train_end``: the average to ``output_dir/lawa/``, and one line saying when the average
  first reached the raw weights' best metric and how many steps earlier (or that it never did).

Not supported: FSDP and DeepSpeed (each process holds a shard of the weights): accelerate runs them
on GPUs only (accelerate 1.16 ignores an FSDP plugin on the CPU), so that path cannot be tested
here; the callback refuses them when training starts, naming what is supported (docs/sharded.md).
"""

from __future__ import annotations

import contextlib
import inspect
import logging
import os
import warnings
from collections.abc import Iterable, Iterator
from typing import Any

import torch
from torch import nn
from transformers import Trainer, TrainerCallback
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR

from ..bn import has_batchnorm
from ..io import atomic_save, safe_load
from ..protocol import AveragingOptimizer
from ..unwrap import strip_proxies
from .observer import Observer, TimeSaved, check_method, check_model

__all__ = ["LAWATrainerCallback", "AVERAGE_DIR", "STATE_NAME"]

logger = logging.getLogger(__name__)

STATE_NAME = "lawa_state.pt"  # the ring and the callback's state, in each checkpoint-N folder
AVERAGE_DIR = "lawa"  # the average, save_pretrained-ed into checkpoint-N/lawa and output_dir/lawa
STATE_FORMAT = 1


def _fingerprint(params: list[torch.Tensor]) -> torch.Tensor:
    """First and last element of every parameter, in float64: tells the checkpoint's weights apart
    from any other checkpoint's (one optimizer step changes them) without reading them all."""
    with torch.no_grad():
        values = [t for p in params for t in (p.reshape(-1)[0], p.reshape(-1)[-1]) if p.numel()]
        return torch.stack(values).double().cpu() if values else torch.zeros(0, dtype=torch.float64)


class LAWATrainerCallback(TrainerCallback):
    """Evaluate, log and save the average of the latest checkpoints beside the raw weights.

    Args:
        trainer (transformers.Trainer, optional): the trainer the callback is added to (it
            evaluates the average with the trainer's own ``evaluation_loop``). Either pass it and
            add the callback with ``trainer.add_callback(callback)``, or leave it out and give the
            callback (an instance, or the class for the defaults) to ``Trainer(callbacks=[...])``:
            the callback then attaches to the ``Trainer`` whose events call it (default: None).
        method (str, optional): a method of the zoo that does not change the training trajectory:
            ``"lawa"``, ``"exp"``, ``"ema"``, ``"swa"`` (default: ``"lawa"``).
        period (int, optional): take a snapshot every ``period`` optimizer steps (with gradient
            accumulation an optimizer step is ``gradient_accumulation_steps`` batches); ``None``
            takes one at the end of each epoch, the paper's setting (default: None).
        save (bool, optional): write the average into each ``checkpoint-N/lawa/`` and into
            ``output_dir/lawa/`` at the end (default: True). The ring's state is always saved.
        bn_loader (iterable, optional): batches (e.g. a ``DataLoader`` over a part of the training
            set) over which BatchNorm statistics are recomputed for the average before it is
            evaluated or saved; without it the model's current statistics are used (default: None).
        bn_batches (int, optional): use at most this many batches of ``bn_loader`` (default: all).
        **method_kwargs: the method's hyper-parameters (``k=6`` for LAWA, ``decay`` for EMA, ...).

    Attributes:
        observer (Observer): the ring and step counter, from the start of training on.
        time_saved (TimeSaved): the raw and averaged values of the monitored metric
            (``metric_for_best_model``, else the loss) at each evaluation.

    Raises ``ValueError``/``TypeError`` for an unknown method or an out-of-range ``k``/``period``
    when created, and when training starts for a model without trainable parameters or an
    optimizer that is not a plain torch optimizer.

    Example:
        >>> trainer = Trainer(model=model, args=args, train_dataset=train, eval_dataset=val)
        >>> trainer.add_callback(LAWATrainerCallback(trainer, k=6))      # one snapshot per epoch
        >>> # or: Trainer(..., callbacks=[LAWATrainerCallback(k=6)])
        >>> trainer.train()           # logs eval_lawa_loss beside eval_loss; checkpoint-N/lawa/
        >>> model = AutoModelForSequenceClassification.from_pretrained(f"{args.output_dir}/lawa")
    """

    def __init__(
        self,
        trainer: Trainer | None = None,
        method: str = "lawa",
        *,
        period: int | None = None,
        save: bool = True,
        bn_loader: Iterable[Any] | None = None,
        bn_batches: int | None = None,
        **method_kwargs: Any,
    ) -> None:
        if trainer is not None and not isinstance(trainer, Trainer):
            raise TypeError(
                f"Invalid trainer: {type(trainer).__name__} is not a transformers.Trainer; pass the trainer the "
                "callback is added to (trainer.add_callback(LAWATrainerCallback(trainer))), or leave it out and "
                "write Trainer(..., callbacks=[LAWATrainerCallback(k=6)])"
            )
        check_method(method, period, **method_kwargs)
        bad_batches = isinstance(bn_batches, bool) or not isinstance(bn_batches, int) or bn_batches < 1
        if bn_batches is not None and bad_batches:
            raise ValueError(f"Invalid bn_batches: {bn_batches!r}; use a positive int or None for all of bn_loader")
        if bn_batches is not None and bn_loader is None:
            raise ValueError(f"Invalid bn_batches={bn_batches}: it needs bn_loader=<batches of training data>")
        self.trainer: Trainer | None = None
        self.method = method
        self.period = period
        self.save = bool(save)
        self.bn_loader = bn_loader
        self.bn_batches = bn_batches
        self.method_kwargs = dict(method_kwargs)
        self.observer: Observer | None = None
        self.time_saved: TimeSaved | None = None
        self.snapshot_steps: list[int] = []
        self._last_count = 0  # the observer's step count at the last on_step_end
        if trainer is not None:
            self._attach(trainer)

    def _attach(self, trainer: Trainer) -> None:
        if trainer.model is not None:  # None with model_init: checked when training starts
            check_model(trainer.model)
        self.trainer = trainer
        self.time_saved = self._new_time_saved()

    def _find_trainer(self, event: str) -> None:
        """Attach to the ``Trainer`` whose method is calling this event (``callbacks=[...]`` form)."""
        if self.trainer is not None:
            return
        frame = inspect.currentframe()
        try:
            while frame is not None:  # the Trainer method -> CallbackHandler.call_event -> this callback
                owner = frame.f_locals.get("self")
                if isinstance(owner, Trainer):
                    self._attach(owner)
                    return
                frame = frame.f_back
        finally:
            del frame
        raise TypeError(
            f"LAWATrainerCallback: {event} was not called by a transformers.Trainer, so the callback has no trainer "
            "to evaluate the average with; give it to Trainer(..., callbacks=[LAWATrainerCallback(k=6)]) or write "
            "trainer.add_callback(LAWATrainerCallback(trainer, k=6))"
        )

    # ------------------------------------------------------------------------------ helpers
    def _monitored(self) -> tuple[str, str]:
        """The raw metric's full key (``eval_loss``) and ``"min"``/``"max"``, from the trainer's args."""
        assert self.trainer is not None
        args = self.trainer.args
        name = args.metric_for_best_model or "loss"
        if not name.startswith("eval_"):
            name = f"eval_{name}"
        name = name.replace("_lawa_", "_", 1)  # metric_for_best_model may name the average's metric
        greater = args.greater_is_better if args.metric_for_best_model else False
        return name, "max" if greater else "min"

    def _new_time_saved(self) -> TimeSaved:
        name, mode = self._monitored()
        return TimeSaved(name, mode)

    def _model(self) -> nn.Module:
        model = self.trainer.model
        return self.trainer.accelerator.unwrap_model(model) if hasattr(self.trainer, "accelerator") else model

    @contextlib.contextmanager
    def _averaged(self) -> Iterator[None]:
        """The average swapped in; the RNG states restored after (a BatchNorm recompute in train mode
        draws dropout masks), so the training run is the same with and without the callback."""
        assert self.observer is not None
        bn = {"bn_loader": self.bn_loader, "bn_batches": self.bn_batches} if self.bn_loader is not None else {}
        devices = [torch.cuda.current_device()] if torch.cuda.is_available() else []
        with torch.random.fork_rng(devices=devices), self.observer.averaged(self._model(), **bn):
            yield

    def _params(self) -> list[torch.Tensor]:
        assert self.observer is not None
        return [p for g in self.observer.wrapper.param_groups for p in g["params"]]

    def state_dict(self) -> dict[str, Any]:
        """What ``checkpoint-N/lawa_state.pt`` holds: the observer's state (the ring), the step
        of each snapshot, the time-saved records and a fingerprint of the training weights."""
        if self.observer is None:
            raise RuntimeError("LAWATrainerCallback.state_dict() before training started: there is no ring yet")
        return {
            "format": STATE_FORMAT,
            "method": self.method,
            "period": self.period,
            "method_kwargs": dict(self.method_kwargs),
            "global_step": self.trainer.state.global_step,
            "observer": self.observer.state_dict(),
            "snapshot_steps": list(self.snapshot_steps),
            "time_saved": self.time_saved.state_dict(),
            "fingerprint": _fingerprint(self._params()),
        }

    # ------------------------------------------------------------------------------ training
    def on_init_end(self, args: Any, state: Any, control: Any, **kw: Any):
        self._find_trainer("on_init_end")

    def on_train_begin(self, args: Any, state: Any, control: Any, model: Any = None, optimizer: Any = None, **kw: Any):
        self._find_trainer("on_train_begin")
        trainer = self.trainer
        assert trainer is not None
        if getattr(trainer, "is_deepspeed_enabled", False) or getattr(trainer, "is_fsdp_enabled", False):
            raise RuntimeError(
                "LAWATrainerCallback does not support FSDP or DeepSpeed under the Trainer: accelerate runs them on "
                "GPUs only, so this path is untested (benchmarks/gpu_check.sh probes it on a GPU). For sharded "
                "training with LAWA use plain PyTorch FSDP2 with LAWAWrapper or Lightning's ModelParallelStrategy "
                "with LAWACallback (docs/sharded.md), or average the saved checkpoints afterwards with `lawa average`"
            )
        check_model(model if model is not None else trainer.model)
        if isinstance(strip_proxies(optimizer), AveragingOptimizer):
            raise TypeError(
                f"Invalid optimizer: the trainer's optimizer is already a lawa_optim wrapper "
                f"({type(strip_proxies(optimizer)).__name__}); give the Trainer a plain torch optimizer when using "
                "LAWATrainerCallback, or drop the callback and evaluate with lawa_optim.unwrap(trainer.optimizer)"
            )
        if self.bn_loader is None and has_batchnorm(model if model is not None else trainer.model):
            warnings.warn(
                "LAWATrainerCallback: the model has BatchNorm layers and no bn_loader was given, so the average is "
                "evaluated with the training weights' running statistics; pass bn_loader=<a DataLoader over part "
                "of the training set> to recompute them for the average",
                stacklevel=2,
            )
        callbacks = trainer.callback_handler.callbacks
        if self in callbacks and callbacks[0] is not self:
            # First, so that every other callback's on_evaluate (EarlyStoppingCallback monitoring
            # eval_lawa_loss) sees the average's metrics. Safe inside the handler's loop over the list:
            # the callbacks after this one keep their positions.
            callbacks.remove(self)
            callbacks.insert(0, self)
        if self.observer is not None:
            self.observer.close()
            self.observer = None
        self.observer = Observer(optimizer, self.method, period=self.period, **self.method_kwargs)
        self.time_saved = self._new_time_saved()
        self.snapshot_steps = []
        if state.global_step > 0:
            self._resume(args, state)
        self._last_count = self.observer.num_steps

    def _resume(self, args: Any, state: Any) -> None:
        assert self.observer is not None
        # The Trainer does not tell callbacks which folder it resumed from: the checkpoint of this step
        # in output_dir, or the folder args.resume_from_checkpoint names (the example scripts' flag).
        folders = [os.path.join(args.output_dir, f"{PREFIX_CHECKPOINT_DIR}-{state.global_step}")]
        if isinstance(args.resume_from_checkpoint, str):
            folders.insert(0, args.resume_from_checkpoint)
        found = [f for f in folders if os.path.isfile(os.path.join(f, STATE_NAME))]
        if not found:
            warnings.warn(
                f"LAWATrainerCallback: resuming at step {state.global_step}, but there is no {STATE_NAME} in "
                f"{folders[-1]} (a checkpoint saved without the callback, or resumed from outside output_dir; "
                "set TrainingArguments.resume_from_checkpoint to the folder): starting a fresh average",
                stacklevel=3,
            )
            return
        folder = found[0]
        path = os.path.join(folder, STATE_NAME)
        saved = safe_load(path)
        if not isinstance(saved, dict) or saved.get("format") != STATE_FORMAT:
            raise ValueError(f"Invalid LAWA state in {path}: not a LAWATrainerCallback state of format {STATE_FORMAT}")
        settings = {"method": self.method, "period": self.period, "method_kwargs": self.method_kwargs}
        for key, value in settings.items():
            if saved.get(key) != value:
                raise ValueError(
                    f"Invalid {key}={value!r}: the checkpoint {folder} was saved by a LAWATrainerCallback with "
                    f"{key}={saved.get(key)!r}; resume with the same settings (or delete {path} for a fresh average)"
                )
        fingerprint = saved.get("fingerprint")
        if saved.get("global_step") != state.global_step or not (
            isinstance(fingerprint, torch.Tensor) and torch.equal(fingerprint, _fingerprint(self._params()))
        ):
            warnings.warn(
                f"LAWATrainerCallback: {path} does not belong to the weights this run resumed from (step "
                f"{saved.get('global_step')} vs {state.global_step}, or other weights): starting a fresh average",
                stacklevel=3,
            )
            return
        self.observer.load_state_dict(saved["observer"])
        self.snapshot_steps = [int(s) for s in saved.get("snapshot_steps", [])]
        self.time_saved.load_state_dict(saved["time_saved"])
        logger.info("LAWA: resumed the average of steps %s from %s", self.snapshot_steps, path)

    def on_epoch_end(self, args: Any, state: Any, control: Any, **kw: Any):
        if self.observer is None or self.period is not None:
            return
        if self.observer.num_steps == 0 or (self.snapshot_steps and self.snapshot_steps[-1] == state.global_step):
            return  # no step taken yet, or this step already snapshotted
        self.observer.snapshot()
        self.snapshot_steps.append(state.global_step)

    def on_step_end(self, args: Any, state: Any, control: Any, **kw: Any):
        if self.observer is None or self.period is None:
            return
        count = self.observer.num_steps
        if count != self._count_before(count) and count % self.period == 0:
            self.snapshot_steps.append(state.global_step)  # the observer took it in the optimizer's step

    def _count_before(self, count: int) -> int:
        before, self._last_count = self._last_count, count
        return before

    # ------------------------------------------------------------------------------ evaluation
    def on_evaluate(self, args: Any, state: Any, control: Any, metrics: dict[str, float] | None = None, **kw: Any):
        if self.observer is None or metrics is None:
            return
        prefix = next((key[: -len("_runtime")] for key in metrics if key.endswith("_runtime")), "eval")
        if prefix.endswith("_lawa"):
            return  # someone evaluated with our prefix
        lawa: dict[str, float] = {}
        if self.observer.ready:
            loader = kw.get("eval_dataloader")
            if loader is None:
                return
            trainer = self.trainer
            with self._averaged():
                output = trainer.evaluation_loop(
                    loader,
                    description="LAWA evaluation",
                    prediction_loss_only=True if trainer.compute_metrics is None else None,
                    metric_key_prefix=f"{prefix}_lawa",
                )
            lawa = {
                key: value
                for key, value in output.metrics.items()
                if not key.endswith(("_model_preparation_time", "_runtime", "_per_second"))
            }
        raw_key, _ = self._monitored()
        if raw_key.startswith(prefix + "_") and raw_key in metrics:
            avg_key = f"{prefix}_lawa_{raw_key[len(prefix) + 1 :]}"
            avg = lawa.get(avg_key)
            self.time_saved.record(state.global_step, round(state.epoch or 0), metrics[raw_key], avg)
            if avg is None:  # no snapshot yet: the average is the training weights, so that best-model
                lawa[avg_key] = metrics[raw_key]  # selection on it works from the first evaluation
        if lawa:
            metrics.update(lawa)
            self.trainer.log(dict(lawa))

    # ------------------------------------------------------------------------------ saving
    def _save_average(self, folder: str) -> None:
        model = self._model()
        with self._averaged():
            if hasattr(model, "save_pretrained"):
                model.save_pretrained(folder)
            else:
                from safetensors.torch import save_model

                os.makedirs(folder, exist_ok=True)
                save_model(model, os.path.join(folder, "model.safetensors"))
        processing_class = getattr(self.trainer, "processing_class", None)
        if processing_class is not None and hasattr(processing_class, "save_pretrained"):
            processing_class.save_pretrained(folder)

    def on_save(self, args: Any, state: Any, control: Any, **kw: Any):
        if self.observer is None or not args.should_save:
            return
        folder = os.path.join(args.output_dir, f"{PREFIX_CHECKPOINT_DIR}-{state.global_step}")
        if not os.path.isdir(folder):
            logger.warning("LAWA: checkpoint folder %s not found; the average's state is not saved", folder)
            return
        atomic_save(self.state_dict(), os.path.join(folder, STATE_NAME))
        if self.save and self.observer.ready:
            self._save_average(os.path.join(folder, AVERAGE_DIR))

    def on_train_end(self, args: Any, state: Any, control: Any, **kw: Any):
        if self.observer is None:
            return
        if args.should_save and self.save and self.observer.ready:
            folder = os.path.join(args.output_dir, AVERAGE_DIR)
            self._save_average(folder)
            logger.info("LAWA: saved the average of steps %s to %s", self.snapshot_steps[-self._k() :], folder)
        if state.is_world_process_zero:
            logger.info("LAWA time saved: %s", self.time_saved.summary())

    def _k(self) -> int:
        k = getattr(self.observer.wrapper, "k", None) if self.observer is not None else None
        return k if isinstance(k, int) and k > 0 else len(self.snapshot_steps) or 1

    def __repr__(self) -> str:
        kw = "".join(f", {k}={v!r}" for k, v in self.method_kwargs.items())
        return f"LAWATrainerCallback(method={self.method!r}, period={self.period}{kw})"
