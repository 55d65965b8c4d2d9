"""``run(cfg, out_dir) -> results``: train, evaluate every method each epoch, resume, report.

For each seed, the runs of :func:`~lawa_benchmarks.resnet.methods.plan_runs` are trained one after
another. Each epoch ends with the evaluation of every method of the run (validation loss,
top-1, top-5; training loss and top-1 on a fixed training subset), one metrics row per
(seed, epoch, method) in the schema of :mod:`lawa_benchmarks.report`, and a checkpoint
``RUN_DIR/checkpoints/{run}_seed{seed}.pt`` written atomically with everything needed to go on
bit-exactly: model, optimizer, every wrapper's state, LR scheduler, RNG states, metrics so far
and the timers. Started again with the same config, a run continues after its last completed
epoch and ends with the same numbers as an uninterrupted one (the batch order depends only on
``(seed, epoch)``).

Times per row: ``train_time_s`` is the cumulative wall time of the training steps of the run
(forward, backward, optimizer step); ``avg_time_s`` is what the method itself cost in that
epoch (its per-step observation, the swap and the BatchNorm recompute); ``eval_time_s`` is the
time of its evaluation passes in that epoch.

Under ``torchrun --nproc_per_node N`` the model is wrapped in ``DistributedDataParallel``
(gloo on CPU, nccl on CUDA), each rank trains on its ``DistributedSampler`` shard and
evaluates a shard of the evaluation sets (sums all-reduced); only rank 0 writes files.
``data.batch_size`` is per process, so the global batch is N x batch_size (and an epoch N times
fewer steps); ``meta`` records ``world_size``, ``global_batch_size`` and the images per split.
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

from ..run_state import RunState
from .config import Config, config_to_dict
from .data import DataBundle, eval_loader, load_data, num_train_batches, shard, train_loader
from .methods import RunPlan, plan_runs
from .models import build_model

__all__ = ["CHECKPOINT_FORMAT", "ResumeError", "run"]

CHECKPOINT_FORMAT = 2  # 2: torch's LR schedulers (SequentialLR, CosineAnnealingLR, ...), not one LambdaLR
_logger = logging.getLogger("lawa_benchmarks.resnet")


class ResumeError(RuntimeError):
    """The run folder holds checkpoints of another configuration."""


# ------------------------------------------------------------------------------ distributed
class _Dist:
    def __init__(self, device: torch.device) -> None:
        self.world = int(os.environ.get("WORLD_SIZE", "1"))
        self.rank = int(os.environ.get("RANK", "0"))
        self.local_rank = int(os.environ.get("LOCAL_RANK", "0"))
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

    def close(self) -> None:
        if self.started:
            import torch.distributed as dist

            dist.destroy_process_group()


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


# ------------------------------------------------------------------------------ pieces
def _lr_scheduler(optimizer: Any, t: Any, steps_per_epoch: int) -> torch.optim.lr_scheduler.LRScheduler:
    """torch's schedulers, stepped once per batch: linear warm-up (``t.warmup_epochs``), then ``t.schedule``.

    Warm-up multiplies the learning rate by (step + 1) / warm-up steps; then cosine decays it to 0
    over the remaining steps, step multiplies it by 0.1 at each of ``t.step_epochs``, constant keeps it.
    """
    from torch.optim import lr_scheduler as sch

    warm = t.warmup_epochs * steps_per_epoch
    if t.schedule == "cosine":
        main = sch.CosineAnnealingLR(optimizer, T_max=t.epochs * steps_per_epoch - warm)
    elif t.schedule == "step":
        main = sch.MultiStepLR(optimizer, [e * steps_per_epoch - warm for e in t.step_epochs], gamma=0.1)
    else:
        main = sch.ConstantLR(optimizer, factor=1.0, total_iters=0)
    if not warm:
        return main
    warmup = sch.LinearLR(optimizer, start_factor=1 / warm, end_factor=1.0, total_iters=max(warm - 1, 1))
    return sch.SequentialLR(optimizer, [warmup, main], milestones=[warm])


def _evaluate(model: nn.Module, loader: Any, device: torch.device, dist: _Dist) -> dict[str, float]:
    """Mean loss, top-1 and top-5 (in %) over ``loader``, summed over ranks."""
    model.eval()
    sums = torch.zeros(4, dtype=torch.float64)
    with torch.no_grad():
        for x, y in loader:
            x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
            out = model(x)
            sums[0] += nn.functional.cross_entropy(out, y, reduction="sum").item()
            top = out.topk(min(5, out.shape[1]), dim=1).indices
            hit = top.eq(y[:, None])
            sums[1] += hit[:, :1].sum().item()
            sums[2] += hit.sum().item()
            sums[3] += len(y)
    dist.all_sum(sums)
    n = max(sums[3].item(), 1.0)
    return {"loss": sums[0].item() / n, "top1": 100 * sums[1].item() / n, "top5": 100 * sums[2].item() / n}


def _config_hash(cfg: Config, plans: list[RunPlan]) -> str:
    d = config_to_dict(cfg)
    for key in ("seeds", "threads", "first_seed"):
        d.pop(key)
    d["report"] = None  # the report's choices do not change the numbers
    used = {p.driver for p in plans} | {method for p in plans for method, _ in p.observers.values()}
    d["methods"] = {name: s for name, s in d["methods"].items() if name in used}  # nor do methods not run
    return hashlib.sha256(json.dumps(d, sort_keys=True).encode()).hexdigest()[:16]


class _Trainer(RunState):
    """One training run of one seed: model, optimizers, wrappers, scheduler, metrics."""

    CHECKPOINT_FORMAT = CHECKPOINT_FORMAT

    def __init__(self, cfg: Config, plan: RunPlan, seed: int, data: DataBundle, dist: _Dist,
                 loaders: dict[str, Any]) -> None:
        import lawa_optim

        self.cfg, self.plan, self.seed, self.data, self.dist, self.loaders = cfg, plan, seed, data, dist, loaders
        self.device = dist.device
        self.steps_per_epoch = num_train_batches(data, cfg.data, dist.world)
        torch.manual_seed(seed)
        random.seed(seed)
        self.model = build_model(cfg.model, data.num_classes, data.in_channels).to(self.device)
        self.net: nn.Module = self.model
        if dist.world > 1:
            ids = [self.device.index] if self.device.type == "cuda" else None
            self.net = nn.parallel.DistributedDataParallel(self.model, device_ids=ids)
        t = cfg.train
        sgd = torch.optim.SGD(self.model.parameters(), **{"lr": t.lr, "momentum": t.momentum, "nesterov": t.nesterov,
                                                          "weight_decay": t.weight_decay, **plan.sgd})
        self.driver = sgd if plan.driver is None else lawa_optim.create(plan.driver, sgd, **plan.driver_kwargs)
        self.base = getattr(self.driver, "optimizer", sgd) if plan.driver else sgd
        self.observers = {name: lawa_optim.create(method, self.base, **kw)
                          for name, (method, kw) in plan.observers.items()}
        self.scheduler = _lr_scheduler(self.driver, t, self.steps_per_epoch) if plan.lr_schedule else None
        self.epoch = 0
        self.train_time = 0.0
        self.observe_time = dict.fromkeys(self.observers, 0.0)
        self.rows: list[dict[str, Any]] = []

    # -------------------------------------------------------------------------- training
    def train_epoch(self, progress: bool) -> float:
        from tqdm.auto import tqdm

        self.net.train()
        loader = train_loader(self.data, self.cfg.data, self.seed, self.epoch, self.dist.rank, self.dist.world)
        self.observe_time = dict.fromkeys(self.observers, 0.0)
        loss_sum, n = 0.0, 0
        bar = tqdm(total=self.steps_per_epoch, leave=False, disable=not progress, unit="batch",
                   desc=f"{self.plan.run} seed {self.seed} epoch {self.epoch + 1}")
        for x, y in loader:  # the plain loader: tqdm.auto would call iter() on it once more, drawing from its seed
            bar.update(1)
            _sync(self.device)
            t0 = time.perf_counter()
            x, y = x.to(self.device, non_blocking=True), y.to(self.device, non_blocking=True)
            self.driver.zero_grad(set_to_none=True)
            loss = nn.functional.cross_entropy(self.net(x), y)
            loss.backward()
            self.driver.step()
            if self.scheduler is not None:
                self.scheduler.step()
            loss_sum += loss.item()
            n += 1
            _sync(self.device)
            t1 = time.perf_counter()
            self.train_time += t1 - t0
            self.observe_step(t1)
        bar.close()
        self.epoch += 1
        return loss_sum / max(n, 1)

    def evaluate_epoch(self, running_loss: float) -> list[dict[str, Any]]:
        rows = []
        lr = self.driver.param_groups[0]["lr"]
        for spec in self.plan.evals:
            _sync(self.device)
            t0 = time.perf_counter()
            if spec.wrapper is not None and self.wrapper(spec).num_snapshots == 0:
                continue  # nothing to average yet (SWA before its start epoch)
            with self.swap(spec, self.loaders["bn"]):
                _sync(self.device)
                t1 = time.perf_counter()
                val = _evaluate(self.model, self.loaders["val"], self.device, self.dist)
                tr = _evaluate(self.model, self.loaders["train_eval"], self.device, self.dist)
                _sync(self.device)
                t2 = time.perf_counter()
            t3 = time.perf_counter()
            observe = self.observe_cost(spec)
            rows.append({
                "run": self.plan.run, "method": spec.name, "seed": self.seed, "epoch": self.epoch,
                "train_loss": tr["loss"], "train_top1": tr["top1"],
                "val_loss": val["loss"], "top1": val["top1"], "top5": val["top5"],
                "train_time_s": self.train_time, "avg_time_s": observe + (t1 - t0) + (t3 - t2),
                "eval_time_s": t2 - t1, "lr": lr, "train_loss_running": running_loss,
                "steps": self.epoch * self.steps_per_epoch,
            })
        return rows


# ------------------------------------------------------------------------------ the benchmark
def _meta(cfg: Config, plans: list[RunPlan]) -> dict[str, Any]:
    methods = {}
    for p in plans:
        for s in p.evals:
            methods[s.name] = {"label": s.label, "family": s.family, "run": p.run, "k": s.k, "bn": s.bn}
    return {
        "benchmark": "resnet",
        "baseline": "base",
        "headline": cfg.report.headline if cfg.report.headline in methods else None,
        "metric": cfg.report.metric,
        "higher_is_better": cfg.report.metric != "val_loss",
        "methods": methods,
        "config": config_to_dict(cfg),
    }


def run(
    cfg: Config,
    out_dir: str | Path,
    *,
    families: list[str] | None = None,
    data_dir: str | Path | None = None,
    progress: bool = True,
    fresh: bool = False,
    report: bool = True,
    on_epoch_end: Callable[[str, int, int], None] | None = None,
) -> dict[str, Any]:
    """Run the benchmark described by ``cfg`` into ``out_dir``; resume what is already there.

    Args:
        cfg (Config): the validated configuration.
        out_dir (path): the run folder (checkpoints, ``metrics.csv/json``, the report).
        families (list of str, optional): the methods to run, by registry name (default: those ``cfg`` enables).
        data_dir (path, optional): where the data set lies (default: ``cfg.data.root``).
        progress (bool, optional): tqdm progress bars on stderr (default: True).
        fresh (bool, optional): ignore existing checkpoints and start over (default: False).
        report (bool, optional): write the report at the end (default: True).
        on_epoch_end (callable, optional): ``on_epoch_end(run, seed, epoch)`` after each epoch's
            checkpoint is written (tests raise from it to kill a run).

    Returns:
        dict with ``rows`` (every metrics row), ``meta`` and ``report`` (what
        :func:`lawa_benchmarks.report.write_report` returned, or None).
    """
    from tqdm.auto import tqdm

    from lawa_optim.io import atomic_save, safe_load

    from ..report import write_metrics, write_report

    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    device = torch.device("cuda" if cfg.device == "cuda" or (cfg.device == "auto" and torch.cuda.is_available())
                          else "cpu")
    dist = _Dist(device)
    out = Path(out_dir)
    try:
        data = load_data(cfg.data, data_dir)
        loaders = {
            "val": eval_loader(shard(data.val, dist.rank, dist.world), data, cfg.data),
            "train_eval": eval_loader(shard(data.train_eval, dist.rank, dist.world), data, cfg.data),
            "bn": eval_loader(data.bn, data, cfg.data, batch_size=cfg.data.batch_size),
        }
        steps = num_train_batches(data, cfg.data, dist.world)
        if steps < 1:
            raise ValueError(f"Invalid data.batch_size={cfg.data.batch_size}: larger than the "
                             f"{len(data.train) // dist.world} training images per process; lower it")
        plans = plan_runs(cfg, families, steps)
        meta = _meta(cfg, plans)
        cfg_hash = _config_hash(cfg, plans)
        meta["config_hash"] = cfg_hash
        # data.batch_size is per process: under torchrun the global batch is world_size x batch_size
        meta.update(world_size=dist.world, global_batch_size=dist.world * cfg.data.batch_size, images=data.counts)
        if dist.main:
            _logger.info("%s; %d process(es) x batch %d = global batch %d, %d steps per epoch", data.describe(),
                         dist.world, cfg.data.batch_size, dist.world * cfg.data.batch_size, steps)
        ckpt_dir = out / "checkpoints"
        if dist.main:
            out.mkdir(parents=True, exist_ok=True)
            import yaml

            (out / "config.yaml").write_text(yaml.safe_dump(config_to_dict(cfg), sort_keys=False))
        all_rows: list[dict[str, Any]] = []
        jobs = [(seed, p) for seed in cfg.seed_list for p in plans]
        for seed, plan in jobs:
            trainer = _Trainer(cfg, plan, seed, data, dist, loaders)
            path = ckpt_dir / f"{plan.run}_seed{seed}.pt"
            if path.is_file() and not fresh:
                sd = safe_load(path, map_location=device)
                if sd.get("format") != CHECKPOINT_FORMAT:
                    raise ResumeError(
                        f"{str(out)!r} holds a checkpoint ({path.name}) of format {sd.get('format')!r}, written by "
                        f"another version of the benchmark (this one writes {CHECKPOINT_FORMAT}); use another --out, "
                        "or --fresh to start over in this folder"
                    )
                if sd.get("config_hash") != cfg_hash or set(sd.get("observers", {})) != set(trainer.observers):
                    raise ResumeError(
                        f"{str(out)!r} holds a checkpoint ({path.name}) of another configuration or --methods; "
                        "use another --out, or --fresh to start over in this folder"
                    )
                trainer.load_state_dict(sd)
            eval_every = cfg.eval.every
            bar = tqdm(total=cfg.train.epochs, initial=trainer.epoch, disable=not (progress and dist.main),
                       desc=f"{plan.run} seed {seed}", unit="epoch")
            while trainer.epoch < cfg.train.epochs:
                running = trainer.train_epoch(progress and dist.main)
                if trainer.epoch % eval_every == 0 or trainer.epoch == cfg.train.epochs:
                    new = trainer.evaluate_epoch(running)
                    trainer.rows.extend(new)
                    bar.set_postfix({r["method"]: f"{r['top1']:.1f}" for r in new[:3]})
                if dist.main:
                    atomic_save(trainer.state_dict(cfg_hash), path)
                    write_metrics(out, all_rows + trainer.rows, meta)
                dist.barrier()
                bar.update(1)
                if on_epoch_end is not None:
                    on_epoch_end(plan.run, seed, trainer.epoch)
            bar.close()
            all_rows.extend(trainer.rows)
        result: dict[str, Any] = {"rows": all_rows, "meta": meta, "report": None, "run_dir": str(out)}
        if dist.main:
            write_metrics(out, all_rows, meta)
            if report:
                result["report"] = write_report(out)
        dist.barrier()
        return result
    finally:
        dist.close()
