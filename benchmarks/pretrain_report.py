"""The tables and plots of ``lawa bench pretrain`` (:mod:`lawa_benchmarks.pretrain`), from its rows.

Every number is computed per seed first, then summarised as mean ± standard deviation over the
seeds; a difference is "beyond the seed spread" when every seed has the same sign and the mean
paired difference exceeds its standard deviation.

- **target**: each seed's cosine run of the full budget ``T``: its final validation loss. The
  steps each schedule needs to reach it, as a fraction of ``T`` (the constant run and its merges
  are evaluated every ``eval_every`` steps; WSD and the shorter cosine runs only at their budgets).
- **budgets**: the loss at each budget and what it cost to have a model at all of them.
- **merge (selected)**: at each evaluation, the (weights, window) whose merge has the lowest loss
  on the selection split (the test books), so nothing is chosen on the reported split;
  **merge (best)** is the oracle over the validation split, for reference only.
"""

from __future__ import annotations

import csv
import json
import math
import statistics
from pathlib import Path
from typing import Any

__all__ = ["analyse", "write_results"]


def _stats(values: list[float]) -> dict[str, float]:
    vals = [v for v in values if v is not None and not math.isnan(v)]
    if not vals:
        return {"mean": math.nan, "sd": math.nan, "n": 0}
    return {"mean": statistics.fmean(vals), "sd": statistics.stdev(vals) if len(vals) > 1 else 0.0, "n": len(vals)}


def _fmt(s: dict[str, float], digits: int = 3) -> str:
    if not s["n"]:
        return "-"
    return f"{s['mean']:.{digits}f} ± {s['sd']:.{digits}f}"


def _signed(d: dict[str, Any]) -> str:
    return f"{d['mean']:+.3f} ± {d['sd']:.3f}{' *' if d['beyond_spread'] else ''}"


def _paired(a: list[float], b: list[float]) -> dict[str, Any]:
    """``a - b`` per seed: mean, sd, and whether it is beyond the seed spread."""
    d = [x - y for x, y in zip(a, b)]
    s = _stats(d)
    same_sign = all(x < 0 for x in d) or all(x > 0 for x in d)
    s["beyond_spread"] = bool(same_sign and s["n"] > 1 and abs(s["mean"]) > s["sd"])
    return s


def _curve(rows: list[dict[str, Any]], seed: int, **match: Any) -> dict[int, float]:
    return {r["step"]: r["val_loss"] for r in rows
            if r["seed"] == seed and all(r.get(k) == v for k, v in match.items())}


def _selected(rows: list[dict[str, Any]], seed: int) -> dict[int, dict[str, Any]]:
    """Per evaluation step of the constant run: the merge row with the lowest selection loss."""
    best: dict[int, dict[str, Any]] = {}
    for r in rows:
        if r["seed"] == seed and r["run"] == "constant" and r["method"] == "merge":
            cur = best.get(r["step"])
            if cur is None or (r["sel_loss"], r["window"]) < (cur["sel_loss"], cur["window"]):
                best[r["step"]] = r
    return best


def _oracle(rows: list[dict[str, Any]], seed: int) -> dict[int, dict[str, Any]]:
    best: dict[int, dict[str, Any]] = {}
    for r in rows:
        if r["seed"] == seed and r["run"] == "constant" and r["method"] == "merge":
            cur = best.get(r["step"])
            if cur is None or r["val_loss"] < cur["val_loss"]:
                best[r["step"]] = r
    return best


def _first_reaching(curve: dict[int, float], target: float) -> int | None:
    return next((s for s in sorted(curve) if curve[s] <= target), None)


def _seed_curves(cfg: Any, rows: list[dict[str, Any]], seed: int) -> dict[str, dict[int, float]]:
    """The per-seed curves (step -> validation loss) of every schedule the tables compare."""
    T = cfg.steps
    curves = {
        "cosine (planned for T)": _curve(rows, seed, run=f"cosine{T}"),
        "constant LR (raw weights)": _curve(rows, seed, run="constant", method="raw"),
        "merge (selected on test books)": {s: r["val_loss"] for s, r in _selected(rows, seed).items()},
        "merge (best on validation: oracle)": {s: r["val_loss"] for s, r in _oracle(rows, seed).items()},
        "OnlineK (uniform)": _curve(rows, seed, run="constant", method="online_k"),
    }
    curves["WSD (cooldown branch per budget)"] = {
        b: _curve(rows, seed, run=f"wsd{b}").get(b, math.nan) for b in cfg.budget_steps()}
    curves["cosine (one run per budget)"] = {
        b: _curve(rows, seed, run=f"cosine{b}").get(b, math.nan) for b in cfg.budget_steps()}
    for scheme in cfg.weights:
        for j in cfg.windows:
            curves[f"merge {scheme} k={j}"] = _curve(rows, seed, run="constant", method="merge", weights=scheme,
                                                      window=j)
    return curves


def analyse(cfg: Any, rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Everything the tables and plots show, JSON-ready."""
    T, seeds, budgets = cfg.steps, sorted({r["seed"] for r in rows}), cfg.budget_steps()
    curves = {s: _seed_curves(cfg, rows, s) for s in seeds}
    targets = {s: curves[s]["cosine (planned for T)"][T] for s in seeds}
    names = list(curves[seeds[0]])
    # steps to the cosine run's final loss, as a fraction of T
    reach: dict[str, Any] = {}
    for name in names:
        fr = [(_first_reaching(curves[s][name], targets[s]) or math.nan) / T for s in seeds]
        reach[name] = {**_stats(fr), "reached": sum(not math.isnan(f) for f in fr), "per_seed": fr}
    # loss at each budget
    at_budget: dict[str, dict[int, Any]] = {}
    for name in names:
        at_budget[name] = {}
        for b in budgets:
            vals = [curves[s][name].get(b, math.nan) for s in seeds]
            at_budget[name][b] = {**_stats(vals), "per_seed": vals}
    # paired: the selected merge against cosine and WSD at each budget (negative: the merge is lower)
    paired = {}
    for other in ("cosine (one run per budget)", "WSD (cooldown branch per budget)", "constant LR (raw weights)"):
        paired[other] = {b: _paired(at_budget["merge (selected on test books)"][b]["per_seed"],
                                    at_budget[other][b]["per_seed"]) for b in budgets}
    f = cfg.cooldown_fraction
    cost = {"cosine (one run per budget)": sum(budgets) / T,
            "WSD (cooldown branch per budget)": ((1 - f) * max(budgets) + f * sum(budgets)) / T,
            "merge (selected on test books)": 1.0}
    # windows: the final loss of every (weights, window), and the selections' choices
    windows = {}
    for scheme in cfg.weights:
        for j in cfg.windows:
            name = f"merge {scheme} k={j}"
            windows[name] = {"weights": scheme, "window": j, "duration_steps": (j - 1) * cfg.snapshot_every,
                             **{str(b): at_budget[name][b] for b in budgets}}
    picks = {s: {str(st): [r["weights"], r["window"]] for st, r in _selected(rows, s).items()} for s in seeds}
    oracle = {s: {str(st): [r["weights"], r["window"]] for st, r in _oracle(rows, s).items()} for s in seeds}
    # does the constant run's loss flatten? its drop per 1000 steps over each quarter of T
    raw = "constant LR (raw weights)"
    quarters = [round(q * T / 4 / cfg.eval_every) * cfg.eval_every for q in range(1, 5)]
    flattening = {f"{a}-{b}": _stats([(curves[s][raw][a] - curves[s][raw][b]) / (b - a) * 1000 for s in seeds])
                  for a, b in zip(quarters, quarters[1:])}
    online = {s: {str(st): v for st, v in _picks_online(rows, s).items()} for s in seeds}
    return {"seeds": seeds, "steps": T, "budgets": budgets, "targets": targets, "reach": reach,
            "at_budget": {n: {str(b): v for b, v in d.items()} for n, d in at_budget.items()},
            "paired": {n: {str(b): v for b, v in d.items()} for n, d in paired.items()}, "cost": cost,
            "windows": windows, "selected_picks": picks, "oracle_picks": oracle, "online_k_picks": online,
            "flattening": flattening}


def _picks_online(rows: list[dict[str, Any]], seed: int) -> dict[int, int]:
    return {r["step"]: r["window"] for r in rows
            if r["seed"] == seed and r["run"] == "constant" and r["method"] == "online_k"}


# ----------------------------------------------------------------------------- files
MAIN = ("cosine (one run per budget)", "WSD (cooldown branch per budget)", "merge (selected on test books)",
        "OnlineK (uniform)", "constant LR (raw weights)", "merge (best on validation: oracle)")


def _markdown(cfg: Any, a: dict[str, Any]) -> str:
    budgets = a["budgets"]
    lines = [f"# Pre-training: constant LR + merges vs cosine and WSD ({len(a['seeds'])} seeds)", "",
             f"Validation loss in nats per character (lower is better), mean ± sd over seeds {a['seeds']}. "
             f"T = {a['steps']} steps; snapshots every {cfg.snapshot_every} steps; WSD cools down over the last "
             f"{cfg.cooldown_fraction:.0%} ({cfg.cooldown_shape}).", "",
             "## Steps to the cosine run's final loss (fraction of T)", "",
             "| schedule | fraction of T | seeds reaching it |", "|---|---|---|"]
    for name in (*MAIN, "cosine (planned for T)"):
        r = a["reach"][name]
        lines.append(f"| {name} | {_fmt(r, 2) if r['n'] else 'not reached'} | {r['reached']}/{len(a['seeds'])} |")
    lines += ["", "The constant run's loss drop per 1000 steps (raw weights): " + "; ".join(
        f"steps {k}: {_fmt(v)}" for k, v in a["flattening"].items()) + "."]
    head = " | ".join(f"T·{b / a['steps']:g} ({b})" for b in budgets)
    lines += ["", "## Loss at each budget, and the steps it cost to have a model at all of them", "",
              f"| schedule | {head} | cost (×T) |", "|---|" + "---|" * (len(budgets) + 1)]
    for name in MAIN:
        cells = " | ".join(_fmt(a["at_budget"][name][str(b)]) for b in budgets)
        cost = a["cost"].get(name)
        lines.append(f"| {name} | {cells} | {'-' if cost is None else f'{cost:.2f}'} |")
    lines += ["", "## The selected merge minus each schedule, paired by seed (negative: the merge is lower)", "",
              f"| against | {head} |", "|---|" + "---|" * len(budgets)]
    for other, d in a["paired"].items():
        cells = " | ".join(_signed(d[str(b)]) for b in budgets)
        lines.append(f"| {other} | {cells} |")
    lines += ["", "`*`: beyond the seed spread (the same sign in every seed, |mean| > sd).", "",
              "## Which window and weights (loss at T)", "",
              "| weights | " + " | ".join(f"k={j} ({(j - 1) * cfg.snapshot_every} steps)" for j in cfg.windows) + " |",
              "|---|" + "---|" * len(cfg.windows)]
    T = str(a["steps"])
    for scheme in cfg.weights:
        cells = " | ".join(_fmt(a["windows"][f"merge {scheme} k={j}"][T]) for j in cfg.windows)
        lines.append(f"| {scheme} | {cells} |")
    lines += ["", "## What was picked at T, per seed", "",
              "| seed | selected on the test books (weights, k) | best on validation (oracle) | OnlineK's k |",
              "|---|---|---|---|"]
    for seed in a["seeds"]:
        sel, orc = a["selected_picks"][seed].get(T), a["oracle_picks"][seed].get(T)
        lines.append(f"| {seed} | {'-' if sel is None else f'{sel[0]}, k={sel[1]}'} | "
                     f"{'-' if orc is None else f'{orc[0]}, k={orc[1]}'} | {a['online_k_picks'][seed].get(T, '-')} |")
    return "\n".join(lines) + "\n"


def _plots(cfg: Any, rows: list[dict[str, Any]], a: dict[str, Any], out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    seeds, budgets, T = a["seeds"], a["budgets"], a["steps"]
    curves = {s: _seed_curves(cfg, rows, s) for s in seeds}

    def mean_curve(name: str) -> tuple[list[int], list[float]]:
        steps = sorted(set.intersection(*(set(curves[s][name]) for s in seeds)))
        return steps, [statistics.fmean(curves[s][name][st] for s in seeds) for st in steps]

    colours = {"cosine (planned for T)": "C0", "constant LR (raw weights)": "C7",
               "merge (selected on test books)": "C3", "OnlineK (uniform)": "C1",
               "WSD (cooldown branch per budget)": "C2", "cosine (one run per budget)": "C0"}
    fig, ax = plt.subplots(figsize=(8, 5))
    for name in ("cosine (planned for T)", "constant LR (raw weights)", "merge (selected on test books)",
                 "OnlineK (uniform)"):
        x, y = mean_curve(name)
        ax.plot(x, y, label=name, color=colours[name], lw=2 if "merge" in name else 1.3)
    for name, marker in (("WSD (cooldown branch per budget)", "s"), ("cosine (one run per budget)", "o")):
        x, y = mean_curve(name)
        ax.plot(x, y, marker, label=name + " (end of each run)", color=colours[name], ms=8, mfc="none", mew=2)
    target = statistics.fmean(a["targets"].values())
    ax.axhline(target, color="C0", ls=":", lw=1)
    ax.annotate("cosine's final loss", (T * 0.02, target), color="C0", va="bottom", fontsize=8)
    lo = min(min(mean_curve(n)[1]) for n in colours)
    ax.set_ylim(lo - 0.05, lo + 0.6)
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("validation loss (nats/char), mean over seeds")
    ax.set_title("Constant LR + merges vs cosine and WSD")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out / "pretrain_curves.png", dpi=120)
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(8, 4.5))
    names = ("cosine (one run per budget)", "WSD (cooldown branch per budget)", "merge (selected on test books)",
             "constant LR (raw weights)")
    width = 0.8 / len(names)
    for i, name in enumerate(names):
        means = [a["at_budget"][name][str(b)]["mean"] for b in budgets]
        sds = [a["at_budget"][name][str(b)]["sd"] for b in budgets]
        cost = a["cost"].get(name)
        label = name + (f": {cost:.2f}×T for all four" if cost else "")
        ax.bar([k + i * width for k in range(len(budgets))], means, width, yerr=sds, capsize=3, label=label,
               color=colours[name] if name != "constant LR (raw weights)" else "C7")
    ax.set_xticks([k + width * (len(names) - 1) / 2 for k in range(len(budgets))],
                  [f"T·{b / T:g} ({b} steps)" for b in budgets])
    flat = [a["at_budget"][n][str(b)]["mean"] for n in names for b in budgets]
    ax.set_ylim(min(flat) - 0.05, max(flat) + 0.05)
    ax.set_ylabel("validation loss at the budget")
    ax.set_title("A model at every budget: loss, and steps spent to have all of them")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out / "pretrain_budgets.png", dpi=120)
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(7, 4.5))
    durations = [(j - 1) * cfg.snapshot_every for j in cfg.windows]
    for i, scheme in enumerate(cfg.weights):
        means = [a["windows"][f"merge {scheme} k={j}"][str(T)]["mean"] for j in cfg.windows]
        ax.plot(durations, means, "o-", label=f"merge, {scheme} weights", color=f"C{i + 3}")
    for name, ls in (("cosine (one run per budget)", "--"), ("WSD (cooldown branch per budget)", ":")):
        ax.axhline(a["at_budget"][name][str(T)]["mean"], color=colours[name], ls=ls, label=f"{name} at T")
    ax.set_xlabel("window: steps from the oldest to the newest snapshot merged")
    ax.set_ylabel("validation loss at T")
    ax.set_title("Which window and weights")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out / "pretrain_windows.png", dpi=120)
    plt.close(fig)


def write_results(cfg: Any, rows: list[dict[str, Any]], out: str | Path) -> dict[str, Any]:
    """``pretrain.json`` (rows + analysis), ``pretrain.csv``, ``pretrain.md`` and the PNGs; returns the analysis."""
    out = Path(out)
    a = analyse(cfg, rows)
    (out / "pretrain.json").write_text(json.dumps({"config": cfg.model_dump(), "analysis": a, "rows": rows}))
    keys = ["seed", "run", "schedule", "budget", "step", "method", "weights", "window", "val_loss", "sel_loss"]
    with open(out / "pretrain.csv", "w", newline="") as fh:
        w = csv.DictWriter(fh, keys)
        w.writeheader()
        for r in rows:
            w.writerow({k: (round(r[k], 5) if isinstance(r.get(k), float) else r.get(k, "")) for k in keys})
    (out / "pretrain.md").write_text(_markdown(cfg, a))
    _plots(cfg, rows, a, out)
    return a
