"""The one benchmark runner: every workload, every seed, every method; resumable; one schema.

:func:`train_workload` is the skeleton every workload shares, the suite's (:func:`run`) and the
ResNet benchmark's (``lawa bench resnet``, :mod:`lawa_benchmarks.resnet.runner`). For each seed,
the runs of :func:`lawa_benchmarks.resnet.methods.plan_methods` are trained one after another
(the registry decides: methods that only observe the trajectory — LAWA for every k of the list,
EXP, EMA, SWA — share the baseline's run; Lookahead and schedule-free get runs of their own).
Every epoch (an evaluation period: a pass over the images, or ``steps_per_epoch`` steps of the
LM; every ``eval_every`` epochs and the last) each method of the run is evaluated, and a
checkpoint ``RUN_DIR/checkpoints/<run>_seed<seed>.pt`` is written atomically with everything
needed to go on bit-exactly (model, optimizer, every wrapper, LR scheduler, RNG states, rows so
far, timers). Started again with the same config, a run continues after its last completed epoch
and ends with the same numbers as an uninterrupted one (the batch order depends only on
``(seed, epoch)``; the loop iterates the workload's batches as they are, so a seeded loader's
order is its own).

The run folder holds ``metrics.csv/json`` in the schema of :mod:`lawa_benchmarks.report`
(``lawa report RUN_DIR`` works on it) with the columns ``workload`` and ``steps``. For models
with BatchNorm the suite also evaluates ``base_bn`` on the baseline's run (the training weights
with BatchNorm statistics recomputed as the averages get them) beside ``base`` (the model's
running statistics), so that what is credited to averaging is averaging.

Times per row: ``train_time_s`` is the cumulative wall time of the training steps of the run
(forward, backward, optimizer step); ``avg_time_s`` is what the method itself cost in that
epoch (its per-step observation, the swap and the BatchNorm recompute); ``eval_time_s`` is the
time of its evaluation pass.

Under ``torchrun --nproc_per_node N`` (the ResNet benchmark) the model is wrapped in
``DistributedDataParallel`` (gloo on CPU, nccl on CUDA), each rank trains on its shard and
evaluates a shard of the evaluation sets (sums all-reduced); only rank 0 writes files.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import random
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..run_state import ResumeError, RunState
from .config import SuiteConfig, config_to_dict, methods_for

__all__ = ["CHECKPOINT_FORMAT", "Processes", "ResumeError", "Trainer", "choose_device", "config_hash", "plan_workload",
           "run", "run_meta", "run_workload", "train_workload"]

CHECKPOINT_FORMAT = 3  # 3: one runner for the suite and the ResNet benchmark
_logger = logging.getLogger("lawa_benchmarks.suite")


def choose_device(setting: str) -> torch.device:
    """``cuda``, ``cpu``, or ``auto`` (cuda if available)."""
    return torch.device("cuda" if setting == "cuda" or (setting == "auto" and torch.cuda.is_available()) else "cpu")


class Processes:
    """This process's place among the ``torchrun`` processes (``WORLD_SIZE``, ``RANK``, ``LOCAL_RANK``); one alone."""

    def __init__(self, device: torch.device, distributed: bool = True) -> None:
        env = os.environ if distributed else {}
        self.world = int(env.get("WORLD_SIZE", "1"))
        self.rank = int(env.get("RANK", "0"))
        self.local_rank = int(env.get("LOCAL_RANK", "0"))
        self.device = device
        self.started = False
        if self.world > 1:
            import torch.distributed as dist

            if device.type == "cuda":
                self.device = torch.device("cuda", self.local_rank)
                torch.cuda.set_device(self.device)
            if not dist.is_initialized():
                dist.init_process_group("nccl" if self.device.type == "cuda" else "gloo")
                self.started = True

    @property
    def main(self) -> bool:
        return self.rank == 0

    def all_sum(self, t: torch.Tensor) -> torch.Tensor:
        if self.world > 1:
            import torch.distributed as dist

            dist.all_reduce(t)
        return t

    def barrier(self) -> None:
        if self.world > 1:
            import torch.distributed as dist

            dist.barrier()

    def sync(self) -> None:
        """Wait for the accelerator (timings)."""
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def close(self) -> None:
        if self.started:
            import torch.distributed as dist

            dist.destroy_process_group()


def _to(batch: Any, device: torch.device) -> Any:
    if isinstance(batch, torch.Tensor):
        return batch.to(device, non_blocking=True)
    return type(batch)(_to(b, device) for b in batch)


class Trainer(RunState):
    """One training run of one seed of one workload: model, optimizers, wrappers, scheduler, rows."""

    CHECKPOINT_FORMAT = CHECKPOINT_FORMAT

    def __init__(self, workload: Any, plan: Any, seed: int, procs: Processes) -> None:
        import lawa_optim

        self.w, self.plan, self.seed, self.procs, self.device = workload, plan, seed, procs, procs.device
        torch.manual_seed(seed)
        random.seed(seed)
        self.model = workload.build_model().to(self.device)
        self.net: nn.Module = self.model
        if procs.world > 1:
            ids = [self.device.index] if self.device.type == "cuda" else None
            self.net = nn.parallel.DistributedDataParallel(self.model, device_ids=ids)
        self.base = workload.optimizer(self.model, **plan.base_options)
        self.driver = self.base if plan.driver is None else lawa_optim.create(plan.driver, self.base,
                                                                              **plan.driver_kwargs)
        self.observers = {n: lawa_optim.create(m, self.base, **kw) for n, (m, kw) in plan.observers.items()}
        self.scheduler = workload.lr_scheduler(self.driver) if plan.lr_schedule else None
        self.epoch = 0
        self.train_time = 0.0
        self.observe_time = dict.fromkeys(self.observers, 0.0)
        self.rows: list[dict[str, Any]] = []

    def train_epoch(self, progress: bool) -> float:
        """One epoch of the workload's batches; the mean training loss."""
        from tqdm.auto import tqdm

        self.net.train()
        self.observe_time = dict.fromkeys(self.observers, 0.0)
        loss_sum, n = 0.0, 0
        bar = tqdm(total=self.w.steps_per_epoch, leave=False, disable=not progress, unit="step",
                   desc=f"{self.w.name} {self.plan.run} seed {self.seed} epoch {self.epoch + 1}")
        # the batches as they are: tqdm.auto would call iter() on a loader once more, drawing from its seed
        for batch in self.w.train_batches(self.seed, self.epoch):
            self.procs.sync()
            t0 = time.perf_counter()
            batch = _to(batch, self.device)
            self.driver.zero_grad(set_to_none=True)
            loss = self.w.loss(self.net, batch)
            loss.backward()
            self.driver.step()
            if self.scheduler is not None:
                self.scheduler.step()
            loss_sum += loss.item()
            n += 1
            self.procs.sync()
            t1 = time.perf_counter()
            self.train_time += t1 - t0
            self.observe_step(t1)
            bar.update(1)
        bar.close()
        self.epoch += 1
        return loss_sum / max(n, 1)

    def evaluate_epoch(self, running_loss: float) -> list[dict[str, Any]]:
        """One row per evaluation of the plan (a method with nothing to average yet is skipped)."""
        rows = []
        lr = self.driver.param_groups[0]["lr"]
        for spec in self.plan.evals:
            w = self.wrapper(spec)
            if w is not None and w.num_snapshots == 0 and spec.family != "base":
                continue  # nothing to average yet (SWA before its start epoch)
            self.procs.sync()
            t0 = time.perf_counter()
            with self.swap(spec, self.w.bn_batches()):
                self.procs.sync()
                t1 = time.perf_counter()
                self.model.eval()
                metrics = self.w.evaluate(self.model)
                self.procs.sync()
                t2 = time.perf_counter()
            t3 = time.perf_counter()
            rows.append({"workload": self.w.name, "run": self.plan.run, "method": spec.name, "seed": self.seed,
                         "epoch": self.epoch, "steps": self.epoch * self.w.steps_per_epoch, **metrics,
                         "train_time_s": self.train_time,
                         "avg_time_s": self.observe_cost(spec) + (t1 - t0) + (t3 - t2), "eval_time_s": t2 - t1,
                         "lr": lr, "train_loss_running": running_loss})
        return rows


def config_hash(settings: dict[str, Any], methods: dict[str, Any], plans: list[Any]) -> str:
    """What a run folder's numbers depend on: ``settings`` and the sections of the methods the plans run."""
    used = {p.driver for p in plans} | {m for p in plans for m, _ in p.observers.values()}
    doc = {"settings": settings, "methods": {k: v for k, v in methods.items() if k in used}}
    return hashlib.sha256(json.dumps(doc, sort_keys=True).encode()).hexdigest()[:16]


def run_meta(workload: Any, plans: list[Any], headline: str, **extra: Any) -> dict[str, Any]:
    """The metrics' ``meta``: the methods evaluated, the baselines, the metric, the workload; ``extra`` added."""
    methods = {s.name: {"label": s.label, "family": s.family, "run": p.run, "k": s.k, "bn": s.bn}
               for p in plans for s in p.evals}
    # the training weights with BatchNorm statistics recomputed as the averages get them (base_bn; lawa_k1 is the same)
    recomputed = [m for m in ("base_bn", "lawa_k1") if methods.get(m, {}).get("bn") == "recompute"]
    return {"benchmark": f"suite/{workload.name}", "workload": workload.name, "workload_label": workload.label,
            "baseline": "base", "baselines": ["base", *recomputed[:1]],
            "headline": headline if headline in methods else None, "metric": workload.metric,
            "higher_is_better": workload.higher_is_better, "methods": methods,
            "steps_per_epoch": workload.steps_per_epoch, "epochs": workload.epochs, "data": workload.describe(),
            **extra}


def _resume(trainer: Trainer, path: Path, cfg_hash: str, fresh: bool) -> None:
    """Load the run's checkpoint if there is one (and not ``fresh``); refuse one of another configuration."""
    from lawa_optim.io import safe_load

    if not path.is_file() or fresh:
        return
    sd = safe_load(path, map_location=trainer.device)
    if sd.get("format") != CHECKPOINT_FORMAT:
        raise ResumeError(f"{str(path.parent.parent)!r} holds a checkpoint ({path.name}) of format "
                          f"{sd.get('format')!r}, written by another version of the benchmark (this one writes "
                          f"{CHECKPOINT_FORMAT}); use another --out, or --fresh to start over in this folder")
    if sd.get("config_hash") != cfg_hash or set(sd.get("observers", {})) != set(trainer.observers):
        raise ResumeError(f"{str(path.parent.parent)!r} holds a checkpoint ({path.name}) of another configuration "
                          "or --methods; use another --out, or --fresh to start over in this folder")
    trainer.load_state_dict(sd)


def train_workload(workload: Any, plans: list[Any], out: Path, *, seeds: list[int], meta: dict[str, Any],
                   procs: Processes, eval_every: int = 1, fresh: bool = False, progress: bool = True,
                   on_epoch_end: Callable[[str, str, int, int], None] | None = None) -> list[dict[str, Any]]:
    """Train and evaluate every plan of every seed into the run folder ``out``; resume what is there.

    ``meta`` (from :func:`run_meta`, with ``config_hash``) goes into the metrics files, written after
    every epoch by the main process. ``on_epoch_end(workload, run, seed, epoch)`` is called after each
    checkpoint (tests raise from it). Returns every row.
    """
    from tqdm.auto import tqdm

    from lawa_optim.io import atomic_save

    from ..report import write_metrics

    all_rows: list[dict[str, Any]] = []
    show = progress and procs.main
    for seed in seeds:
        for plan in plans:
            trainer = Trainer(workload, plan, seed, procs)
            path = out / "checkpoints" / f"{plan.run}_seed{seed}.pt"
            _resume(trainer, path, meta["config_hash"], fresh)
            bar = tqdm(total=workload.epochs, initial=trainer.epoch, disable=not show, unit="epoch",
                       desc=f"{workload.name} {plan.run} seed {seed}")
            while trainer.epoch < workload.epochs:
                running = trainer.train_epoch(show)
                if trainer.epoch % eval_every == 0 or trainer.epoch == workload.epochs:
                    new = trainer.evaluate_epoch(running)
                    trainer.rows.extend(new)
                    bar.set_postfix({r["method"]: f"{r[workload.metric]:.3g}" for r in new[:3]})
                if procs.main:
                    atomic_save(trainer.state_dict(meta["config_hash"]), path)
                    write_metrics(out, all_rows + trainer.rows, meta)
                procs.barrier()
                bar.update(1)
                if on_epoch_end is not None:
                    on_epoch_end(workload.name, plan.run, seed, trainer.epoch)
            bar.close()
            all_rows.extend(trainer.rows)
    if procs.main:
        write_metrics(out, all_rows, meta)
    return all_rows


# ------------------------------------------------------------------------------ the suite
def plan_workload(cfg: SuiteConfig, name: str, workload: Any, families: list[str] | None = None) -> list[Any]:
    """The runs of one seed of workload ``name``: the methods of its section, plus ``base_bn`` for BatchNorm."""
    from ..resnet.methods import plan_methods

    return plan_methods(methods_for(cfg, name), families, workload.steps_per_epoch,
                        bn="recompute" if workload.has_batchnorm else "copy", base=workload.base_label,
                        bn_baseline=workload.has_batchnorm)


def run_workload(cfg: SuiteConfig, name: str, out_dir: str | Path, *, families: list[str] | None = None,
                 data_dir: str | None = None, progress: bool = True, fresh: bool = False,
                 on_epoch_end: Callable[[str, str, int, int], None] | None = None) -> dict[str, Any]:
    """Train and evaluate workload ``name`` for every seed into ``OUT/<name>/``; resume what is there.

    ``on_epoch_end(workload, run, seed, epoch)`` is called after each checkpoint (tests raise from it).
    Returns ``{"rows", "meta", "run_dir"}``.
    """
    from .workloads import build

    section = cfg.workload(name)
    workload = build(name, section, data_dir)
    plans = plan_workload(cfg, name, workload, families)
    meta = run_meta(workload, plans, cfg.report.headline, target=section.target, config=config_to_dict(cfg))
    settings = {"workload": section.model_dump(mode="json", exclude={"target", "enabled", "methods"}),
                "device": cfg.device}
    meta["config_hash"] = config_hash(settings, methods_for(cfg, name).model_dump(mode="json"), plans)
    out = Path(out_dir) / name
    out.mkdir(parents=True, exist_ok=True)
    _logger.info("%s: %d steps per epoch, %d epochs, runs %s", workload.label, workload.steps_per_epoch,
                 workload.epochs, [p.run for p in plans])
    rows = train_workload(workload, plans, out, seeds=cfg.seed_list, meta=meta,
                          procs=Processes(choose_device(cfg.device), distributed=False), fresh=fresh,
                          progress=progress, on_epoch_end=on_epoch_end)
    return {"rows": rows, "meta": meta, "run_dir": str(out)}


def run(cfg: SuiteConfig, out_dir: str | Path, *, workloads: list[str] | None = None,
        families: list[str] | None = None, data_dir: str | None = None, progress: bool = True,
        fresh: bool = False, report: bool = True,
        on_epoch_end: Callable[[str, str, int, int], None] | None = None) -> dict[str, Any]:
    """Run the suite described by ``cfg`` into ``out_dir`` (resuming what is there), then write its report.

    Args:
        cfg (SuiteConfig): the validated configuration.
        out_dir (path): the suite folder: one run folder per workload, the suite's tables and plots.
        workloads (list of str, optional): the workloads to run (default: those ``cfg`` enables).
        families (list of str, optional): the methods to run, by registry name (default: those enabled);
            a workload another program trains (``roberta``) runs its own (Adam and the LAWA plugin).
        data_dir (path, optional): where Fashion-MNIST lies (default: each workload's ``root``).
        progress (bool, optional): tqdm progress bars (default: True).
        fresh (bool, optional): ignore existing checkpoints (default: False).
        report (bool, optional): write the suite's report at the end (default: True): it covers every
            workload folder under ``out_dir``, also those another process ran.

    Returns:
        dict with ``workloads`` (per workload: rows, meta) and ``report`` (what
        :func:`lawa_benchmarks.suite.results.write_suite_report` returned, or None).
    """
    from .workloads import ExternalWorkload, registry

    names = workloads if workloads is not None else [n for n in cfg.workload_names() if cfg.workload(n).enabled]
    unknown = [n for n in names if n not in cfg.workload_names()]
    if unknown:
        raise ValueError(f"Invalid workloads {unknown}; use some of {cfg.workload_names()}")
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    import yaml

    (out / "config.yaml").write_text(yaml.safe_dump(config_to_dict(cfg), sort_keys=False))
    results: dict[str, Any] = {"workloads": {}, "report": None, "out": str(out)}
    for name in names:
        t0 = time.perf_counter()
        cls = registry()[name]
        if issubclass(cls, ExternalWorkload):  # another program's trainer (roberta: fairseq)
            results["workloads"][name] = cls.run(cfg, out, fresh=fresh, progress=progress)
        else:
            results["workloads"][name] = run_workload(cfg, name, out, families=families, data_dir=data_dir,
                                                      progress=progress, fresh=fresh, on_epoch_end=on_epoch_end)
        _logger.info("%s done in %.0f s (this call)", name, time.perf_counter() - t0)
    if report:
        from .results import write_suite_report

        results["report"] = write_suite_report(out, cfg)
    return results
