"""``run(cfg, out_dir) -> results``: every workload, every seed, every method; resumable; one schema.

The skeleton every workload shares. For each workload and seed, the runs of
:func:`lawa_benchmarks.resnet.methods.plan_runs` are trained one after another (the registry
decides: methods that only observe the trajectory — LAWA for every k of the list, EXP, EMA, SWA —
share the baseline's run; Lookahead and schedule-free get runs of their own). Every epoch (an
evaluation period: a pass over the images, or ``steps_per_epoch`` steps of the LM) each method of
the run is evaluated on the validation split, and a checkpoint
``OUT/<workload>/checkpoints/<run>_seed<seed>.pt`` is written atomically with everything needed to
go on bit-exactly (model, optimizer, every wrapper, LR scheduler, RNG states, rows so far,
timers). Started again with the same config, a run continues after its last completed epoch.

Each workload's folder ``OUT/<workload>/`` is a run folder in the schema of
:mod:`lawa_benchmarks.report` (``metrics.csv/json``; ``lawa report OUT/<workload>`` works on it),
with the extra columns ``workload`` and ``steps``. For models with BatchNorm two more methods are
evaluated on the baseline's run: ``base_bn`` (the training weights with BatchNorm statistics
recomputed as the averages get them) beside ``base`` (the model's running statistics), so that
what is credited to averaging is averaging.

Times per row as in the ResNet benchmark: ``train_time_s`` cumulative wall time of the training
steps, ``avg_time_s`` the method's own cost in that epoch (observing steps, swap, BatchNorm
recompute), ``eval_time_s`` its evaluation pass.
"""

from __future__ import annotations

import hashlib
import json
import logging
import random
import time
import types
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from ..run_state import RunState
from .config import FAIRSEQ_WORKLOADS, SuiteConfig, config_to_dict, methods_for

__all__ = ["CHECKPOINT_FORMAT", "ResumeError", "plan_workload", "run", "run_workload"]

CHECKPOINT_FORMAT = 1
_logger = logging.getLogger("lawa_benchmarks.suite")


class ResumeError(RuntimeError):
    """The run folder holds checkpoints of another configuration."""


def plan_workload(cfg: SuiteConfig, name: str, workload: Any, families: list[str] | None = None) -> list[Any]:
    """The runs of one seed of workload ``name``: the ResNet benchmark's planner, plus ``base_bn`` for BatchNorm."""
    from ..resnet.methods import EvalSpec, plan_runs

    w = cfg.workload(name)
    shim = types.SimpleNamespace(methods=methods_for(cfg, name), train=types.SimpleNamespace(epochs=w.epochs),
                                 eval=types.SimpleNamespace(bn="recompute" if workload.has_batchnorm else "copy"))
    plans = plan_runs(shim, families, workload.steps_per_epoch)
    base = plans[0]
    base.evals[0] = EvalSpec("base", "base", None, None, "model", workload.base_label)
    if workload.has_batchnorm:
        base.observers["bare"] = ("base", {})
        base.evals.insert(1, EvalSpec("base_bn", "base", "bare", None, "recompute",
                                      f"{workload.base_label}, BN recomputed"))
    for plan in plans:
        if plan.driver == "schedulefree":
            plan.evals = [EvalSpec(s.name, s.family, s.wrapper, s.k, s.bn, s.label.replace(
                "SGD", "AdamW" if workload.base_label == "AdamW" else "SGD")) for s in plan.evals]
    return plans


class _Trainer(RunState):
    """One training run of one seed of one workload."""

    CHECKPOINT_FORMAT = CHECKPOINT_FORMAT

    def __init__(self, workload: Any, plan: Any, seed: int, epochs: int, warmup_epochs: int,
                 device: torch.device) -> None:
        import lawa_optim

        self.w, self.plan, self.seed, self.device = workload, plan, seed, device
        torch.manual_seed(seed)
        random.seed(seed)
        self.model = workload.build_model().to(device)
        base = workload.optimizer(self.model, lr=plan.sgd.get("lr"))
        self.driver = base if plan.driver is None else lawa_optim.create(plan.driver, base, **plan.driver_kwargs)
        self.base = base
        self.observers = {n: lawa_optim.create(m, base, **kw) for n, (m, kw) in plan.observers.items()}
        spe = workload.steps_per_epoch
        if plan.lr_schedule:
            from .workloads.base import warmup_cosine

            self.scheduler = warmup_cosine(self.driver, warmup_epochs * spe, epochs * spe)
        else:
            self.scheduler = None
        self.epoch = 0
        self.train_time = 0.0
        self.observe_time = dict.fromkeys(self.observers, 0.0)
        self.rows: list[dict[str, Any]] = []

    def train_epoch(self, progress: bool) -> float:
        from tqdm.auto import tqdm

        self.model.train()
        self.observe_time = dict.fromkeys(self.observers, 0.0)
        loss_sum, n = 0.0, 0
        bar = tqdm(total=self.w.steps_per_epoch, leave=False, disable=not progress, unit="step",
                   desc=f"{self.w.name} {self.plan.run} seed {self.seed} epoch {self.epoch + 1}")
        for batch in self.w.train_batches(self.seed, self.epoch):  # not through tqdm.auto: see resnet/runner.py
            bar.update(1)
            t0 = time.perf_counter()
            batch = _to(batch, self.device)
            self.driver.zero_grad(set_to_none=True)
            loss = self.w.loss(self.model, batch)
            loss.backward()
            self.driver.step()
            if self.scheduler is not None:
                self.scheduler.step()
            loss_sum += loss.item()
            n += 1
            t1 = time.perf_counter()
            self.train_time += t1 - t0
            self.observe_step(t1)
        bar.close()
        self.epoch += 1
        return loss_sum / max(n, 1)

    def evaluate_epoch(self, running_loss: float, workload_name: str) -> list[dict[str, Any]]:
        rows = []
        lr = self.driver.param_groups[0]["lr"]
        for spec in self.plan.evals:
            w = self.wrapper(spec)
            if w is not None and w.num_snapshots == 0 and spec.wrapper != "bare":
                continue  # nothing to average yet (SWA before its start epoch)
            t0 = time.perf_counter()
            with self.swap(spec, self.w.bn_batches()):
                t1 = time.perf_counter()
                self.model.eval()
                metrics = self.w.evaluate(self.model)
                self.model.train()
                t2 = time.perf_counter()
            t3 = time.perf_counter()
            observe = self.observe_cost(spec)
            rows.append({"workload": workload_name, "run": self.plan.run, "method": spec.name, "seed": self.seed,
                         "epoch": self.epoch, "steps": self.epoch * self.w.steps_per_epoch, **metrics,
                         "train_time_s": self.train_time, "avg_time_s": observe + (t1 - t0) + (t3 - t2),
                         "eval_time_s": t2 - t1, "lr": lr, "train_loss_running": running_loss})
        return rows


def _to(batch: Any, device: torch.device) -> Any:
    if isinstance(batch, torch.Tensor):
        return batch.to(device)
    return type(batch)(_to(b, device) for b in batch)


def _config_hash(cfg: SuiteConfig, name: str, plans: list[Any]) -> str:
    """What the numbers of workload ``name`` depend on: its section (target aside) and the methods it runs."""
    w = cfg.workload(name).model_dump(mode="json")
    for key in ("target", "enabled", "methods"):
        w.pop(key)
    methods = methods_for(cfg, name).model_dump(mode="json")
    used = {p.driver for p in plans} | {m for p in plans for m, _ in p.observers.values()}
    doc = {"workload": w, "methods": {k: v for k, v in methods.items() if k in used}, "device": cfg.device}
    return hashlib.sha256(json.dumps(doc, sort_keys=True).encode()).hexdigest()[:16]


def _meta(cfg: SuiteConfig, name: str, workload: Any, plans: list[Any]) -> dict[str, Any]:
    methods = {}
    for p in plans:
        for s in p.evals:
            methods[s.name] = {"label": s.label, "family": s.family, "run": p.run, "k": s.k, "bn": s.bn}
    headline = cfg.report.headline
    return {"benchmark": f"suite/{name}", "workload": name, "workload_label": workload.label, "baseline": "base",
            "baselines": ["base", "base_bn"] if workload.has_batchnorm else ["base"],
            "headline": headline if headline in methods else None, "metric": workload.metric,
            "higher_is_better": workload.higher_is_better, "methods": methods,
            "steps_per_epoch": workload.steps_per_epoch, "epochs": cfg.workload(name).epochs,
            "target": cfg.workload(name).target, "data": workload.describe(), "config": config_to_dict(cfg)}


def run_workload(cfg: SuiteConfig, name: str, out_dir: str | Path, *, families: list[str] | None = None,
                 data_dir: str | None = None, progress: bool = True, fresh: bool = False,
                 on_epoch_end: Callable[[str, str, int, int], None] | None = None) -> dict[str, Any]:
    """Train and evaluate workload ``name`` for every seed into ``OUT/<name>/``; resume what is there.

    ``on_epoch_end(workload, run, seed, epoch)`` is called after each checkpoint (tests raise from it).
    Returns ``{"rows", "meta", "run_dir"}``.
    """
    from tqdm.auto import tqdm

    from lawa_optim.io import atomic_save, safe_load

    from ..report import write_metrics
    from .workloads import build

    device = torch.device("cuda" if cfg.device == "cuda" or (cfg.device == "auto" and torch.cuda.is_available())
                          else "cpu")
    wcfg = cfg.workload(name)
    workload = build(name, wcfg, data_dir)
    plans = plan_workload(cfg, name, workload, families)
    meta = _meta(cfg, name, workload, plans)
    cfg_hash = meta["config_hash"] = _config_hash(cfg, name, plans)
    out = Path(out_dir) / name
    out.mkdir(parents=True, exist_ok=True)
    _logger.info("%s: %d steps per epoch, %d epochs, runs %s", workload.label, workload.steps_per_epoch,
                 wcfg.epochs, [p.run for p in plans])
    all_rows: list[dict[str, Any]] = []
    for seed in cfg.seed_list:
        for plan in plans:
            trainer = _Trainer(workload, plan, seed, wcfg.epochs, wcfg.warmup_epochs, device)
            path = out / "checkpoints" / f"{plan.run}_seed{seed}.pt"
            if path.is_file() and not fresh:
                sd = safe_load(path, map_location=device)
                if sd.get("format") != CHECKPOINT_FORMAT or sd.get("config_hash") != cfg_hash or \
                        set(sd.get("observers", {})) != set(trainer.observers):
                    raise ResumeError(
                        f"{str(out)!r} holds a checkpoint ({path.name}) of another configuration, --methods or "
                        "version of the suite; use another --out, or --fresh to start over in this folder")
                trainer.load_state_dict(sd)
            bar = tqdm(total=wcfg.epochs, initial=trainer.epoch, disable=not progress, unit="epoch",
                       desc=f"{name} {plan.run} seed {seed}")
            while trainer.epoch < wcfg.epochs:
                running = trainer.train_epoch(progress)
                new = trainer.evaluate_epoch(running, name)
                trainer.rows.extend(new)
                bar.set_postfix({r["method"]: f"{r[workload.metric]:.3g}" for r in new[:3]})
                atomic_save(trainer.state_dict(cfg_hash), path)
                write_metrics(out, all_rows + trainer.rows, meta)
                bar.update(1)
                if on_epoch_end is not None:
                    on_epoch_end(name, plan.run, seed, trainer.epoch)
            bar.close()
            all_rows.extend(trainer.rows)
    write_metrics(out, all_rows, meta)
    return {"rows": all_rows, "meta": meta, "run_dir": str(out)}


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
            ``roberta`` always runs Adam and the LAWA plugin (:mod:`.roberta`).
        data_dir (path, optional): where Fashion-MNIST lies (default: each workload's ``root``).
        progress (bool, optional): tqdm progress bars (default: True).
        fresh (bool, optional): ignore existing checkpoints (default: False).
        report (bool, optional): write the suite's report at the end (default: True): it covers every
            workload folder under ``out_dir``, also those another process ran.

    Returns:
        dict with ``workloads`` (per workload: rows, meta) and ``report`` (what
        :func:`lawa_benchmarks.suite.results.write_suite_report` returned, or None).
    """
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
        if name in FAIRSEQ_WORKLOADS:  # fairseq's trainer, through the RoBERTa benchmark's runner
            from .roberta import run_roberta

            results["workloads"][name] = run_roberta(cfg, out, fresh=fresh, progress=progress)
        else:
            results["workloads"][name] = run_workload(cfg, name, out, families=families, data_dir=data_dir,
                                                      progress=progress, fresh=fresh, on_epoch_end=on_epoch_end)
        _logger.info("%s done in %.0f s (this call)", name, time.perf_counter() - t0)
    if report:
        from .results import write_suite_report

        results["report"] = write_suite_report(out, cfg)
    return results
