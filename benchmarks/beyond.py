"""``lawa bench beyond``: the paper's open questions measured on the suite's ResNet, ViT and GPT workloads.

Two questions, one run folder:

1. **Online k.** One baseline run per seed (the suite's workload, recipe, seeds and schedule, trained
   by a plain loop). After each epoch every window ``j = 1..K`` of one LAWA
   ring is swapped in (BatchNorm recomputed) and scored on a *selection split* — Fashion-MNIST
   training images outside the training subset, never trained on and never reported (GPT: the held-out
   end of the training text: each workload's ``selection_batches``) — on a
   *training-loss proxy* (the epoch's last training batches) and on the validation split. The
   online strategies of :mod:`lawa_optim.select_k` are deterministic functions of the scores they
   look at, so each is replayed from the table with exactly the choices it would make online; the
   validation metric of its choice is its curve. The cost of each is counted in passes.
2. **Jumps.** One run per jump policy per seed with :class:`lawa_optim.LAWAJumpWrapper` driving:
   the training weights (what training continues from) and the average are evaluated each epoch.

Everything is written to ``OUT/beyond.json`` (per seed, per epoch, per window) after each run
(a killed run resumes: finished runs are skipped) and summarised in ``OUT/beyond.md``.
"""

from __future__ import annotations

import json
import math
import random
import statistics
import time
from pathlib import Path
from typing import Any

import click
import torch
from torch import nn

__all__ = ["JUMP_POLICIES", "analyse", "beyond", "run"]

BASELINE = "baseline (training weights as they are)"
JUMP_POLICIES: dict[str, dict[str, Any]] = {  # LAWAJumpWrapper options; "lead": jump_if_ahead each epoch
    "jump_every6": {"every": 6, "start": 6},  # the registry's default: one jump per filled ring
    "jump_every2": {"every": 2, "start": 6},
    "jump_every2_resetmom": {"every": 2, "start": 6, "optimizer_state": "reset_momentum"},
    "jump_lead": {"every": None, "lead_start": 3},
    "lookahead": {"driver": "lookahead", "k": 5, "alpha": 0.8},  # the paper's Appendix B comparator
    "jump_every6_resetmom": {"every": 6, "start": 6, "optimizer_state": "reset_momentum"},
    "jump_lead_restart": {"every": None, "lead_start": 3, "restart_ring": True},  # >= 3 snapshots between jumps
}


def workloads() -> list[str]:
    """The suite's workloads that have a selection split (:meth:`~.suite.workloads.base.Workload.selection_batches`)."""
    from .suite.workloads import registry

    return [name for name, cls in registry().items() if getattr(cls, "selection_size", 0)]


def _score(workload: Any, model: nn.Module, batches: Any) -> dict[str, float]:
    """The workload's mean loss and top-1 over ``batches``, the model in eval mode (then back to training)."""
    model.eval()
    out = workload.score(model, batches)
    model.train()
    return out


class _Run:
    def __init__(self, workload: Any, seed: int, epochs: int, warmup: int, driver: str | None,
                 kwargs: dict[str, Any], k: int) -> None:
        import lawa_optim

        torch.manual_seed(seed)
        random.seed(seed)
        self.w, self.seed = workload, seed
        self.model = workload.build_model()
        self.base = workload.optimizer(self.model)
        spe = workload.steps_per_epoch
        if driver is None:
            self.driver, self.lawa = self.base, lawa_optim.LAWAWrapper(self.base, k=k, period=spe)
        else:
            period = {"period": spe} if "period" in lawa_optim.get_method_info(driver).accepted_kwargs() else {}
            self.driver = lawa_optim.create(driver, self.base, **period, **kwargs)
            self.lawa = self.driver
        self.scheduler = workload.lr_scheduler(self.driver)  # the suite's recipe: warm-up, then cosine
        self.last: list[Any] = []

    def train_epoch(self, epoch: int, proxy_batches: int) -> float:
        t0 = time.perf_counter()
        batches = list(self.w.train_batches(self.seed, epoch))
        for batch in batches:
            self.driver.zero_grad(set_to_none=True)
            self.w.loss(self.model, batch).backward()
            self.driver.step()
            self.scheduler.step()
            if self.lawa is not self.driver:
                self.lawa.observe_step()
        self.last = batches[-proxy_batches:]
        return time.perf_counter() - t0

    def swap(self, j: int | None) -> Any:
        return self.lawa.averaged(j, model=self.model, bn_loader=self.w.bn_batches())


def _base_run(workload: Any, seed: int, cfg: dict[str, Any], selection: list[Any]) -> dict[str, Any]:
    run = _Run(workload, seed, cfg["epochs"], cfg["warmup_epochs"], None, {}, cfg["k_max"])
    rows, t_train, t_select = [], 0.0, 0.0
    for epoch in range(cfg["epochs"]):
        t_train += run.train_epoch(epoch, cfg["proxy_batches"])
        row = {"epoch": epoch + 1, "base": _score(workload, run.model, workload.val_batches()), "windows": {}}
        for j in range(1, run.lawa.num_snapshots + 1):
            with run.swap(j):
                t0 = time.perf_counter()
                sel = _score(workload, run.model, selection)
                t_select += time.perf_counter() - t0
                row["windows"][j] = {"sel": sel, "proxy": _score(workload, run.model, run.last),
                                     "val": _score(workload, run.model, workload.val_batches())}
        rows.append(row)
    return {"rows": rows, "train_time_s": t_train, "select_pass_s": t_select / max(1, sum(len(r["windows"])
                                                                                         for r in rows))}


def _jump_run(workload: Any, seed: int, cfg: dict[str, Any], policy: dict[str, Any], selection: list[Any]
              ) -> dict[str, Any]:
    opts = {k: v for k, v in policy.items() if k not in ("lead_start", "driver")}
    driver = policy.get("driver", "lawa_jump")
    kwargs = opts if driver != "lawa_jump" else {"k": cfg["k"], **opts}
    run = _Run(workload, seed, cfg["epochs"], cfg["warmup_epochs"], driver, kwargs, cfg["k"])
    rows, t_train = [], 0.0
    for epoch in range(cfg["epochs"]):
        t_train += run.train_epoch(epoch, 1)
        if "lead_start" in policy and run.lawa.num_snapshots >= policy["lead_start"]:
            run.lawa.jump_if_ahead(lambda: _score(workload, run.model, selection)["loss"], 0.0, model=run.model,
                                   bn_loader=workload.bn_batches())
        row = {"epoch": epoch + 1, "raw": _score(workload, run.model, workload.val_batches()),
               "jumps": list(getattr(run.lawa, "jumps", []))}
        with run.swap(None):  # lawa_jump: its LAWA average; Lookahead: the slow weights
            row["lawa"] = _score(workload, run.model, workload.val_batches())
        if driver == "lawa_jump":
            with run.swap(1):  # the newest snapshot, BatchNorm recomputed (see _part: not the weights after a jump)
                row["raw_bn"] = _score(workload, run.model, workload.val_batches())
        rows.append(row)
    return {"rows": rows, "train_time_s": t_train}


def run(cfg: dict[str, Any], out_dir: str | Path, progress: bool = True) -> dict[str, Any]:
    """Run every seed's baseline and jump runs into ``out_dir`` (finished runs are skipped); then :func:`analyse`."""
    from .suite.config import load_config
    from .suite.workloads import build

    torch.set_num_threads(cfg["threads"])
    suite = load_config(cfg["suite_config"], cfg["overrides"])
    wcfg = suite.workload(cfg.get("workload", "resnet"))
    cfg = {**cfg, "epochs": wcfg.epochs, "warmup_epochs": wcfg.warmup_epochs}
    workload = build(cfg.get("workload", "resnet"), wcfg, None)
    if not workload.selection_size:
        raise click.BadParameter(f"{workload.name!r} has no selection split; use one of {workloads()}",
                                 param_hint="--workload")
    cfg["selection_images"] = cfg.get("selection_images") or workload.selection_size
    try:
        selection = workload.selection_batches(cfg["selection_images"])
    except ValueError as err:
        raise click.BadParameter(str(err), param_hint="--selection-images") from err
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    path = out / "beyond.json"
    data = json.loads(path.read_text()) if path.is_file() else {"config": cfg, "runs": {}}
    extendable = ("seeds", "policies", "lower_is_better")  # the last: what the workload says, recorded for analyse
    same = {k: v for k, v in json.loads(json.dumps(cfg)).items() if k not in extendable}
    if {k: v for k, v in data["config"].items() if k not in extendable} != same:
        raise click.UsageError(f"{str(out)!r} holds results of another configuration; use another --out")
    data["config"]["lower_is_better"] = not workload.higher_is_better
    # more seeds or policies extend the folder
    data["config"]["seeds"] = max(data["config"]["seeds"], cfg["seeds"])
    data["config"]["policies"] += [p for p in cfg["policies"] if p not in data["config"]["policies"]]
    for seed in range(cfg["seeds"]):
        for name in ["base", *cfg["policies"]]:
            key = f"{name}_seed{seed}"
            if key in data["runs"]:
                continue
            t0 = time.perf_counter()
            data["runs"][key] = (_base_run(workload, seed, cfg, selection) if name == "base" else
                                 _jump_run(workload, seed, cfg, JUMP_POLICIES[name], selection))
            data["runs"][key]["wall_s"] = time.perf_counter() - t0
            tmp = path.with_suffix(".tmp")
            tmp.write_text(json.dumps(data))
            tmp.replace(path)
            if progress:
                click.echo(f"{key}: {data['runs'][key]['wall_s']:.0f} s", err=True)
    text = analyse(json.loads(json.dumps(data)))
    (out / "beyond.md").write_text(text)
    return {"data": data, "text": text}


# ----------------------------------------------------------------------------------- analysis
def _choose(strategy: str, scores_by_epoch: list[dict[int, float]]) -> tuple[list[int], int]:
    """Replay an online strategy: its choice at each epoch and the passes it took in all."""
    from lawa_optim.select_k import candidate_windows

    picks, passes, prev = [], 0, None
    for scores in scores_by_epoch:
        cands = candidate_windows(strategy, max(scores), prev)
        passes += len(cands)
        prev = min(cands, key=lambda j: (scores[j], j))
        picks.append(prev)
    return picks, passes


def _part(row: dict[str, Any], prev: dict[str, Any] | None, part: str, key: str = "top1") -> float:
    """A jump run's top-1 (``key``): ``trained`` is the training weights with BatchNorm recomputed. ``raw_bn`` scores
    the newest snapshot, which they are except right after a jump (made after the snapshot): then the
    ring (kept) averages to the jumped weights, so its average ``lawa`` is them, BatchNorm recomputed."""
    if part != "trained":
        return row[part][key]
    jumped = len(row["jumps"]) > (len(prev["jumps"]) if prev is not None else 0)
    return row["lawa" if jumped else "raw_bn"][key]


def _epochs_to(curve: list[float], target: float, sign: float = 1.0) -> float:
    """The first epoch whose value reaches ``target`` (``sign=-1``: a loss, reached from above)."""
    return next((i + 1 for i, v in enumerate(curve) if sign * v >= sign * target - 1e-9), math.inf)


def _fmt(values: list[float], digits: int = 1, censored: int = 0) -> str:
    """mean ± std over seeds; ``censored`` of them did not reach the target (counted as one epoch past the end)."""
    text = f"{statistics.mean(values):.{digits}f} ± {statistics.pstdev(values):.{digits}f}"
    return f"≥{text} ({censored} not reached)" if censored else text


def _metric(cfg: dict[str, Any]) -> tuple[str, float, int]:
    """The reported metric: validation top-1 (higher is better), or, for a workload whose metric is a loss
    (GPT), the validation loss (lower is better): its key, orientation and digits."""
    return ("loss", -1.0, 3) if cfg.get("lower_is_better") else ("top1", 1.0, 1)


def _online_curves(cfg: dict[str, Any], base: dict[int, list[dict[str, Any]]], key: str, curves: dict[str, Any],
                   passes: dict[str, float]) -> None:
    """The fixed windows' curves, each online strategy's (replayed; its choices too) and the per-epoch oracle."""
    orient = _metric(cfg)[1]
    seeds = list(base)
    epochs = len(base[seeds[0]])
    for j in range(1, cfg["k_max"] + 1):
        curves[f"LAWA k={j} (fixed)"] = {s: [r["windows"][str(min(j, len(r["windows"])))]["val"][key]
                                             for r in base[s]] for s in seeds}
    for strategy in ("all", "doubling", "local"):
        for signal, metric, label in (("sel", "loss", "selection loss"), ("sel", "top1", "selection top-1"),
                                      ("proxy", "loss", "train-batch proxy")):
            name = f"online k: {strategy}, {label}"
            curves[name], total = {}, 0
            for s in seeds:
                sign = -1.0 if metric == "top1" else 1.0  # minimized
                scores = [{int(j): sign * w[signal][metric] for j, w in r["windows"].items()} for r in base[s]]
                picks, n = _choose(strategy, scores)
                total += n
                curves[name][s] = [base[s][e]["windows"][str(j)]["val"][key] for e, j in enumerate(picks)]
                curves.setdefault(name + " (choices)", {})[s] = picks
            passes[name] = total / len(seeds) / epochs
    curves["per-epoch best k on validation (oracle, not usable)"] = {
        s: [orient * max(orient * w["val"][key] for w in r["windows"].values()) for r in base[s]] for s in seeds}


def _jump_curves(cfg: dict[str, Any], runs: dict[str, Any], seeds: list[int], key: str,
                 curves: dict[str, Any]) -> list[str]:
    """Each jump policy's curves (the weights training continues from, and its average); the jumps made."""
    notes = []
    for policy in cfg["policies"]:
        done = [s for s in seeds if f"{policy}_seed{s}" in runs]
        if not done:
            continue
        parts = (("raw", "fast weights"), ("lawa", "slow weights")) if policy == "lookahead" else (
            ("trained", "training weights (BN recomputed)" if key == "top1" else "training weights"),
            ("lawa", "its LAWA average"))
        for part, label in parts:
            curves[f"{policy}: {label}"] = {s: [_part(r, prev, part, key) for r, prev in zip(
                runs[f"{policy}_seed{s}"]["rows"], [None, *runs[f"{policy}_seed{s}"]["rows"]])] for s in done}
        jumps = [runs[f"{policy}_seed{s}"]["rows"][-1]["jumps"] for s in done]
        if any(jumps):
            notes.append(f"- {policy}: jumps at steps {jumps} (per seed)")
    return notes


def _header(cfg: dict[str, Any], n_seeds: int, epochs: int, target: float) -> list[str]:
    lines = [f"# Beyond the paper: online k and jumps ({cfg.get('workload', 'resnet')} workload, {n_seeds} seeds, "
             f"{epochs} epochs)", ""]
    if _metric(cfg)[0] == "loss":
        return lines + [
            f"Target: the baseline's final validation loss (nats per character) averaged over seeds = "
            f"{target:.4f}. Epochs to reach it, i.e. to get at or below it (mean ± std over seeds; a seed "
            "that never reaches it counts as one epoch past the end, marked ≥), as a fraction of the "
            "baseline's per seed (no BatchNorm: LAWA k=1 is the baseline), the mean validation loss over "
            "epochs 3..end (area under the curve) and LAWA k=6's minus it on the same seed (paired: the "
            "seed's own noise cancels; positive is better, as for top-1), and the final value.", "",
            "| method | epochs to target | vs the better baseline | mean val loss, epochs 3+ | LAWA k=6's "
            "minus it, paired | final val loss | selection passes / epoch |", "|---|---|---|---|---|---|---|"]
    return lines + [
        f"Target: the baseline's final top-1 averaged over seeds = {target:.2f}%. Epochs to reach it (mean ± std "
        "over seeds; a seed that never reaches it counts as one epoch past the end, marked ≥), as a fraction of "
        "the better baseline's per seed (the training weights with the model's "
        "BatchNorm statistics, or recomputed = LAWA k=1), the metric's mean over epochs 3..end (area under "
        "the curve) and its difference to LAWA k=6's on the same seed (paired: the seed's own noise cancels), "
        "and the final value.", "",
        "| method | epochs to target | vs the better baseline | mean top-1, epochs 3+ | minus LAWA k=6's, "
        "paired | final top-1 | selection passes / epoch |", "|---|---|---|---|---|---|---|"]


def _table(cfg: dict[str, Any], curves: dict[str, Any], passes: dict[str, float], seeds: list[int], epochs: int,
           target: float) -> list[str]:
    """One row per curve: epochs to the target (raw and against the better baseline), area, paired, final."""
    _key, orient, digits = _metric(cfg)
    k6 = {s: statistics.mean(c[2:]) for s, c in curves[f"LAWA k={min(6, cfg['k_max'])} (fixed)"].items()}
    baselines = [min(_epochs_to(curves[b][s], target, orient), epochs + 1) for b in (BASELINE, "LAWA k=1 (fixed)")
                 for s in seeds]
    better = {s: min(baselines[i], baselines[i + len(seeds)]) for i, s in enumerate(seeds)}
    lines = []
    for name, per_seed in curves.items():
        if name.endswith("(choices)"):
            continue
        raw_to = {s: _epochs_to(c, target, orient) for s, c in per_seed.items()}
        missed = sum(not math.isfinite(v) for v in raw_to.values())
        to = {s: min(v, epochs + 1) for s, v in raw_to.items()}
        ratio = [to[s] / better[s] for s in per_seed]
        area = {s: statistics.mean(c[2:]) for s, c in per_seed.items()}
        paired = [orient * (area[s] - k6[s]) for s in per_seed]
        final = [c[-1] for c in per_seed.values()]
        cost = f"{passes[name]:.1f}" if name in passes else ""
        lines.append(f"| {name} | {_fmt(list(to.values()), 1, missed)} | {_fmt(ratio, 2, missed)} | "
                     f"{_fmt(list(area.values()), digits)} | {_fmt(paired, digits + 1)} | {_fmt(final, digits)} | "
                     f"{cost} |")
    return lines


def _choices(curves: dict[str, Any]) -> list[str]:
    """The windows the exhaustive search chose, and how often each cheaper strategy agrees with it."""
    choices = curves["online k: all, selection loss (choices)"]
    lines = ["", "Windows chosen online (exhaustive search on the selection loss), per epoch:", ""]
    lines += [f"- seed {s}: {c}" for s, c in choices.items()]
    lines += ["", "How often each cheaper choice equals the exhaustive search's on the same signal (all epochs, "
              "all seeds):", ""]
    for name in [n for n in curves if n.endswith("(choices)") and ": all," not in n]:
        exhaustive = curves[name.replace("doubling", "all").replace("local", "all")]
        same = [a == b for s, picks in curves[name].items() for a, b in zip(picks, exhaustive[s])]
        lines.append(f"- {name[:-len(' (choices)')]}: {100.0 * sum(same) / len(same):.0f}%")
    return lines


def analyse(data: dict[str, Any]) -> str:
    """The markdown summary: online k against every fixed k, and the jump policies, epochs to the target."""
    cfg, runs = data["config"], data["runs"]
    seeds = [s for s in range(cfg["seeds"]) if f"base_seed{s}" in runs]
    if not seeds:
        return "no finished baseline run yet\n"
    base = {s: runs[f"base_seed{s}"]["rows"] for s in seeds}
    epochs = len(base[seeds[0]])
    key = _metric(cfg)[0]
    target = statistics.mean(base[s][-1]["base"][key] for s in seeds)
    curves: dict[str, dict[int, list[float]]] = {BASELINE: {s: [r["base"][key] for r in base[s]] for s in seeds}}
    passes: dict[str, float] = {}
    _online_curves(cfg, base, key, curves, passes)
    notes = _jump_curves(cfg, runs, seeds, key, curves)
    lines = _header(cfg, len(seeds), epochs, target) + _table(cfg, curves, passes, seeds, epochs, target)
    lines += _choices(curves)
    if notes:
        lines += ["", "Jumps made:", "", *notes]
    return "\n".join(lines) + "\n"


@click.command("beyond", epilog="""\b
Examples:
  lawa bench beyond --out runs/beyond                                  # the ResNet, 3 seeds
  lawa bench beyond --workload gpt --out runs/beyond_gpt --threads 2
  lawa bench beyond --seeds 1 --out runs/beyond_tiny workloads.resnet.epochs=4   # suite overrides

\b
Killed? Run the same command again: finished runs are skipped.
""")
@click.option("--out", "out_dir", type=click.Path(file_okay=False, path_type=Path), default=Path("runs/beyond"),
              show_default=True,
              help="The run folder: beyond.json (every seed, epoch and window; a killed run resumes from it) and "
                   "beyond.md (the summary).")
@click.option("--config", "suite_config", default="configs/suite.yaml", show_default=True,
              help="The suite config whose workload is used: a YAML file or a shipped config's name (suite).")
@click.option("--workload", default="resnet", show_default=True,
              help="A suite workload with a selection split (resnet, vit, gpt). Fashion-MNIST (resnet, vit): the "
                   "selection split is held-out training images; gpt: held-out windows cut off the end of the "
                   "training text (reported metric: validation loss).")
@click.option("--seeds", type=click.IntRange(min=1), default=3, show_default=True,
              help="Seeds 0..N-1: one baseline run and one run per jump policy each.")
@click.option("--k-max", type=click.IntRange(min=1), default=12, show_default=True,
              help="Online k: the ring holds K snapshots and every window 1..K is scored each epoch.")
@click.option("--k", type=click.IntRange(min=1), default=6, show_default=True,
              help="Jumps: the window of the LAWA average the jump runs jump to (snapshots, one per epoch).")
@click.option("--policies", default=",".join(JUMP_POLICIES), show_default=True, help="Jump policies to run.")
@click.option("--selection-images", type=click.IntRange(min=1), default=None,
              help="Size of the selection split (default: the workload's: 1000 images, or gpt's 128 windows).")
@click.option("--threads", type=click.IntRange(min=1), default=1, show_default=True,
              help="torch threads per run (runs go one after another).")
@click.argument("overrides", nargs=-1)
def beyond(out_dir: Path, suite_config: str, workload: str, seeds: int, k_max: int, k: int, policies: str,
           selection_images: int | None, threads: int, overrides: tuple[str, ...]) -> None:
    """Online k and jumps to the average on a suite workload: does choosing LAWA's window as training goes, or
    continuing training from the average, reach the target sooner? OVERRIDES are key=value pairs on the
    suite config, e.g. workloads.resnet.epochs=4."""
    if workload not in workloads():
        raise click.BadParameter(f"{workload!r}; use one of {workloads()}", param_hint="--workload")
    names = [p for p in policies.split(",") if p]
    unknown = [p for p in names if p not in JUMP_POLICIES]
    if unknown:
        raise click.BadParameter(f"unknown {unknown}; use some of {list(JUMP_POLICIES)}", param_hint="--policies")
    cfg = {"suite_config": suite_config, "overrides": list(overrides), "seeds": seeds,
           **({"workload": workload} if workload != "resnet" else {}), "k_max": k_max, "k": k,
           "policies": names, "selection_images": selection_images,
           "threads": threads, "proxy_batches": 2}
    click.echo(run(cfg, out_dir)["text"])
