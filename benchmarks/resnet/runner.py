"""``run(cfg, out_dir) -> results``: the ResNet benchmark, a workload of the one runner, and its report.

The benchmark's config becomes an image-classification workload
(:class:`~lawa_benchmarks.suite.workloads.images.ImageWorkload`: any data set and ResNet of the
config, its SGD recipe and LR schedule, validation loss, top-1 and top-5 plus the training loss
and top-1 on a fixed training subset) that :func:`lawa_benchmarks.suite.runner.train_workload`
trains: the runs of :func:`~lawa_benchmarks.resnet.methods.plan_runs` one after another for each
seed, every method of a run evaluated every ``eval.every`` epochs, one metrics row per (seed,
epoch, method) in the schema of :mod:`lawa_benchmarks.report`, a checkpoint
``RUN_DIR/checkpoints/{run}_seed{seed}.pt`` after every epoch. Started again with the same
config, a run continues after its last completed epoch and ends with the same numbers as an
uninterrupted one. The times per row are the runner's (see there).

Under ``torchrun --nproc_per_node N`` the model is wrapped in ``DistributedDataParallel``
(gloo on CPU, nccl on CUDA), each rank trains on its ``DistributedSampler`` shard and
evaluates a shard of the evaluation sets (sums all-reduced); only rank 0 writes files.
``data.batch_size`` is per process, so the global batch is N x batch_size (and an epoch N times
fewer steps); ``meta`` records ``world_size``, ``global_batch_size`` and the images per split.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from ..run_state import ResumeError
from ..suite.runner import CHECKPOINT_FORMAT
from .config import Config, config_to_dict

__all__ = ["CHECKPOINT_FORMAT", "ResumeError", "run", "workload"]

_logger = logging.getLogger("lawa_benchmarks.resnet")


def workload(cfg: Config, procs: Any, data_dir: str | Path | None = None) -> Any:
    """The benchmark's config as the runner's workload (``procs``: this process's place under torchrun)."""
    from ..suite.workloads.base import lr_schedule
    from ..suite.workloads.images import ImageWorkload
    from .models import build_model

    class ResNetBenchmark(ImageWorkload):
        metric = cfg.report.metric
        higher_is_better = cfg.report.metric != "val_loss"

        def __init__(self) -> None:  # noqa: D107  (the config's pieces, not a suite section)
            self.name, self.cfg = "resnet", cfg

        @property
        def epochs(self) -> int:
            return cfg.train.epochs

        def lr_scheduler(self, optimizer: Any) -> Any:
            t = cfg.train
            return lr_schedule(optimizer, self.steps_per_epoch, t.epochs, t.warmup_epochs, t.schedule, t.step_epochs)

    t, m = cfg.train, cfg.model
    w = ResNetBenchmark()
    data = cfg.data
    w.setup(data, lambda: build_model(m, w.data.num_classes, w.data.in_channels), "sgd",
            {"lr": t.lr, "momentum": t.momentum, "nesterov": t.nesterov, "weight_decay": t.weight_decay},
            has_batchnorm=True, described=f"{m.arch} (width {m.width})", train_eval=True, top5=True,
            rank=procs.rank, world=procs.world, all_sum=procs.all_sum, data_dir=data_dir)
    return w


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
    from ..suite.runner import Processes, choose_device, config_hash, run_meta, train_workload
    from .methods import plan_runs

    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    procs = Processes(choose_device(cfg.device))
    out = Path(out_dir)
    try:
        w = workload(cfg, procs, data_dir)
        if w.steps_per_epoch < 1:
            raise ValueError(f"Invalid data.batch_size={cfg.data.batch_size}: larger than the "
                             f"{len(w.data.train) // procs.world} training images per process; lower it")
        plans = plan_runs(cfg, families, w.steps_per_epoch)
        config = config_to_dict(cfg)
        # data.batch_size is per process: under torchrun the global batch is world_size x batch_size
        meta = run_meta(w, plans, cfg.report.headline, benchmark="resnet", config=config, world_size=procs.world,
                        global_batch_size=procs.world * cfg.data.batch_size, images=w.data.counts)
        # the numbers depend on neither the seeds asked for, the threads, the report's choices nor methods not run
        settings = {k: v for k, v in config.items() if k not in ("seeds", "threads", "first_seed", "report", "methods")}
        meta["config_hash"] = config_hash(settings, config["methods"], plans)
        if procs.main:
            _logger.info("%s; %d process(es) x batch %d = global batch %d, %d steps per epoch", w.data.describe(),
                         procs.world, cfg.data.batch_size, procs.world * cfg.data.batch_size, w.steps_per_epoch)
            out.mkdir(parents=True, exist_ok=True)
            import yaml

            (out / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
        callback = None if on_epoch_end is None else (lambda _w, r, s, e: on_epoch_end(r, s, e))
        rows = train_workload(w, plans, out, seeds=cfg.seed_list, meta=meta, procs=procs, eval_every=cfg.eval.every,
                              fresh=fresh, progress=progress, on_epoch_end=callback)
        result: dict[str, Any] = {"rows": rows, "meta": meta, "report": None, "run_dir": str(out)}
        if procs.main and report:
            from ..report import write_report

            result["report"] = write_report(out)
        procs.barrier()
        return result
    finally:
        procs.close()
