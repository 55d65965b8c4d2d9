"""The words of a report: ``report.md`` from the numbers :mod:`lawa_benchmarks.report` computes.

One story per level, said once at the top: every lead is **per seed** (each seed's method
against the same seed's baseline, the better of the baselines at each epoch), then mean ± std
over seeds; the last-epoch values are means over seeds, each compared with the one baseline
named in its sentence or column. Metric values are written by
:func:`lawa_benchmarks.metrics.level_text` everywhere (sentences, tables, plot labels).
"""

from __future__ import annotations

from typing import Any

from .lead import list_levels
from .metrics import level_text, pm_text
from .report_setup import Setup

__all__ = ["diff_words", "final_sentence", "format_duration", "markdown", "md_table"]

_PERCENT = ("top1", "top5", "train_top1")


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


def _cell(v: Any) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return level_text(v)
    return str(v)


def md_table(header: list[str], rows: list[list[Any]]) -> str:
    """A Markdown table; floats written by :func:`~lawa_benchmarks.metrics.level_text`, None as ``-``."""
    cells = [header] + [[_cell(c) for c in r] for r in rows]
    widths = [max(len(str(r[i])) for r in cells) for i in range(len(header))]
    line = lambda r: "| " + " | ".join(str(c).ljust(w) for c, w in zip(r, widths)) + " |"
    rule = "|" + "|".join("-" * (w + 2) for w in widths) + "|"
    return "\n".join([line(cells[0]), rule] + [line(r) for r in cells[1:]])


def diff_words(diff: float, metric: str) -> str:
    """The sign of a difference in words: ``"0.8 points below"``, ``"0.012 above"``, ``"level with"``."""
    if abs(diff) < 5e-4:
        return "level with"
    size = f"{abs(diff):.2g}"
    unit = (" point" if size == "1" else " points") if metric in _PERCENT else ""
    return f"{size}{unit} {'above' if diff > 0 else 'below'}"


def final_sentence(setup: Setup, final: list[dict[str, Any]]) -> str | None:
    """The headline's last value side by side with each baseline's, the sign of each difference in words.

    Example: ``"At the last epoch (12, mean ± std over 2 seeds) LAWA k=6 ends at top1 81.75 ± 0.92: 0.8 points
    below SGD (82.55 ± 0.49) and 0.2 points below LAWA k=1 (81.95 ± 0.78)."``
    """
    by = {f["method"]: f for f in final}
    head = by.get(setup.headline)
    others = [by[b] for b in setup.baselines if b in by and b != setup.headline]
    if head is None or not others:
        return None
    m = setup.metric
    value = lambda f: pm_text(f[f"{m}_mean"], f[f"{m}_std"])
    parts = [f"{diff_words(head[f'{m}_mean'] - f[f'{m}_mean'], m)} {f['label']} ({value(f)})" for f in others]
    seeds = f"{head['n_seeds']} seed{'s' if head['n_seeds'] != 1 else ''}"
    return (f"At the last epoch ({head['epoch']}, mean ± std over {seeds}) {head['label']} ends at {m} "
            f"{value(head)}: {' and '.join(parts)}{'' if setup.higher_is_better else ' (lower is better)'}.")


def _seeds(values: list[Any]) -> str:
    return " / ".join("never" if v is None else str(v) for v in values)


def _saved_cell(lv: dict[str, Any]) -> str:
    return " / ".join(f"≥{s}" if b is None else str(s) for s, b in zip(lv["saved"], lv["base_epochs"]))


def _mean_cell(lv: dict[str, Any]) -> str:
    return f"{'≥' if lv['censored'] else ''}{lv['mean']:.1f} ± {lv['std']:.1f}"


def _lead_cell(r: dict[str, Any] | None) -> list[str]:
    """The leads table's cells of one method: its levels beyond the spread, and the largest lead there."""
    if not r or not r["levels"]:
        return ["no level reached in every seed", "-", "-"]
    if r["n_seeds"] < 2:
        return [f"one seed: no spread ({len(r['levels'])} levels)", "-", "-"]
    if not r["significant"]:
        return [f"none of {len(r['levels'])}", "-", "-"]
    mx = r["max_saved"]
    return [f"{len(r['significant'])} of {len(r['levels'])}: {list_levels(r['significant'])}",
            f"{_mean_cell(mx)} at {level_text(mx['level'])}",
            format_duration(None if mx.get("seconds_saved") is None else mx["seconds_saved"] / 3600)]


def _final_table(setup: Setup, final: list[dict[str, Any]]) -> str:
    m, base = setup.metric, setup.label(setup.baseline)
    return md_table(
        ["method", "epoch", f"{m} (mean ± std)", f"against {base} at the last epoch", "best epoch", f"best {m}",
         "seeds"],
        [[f["label"], f["epoch"], pm_text(f[f"{m}_mean"], f[f"{m}_std"]),
          "-" if f["method"] == setup.baseline else diff_words(f[f"{m}_minus_baseline"], m), f["best_epoch"],
          f[f"best_{m}_mean"], f["n_seeds"]] for f in final])


def _time_saved_table(setup: Setup, lead: dict[str, Any]) -> list[str]:
    head = setup.label(setup.headline)
    seeds = " / ".join(str(s) for s in (lead["levels"][0]["seeds"] if lead["levels"] else []))
    table = md_table(
        [f"{setup.metric} level", f"{head} first there (epoch; seed {seeds})", "baseline first there",
         "epochs saved", "mean ± std", "beyond the spread", "time saved (mean)"],
        [[level_text(lv["level"]), _seeds(lv["method_epochs"]), _seeds(lv["base_epochs"]), _saved_cell(lv),
          _mean_cell(lv), "yes" if lv["significant"] else "no",
          format_duration(None if lv.get("seconds_saved") is None else lv["seconds_saved"] / 3600)]
         for lv in lead["levels"]])
    notes = [f"A level is each new best of {head}'s mean curve; \"never\": that seed's baseline does not get there "
             f"in its {lead['last_epoch']} epochs, and its lead is counted as if it did at epoch "
             f"{lead['last_epoch'] + 1} (≥, a lower bound)."]
    return [table, "", " ".join(notes)]


def markdown(setup: Setup, final: list[dict[str, Any]], robust: dict[str, dict[str, Any]],
             sentence: str | None, ending: str | None, with_plot: bool = False) -> str:
    """``report.md``: the headline's sentences, then the tables (last epoch, leads of every method, per level)."""
    m = setup.metric
    parts = [f"# Report ({m}; baseline {setup.base_text})", ""]
    parts += [s for s in (sentence, ending) if s]
    parts += ["", f"How to read it: every lead below is per seed (each seed's method against the same seed's "
              f"baseline, {setup.base_text} at each epoch), then mean ± std over the seeds; a lead counts as beyond "
              "the seed spread where mean - std > 0. Values at the last epoch are means ± std over seeds.", ""]
    if with_plot:
        parts += ["![time saved](time_saved.png)", ""]
    parts += ["## Last and best epoch", "", _final_table(setup, final)]
    others = [x for x in setup.methods if x in robust]
    parts += ["", f"## Lead over {setup.base_text} beyond the seed spread (epochs saved, per seed)", ""]
    parts.append(md_table(["method", f"{m} levels with a lead beyond the spread", "largest lead there (epochs)",
                           "time saved there (mean)"],
                          [[setup.label(x), *_lead_cell(robust[x])] for x in others]))
    lead = robust.get(setup.headline) if setup.headline else None
    if lead is not None and lead["levels"]:
        parts += ["", f"## Time saved: {setup.label(setup.headline)} against {setup.base_text} (per seed)", ""]
        parts += _time_saved_table(setup, lead)
    return "\n".join(parts)

