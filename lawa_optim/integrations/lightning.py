"""LAWA for PyTorch Lightning (2.x): :class:`LAWACallback`, no change to ``configure_optimizers``.

The callback observes the optimizer Lightning built (an :class:`~lawa_optim.integrations.observer.
Observer`: torch's step post-hook, so a step AMP skips does not count), takes a snapshot at the end
of each training epoch (its last optimizer step, before that epoch's validation) or every
``every_n_steps`` optimizer steps, and evaluates the average beside the raw weights in every
validation: after Lightning's ``validation_step`` on a batch, the same ``validation_step`` runs again
with the average swapped in (computed once per validation, BatchNorm statistics recomputed for it
when the model has BatchNorm) and whatever it logs is logged with a suffix: ``val_loss`` and
``val_loss_lawa``, reduced by Lightning exactly alike, so ``ModelCheckpoint``/``EarlyStopping`` can
monitor either. ``trainer.test`` does the same for ``test_step``.

Checkpoints: ``checkpoint["state_dict"]`` always holds the training weights (never the average),
``checkpoint["lawa_state_dict"]`` the average as a plain ``model.state_dict()`` (loads with
``model.load_state_dict`` without the callback), and the callback's state (the ring, counters, the
time-saved records) goes in Lightning's ``checkpoint["callbacks"]``, so ``trainer.fit(ckpt_path=...)``
continues the uninterrupted run bit-exactly. At the end of ``fit`` one line says when the average
first reached the raw weights' best monitored value (:class:`~lawa_optim.integrations.observer.TimeSaved`).

Sharded weights: under ``ModelParallelStrategy`` (FSDP2 through ``configure_model``) each rank
snapshots and averages its own shards, and the ring and the average go into the distributed
checkpoint shard by shard (:mod:`lawa_optim.integrations.lightning_sharded`); ``FSDPStrategy`` and
DeepSpeed (GPU-only in Lightning, untested) are refused when ``fit`` starts.

Importing this module imports ``lightning``.
"""

from __future__ import annotations

import os
import sys
import warnings
from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch import nn

try:
    from lightning.pytorch import LightningModule, Trainer
    from lightning.pytorch.callbacks import Callback
    from lightning.pytorch.trainer.states import TrainerFn
    from lightning.pytorch.utilities.rank_zero import rank_zero_info
    from lightning.pytorch.utilities.signature_utils import is_param_in_hook_signature
except ImportError as err:
    raise ImportError(
        f"lawa_optim.integrations.lightning needs Lightning 2.x ({err}); install it with "
        "`pip install lawa-optim[lightning]` (or `pip install lightning`)"
    ) from err

from ..bn import has_batchnorm, model_input
from .lightning_sharded import AtomicCheckpoints, is_sharded, load_average, load_ring, save_entry
from .observer import Observer, StateSwap, TimeSaved, check_method, check_model

__all__ = ["LAWACallback"]

STATE_FORMAT = 1
BN_CHOICES = ("auto", True, False)


class LAWACallback(Callback):
    """Evaluate and checkpoint the latest-weight average of a Lightning run beside its raw weights.

    Args:
        method (str, optional): a zoo method that observes the trajectory: ``"lawa"``, ``"exp"``,
            ``"ema"``, ``"swa"`` or ``"base"`` (default: ``"lawa"``).
        every_n_steps (int, optional): a snapshot every N optimizer steps (after steps N, 2N, ...);
            ``None`` takes one at the end of every training epoch, the paper's choice (default: None).
        start_step (int, optional): no snapshot before the optimizer step of zero-based index
            ``start_step`` (default: 0).
        start_epoch (int, optional): no snapshot before the end of epoch ``start_epoch``
            (zero-based, as ``trainer.current_epoch``) (default: 0).
        monitor (str, optional): the logged metric whose time saved is reported at the end of
            ``fit`` (default: ``"val_loss"``).
        mode (str, optional): ``"min"`` or ``"max"`` for ``monitor`` (default: ``"min"``).
        suffix (str, optional): appended to every name logged for the average (default:
            ``"_" + method``, e.g. ``val_loss_lawa``).
        bn (str or bool, optional): recompute BatchNorm statistics for the average: ``"auto"`` when
            the model has BatchNorm layers, ``True``, or ``False`` to keep the model's (default: "auto").
        bn_loader (iterable, optional): batches for the recomputation (default: None, the
            training dataloader).
        bn_batches (int, optional): at most this many batches (default: 32).
        bn_forward (callable, optional): ``bn_forward(model, batch)`` when ``model(batch[0])`` is
            not how the model is called (default: None).
        test (bool, optional): ``trainer.test`` also evaluates the average (the fit's, or a
            checkpoint's ``lawa_state_dict``) and logs ``test_*_lawa`` (default: True).
        **method_kwargs: the method's hyper-parameters (``k=6`` for LAWA by default, ``decay`` for
            EMA, ...); see ``lawa_optim.get_method_info(method).accepted_kwargs()``.

    Every argument is checked here, before training starts (``ValueError``/``TypeError``).

    When to snapshot: override :meth:`should_snapshot` (the counterpart of Lightning's
    ``WeightAveraging.should_update``); ``every_n_steps``, ``start_step`` and ``start_epoch`` are
    what its default implementation reads.

    Example:
        >>> trainer = L.Trainer(max_epochs=20, callbacks=[LAWACallback(k=6)])
        >>> trainer.fit(model, train_loader, val_loader)   # logs val_loss and val_loss_lawa
    """

    def __init__(
        self,
        method: str = "lawa",
        *,
        every_n_steps: int | None = None,
        start_step: int = 0,
        start_epoch: int = 0,
        monitor: str = "val_loss",
        mode: str = "min",
        suffix: str | None = None,
        bn: str | bool = "auto",
        bn_loader: Iterable[Any] | None = None,
        bn_batches: int | None = 32,
        bn_forward: Callable[[nn.Module, Any], Any] | None = None,
        test: bool = True,
        **method_kwargs: Any,
    ) -> None:
        if "period" in method_kwargs:
            raise TypeError(
                f"Invalid argument period={method_kwargs['period']!r}: use every_n_steps=N (or None for one "
                "snapshot per epoch)"
            )
        if every_n_steps is not None and (
            isinstance(every_n_steps, bool) or not isinstance(every_n_steps, int) or every_n_steps < 1
        ):
            raise ValueError(
                f"Invalid every_n_steps: {every_n_steps!r}; use a positive int, or None for one snapshot per epoch"
            )
        for name, value in (("start_step", start_step), ("start_epoch", start_epoch)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ValueError(f"Invalid {name}: {value!r}; use an int >= 0 (0 snapshots from the start)")
        check_method(method, every_n_steps, **method_kwargs)
        self._time_saved = TimeSaved(monitor, mode)  # checks monitor and mode
        if suffix is None:
            suffix = f"_{method}"
        if not isinstance(suffix, str) or not suffix:
            raise ValueError(f"Invalid suffix: {suffix!r}; use a non-empty str such as '_lawa'")
        if not any(bn is c for c in BN_CHOICES) and bn != "auto":
            raise ValueError(f"Invalid bn: {bn!r}; use 'auto' (when the model has BatchNorm), True or False")
        if bn_batches is not None and (
            isinstance(bn_batches, bool) or not isinstance(bn_batches, int) or bn_batches < 1
        ):
            raise ValueError(f"Invalid bn_batches: {bn_batches!r}; use a positive int or None for the whole loader")
        if bn_forward is not None and not callable(bn_forward):
            raise TypeError(f"Invalid bn_forward: {bn_forward!r} is not callable; use bn_forward(model, batch)")
        if not isinstance(test, bool):
            raise TypeError(f"Invalid test: {test!r}; use True or False")
        self.method = method
        self.method_kwargs = dict(method_kwargs)
        self.every_n_steps = every_n_steps
        self.start_step = start_step
        self.start_epoch = start_epoch
        self.monitor = monitor
        self.mode = mode
        self.suffix = suffix
        self.bn = bn
        self.bn_loader = bn_loader
        self.bn_batches = bn_batches
        self.bn_forward = bn_forward
        self.test = test
        self.observer: Observer | None = None
        self.time_saved_summary: str | None = None
        self._pending: dict[str, Any] | None = None
        self._snap_epoch = -1  # the last epoch whose end was offered to should_snapshot
        self._seen_steps = 0  # the observer's step count last offered to should_snapshot
        self._snap_step = -1  # the observer's step count at the last snapshot (never two of one step)
        self._epoch = 0  # the epoch being trained, for should_snapshot's default
        self._eval: StateSwap | None = None  # the average being evaluated, computed once per evaluation
        self._eval_key: Any = None
        self._loaded_average: dict[str, torch.Tensor] | None = None  # a checkpoint's average (test/validate)
        self._warned: set[str] = set()
        self._train_loader: Any = None
        self._sharded = False  # ModelParallelStrategy: the ring and the average go in the distributed checkpoint
        self._atomic: AtomicCheckpoints | None = None
        self._folder: Any = None  # the distributed checkpoint folder being resumed from
        self._module: LightningModule | None = None

    # ---------------------------------------------------------------------------------- names
    @property
    def state_key(self) -> str:
        return self._generate_state_key(method=self.method, suffix=self.suffix)

    @property
    def average_key(self) -> str:
        """The checkpoint key of the average's state dict: ``"lawa_state_dict"`` by default."""
        return f"{self.suffix.lstrip('_')}_state_dict"

    # ---------------------------------------------------------------------------------- setup
    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        from lightning.pytorch.strategies import ModelParallelStrategy

        # For every stage, before the strategy restores a checkpoint: distributed checkpoint folders are
        # saved atomically and checked before they are loaded (a missing rank's file is named).
        strategy = trainer.strategy
        distributed = getattr(strategy, "_save_distributed_checkpoint", True)
        if isinstance(strategy, ModelParallelStrategy) and distributed and self._atomic is None:
            self._atomic = AtomicCheckpoints(strategy)

    def _check_model(self, pl_module: LightningModule) -> None:
        # Here, not in setup(): Lightning calls callbacks' setup before configure_model, so a model
        # that builds its layers there (the way it asks sharded models to) has no parameters yet.
        check_model(pl_module)
        step = getattr(pl_module, "validation_step", None)
        if step is not None and is_param_in_hook_signature(step, "dataloader_iter", explicit=True):
            raise ValueError(
                "Invalid model: its validation_step takes dataloader_iter, which LAWACallback cannot run a "
                "second time for the average; take (batch, batch_idx) instead"
            )

    def on_fit_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        from lightning.pytorch.strategies import DeepSpeedStrategy, FSDPStrategy, ModelParallelStrategy

        self._check_model(pl_module)  # after configure_model and the strategy's setup

        if isinstance(trainer.strategy, (DeepSpeedStrategy, FSDPStrategy)):
            raise ValueError(
                f"Invalid strategy: LAWACallback does not support {type(trainer.strategy).__name__} (Lightning runs it "
                "on GPUs only, so it is untested here); for sharded weights use strategy=ModelParallelStrategy() with "
                "fully_shard in configure_model (FSDP2, supported and tested), or strategy='ddp'"
            )
        self._sharded = isinstance(trainer.strategy, ModelParallelStrategy)
        if self._sharded and not getattr(trainer.strategy, "_save_distributed_checkpoint", True):
            raise ValueError(
                "Invalid strategy: ModelParallelStrategy(save_distributed_checkpoint=False) gathers full checkpoints "
                "on rank 0, which LAWACallback does not support; keep the default save_distributed_checkpoint=True "
                "(the ring is saved and resharded with the distributed checkpoint)"
            )
        self._module = pl_module
        if len(trainer.optimizers) != 1:
            raise ValueError(
                f"Invalid optimizers: LAWACallback observes one optimizer, configure_optimizers returned "
                f"{len(trainer.optimizers)}; return one optimizer (with its scheduler)"
            )
        previous = None
        if self.observer is not None:  # a second fit with the same callback continues its ring
            self.observer.close()
            previous = None if self._pending is not None else self._state(sharded=False)
        # period=None: the callback decides every snapshot (should_snapshot), after the step the observer counted
        self.observer = Observer(trainer.optimizers[0], self.method, **self.method_kwargs)
        self._seen_steps, self._snap_step = 0, -1
        self._drop_eval()
        if self._pending is not None:
            self._apply(self._pending)
        elif previous is not None:
            try:
                self._apply(previous)
                self._snap_epoch = -1  # this fit's epochs are counted afresh
            except ValueError as err:  # e.g. the new optimizer trains other parameters
                warnings.warn(f"LAWACallback: the average starts afresh in this fit ({err})", UserWarning, stacklevel=2)

    def teardown(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        if stage == "fit" and self.observer is not None:
            self.observer.close()  # the average (and its evaluation copy) stays, for trainer.test
        if self._atomic is not None:
            self._atomic.close()
            self._atomic = None

    # ---------------------------------------------------------------------------------- training
    def on_train_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._train_loader = trainer.train_dataloader  # for BatchNorm, also in a trainer.test after fit

    def on_train_batch_end(
        self, trainer: Trainer, pl_module: LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        self._epoch = trainer.current_epoch
        if self.observer is not None and self.observer.num_steps > self._seen_steps:  # an optimizer step was taken
            self._seen_steps = self.observer.num_steps
            if self.should_snapshot(step_idx=self._seen_steps - 1):
                self._snapshot()
        if trainer.fit_loop.epoch_loop.batch_progress.is_last_batch:
            self._epoch_end(trainer)  # before this epoch's validation
        if self._eval is not None and self._eval_key != self._key():
            self._drop_eval()  # free the stale average

    def on_train_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._epoch_end(trainer)  # an epoch cut short (max_steps, limit_train_batches)

    def _epoch_end(self, trainer: Trainer) -> None:
        if self.observer is None or self._snap_epoch == trainer.current_epoch or self.observer.num_steps == 0:
            return
        self._snap_epoch = self._epoch = trainer.current_epoch
        if self.should_snapshot(epoch_idx=trainer.current_epoch):
            self._snapshot()

    def _snapshot(self) -> None:
        assert self.observer is not None
        if self._snap_step != self.observer.num_steps:  # a step and its epoch's end both chosen: one snapshot
            self.observer.snapshot()
            self._snap_step = self.observer.num_steps

    def should_snapshot(self, step_idx: int | None = None, epoch_idx: int | None = None) -> bool:
        """Whether to take a snapshot now; override it to choose when the callback snapshots.

        Called after every optimizer step with ``step_idx`` (the zero-based index of that step among
        the steps the optimizer really took: a step that AMP's ``GradScaler`` skipped is not
        counted) and at the end of every training epoch with ``epoch_idx`` (zero-based, as
        ``trainer.current_epoch``; called before that epoch's validation, so the validation
        evaluates an average that includes it); the other argument is ``None``. The same contract
        as Lightning's ``WeightAveraging.should_update(step_idx, epoch_idx)``. At most one
        snapshot is taken per optimizer step.

        The default: with ``every_n_steps=None``, at the end of every epoch from ``start_epoch`` on
        whose last step index is at least ``start_step``; with ``every_n_steps=N``, after steps
        ``N, 2N, ...`` (``(step_idx + 1) % N == 0``) from ``start_step`` on, in epochs from
        ``start_epoch`` on.

        Example:
            >>> class EveryOtherEpochFrom10(LAWACallback):
            ...     def should_snapshot(self, step_idx=None, epoch_idx=None):
            ...         return epoch_idx is not None and epoch_idx >= 10 and epoch_idx % 2 == 0
        """
        if self._epoch < self.start_epoch:
            return False
        if epoch_idx is not None:
            last_step = self.observer.num_steps - 1 if self.observer is not None else -1
            return self.every_n_steps is None and epoch_idx >= self.start_epoch and last_step >= self.start_step
        if step_idx is not None and self.every_n_steps is not None:
            return step_idx >= self.start_step and (step_idx + 1) % self.every_n_steps == 0
        return False

    # ---------------------------------------------------------------------------------- evaluation
    def _key(self) -> Any:
        obs = self.observer
        return (
            None
            if obs is None
            else (obs.num_steps, obs.wrapper.num_snapshots, getattr(obs.wrapper, "snapshots_taken", 0))
        )

    def _drop_eval(self) -> None:
        self._eval, self._eval_key = None, None

    def _use_bn(self, pl_module: LightningModule) -> bool:
        return self.bn is True or (self.bn == "auto" and has_batchnorm(pl_module))

    def _average(self, trainer: Trainer, pl_module: LightningModule) -> dict[str, torch.Tensor] | None:
        """The average as a state dict (BatchNorm recomputed if asked), or None if there is none."""
        if self._loaded_average is not None and trainer.state.fn != TrainerFn.FITTING:
            return self._loaded_average
        if self.observer is None or not self.observer.ready:
            return None
        bn: dict[str, Any] = {}
        if self._use_bn(pl_module):
            # `is None`, never truthiness: a loader over an iterable dataset has no len()
            candidates = (self.bn_loader, trainer.train_dataloader, self._train_loader)
            loader = next((d for d in candidates if d is not None), None)
            if loader is None or isinstance(loader, (dict, list, tuple)):
                raise ValueError(
                    f"Invalid bn_loader: the training dataloader is {type(loader).__name__}; pass "
                    "LAWACallback(bn_loader=<one loader of training batches>) to recompute BatchNorm statistics"
                )
            bn = {"bn_loader": loader, "bn_batches": self.bn_batches, "bn_device": pl_module.device}
            bn["bn_forward"] = self.bn_forward or model_input
        devices = [pl_module.device] if pl_module.device.type == "cuda" else []
        with torch.random.fork_rng(devices=devices):  # the recomputation must not shift the run's randomness
            state = self.observer.averaged_state(pl_module, **bn)
        if bn and trainer.world_size > 1:  # one set of statistics: the mean over the ranks' data
            for name, _ in pl_module.named_buffers():
                if name in state and state[name].is_floating_point():
                    state[name] = trainer.strategy.reduce(state[name], reduce_op="mean")
        return state

    def _prepare(self, trainer: Trainer, pl_module: LightningModule) -> None:
        key = (
            ("loaded", id(self._loaded_average))
            if self._loaded_average is not None and (trainer.state.fn != TrainerFn.FITTING)
            else self._key()
        )
        if self._eval is not None and self._eval_key == key:
            return
        state = self._average(trainer, pl_module)
        self._eval = None if state is None else StateSwap(pl_module, state)
        self._eval_key = key

    def on_validation_epoch_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if not trainer.sanity_checking:
            self._prepare(trainer, pl_module)

    def on_test_epoch_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if self.test:
            self._prepare(trainer, pl_module)
            if self._eval is None:
                self._warn_once(
                    "test",
                    "LAWACallback: no average to test (no snapshot yet, and the checkpoint has "
                    f"no {self.average_key!r}); test_*{self.suffix} is not logged",
                )

    def on_validation_batch_end(
        self,
        trainer: Trainer,
        pl_module: LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        if trainer.sanity_checking:
            return
        in_fit = trainer.state.fn == TrainerFn.FITTING
        if self._eval is None and not in_fit:
            return  # trainer.validate without an average
        # In fit, before the first snapshot, the second pass runs on the raw weights: every
        # validation logs the same keys, so a ModelCheckpoint/EarlyStopping monitoring them never misses one.
        self._second_pass(trainer, pl_module, "validation_step", batch, batch_idx, dataloader_idx)

    def on_test_batch_end(
        self,
        trainer: Trainer,
        pl_module: LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        if self.test and self._eval is not None:
            self._second_pass(trainer, pl_module, "test_step", batch, batch_idx, dataloader_idx)

    def _second_pass(
        self, trainer: Trainer, pl_module: LightningModule, hook: str, batch: Any, batch_idx: int, dataloader_idx: int
    ) -> None:
        args: list[Any] = [batch]
        step_fx = getattr(pl_module, hook)
        if is_param_in_hook_signature(step_fx, "batch_idx", min_args=2):
            args.append(batch_idx)
        counts = trainer.num_test_batches if hook == "test_step" else trainer.num_val_batches
        if len(counts) > 1:
            args.append(dataloader_idx)
        log = pl_module.log
        suffix = self.suffix

        def log_average(name: str, value: Any, *a: Any, **kw: Any) -> None:
            metric = sys.modules.get("torchmetrics")
            if metric is not None and isinstance(value, (metric.Metric, metric.MetricCollection)):
                raise TypeError(
                    f"LAWACallback: {hook} logs {name!r} as a torchmetrics object, whose state the raw weights and "
                    "the average would share; log its value instead (self.log(name, metric(preds, target)) or "
                    "metric.compute() from separate metric objects)"
                )
            log(name + suffix, value, *a, **kw)

        previous = pl_module._current_fx_name
        pl_module.log = log_average  # type: ignore[method-assign]  # log_dict calls self.log too
        pl_module._current_fx_name = hook
        try:
            if self._eval is None:
                getattr(trainer.strategy, hook)(*args)
            else:
                with self._eval:
                    getattr(trainer.strategy, hook)(*args)
        finally:
            del pl_module.log
            pl_module._current_fx_name = previous

    def on_validation_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if trainer.sanity_checking or trainer.state.fn != TrainerFn.FITTING:
            return
        metrics = trainer.callback_metrics
        raw, avg = metrics.get(self.monitor), metrics.get(self.monitor + self.suffix)
        if raw is None:
            self._warn_once(
                "monitor",
                f"LAWACallback: {self.monitor!r} is not logged (logged: {sorted(metrics)}); pass "
                "monitor=<a metric your validation_step logs> to measure the time saved",
            )
            return
        ready = self.observer is not None and self.observer.ready
        self._time_saved.record(
            trainer.global_step, trainer.current_epoch, float(raw), float(avg) if ready and avg is not None else None
        )

    def on_fit_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self.time_saved_summary = f"LAWACallback ({self.method}): " + self._time_saved.summary()
        rank_zero_info(self.time_saved_summary)
        result = self._time_saved.result()
        if trainer.logger is not None and result is not None and "saved_steps" in result:
            trainer.logger.log_metrics(
                {
                    f"time_saved_steps{self.suffix}": result["saved_steps"],
                    f"time_saved_epochs{self.suffix}": result["saved_epochs"],
                },
                step=trainer.global_step,
            )

    def _warn_once(self, key: str, message: str) -> None:
        if key not in self._warned:
            self._warned.add(key)
            warnings.warn(message, UserWarning, stacklevel=2)

    # ---------------------------------------------------------------------------------- checkpoints
    def state_dict(self) -> dict[str, Any]:
        if self.observer is None:
            return dict(self._pending or {})
        return self._state(sharded=self._sharded)

    def _state(self, sharded: bool) -> dict[str, Any]:
        """Sharded: counters only, the ring goes into the distributed checkpoint (on_save_checkpoint)."""
        assert self.observer is not None
        ring = {"sharded": True} if sharded else {"observer": self.observer.state_dict()}
        return {
            "format": STATE_FORMAT,
            "method": self.method,
            **ring,
            "snap_epoch": self._snap_epoch,
            "snap_step": self._snap_step,
            "time_saved": self._time_saved.state_dict(),
        }

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        if not self._loading_for_fit:
            return  # trainer.test/validate(ckpt_path=...): the checkpoint's average is used instead
        if not isinstance(state_dict, dict) or state_dict.get("format") != STATE_FORMAT:
            raise ValueError(
                f"Invalid LAWACallback state in the checkpoint (format {state_dict.get('format')!r}, expected "
                f"{STATE_FORMAT}); resume with the lawa_optim version that wrote it"
            )
        if self.observer is not None:  # strategies that restore after setup
            self._apply(state_dict)
        else:
            self._pending = state_dict

    def _apply(self, state: dict[str, Any]) -> None:
        assert self.observer is not None
        if state.get("sharded"):
            if state.get("method") != self.method:
                raise ValueError(
                    f"Invalid LAWACallback state: saved by method {state.get('method')!r}, this callback runs "
                    f"{self.method!r}; resume with the same method"
                )
            if self._folder is None or self._module is None or not load_ring(self._folder, self._module,
                                                                              self.observer.wrapper):
                warnings.warn(
                    f"LAWACallback: the checkpoint {self._folder} holds no ring of the callback's (saved with a "
                    "weights-only save, or without the callback); the average starts afresh",
                    UserWarning,
                    stacklevel=2,
                )
        else:
            self.observer.load_state_dict(state["observer"])  # checks method, k, shapes before changing anything
        self._snap_epoch = int(state["snap_epoch"])
        self._snap_step = int(state.get("snap_step", -1))  # absent in states saved before should_snapshot existed
        self._seen_steps = self.observer.num_steps
        self._time_saved.load_state_dict(state["time_saved"])
        self._pending = None

    _loading_for_fit = True

    def on_load_checkpoint(self, trainer: Trainer, pl_module: LightningModule, checkpoint: dict[str, Any]) -> None:
        self._loading_for_fit = trainer.state.fn == TrainerFn.FITTING
        path = trainer.ckpt_path
        self._folder = path if path is not None and os.path.isdir(path) else None  # a distributed checkpoint
        self._module = pl_module
        if not self._loading_for_fit:
            average = checkpoint.get(self.average_key)
            if self._folder is not None and is_sharded(pl_module):
                average = load_average(self._folder, pl_module)
            self._loaded_average = average if isinstance(average, dict) else None
            self._drop_eval()
            return
        self._loaded_average = None
        if self.state_key not in (checkpoint.get("callbacks") or {}):
            warnings.warn(
                f"LAWACallback: the checkpoint has no {self.state_key} state (saved without this callback, or with "
                "other arguments); the average starts afresh from the resumed weights",
                UserWarning,
                stacklevel=2,
            )

    def on_save_checkpoint(self, trainer: Trainer, pl_module: LightningModule, checkpoint: dict[str, Any]) -> None:
        if self._eval is not None and self._eval.active:  # saved from inside the average's pass
            checkpoint["state_dict"] = {**checkpoint["state_dict"], **self._eval.training_state()}
        if self.observer is None:
            return
        average = None
        if self.observer.ready:
            self._prepare(trainer, pl_module)  # reuses this validation's average when nothing changed since
            if self._eval is not None:
                average = {name: t.detach().clone() for name, t in self._eval.state.items()}
        if self._sharded:  # saved shard by shard with the optimizer states, as optimizer_<n>
            if "optimizer_states" in checkpoint:
                entry = save_entry(pl_module, self.observer.wrapper, average)
                checkpoint["optimizer_states"] = [*checkpoint["optimizer_states"], entry]
        elif average is not None:
            checkpoint[self.average_key] = average
