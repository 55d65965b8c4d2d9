"""The RoBERTa benchmark: corpus, tokenizer, ``fairseq-preprocess``, ``fairseq-train`` with the LAWA plugin.

Every stage leaves its output in the run folder and is skipped when that output exists, and
``fairseq-train`` resumes from ``checkpoints/checkpoint_last.pt``, so running the same command
again continues an interrupted run. One training run gives both curves: fairseq's validation of
the raw weights (Adam) and the plugin's validation of the LAWA average beside it.

``run_config.json`` records the config a folder was started with (and the resolved update plan).
A rerun in the same folder must have the same config except ``train.epochs`` (and ``threads``),
and more epochs only when the learning-rate schedule stays the same (``warmup_updates`` and
``total_num_update`` given as counts, not percentages of the run): otherwise
:class:`ResumeError` says what changed, before anything is written. ``--fresh`` starts over.

Layout of ``OUT``::

    corpus/{train,valid,test}.txt   spm/spm.model   tok/{train,valid,test}.txt   data-bin/
    checkpoints/ (checkpoint_last.pt, checkpoint_lawa.pt, checkpoint_lawa_best.pt, ...)
    train.log (fairseq's JSON log, appended on resume)   command.txt   preprocess.log
    metrics.csv/json (the shared report schema)  epochs.csv  results.json  roberta_ppl.png
    report/ (``lawa report``'s tables and plots: time_saved, curves)
"""

from __future__ import annotations

import json
import logging
import os
import shlex
import shutil
import subprocess
import sys
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

from ..config_base import config_diff
from ..run_state import ResumeError
from .config import RobertaBenchConfig, is_percent
from .results import parse_log, summary_line, write_results

__all__ = ["ResumeError", "check_resume", "fairseq_train_command", "prepare_data", "run", "updates_plan"]

_logger = logging.getLogger(__name__)
RUN_CONFIG = "run_config.json"
_OUTPUTS = ("corpus", "spm", "tok", "data-bin", "checkpoints", "train.log", "command.txt", "preprocess.log",
            "metrics.csv", "metrics.json", "epochs.csv", "results.json", "roberta_ppl.png", "report", RUN_CONFIG)


def _config_dict(cfg: RobertaBenchConfig) -> dict[str, Any]:
    d = cfg.model_dump() if hasattr(cfg, "model_dump") else asdict(cfg)
    return json.loads(json.dumps(d, default=str))  # tuples -> lists: comparable with what JSON gives back


def _fingerprint(cfg: RobertaBenchConfig) -> dict[str, Any]:
    """The config without what may change between reruns of one folder (name, epochs, threads)."""
    d = _config_dict(cfg)
    d.pop("name", None)
    for key in ("epochs", "threads"):
        d["train"].pop(key, None)
    return d


def check_resume(cfg: RobertaBenchConfig, out: Path, plan: dict[str, int] | None = None) -> dict[str, Any] | None:
    """Refuse a rerun in ``out`` whose config (or, with ``plan``, LR schedule) differs; return what was recorded.

    Raises:
        ResumeError: the folder's ``run_config.json`` records another config, or the same config
            with another number of epochs whose percentages resolve to another schedule.
    """
    path = Path(out) / RUN_CONFIG
    if not path.is_file():
        return None
    old = json.loads(path.read_text())
    fix = f"use another --out, or --fresh to start over in {str(out)!r}"
    changed = config_diff(old.get("config"), _fingerprint(cfg))
    if changed:
        raise ResumeError(f"{str(out)!r} was started with another config ({'; '.join(changed)}); {fix}")
    old_plan = old.get("plan")
    if plan is not None and old_plan is not None:
        keys = ("warmup_updates", "total_num_update", "updates_per_epoch")
        moved = [f"{k} {old_plan.get(k)} -> {plan[k]}" for k in keys if old_plan.get(k) != plan[k]]
        if moved:
            raise ResumeError(
                f"train.epochs {old.get('epochs')} -> {cfg.train.epochs} changes the learning-rate schedule of the run "
                f"in {str(out)!r} ({', '.join(moved)}: warmup_updates/total_num_update are percentages of the run), "
                f"so fairseq would resume with another schedule; {fix}, or give both as update counts in the config"
            )
    return old


def _record_config(cfg: RobertaBenchConfig, out: Path, plan: dict[str, int] | None) -> None:
    doc = {"config": _fingerprint(cfg), "epochs": cfg.train.epochs, "plan": plan}
    (out / RUN_CONFIG).write_text(json.dumps(doc, indent=1) + "\n")


def _start_over(out: Path) -> None:
    for name in _OUTPUTS:
        path = out / name
        if path.is_dir():
            shutil.rmtree(path)
        elif path.exists():
            path.unlink()


def _bin(name: str) -> str:
    """A console script of the running interpreter's environment (fairseq-train, ...)."""
    here = Path(sys.executable).parent / name
    found = str(here) if here.exists() else shutil.which(name)
    if found is None:
        raise RuntimeError(f"{name} was not found; install fairseq: pip install 'lawa-optim[fairseq]'")
    return found


def _plugin_env() -> dict[str, str]:
    """The environment for fairseq's processes: ``lawa_optim`` importable (the plugin needs it)."""
    import lawa_optim

    root = str(Path(lawa_optim.__file__).resolve().parent.parent)
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (root, env.get("PYTHONPATH")) if p)
    return env


def prepare_data(cfg: RobertaBenchConfig, out: Path, log=_logger.info) -> Path:
    """Corpus, tokenizer and binarized data in ``out``; each stage skipped when already done."""
    from .corpus import SPLITS, prepare_corpus
    from .tokenizer import encode_file, train_tokenizer

    corpus, spm_prefix, tok, data_bin = out / "corpus", out / "spm" / "spm", out / "tok", out / "data-bin"
    if not (corpus / "DONE").exists():
        lines = prepare_corpus(corpus, cfg.corpus.source, cfg.corpus.path, cfg.corpus.max_train_lines,
                               cfg.corpus.max_eval_lines)
        (corpus / "DONE").write_text(json.dumps(lines))
        log(f"corpus: {lines}")
    model = spm_prefix.with_suffix(".model")
    if not model.exists():
        train_tokenizer(corpus / "train.txt", spm_prefix, cfg.tokenizer.vocab_size, cfg.tokenizer.model_type,
                        cfg.tokenizer.sample_lines, seed=cfg.train.seed)
        log(f"tokenizer: {model}")
    tok.mkdir(parents=True, exist_ok=True)
    for split in SPLITS:
        if not (tok / f"{split}.txt").exists():
            n = encode_file(model, corpus / f"{split}.txt", tok / f"{split}.txt")
            log(f"tokenized {split}: {n} pieces")
    if not (data_bin / "DONE").exists():
        if data_bin.exists():
            shutil.rmtree(data_bin)
        cmd = [_bin("fairseq-preprocess"), "--only-source", "--trainpref", str(tok / "train.txt"),
               "--validpref", str(tok / "valid.txt"), "--testpref", str(tok / "test.txt"),
               "--destdir", str(data_bin), "--workers", str(min(4, os.cpu_count() or 1))]
        log("$ " + shlex.join(cmd))
        with open(out / "preprocess.log", "w") as flog:
            subprocess.run(cmd, check=True, stdout=flog, stderr=subprocess.STDOUT, env=_plugin_env())
        (data_bin / "DONE").write_text("ok")
    return data_bin


def updates_plan(cfg: RobertaBenchConfig, updates_per_epoch: int) -> dict[str, int]:
    """Resolve ``warmup_updates``/``total_num_update`` (counts or percentages of the run)."""
    total = updates_per_epoch * cfg.train.epochs

    def resolve(v: int | str) -> int:
        return max(1, round(total * float(v[:-1]) / 100)) if is_percent(v) else int(v)

    return {"updates_per_epoch": updates_per_epoch, "run_updates": total,
            "warmup_updates": resolve(cfg.train.warmup_updates),
            "total_num_update": resolve(cfg.train.total_num_update)}


def _flag(key: str) -> str:
    return "--" + key.replace("_", "-")


def fairseq_train_command(cfg: RobertaBenchConfig, data_bin: Path, save_dir: Path, plan: dict[str, int]) -> list[str]:
    """The ``fairseq-train`` command line of a config."""
    from lawa_optim.integrations.fairseq import user_dir

    t, la = cfg.train, cfg.lawa
    update_freq = t.batch_size // (t.max_sentences * t.distributed_world_size)
    cmd = [
        _bin("fairseq-train"), str(data_bin),
        "--user-dir", user_dir(), "--task", "masked_lm_lawa", "--criterion", "masked_lm",
        "--arch", cfg.model.arch,
        "--sample-break-mode", t.sample_break_mode, "--tokens-per-sample", str(t.tokens_per_sample),
        "--optimizer", "adam", "--adam-betas", f"({t.adam_betas[0]},{t.adam_betas[1]})",
        "--adam-eps", str(t.adam_eps), "--weight-decay", str(t.weight_decay), "--clip-norm", str(t.clip_norm),
        "--lr-scheduler", "polynomial_decay", "--lr", str(t.lr),
        "--warmup-updates", str(plan["warmup_updates"]), "--total-num-update", str(plan["total_num_update"]),
        "--dropout", str(t.dropout), "--attention-dropout", str(t.attention_dropout),
        "--batch-size", str(t.max_sentences), "--update-freq", str(update_freq),
        "--required-batch-size-multiple", "1", "--max-epoch", str(t.epochs), "--seed", str(t.seed),
        "--save-dir", str(save_dir), "--no-epoch-checkpoints", "--skip-invalid-size-inputs-valid-test",
        "--log-format", "json", "--log-interval", "50",
        "--lawa-k", str(la.k), "--lawa-period-updates", str(la.period_updates), "--lawa-weights", la.weights,
        "--lawa-alpha", str(la.alpha), "--lawa-offload", la.offload,
        *(["--lawa-offload-dir", la.offload_dir] if la.offload_dir else []),
    ]
    for key, value in cfg.model.args.items():
        if value is True:
            cmd.append(_flag(key))
        elif value is not False and value is not None:
            cmd += [_flag(key), str(value)]
    if t.cpu:
        cmd += ["--cpu", "--num-workers", "0"]
    if t.fp16:
        cmd.append("--fp16")
    if t.distributed_world_size > 1:
        cmd += ["--distributed-world-size", str(t.distributed_world_size)]
    return cmd + list(t.extra_args)


def _train(cmd: list[str], out: Path, epochs: int, env: dict[str, str], log, progress: bool = True) -> None:
    from tqdm import tqdm

    logfile = out / "train.log"
    done = len(parse_log(logfile.read_text().splitlines())) if logfile.exists() else 0
    (out / "command.txt").write_text(shlex.join(cmd) + "\n")
    log("$ " + shlex.join(cmd))
    with open(logfile, "a") as flog, tqdm(total=epochs, initial=min(done, epochs), desc="epochs", unit="ep",
                                              disable=not progress) as bar:
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env, bufsize=1)
        assert proc.stdout is not None
        for line in proc.stdout:
            flog.write(line)
            flog.flush()
            if "| valid |" in line and '"epoch"' in line:
                rec = parse_log([line])
                if rec:
                    r = rec[0]
                    bar.n = min(r["epoch"], epochs)
                    bar.set_postfix(adam_ppl=r["adam_ppl"], lawa_ppl=r["lawa_ppl"])
                    bar.refresh()
        rc = proc.wait()
    if rc != 0:
        raise RuntimeError(f"fairseq-train failed with exit code {rc}; see {logfile} (rerun the command to resume)")


def run(cfg: RobertaBenchConfig, out: str | Path, dry_run: bool = False, report_only: bool = False,
        log=_logger.info, fresh: bool = False, progress: bool = True) -> dict[str, Any]:
    """Run (or resume) the benchmark of ``cfg`` in ``out``; return the summary written to results.json.

    Args:
        cfg (RobertaBenchConfig): the validated config.
        out (str or Path): the run folder.
        dry_run (bool): prepare the data and return the fairseq-train command without training
            (default: False).
        report_only (bool): write the results of the epochs logged so far without training
            (default: False).
        log (callable): where progress messages go (default: this module's logger).
        fresh (bool): delete this benchmark's outputs in ``out`` and start over (default: False).
        progress (bool): a tqdm progress bar over the epochs (default: True).

    Raises:
        ResumeError: ``out`` holds a run of another config (see the module docstring).
    """
    from lawa_optim.integrations.fairseq.data import masked_lm_updates_per_epoch

    out = Path(out)
    if fresh and not report_only:
        _start_over(out)
    previous = check_resume(cfg, out)  # before the data stages reuse what another config left
    out.mkdir(parents=True, exist_ok=True)
    if previous is None and not report_only:
        _record_config(cfg, out, None)
    t = cfg.train
    data_bin = prepare_data(cfg, out, log)
    update_freq = t.batch_size // (t.max_sentences * t.distributed_world_size)
    per_epoch = masked_lm_updates_per_epoch(data_bin, t.tokens_per_sample, t.max_sentences, update_freq,
                                            t.distributed_world_size, t.sample_break_mode)
    plan = updates_plan(cfg, per_epoch)
    cmd = fairseq_train_command(cfg, data_bin, out / "checkpoints", plan)
    meta = {"name": cfg.name, "lawa_k": cfg.lawa.k, "plan": plan, "config": _config_dict(cfg), "command": cmd}
    if dry_run:
        return meta
    if not report_only:
        previous = check_resume(cfg, out, plan)
        if previous is not None and previous.get("plan") and previous.get("epochs") != t.epochs:
            log(f"continuing the run in {out} from {previous.get('epochs')} to {t.epochs} epochs with the same "
                f"learning-rate schedule (warmup {plan['warmup_updates']}, decay over {plan['total_num_update']} "
                "updates)")
        _record_config(cfg, out, plan)
    env = _plugin_env()
    if t.threads:
        env.update(OMP_NUM_THREADS=str(t.threads), MKL_NUM_THREADS=str(t.threads))
    start = time.time()
    if not report_only:
        _train(cmd, out, t.epochs, env, log, progress)
    elif not (out / "train.log").exists():
        raise FileNotFoundError(f"no train.log in {str(out)!r}: nothing to report; run without --report-only first")
    lines = (out / "train.log").read_text().splitlines()
    records = parse_log(lines)
    skipped = sorted({line.split("WARNING | ")[-1] for line in lines if "samples have invalid sizes" in line})
    if skipped:
        meta["skipped_samples"] = skipped
        log("note: fairseq skipped samples longer than tokens_per_sample: " + "; ".join(s[:90] for s in skipped))
    if not report_only:
        meta["session_seconds"] = round(time.time() - start, 1)  # this invocation (a resume counts alone)
    meta["train_seconds"] = records[-1]["cum_wall"] if records else None
    logged = [b["num_updates"] - a["num_updates"] for a, b in zip(records, records[1:])
              if a["num_updates"] is not None and b["num_updates"] is not None]
    if logged and any(n != per_epoch for n in logged):
        log(f"note: fairseq ran {sorted(set(logged))} updates per epoch, planned {per_epoch}")
    summary = write_results(records, out, {**meta, "seed": t.seed})
    from lawa_benchmarks.report import write_report

    from .plot import plot_results

    plot_results(summary, out / "roberta_ppl.png")
    if records:
        summary["report"] = write_report(out)["files"]  # lawa report's tables and plots in OUT/report/
    log(summary_line(summary["ppl"]))
    return summary
