"""The suite's numbers: steps (and wall-clock) to the target, per workload and across workloads.

For each workload (a run folder ``OUT/<workload>/`` in the report schema):

- **target**: the config's ``target``, else the baseline's (``base``) final validation metric
  averaged over the seeds.
- **steps to target** of a method in a seed: the optimizer steps at the first evaluation whose
  metric reaches the target (None: never, in the run's budget).
- **fraction**: a method's steps to target divided by the *better baseline's* in the same seed.
  The baselines are ``base`` and, for BatchNorm models, ``base_bn`` (the raw weights with their
  BatchNorm statistics recomputed, as every average gets them); the better is the one that
  reaches the target first. A baseline seed that ends just short of the target (it is the mean
  of the seeds' final values, so about half of them do) is counted at its full budget: there it
  is within the seed spread of the target. Means and standard deviations are over the seeds
  where the method reaches the target; ``reached`` says in how many it does (AlgoPerf counts a
  miss as infinite time).
- wall-clock: the same with the training seconds up to that evaluation (plus the method's own
  averaging seconds), inflated and noisy here on a shared machine: steps are the primary figure.
- **LAWA, tuned k**: the window ``j`` of the evaluated ones (all from one ring) with the most
  seeds reaching the target, then the lowest mean fraction, then the best final value: the best k
  in hindsight, an optimistic figure by construction.
- **lead**: :func:`lawa_benchmarks.lead.robust_lead` of the headline (LAWA k=6) and the tuned k
  against the better baseline, and its one sentence.
- A workload's metadata may name its own headline (``roberta``: the LAWA plugin's one window, the
  k of its config, shown in the "LAWA k=6" row with its k) and say ``tuned_k: false`` (one window
  only: no tuned k).
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from ..lead import lead_sentence, robust_lead
from ..metrics import atomic_text, csv_text, load_metrics
from ..report_text import md_table

__all__ = ["REFERENCES", "workload_results", "write_suite_report"]

# Figures from the literature, beside ours for reference (not measured here).
REFERENCES = [
    ("Kaddour 2022 (the LAWA paper)", "ResNet-50 / ImageNet, SGD, cosine over 90 epochs: LAWA reaches ~66% top-1 "
     "(final ~76%) about 40 epochs earlier, but the highest accuracy not much earlier (a fraction near 1.0 at a final "
     "target); RoBERTa-Base / WikiText-103, Adam, 200 epochs: Adam's best validation perplexity about 45 epochs "
     "earlier (~0.78 of the steps)"),
    ("Ajroldi et al. 2025 (AlgoPerf)", "LAWA and EMA reach the AlgoPerf targets in about 78% of the baseline's steps "
     "on average, with large differences between workloads"),
]
# The same, as a column of the table across workloads (fraction of the baseline's steps to its target).
_REFERENCE_CELLS = {
    "LAWA k=6": "AlgoPerf: LAWA ~0.78 (mean); paper: ~0.78 RoBERTa-Base (k=10), ~1.0 ResNet-50 at its final accuracy",
    "EMA": "AlgoPerf: EMA ~0.78 (mean)",
}
_ORDER = ("base", "base_bn", "lawa", "exp", "swa", "ema", "lookahead", "schedulefree")


def _mean_std(xs: list[float]) -> tuple[float | None, float | None]:
    if not xs:
        return None, None
    m = sum(xs) / len(xs)
    return m, (math.sqrt(sum((x - m) ** 2 for x in xs) / (len(xs) - 1)) if len(xs) > 1 else 0.0)


def _pm(m: float | None, s: float | None, digits: int = 2) -> str:
    return "-" if m is None else f"{m:.{digits}f} ± {s:.{digits}f}"


def _by(rows: list[dict[str, Any]]) -> dict[str, dict[Any, list[dict[str, Any]]]]:
    out: dict[str, dict[Any, list[dict[str, Any]]]] = {}
    for r in rows:
        out.setdefault(r["method"], {}).setdefault(r["seed"], []).append(r)
    for seeds in out.values():
        for rs in seeds.values():
            rs.sort(key=lambda r: int(r["epoch"]))
    return out


def _to_target(rs: list[dict[str, Any]], metric: str, target: float, sign: int) -> dict[str, Any] | None:
    """``steps`` and ``seconds`` (training plus the method's own averaging so far) at the first row reaching it."""
    own = 0.0
    for r in rs:
        own += float(r.get("avg_time_s") or 0.0) if r["method"] not in ("base",) else 0.0
        v = r.get(metric)
        if isinstance(v, (int, float)) and sign * v >= sign * target - 1e-12:
            return {"steps": int(r["steps"]), "seconds": float(r.get("train_time_s") or 0.0) + own, "epoch": r["epoch"]}
    return None


def workload_results(run_dir: str | Path, target: float | None = None, headline: str = "lawa_k6") -> dict[str, Any]:
    """Steps to target, fractions, final and best values, tuned k and the robust lead of one workload folder."""
    rows, meta = load_metrics(run_dir)
    if not rows:
        raise ValueError(f"Invalid workload folder {str(run_dir)!r}: its metrics hold no rows yet")
    headline = meta.get("headline") or headline  # roberta: the LAWA plugin's k (the config's), not the suite's
    metric, hib = meta["metric"], meta["higher_is_better"]
    sign = 1 if hib else -1
    by = _by(rows)
    baselines = [b for b in meta.get("baselines", ["base"]) if b in by]
    seeds = sorted(by["base"], key=str)
    finals = [by["base"][s][-1][metric] for s in seeds]
    target_source = "fixed in the config"
    if target is None:
        target = sum(finals) / len(finals)
        target_source = f"mean final {metric} of the baseline over {len(seeds)} seed(s)"
    budget = {s: (int(by["base"][s][-1]["steps"]), float(by["base"][s][-1]["train_time_s"])) for s in seeds}
    denom = {}
    for s in seeds:
        best = budget[s]
        for b in baselines:
            hit = _to_target(by[b].get(s, []), metric, target, sign)
            if hit is not None and hit["steps"] < best[0]:
                best = (hit["steps"], hit["seconds"])
        denom[s] = best
    info = meta.get("methods", {})
    methods = []
    for m, per_seed in by.items():
        fr, wall, steps, final, best_v = [], [], [], [], []
        for s in seeds:
            rs = per_seed.get(s)
            if not rs:
                continue
            final.append(rs[-1][metric])
            best_v.append(max(sign * r[metric] for r in rs) * sign)
            hit = _to_target(rs, metric, target, sign)
            if hit is not None:
                steps.append(hit["steps"])
                fr.append(hit["steps"] / denom[s][0])
                wall.append(hit["seconds"] / denom[s][1] if denom[s][1] > 0 else math.nan)
        n = sum(1 for s in seeds if per_seed.get(s))
        mi = info.get(m, {})
        methods.append({"method": m, "label": mi.get("label", m), "family": mi.get("family", m.split("_")[0]),
                        "k": mi.get("k"), "n_seeds": n, "reached": len(fr),
                        "steps_mean": _mean_std(steps)[0], "steps_std": _mean_std(steps)[1],
                        "fraction_mean": _mean_std(fr)[0], "fraction_std": _mean_std(fr)[1],
                        "wall_fraction_mean": _mean_std(wall)[0], "wall_fraction_std": _mean_std(wall)[1],
                        "final_mean": _mean_std(final)[0], "final_std": _mean_std(final)[1],
                        "best_mean": _mean_std(best_v)[0], "best_std": _mean_std(best_v)[1]})
    windows = [r for r in methods if r["family"] == "lawa" and "bncopy" not in r["method"]]
    if meta.get("tuned_k") is False:  # one window only (roberta): nothing was tuned
        windows = []
    tuned = min(windows, key=lambda r: (-r["reached"], r["fraction_mean"] if r["fraction_mean"] is not None
                                        else math.inf, -sign * (r["final_mean"] or 0.0))) if windows else None
    spe = meta.get("steps_per_epoch")
    leads = {}
    for key, m in (("headline", headline), ("tuned", tuned["method"] if tuned else None)):
        if m in by:
            lead = robust_lead(rows, baselines, m, metric, hib, spe)
            base_label = " / ".join(info.get(b, {}).get("label", b) for b in baselines)
            leads[key] = {**lead, "sentence": lead_sentence(lead, info.get(m, {}).get("label", m),
                                                            f"the better of {base_label}" if len(baselines) > 1
                                                            else base_label)}
    return {"workload": meta.get("workload", Path(run_dir).name), "label": meta.get("workload_label", ""),
            "metric": metric, "higher_is_better": hib, "target": target, "target_source": target_source,
            "headline": headline,
            "baselines": baselines, "seeds": seeds, "epochs": meta.get("epochs"), "steps_per_epoch": spe,
            "budget_steps": max(b[0] for b in budget.values()), "methods": methods,
            "tuned": tuned["method"] if tuned else None, "leads": leads, "rows": rows, "meta": meta}


def _order_key(r: dict[str, Any]) -> tuple[int, str]:
    fam = "base_bn" if r["method"] == "base_bn" else r["family"]
    return (_ORDER.index(fam) if fam in _ORDER else len(_ORDER), r["method"])


def _table_rows(res: dict[str, Any]) -> list[dict[str, Any]]:
    """The rows shown: baselines, LAWA k=6, LAWA tuned, one per other family (skipping other windows)."""
    shown = []
    for r in sorted(res["methods"], key=_order_key):
        if r["family"] == "lawa" and r["method"] not in (_headline(res), res["tuned"]) and "bncopy" not in r["method"]:
            continue
        shown.append(r)
    return shown


def _headline(res: dict[str, Any]) -> str:
    return res.get("headline") or "lawa_k6"


def _row_name(r: dict[str, Any], res: dict[str, Any]) -> str:
    if r["method"] == res["tuned"] and r["method"] != _headline(res):
        return f"LAWA tuned k (k={r['k']})"
    if r["method"] == res["tuned"]:
        return f"{r['label']} (also the tuned k)"
    return r["label"]


def _generic(r: dict[str, Any], res: dict[str, Any]) -> str:
    """The cross-workload row a method belongs to."""
    if r["method"] == res["tuned"] and r["method"] != _headline(res):
        return "LAWA, tuned k"
    if r["method"] == "base":
        return "baseline (SGD, AdamW or Adam)"
    if r["method"] == "base_bn":
        return "baseline, BN recomputed"
    if r["method"] == _headline(res):
        return "LAWA k=6"  # roberta's cell says its own k (the LAWA plugin's, from its config)
    if "bncopy" in r["method"]:
        return "LAWA k=6, BN copied" if r["method"] == "lawa_k6_bncopy" else r["method"]
    from ..resnet.methods import display_name

    return display_name(r["family"], base="").strip()  # "Schedule-free {base}": the workloads' bases differ


def write_suite_report(out_dir: str | Path, cfg: Any = None, plots: bool = True) -> dict[str, Any]:
    """Write ``suite.md``, ``suite.csv``, ``suite.json`` and one ``<workload>.png`` per workload into ``out_dir``.

    Every workload folder under ``out_dir`` that holds metrics is included (also those another
    process ran). ``cfg`` (a :class:`~lawa_benchmarks.suite.config.SuiteConfig`) gives the targets
    stated in the config and the headline method.
    """
    out = Path(out_dir)
    names = [p.name for p in sorted(out.iterdir()) if (p / "metrics.json").is_file()] if out.is_dir() else []
    if not names:
        raise FileNotFoundError(f"No workload folder with metrics.json under {str(out)!r}: run `lawa bench suite "
                                f"--out {out}` first")
    headline = cfg.report.headline if cfg is not None else "lawa_k6"
    results = []
    for name in names:
        target = None
        if cfg is not None and name in cfg.workload_names():
            target = cfg.workload(name).target
        results.append(workload_results(out / name, target, headline))
    flat, cross = [], {}
    for res in results:
        for r in _table_rows(res):
            flat.append({"workload": res["workload"], "row": _generic(r, res), **{k: v for k, v in r.items()}})
            cross.setdefault(_generic(r, res), {})[res["workload"]] = r
    text = _suite_text(results, cross)
    atomic_text(out / "suite.md", text + "\n")
    atomic_text(out / "suite.csv", csv_text(flat))
    doc = [{k: v for k, v in res.items() if k not in ("rows", "meta")} for res in results]
    atomic_text(out / "suite.json", json.dumps({"workloads": doc, "references": REFERENCES}, indent=1, default=str))
    files = {name: str(out / name) for name in ("suite.md", "suite.csv", "suite.json")}
    if plots:
        from .plots import plot_workload

        for res in results:
            shown = [(r, _row_name(r, res)) for r in _table_rows(res)]
            files[f"{res['workload']}.png"] = plot_workload(out / f"{res['workload']}.png", res, shown)
    return {"results": results, "text": text, "files": files}


def _k_note(row: str, r: dict[str, Any] | None) -> str:
    """`` (k=5)`` where a workload's cell of the LAWA k=6 row is another window (roberta's plugin k)."""
    return f" (k={r['k']})" if r is not None and row == "LAWA k=6" and r.get("k") not in (None, 6) else ""


def _cell(r: dict[str, Any] | None) -> str:
    if r is None:
        return ""
    if r["fraction_mean"] is None:
        return f"not reached (0/{r['n_seeds']})"
    miss = "" if r["reached"] == r["n_seeds"] else f" ({r['reached']}/{r['n_seeds']})"
    return f"{r['fraction_mean']:.2f} ± {r['fraction_std']:.2f}{miss}"


def _suite_text(results: list[dict[str, Any]], cross: dict[str, dict[str, Any]]) -> str:
    names = [res["workload"] for res in results]
    parts = ["# Workload suite: steps to the target, as a fraction of the better baseline's", ""]
    parts += ["Fraction of the baseline's steps to reach the target (mean ± std over seeds; (r/n): the target "
              "was reached in r of n seeds, the mean is over those). Lower is better; 1.00 is the baseline.", ""]
    header = ["method"] + [f"{res['workload']} ({res['metric']} {'>=' if res['higher_is_better'] else '<='} "
                           f"{res['target']:.4g})" for res in results] + ["mean over workloads",
                                                                           "reference (not measured here)"]
    body = []
    for row, per in cross.items():
        fr = [per[n]["fraction_mean"] for n in names if n in per and per[n]["fraction_mean"] is not None
              and per[n]["reached"] == per[n]["n_seeds"]]
        mean = f"{sum(fr) / len(fr):.2f}" if fr and len(fr) == sum(1 for n in names if n in per) else "-"
        body.append([row] + [_cell(per.get(n)) + _k_note(row, per.get(n)) for n in names]
                    + [mean, _REFERENCE_CELLS.get(row, "")])
    parts.append(md_table(header, body))
    only = [res for res in results if res["meta"].get("tuned_k") is False]
    if only:
        parts += ["", " ".join(
            f"`{res['workload']}` ({res['label']}): fairseq's trainer with the LAWA plugin runs only the baseline "
            f"and one LAWA window, {_headline(res).replace('lawa_k', 'k=')} (its config's; no k is tuned), shown in "
            "the LAWA k=6 row and counted in its mean; EMA, SWA, Lookahead and schedule-free are not wired into "
            "fairseq's loop and EXP would need a second training run per seed, so their cells are empty."
            for res in only)]
    parts += ["", "The references in full (not measured here):", ""]
    parts += [f"- {who}: {what}." for who, what in REFERENCES]
    for res in results:
        parts += ["", f"## {res['workload']}: {res['label']}", ""]
        parts.append(f"Target: {res['metric']} {'>=' if res['higher_is_better'] else '<='} {res['target']:.4f} "
                     f"({res['target_source']}); budget {res['budget_steps']} steps ({res['epochs']} evaluations, "
                     f"{res['steps_per_epoch']} steps apart); seeds {res['seeds']}; baselines {res['baselines']}.")
        for key in ("headline", "tuned"):
            if key in res["leads"] and not (key == "tuned" and res["tuned"] == res["leads"].get("headline", {})
                                            .get("method")):
                parts += ["", res["leads"][key]["sentence"]]
        parts.append("")
        rows = []
        for r in _table_rows(res):
            rows.append([_row_name(r, res), _pm(r["steps_mean"], r["steps_std"], 0) if r["steps_mean"] is not None
                         else "never", _cell(r), _pm(r["wall_fraction_mean"], r["wall_fraction_std"]),
                         _pm(r["final_mean"], r["final_std"], 3), _pm(r["best_mean"], r["best_std"], 3)])
        parts.append(md_table(["method", "steps to target", "fraction of baseline (steps)",
                                "fraction (wall-clock)", f"final {res['metric']}", f"best {res['metric']}"], rows))
        other = [r for r in res["methods"] if r["family"] == "lawa" and "bncopy" not in r["method"]]
        if len(other) > 1:
            parts += ["", "LAWA by window (one ring, evaluated every epoch): " + ", ".join(
                f"k={r['k']}: {_cell(r)}" for r in sorted(other, key=lambda r: r["k"] or 0)) + "."]
        parts += ["", f"![{res['workload']}]({res['workload']}.png)"]
    return "\n".join(parts)
