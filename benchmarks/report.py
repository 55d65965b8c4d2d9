"""Reports of benchmark runs: summaries, "time saved" tables and plots in the paper's style.

Shared by every runner (``lawa bench resnet``, ``lawa bench roberta``). A runner writes its
metrics with :func:`write_metrics`; :func:`write_report` (and ``lawa report RUN_DIR``) turns them
into files a person can read.

**The metrics schema.** ``RUN_DIR/metrics.json`` is ``{"schema": 1, "meta": {...}, "rows": [...]}``
and ``RUN_DIR/metrics.csv`` holds the same rows, long format, one row per (seed, epoch, method):

- ``method`` (str), ``seed`` (int), ``epoch`` (int, 1-based: after that many epochs), and
  optionally ``run`` (the training run that produced it);
- any numeric metric columns; the known ones are ``train_loss``, ``train_top1``, ``val_loss``,
  ``top1``, ``top5`` (in %), ``ppl``, ``val_ppl``, ``train_time_s`` (cumulative wall time of
  training so far), ``avg_time_s`` and ``eval_time_s`` (the method's averaging and evaluation
  time in that epoch), ``lr``, ``steps``. Missing values are left empty (CSV) or null (JSON).

``meta`` names ``baseline`` (the method every other is measured against, e.g. ``"base"``),
``headline`` (e.g. ``"lawa_k6"``), ``metric`` (e.g. ``"top1"``, or ``"val_loss"`` for RoBERTa),
``higher_is_better`` and ``methods``: ``{name: {"label": ..., "family": ..., "k": ...}}``.

**The report** (in ``RUN_DIR/report/``): ``summary.csv/json`` (mean, std and count over seeds of
every column per method and epoch), ``final.csv`` (each method at its last epoch and at its
best), ``time_saved.csv/json`` (see :func:`time_saved`, the headline against the baseline, and
the longest lead of every method), ``report.md`` (opening with one sentence: the headline's lead
over the better baseline at the levels where it exceeds the seed spread, or that there is none —
:mod:`lawa_benchmarks.lead` —, then the tables), and the plots ``curves.png``
(every metric per epoch, mean ± std), ``k_sensitivity.png`` (the paper's Figure 2) and
``time_saved.png`` (its Figure 1).

Example:
    >>> write_metrics("runs/x", rows, {"baseline": "base", "headline": "lawa_k6", "metric": "top1"})
    >>> info = write_report("runs/x")
    >>> print(info["text"])
"""

from __future__ import annotations

import csv
import io
import json
import math
from collections import defaultdict
from pathlib import Path
from typing import Any

import click

from .lead import lead_sentence, robust_lead

__all__ = ["SCHEMA", "format_duration", "load_metrics", "report", "summarize", "time_saved", "write_metrics",
           "write_report"]

SCHEMA = 1
KEYS = ("method", "seed", "epoch")


# ------------------------------------------------------------------------------ files
def _atomic_text(path: Path, text: str) -> None:
    from lawa_optim.io import atomic_write_bytes

    atomic_write_bytes(path, lambda f: f.write(text.encode()))


def _csv_text(rows: list[dict[str, Any]], columns: list[str] | None = None) -> str:
    if columns is None:
        columns = []
        for r in rows:
            columns.extend(c for c in r if c not in columns)
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=columns, extrasaction="ignore", lineterminator="\n")
    w.writeheader()
    for r in rows:
        w.writerow({c: "" if r.get(c) is None else r.get(c) for c in columns})
    return buf.getvalue()


def _finite(v: Any) -> Any:
    return None if isinstance(v, float) and not math.isfinite(v) else v


def write_metrics(run_dir: str | Path, rows: list[dict[str, Any]], meta: dict[str, Any]) -> None:
    """Write ``metrics.json`` and ``metrics.csv`` (atomically) in the schema of the module docstring."""
    run_dir = Path(run_dir)
    clean = [{k: _finite(v) for k, v in r.items()} for r in rows]
    _atomic_text(run_dir / "metrics.json", json.dumps({"schema": SCHEMA, "meta": meta, "rows": clean}, indent=1))
    _atomic_text(run_dir / "metrics.csv", _csv_text(clean))


def load_metrics(run_dir: str | Path) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """``(rows, meta)`` from ``metrics.json``, or from ``metrics.csv`` (meta then empty).

    Raises:
        FileNotFoundError: neither file exists (the message says what a run folder holds).
    """
    run_dir = Path(run_dir)
    if (run_dir / "metrics.json").is_file():
        doc = json.loads((run_dir / "metrics.json").read_text())
        return doc["rows"], doc.get("meta", {})
    if (run_dir / "metrics.csv").is_file():
        rows = []
        with open(run_dir / "metrics.csv", newline="") as f:
            for r in csv.DictReader(f):
                rows.append({k: _parse(v) for k, v in r.items()})
        return rows, {}
    raise FileNotFoundError(
        f"No metrics.json or metrics.csv in {str(run_dir)!r}: pass the folder a benchmark wrote with --out "
        "(e.g. `lawa bench resnet --config configs/quick.yaml --out runs/quick`, then `lawa report runs/quick`)"
    )


def _parse(v: str) -> Any:
    if v == "":
        return None
    for cast in (int, float):
        try:
            return cast(v)
        except ValueError:
            pass
    return v


# ------------------------------------------------------------------------------ numbers
def summarize(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Mean, sample std (0 for one seed) and count over seeds per (method, epoch), numeric columns.

    Returns rows ``{"method", "epoch", "n_seeds", "<col>_mean", "<col>_std", ...}`` sorted by
    method (first appearance) and epoch.
    """
    groups: dict[tuple[str, int], list[dict[str, Any]]] = defaultdict(list)
    order: list[str] = []
    for r in rows:
        if r["method"] not in order:
            order.append(r["method"])
        groups[(r["method"], int(r["epoch"]))].append(r)
    out = []
    for (method, epoch), rs in sorted(groups.items(), key=lambda kv: (order.index(kv[0][0]), kv[0][1])):
        s: dict[str, Any] = {"method": method, "epoch": epoch, "n_seeds": len({r.get("seed") for r in rs})}
        cols = [c for c in rs[0] if c not in KEYS and c != "run"]
        for c in cols:
            vals = [float(r[c]) for r in rs if isinstance(r.get(c), (int, float)) and not isinstance(r.get(c), bool)]
            vals = [v for v in vals if math.isfinite(v)]
            if not vals:
                continue
            mean = sum(vals) / len(vals)
            std = math.sqrt(sum((v - mean) ** 2 for v in vals) / (len(vals) - 1)) if len(vals) > 1 else 0.0
            s[f"{c}_mean"], s[f"{c}_std"] = mean, std
        out.append(s)
    return out


def _curve(summary: list[dict[str, Any]], method: str, col: str) -> tuple[list[int], list[float], list[float]]:
    pts = [(s["epoch"], s[f"{col}_mean"], s[f"{col}_std"]) for s in summary
           if s["method"] == method and f"{col}_mean" in s]
    return [p[0] for p in pts], [p[1] for p in pts], [p[2] for p in pts]


def time_saved(
    base_epochs: list[int],
    base_values: list[float],
    method_epochs: list[int],
    method_values: list[float],
    *,
    base_times: list[float] | None = None,
    method_times: list[float] | None = None,
    higher_is_better: bool = True,
    levels: list[float] | None = None,
) -> list[dict[str, Any]]:
    """For each level, the first epoch the method reaches it against the first epoch the baseline does.

    Args:
        base_epochs, base_values: the baseline's curve (e.g. mean top-1 per epoch).
        method_epochs, method_values: the method's curve.
        base_times, method_times (list of float, optional): wall-clock seconds spent up to each
            epoch of each curve (for the method, its training plus its own averaging time);
            gives ``hours_saved``.
        higher_is_better (bool, optional): False for losses and perplexities (default: True).
        levels (list of float, optional): the levels to compare at (default: each value the
            method's curve reaches as a new best, i.e. every level it attains first at some epoch).

    Returns:
        one dict per level, ``level``, ``method_epoch``, ``base_epoch`` (None: never reached),
        ``epochs_saved`` (``base_epoch - method_epoch``; None when the baseline never reaches it),
        ``method_time_s``, ``base_time_s``, ``hours_saved`` (None without times).

    Example:
        >>> time_saved([1, 2, 3, 4], [50, 60, 70, 80], [1, 2, 3, 4], [55, 70, 80, 85])
        [{'level': 55, 'method_epoch': 1, 'base_epoch': 2, 'epochs_saved': 1, ...}, ...]
    """
    if len(base_epochs) != len(base_values) or len(method_epochs) != len(method_values):
        raise ValueError("Invalid curves: each epochs list must be as long as its values list")
    sign = 1.0 if higher_is_better else -1.0

    def first(epochs: list[int], values: list[float], level: float) -> int | None:
        for i, v in enumerate(values):
            if sign * v >= sign * level - 1e-12:
                return i
        return None

    if levels is None:
        levels, best = [], -math.inf
        for v in method_values:
            if sign * v > best:
                best = sign * v
                levels.append(v)
    rows = []
    for level in levels:
        im, ib = first(method_epochs, method_values, level), first(base_epochs, base_values, level)
        if im is None:
            continue
        row: dict[str, Any] = {"level": level, "method_epoch": method_epochs[im],
                               "base_epoch": None if ib is None else base_epochs[ib],
                               "epochs_saved": None if ib is None else base_epochs[ib] - method_epochs[im],
                               "method_time_s": None, "base_time_s": None, "hours_saved": None}
        if method_times is not None:
            row["method_time_s"] = method_times[im]
        if base_times is not None and ib is not None:
            row["base_time_s"] = base_times[ib]
        if row["method_time_s"] is not None and row["base_time_s"] is not None:
            row["hours_saved"] = (row["base_time_s"] - row["method_time_s"]) / 3600
        rows.append(row)
    return rows


def longest_lead(rows: list[dict[str, Any]]) -> dict[str, Any] | None:
    """The row of :func:`time_saved` with the most epochs saved (the paper's Figure 1 figure)."""
    reached = [r for r in rows if r["epochs_saved"] is not None]
    if not reached:
        return None
    return max(reached, key=lambda r: (r["epochs_saved"], r["hours_saved"] or 0.0))


def _times(summary: list[dict[str, Any]], method: str, epochs: list[int], own_cost: bool) -> list[float] | None:
    by_epoch = {s["epoch"]: s for s in summary if s["method"] == method}
    if not epochs or "train_time_s_mean" not in by_epoch[epochs[0]]:
        return None
    out, extra = [], 0.0
    for e in epochs:
        s = by_epoch[e]
        if own_cost:
            extra += s.get("avg_time_s_mean", 0.0)
        out.append(s["train_time_s_mean"] + extra)
    return out


def _method_time_saved(summary, baseline, method, metric, hib):
    be, bv, _ = _curve(summary, baseline, metric)
    me, mv, _ = _curve(summary, method, metric)
    return time_saved(be, bv, me, mv, base_times=_times(summary, baseline, be, False),
                      method_times=_times(summary, method, me, True), higher_is_better=hib)


def _baselines(meta: dict[str, Any], methods: list[str], baseline: str) -> list[str]:
    """The baseline and, where the run has them, the raw weights with BatchNorm statistics recomputed as the
    averages get them (``base_bn``; the ResNet benchmark's ``lawa_k1``, the mean of one snapshot, is the same):
    a method's lead is measured against the better of them, so that what is credited to averaging is averaging."""
    if meta.get("baselines"):
        return [b for b in meta["baselines"] if b in methods] or [baseline]
    extra = [m for m in ("base_bn", "lawa_k1") if m in methods and meta.get("methods", {}).get(m, {}).get("bn")
             == "recompute"]
    return [baseline] + extra[:1] if baseline == "base" else [baseline]


# ------------------------------------------------------------------------------ text
def _fmt(v: Any, digits: int = 2) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.{digits}f}"
    return str(v)


def _md_table(header: list[str], rows: list[list[Any]]) -> str:
    cells = [header] + [[_fmt(c) for c in r] for r in rows]
    widths = [max(len(str(r[i])) for r in cells) for i in range(len(header))]
    line = lambda r: "| " + " | ".join(str(c).ljust(w) for c, w in zip(r, widths)) + " |"
    rule = "|" + "|".join("-" * (w + 2) for w in widths) + "|"
    return "\n".join([line(cells[0]), rule] + [line(r) for r in cells[1:]])


# ------------------------------------------------------------------------------ the report
def write_report(
    run_dir: str | Path,
    *,
    metric: str | None = None,
    baseline: str | None = None,
    headline: str | None = None,
    higher_is_better: bool | None = None,
    plots: bool = True,
) -> dict[str, Any]:
    """Write the report of a run folder into ``RUN_DIR/report/`` (see the module docstring).

    Args:
        run_dir (path): a folder holding ``metrics.json`` or ``metrics.csv``.
        metric, baseline, headline, higher_is_better (optional): override what ``meta`` says
            (defaults: ``top1``, ``base``, ``lawa_k6`` or the first LAWA method, True unless
            the metric is a loss or perplexity).
        plots (bool, optional): write the PNG plots (default: True).

    Returns:
        dict with ``summary``, ``final``, ``time_saved`` (headline rows), ``leads`` (longest
        lead per method), ``headline_lead``, ``text`` (the tables as Markdown) and ``files``.
    """
    rows, meta = load_metrics(run_dir)
    if not rows:
        raise ValueError(f"Invalid run folder {str(run_dir)!r}: its metrics hold no rows yet")
    methods = list(dict.fromkeys(r["method"] for r in rows))
    if metric is None:  # the run's own, else the first known metric its rows hold
        present = [m for m in ("top1", "val_ppl", "ppl", "val_loss") if any(r.get(m) is not None for r in rows)]
        metric = meta.get("metric") or (present[0] if present else "top1")
    if not any(r.get(metric) is not None for r in rows):
        cols = sorted({k for r in rows for k, v in r.items() if isinstance(v, (int, float)) and k not in KEYS})
        raise ValueError(f"Invalid metric {metric!r}: no row of {str(run_dir)!r} has it; its numeric columns are "
                         f"{cols} (pass one with --metric; the schema is in benchmarks/report.py)")
    hib = higher_is_better if higher_is_better is not None else meta.get(
        "higher_is_better", not any(w in metric for w in ("loss", "ppl")))
    baseline = baseline or meta.get("baseline") or ("base" if "base" in methods else methods[0])
    if baseline not in methods:
        raise ValueError(f"Invalid baseline {baseline!r}: the run has methods {methods}")
    headline = headline or meta.get("headline")
    if headline not in methods:
        headline = next((m for m in methods if m.startswith("lawa") and "bncopy" not in m), None)
    info = meta.get("methods", {})
    label = lambda m: info.get(m, {}).get("label", m)
    out = Path(run_dir) / "report"
    out.mkdir(parents=True, exist_ok=True)
    summary = summarize(rows)
    final = []
    sign = 1 if hib else -1
    for m in methods:
        e, v, sd = _curve(summary, m, metric)
        if not e:
            continue
        ib = max(range(len(v)), key=lambda i: sign * v[i])
        final.append({"method": m, "label": label(m), "epoch": e[-1], f"{metric}_mean": v[-1], f"{metric}_std": sd[-1],
                      "best_epoch": e[ib], f"best_{metric}_mean": v[ib], "n_seeds": max(
                          s["n_seeds"] for s in summary if s["method"] == m)})
    leads = []
    for m in methods:
        if m == baseline:
            continue
        lead = longest_lead(_method_time_saved(summary, baseline, m, metric, hib))
        leads.append({"method": m, "label": label(m), **(lead or {"level": None, "method_epoch": None,
                      "base_epoch": None, "epochs_saved": None, "hours_saved": None})})
    baselines = _baselines(meta, methods, baseline)
    robust = {}  # the spread-aware lead of every method against the better baseline (benchmarks/lead.py)
    for m in methods:
        if m not in baselines:
            robust[m] = robust_lead(rows, baselines, m, metric, hib, meta.get("steps_per_epoch"))
    for lv in leads:
        r = robust.get(lv["method"])
        lv["robust"] = None if r is None else {k: r[k] for k in ("n_seeds", "median_saved", "max_saved", "largest")} \
            | {"levels": len(r["levels"]), "significant": len(r["significant"])}
    base_names = " / ".join(label(b) if b != "lawa_k1" else f"{label(baseline)} with BN recomputed (LAWA k=1)"
                            for b in baselines)
    base_text = f"the better of {base_names}" if len(baselines) > 1 else base_names
    head_robust = robust.get(headline) if headline else None
    sentence = lead_sentence(head_robust, label(headline), base_text) if head_robust is not None else None
    headline_rows = _method_time_saved(summary, baseline, headline, metric, hib) if headline else []
    headline_lead = longest_lead(headline_rows)
    per_seed = []  # the headline's longest lead in each seed alone: its spread
    for seed in sorted({r.get("seed") for r in rows}, key=str):
        if headline is None or seed is None:
            break
        one = summarize([r for r in rows if r.get("seed") == seed])
        lead = longest_lead(_method_time_saved(one, baseline, headline, metric, hib))
        per_seed.append({"seed": seed, **(lead or {"level": None, "method_epoch": None, "base_epoch": None,
                                                   "epochs_saved": None, "hours_saved": None})})

    files = {}
    for name, text in (("summary.csv", _csv_text(summary)), ("final.csv", _csv_text(final)),
                       ("time_saved.csv", _csv_text(headline_rows, ["level", "method_epoch", "base_epoch",
                        "epochs_saved", "method_time_s", "base_time_s", "hours_saved"]))):
        _atomic_text(out / name, text)
        files[name] = str(out / name)
    doc = {"metric": metric, "higher_is_better": hib, "baseline": baseline, "headline": headline,
           "baselines": baselines, "sentence": sentence, "robust_lead": head_robust,
           "headline_lead_per_seed": per_seed,
           "headline_lead": headline_lead, "time_saved": headline_rows, "leads": leads, "final": final}
    _atomic_text(out / "time_saved.json", json.dumps(doc, indent=1))
    _atomic_text(out / "summary.json", json.dumps({"meta": meta, "summary": summary}, indent=1))
    files["time_saved.json"], files["summary.json"] = str(out / "time_saved.json"), str(out / "summary.json")

    text = _report_text(metric, baseline, headline, label, final, leads, headline_rows, headline_lead, per_seed,
                        sentence, base_text, plots and headline is not None)
    _atomic_text(out / "report.md", text + "\n")
    files["report.md"] = str(out / "report.md")
    if plots:
        from .report_plots import plot_curves, plot_k_sensitivity, plot_time_saved

        files["curves.png"] = plot_curves(out / "curves.png", summary, methods, baseline, headline, info)
        k_png = plot_k_sensitivity(out / "k_sensitivity.png", summary, methods, baseline, metric, info)
        if k_png:
            files["k_sensitivity.png"] = k_png
        if headline:
            files["time_saved.png"] = plot_time_saved(out / "time_saved.png", summary, baseline, headline, metric,
                                                      headline_rows, headline_lead, info, robust=head_robust,
                                                      base_text=base_text)
    return {"summary": summary, "final": final, "time_saved": headline_rows, "leads": leads, "per_seed": per_seed,
            "sentence": sentence, "robust_lead": head_robust, "baselines": baselines,
            "headline_lead": headline_lead, "text": text, "files": files, "metric": metric,
            "baseline": baseline, "headline": headline}


def format_duration(hours: float | None) -> str:
    """``"-"`` for None, else seconds, minutes or hours; under half a second is ``"0 s"`` (never ``"-0 s"``)."""
    if hours is None:
        return "-"
    sec = hours * 3600
    if abs(sec) < 0.5:
        return "0 s"
    if abs(sec) < 120:
        return f"{sec:.0f} s"
    if abs(sec) < 7200:
        return f"{sec / 60:.1f} min"
    return f"{hours:.1f} h"


def _robust_cell(r: dict[str, Any] | None) -> str:
    if not r or not r["levels"]:
        return "-"
    if r["n_seeds"] < 2:
        return "one seed: no spread"
    if not r["significant"]:
        return f"none of {r['levels']} levels"
    mx = r["max_saved"]
    return (f"{r['significant']} of {r['levels']} levels; median {r['median_saved']:.1f}, at most "
            f"{mx['mean']:.1f} ± {mx['std']:.1f} at {mx['level']:.4g}")


def _report_text(metric, baseline, headline, label, final, leads, headline_rows, lead, per_seed, sentence=None,
                 base_text=None, with_plot=False) -> str:
    base = label(baseline)
    base_text = base_text or base
    parts = [f"# Report ({metric}; baseline {base_text})", ""]
    if sentence:
        parts += [sentence, ""]
    if with_plot:
        parts += ["![time saved](time_saved.png)", ""]
    parts += ["## Last and best epoch (mean ± std over seeds)", ""]
    parts.append(_md_table(
        ["method", "epoch", metric, "± std", "best epoch", f"best {metric}", "seeds"],
        [[label(f["method"]), f["epoch"], f[f"{metric}_mean"], f[f"{metric}_std"], f["best_epoch"],
          f[f"best_{metric}_mean"], f["n_seeds"]] for f in final]))
    parts += ["", f"## Lead over {base_text} beyond the seed spread (epochs saved, each seed against its own "
              "baseline; a level counts where mean - std > 0)", ""]
    parts.append(_md_table(
        ["method", "levels with a lead beyond the spread: epochs saved", f"longest lead at one {metric} level "
         f"(mean curves, against {base}; fragile)", "time saved there"],
        [[lv["label"], _robust_cell(lv.get("robust")),
          "-" if lv["level"] is None else f"{_fmt(lv['epochs_saved'])} at {lv['level']:.4g}",
          format_duration(lv["hours_saved"])] for lv in leads]))
    if headline:
        head = label(headline)
        parts += ["", f"## Time saved: {head} against {base} (mean curves)", ""]
        parts.append(_md_table(
            [f"{metric} level", f"{head} epoch", f"{base} epoch", "epochs saved", "time saved"],
            [[r["level"], r["method_epoch"], r["base_epoch"] if r["base_epoch"] is not None else "never",
              r["epochs_saved"], format_duration(r["hours_saved"])] for r in headline_rows]))
        never = [r for r in headline_rows if r["base_epoch"] is None]
        parts.append("")
        if lead is not None and lead["epochs_saved"] > 0:
            parts.append(f"Longest lead at a single level both reach (the paper's Figure 1 figure; fragile where "
                         f"{base}'s curve is flat): {head} reaches {metric} {lead['level']:.2f} at epoch "
                         f"{lead['method_epoch']}, {base} at epoch {lead['base_epoch']}: "
                         f"{lead['epochs_saved']} epoch(s) saved, {format_duration(lead['hours_saved'])} of wall-clock "
                         "training (the method's own averaging time, avg_time_s, counted against it).")
        elif not never:
            parts.append(f"{base} reaches every level {head} reaches at the same epoch or earlier: no time saved.")
        elif lead is not None:
            parts.append(f"At every level both reach, {base} is there at the same epoch or earlier.")
        if never:
            last = next(f["epoch"] for f in final if f["method"] == baseline)  # the baseline's last epoch
            parts.append(f"{base} never reaches {metric} {never[0]['level']:.2f} in its {last} epochs; {head} does at "
                         f"epoch {never[0]['method_epoch']}: {head} is ahead there by at least "
                         f"{last + 1 - never[0]['method_epoch']} epoch(s), and at {len(never)} level(s) in all that "
                         f"{base} never reaches (\"never\" in the table).")
        if len(per_seed) > 1:
            parts.append("Longest lead in each seed alone: " + ", ".join(
                f"seed {p['seed']}: {_fmt(p['epochs_saved'])} epoch(s) at {_fmt(p['level'])}" for p in per_seed) + ".")
    return "\n".join(parts)


_EPILOG = "Example:\n\n\b\n  lawa report runs/quick\n  lawa report runs/repro --headline lawa_k10"


@click.command("report", epilog=_EPILOG)
@click.argument("run_dir", type=click.Path(file_okay=False, path_type=Path))
@click.option("--metric", default=None, help="The metric of the time-saved table (default: the run's, e.g. top1).")
@click.option("--baseline", default=None, help="The method measured against (default: base).")
@click.option("--headline", default=None, help="The method whose time saved is the headline (default: lawa_k6).")
@click.option("--no-plots", is_flag=True, help="Write the tables only.")
def report(run_dir: Path, metric: str | None, baseline: str | None, headline: str | None, no_plots: bool) -> None:
    """Write RUN_DIR/report/ (CSV, JSON, PNG plots) from a run's metrics and print its tables."""
    try:
        info = write_report(run_dir, metric=metric, baseline=baseline, headline=headline, plots=not no_plots)
    except (FileNotFoundError, ValueError) as err:
        raise click.ClickException(str(err)) from err
    click.echo(info["text"])
    click.echo("")
    for path in info["files"].values():
        click.echo(f"wrote {path}")
