"""Reports of benchmark runs: what a person reads after ``make demo`` (``lawa report RUN_DIR`` writes it again).

Shared by every runner (``lawa bench resnet``, ``lawa bench roberta``). A runner writes its
metrics with :func:`write_metrics` (the schema: :mod:`lawa_benchmarks.metrics`);
:func:`write_report` turns them into files a person can read, in four steps, each a function:
the settings (:func:`lawa_benchmarks.report_setup.settings`: metric, baseline(s), headline), the
numbers (:func:`report_numbers`), the tables (:func:`write_tables`) and the plots
(:func:`write_plots`).

**One story per level.** Every lead is measured per seed (:func:`lawa_benchmarks.lead.robust_lead`):
each seed's method against the same seed's baseline, the better of the baselines at each epoch
(SGD, and SGD's weights with BatchNorm statistics recomputed, i.e. LAWA k=1, where the run has
it), then mean ± std over seeds. The sentence, the tables, ``time_saved.csv`` and the time-saved
plot all show that one measurement.

**The report** (in ``RUN_DIR/report/``): ``summary.csv/json`` (mean, std and count over seeds of
every column per method and epoch), ``final.csv`` (each method at its last epoch, its difference
to the baseline there, and at its best), ``time_saved.csv/json`` (the headline's lead at every
level, one CSV row per level and seed; the JSON also holds every method's lead), ``report.md``
(opening with the headline's lead beyond the seed spread and its last value beside the
baselines', then the tables), and the plots ``curves.png`` (every metric per epoch, mean ± std),
``k_sensitivity.png`` (the paper's Figure 2) and ``time_saved.png`` (its Figure 1, per seed).

Example:
    >>> write_metrics("runs/x", rows, {"baseline": "base", "headline": "lawa_k6", "metric": "top1"})
    >>> info = write_report("runs/x")
    >>> print(info["text"])
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import click

from .lead import lead_sentence, robust_lead
from .metrics import atomic_text, csv_text, curve, load_metrics, summarize, write_metrics
from .report_setup import Setup, settings
from .report_text import final_sentence, format_duration, markdown

__all__ = ["format_duration", "load_metrics", "report", "report_numbers", "summarize", "time_saved_rows",
           "write_metrics", "write_plots", "write_report", "write_tables"]


# ------------------------------------------------------------------------------ numbers
def _final(summary: list[dict[str, Any]], setup: Setup) -> list[dict[str, Any]]:
    """Each method at its last epoch (and its difference to the baseline's last value) and at its best."""
    m, sign = setup.metric, 1 if setup.higher_is_better else -1
    base_last = curve(summary, setup.baseline, m)[1][-1]
    out = []
    for method in setup.methods:
        e, v, sd = curve(summary, method, m)
        if not e:
            continue
        ib = max(range(len(v)), key=lambda i: sign * v[i])
        out.append({"method": method, "label": setup.label(method), "epoch": e[-1], f"{m}_mean": v[-1],
                    f"{m}_std": sd[-1], f"{m}_minus_baseline": v[-1] - base_last, "best_epoch": e[ib],
                    f"best_{m}_mean": v[ib],
                    "n_seeds": max(s["n_seeds"] for s in summary if s["method"] == method)})
    return out


def report_numbers(rows: list[dict[str, Any]], setup: Setup) -> dict[str, Any]:
    """Everything the report states: ``summary``, ``final``, ``robust`` (every non-baseline method's lead over
    ``setup.baselines``, per seed), ``robust_lead`` (the headline's), its ``sentence`` and ``final_sentence``."""
    summary = summarize(rows)
    final = _final(summary, setup)
    robust = {m: robust_lead(rows, setup.baselines, m, setup.metric, setup.higher_is_better,
                             setup.meta.get("steps_per_epoch"))
              for m in setup.methods if m not in setup.baselines}
    head = robust.get(setup.headline) if setup.headline else None
    return {"summary": summary, "final": final, "robust": robust, "robust_lead": head,
            "sentence": None if head is None else lead_sentence(head, setup.label(setup.headline), setup.base_text),
            "final_sentence": final_sentence(setup, final)}


def time_saved_rows(lead: dict[str, Any] | None) -> list[dict[str, Any]]:
    """The headline's lead as a long table: one row per (level, seed), with the level's mean, std and verdict."""
    out = []
    for lv in (lead or {}).get("levels", []):
        for seed, me, be, saved in zip(lv["seeds"], lv["method_epochs"], lv["base_epochs"], lv["saved"]):
            out.append({"level": lv["level"], "seed": seed, "method_epoch": me, "base_epoch": be,
                        "epochs_saved": saved, "lower_bound": be is None, "mean_saved": lv["mean"],
                        "std_saved": lv["std"], "beyond_spread": lv["significant"],
                        "seconds_saved_mean": lv.get("seconds_saved")})
    return out


# ------------------------------------------------------------------------------ files
def write_tables(out: Path, setup: Setup, numbers: dict[str, Any], text: str) -> dict[str, str]:
    """``summary``, ``final``, ``time_saved`` (CSV and JSON) and ``report.md`` into ``out``; their paths by name."""
    head = numbers["robust_lead"]
    leads = {m: {k: r[k] for k in ("n_seeds", "median_saved", "max_saved", "largest")}
             | {"levels": len(r["levels"]), "significant": [lv["level"] for lv in r["significant"]]}
             for m, r in numbers["robust"].items()}
    saved = time_saved_rows(head)
    doc = {"metric": setup.metric, "higher_is_better": setup.higher_is_better, "baseline": setup.baseline,
           "baselines": setup.baselines, "headline": setup.headline, "sentence": numbers["sentence"],
           "final_sentence": numbers["final_sentence"], "robust_lead": head, "time_saved": saved, "leads": leads,
           "final": numbers["final"]}
    texts = {"summary.csv": csv_text(numbers["summary"]), "final.csv": csv_text(numbers["final"]),
             "time_saved.csv": csv_text(saved, ["level", "seed", "method_epoch", "base_epoch", "epochs_saved",
                                               "lower_bound", "mean_saved", "std_saved", "beyond_spread",
                                               "seconds_saved_mean"]),
             "time_saved.json": json.dumps(doc, indent=1),
             "summary.json": json.dumps({"meta": setup.meta, "summary": numbers["summary"]}, indent=1),
             "report.md": text + "\n"}
    for name, body in texts.items():
        atomic_text(out / name, body)
    return {name: str(out / name) for name in texts}


def write_plots(out: Path, rows: list[dict[str, Any]], setup: Setup, numbers: dict[str, Any]) -> dict[str, str]:
    """``curves.png``, ``k_sensitivity.png`` (two LAWA ks or more) and ``time_saved.png`` (with a headline)."""
    from .report_plots import method_styles, plot_curves, plot_k_sensitivity, plot_time_saved

    styles = method_styles(setup)  # one colour per method, the same in every plot
    summary = numbers["summary"]
    files = {"curves.png": plot_curves(out / "curves.png", summary, setup, styles)}
    k_png = plot_k_sensitivity(out / "k_sensitivity.png", summary, setup, styles)
    if k_png:
        files["k_sensitivity.png"] = k_png
    if setup.headline:
        files["time_saved.png"] = plot_time_saved(out / "time_saved.png", rows, summary, setup, styles,
                                                  numbers["robust_lead"])
    return files


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
            (defaults: :func:`lawa_benchmarks.report_setup.settings`).
        plots (bool, optional): write the PNG plots (default: True).

    Returns:
        dict with ``summary``, ``final``, ``robust_lead`` (the headline's lead, per seed),
        ``leads`` (every method's), ``time_saved`` (the headline's, one row per level and seed),
        ``sentence`` and ``final_sentence`` (the report's opening), ``text`` (the Markdown),
        ``files``, and the settings ``metric``, ``baseline``, ``baselines``, ``headline``.
    """
    rows, meta = load_metrics(run_dir)
    setup = settings(run_dir, rows, meta, metric=metric, baseline=baseline, headline=headline,
                     higher_is_better=higher_is_better)
    numbers = report_numbers(rows, setup)
    text = markdown(setup, numbers["final"], numbers["robust"], numbers["sentence"], numbers["final_sentence"],
                    with_plot=plots and setup.headline is not None)
    out = Path(run_dir) / "report"
    out.mkdir(parents=True, exist_ok=True)
    files = write_tables(out, setup, numbers, text)
    if plots:
        files |= write_plots(out, rows, setup, numbers)
    return {"summary": numbers["summary"], "final": numbers["final"], "robust_lead": numbers["robust_lead"],
            "leads": numbers["robust"], "time_saved": time_saved_rows(numbers["robust_lead"]),
            "sentence": numbers["sentence"], "final_sentence": numbers["final_sentence"], "text": text,
            "files": files, "metric": setup.metric, "baseline": setup.baseline, "baselines": setup.baselines,
            "headline": setup.headline}


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
