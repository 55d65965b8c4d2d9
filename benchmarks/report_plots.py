"""The PNG plots of :mod:`lawa_benchmarks.report`, in the style of the paper's figures (matplotlib, Agg).

- :func:`plot_curves`: every metric per epoch for every method, mean line and ± std band
  (Figures 1, 3, 5, 6).
- :func:`plot_k_sensitivity`: LAWA for each k against the baseline, per epoch and against k at
  a few epochs (Figure 2).
- :func:`plot_time_saved`: the headline method against the baseline with the longest lead
  marked, and the epochs saved at every level (Figure 1).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .report import _curve

__all__ = ["family_color", "plot_curves", "plot_k_sensitivity", "plot_time_saved"]

_PANELS = ("top1", "val_loss", "train_loss", "top5", "val_ppl", "ppl", "train_top1")
_TITLES = {"top1": "validation top-1 (%)", "top5": "validation top-5 (%)", "val_loss": "validation loss",
           "train_loss": "training loss", "ppl": "validation perplexity", "val_ppl": "validation perplexity",
           "train_top1": "training top-1 (%)"}
_DPI = 90


def _plt():
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def family_color(family: str) -> str:
    """A method family's colour: black for the bare optimizer, else a Tableau colour by its place in the zoo's
    registry (LAWA blue, EXP orange, ...), grey for a family the registry does not know."""
    from matplotlib.colors import TABLEAU_COLORS

    from lawa_optim import list_methods

    zoo = [m for m in list_methods() if m != "base"]
    if family == "base":
        return "black"
    if family not in zoo:
        return "tab:gray"
    colors = [c for c in TABLEAU_COLORS if c != "tab:gray"]
    return colors[zoo.index(family) % len(colors)]


def _family(method: str, info: dict[str, Any]) -> str:
    return info.get(method, {}).get("family") or method.split("_")[0]


def _style(method: str, info: dict[str, Any], baseline: str) -> dict[str, Any]:
    if method == baseline:
        return {"color": "black", "lw": 2.0}
    style = {"color": family_color(_family(method, info)), "lw": 1.6}
    if "bncopy" in method:
        style.update(ls="--", lw=1.2)
    return style


def _label(method: str, info: dict[str, Any]) -> str:
    return info.get(method, {}).get("label", method)


def _epochs_axis(ax) -> None:
    from matplotlib.ticker import MaxNLocator

    ax.set_xlabel("epoch")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))


def _band(ax, summary, method, col, info, baseline, **extra):
    e, m, s = _curve(summary, method, col)
    if not e:
        return
    style = {**_style(method, info, baseline), **extra}
    ax.plot(e, m, label=_label(method, info), marker="o", ms=2.5, **style)
    if any(s):
        ax.fill_between(e, [a - b for a, b in zip(m, s)], [a + b for a, b in zip(m, s)], alpha=0.15,
                        color=style.get("color"))


def plot_curves(path: Path, summary: list[dict[str, Any]], methods: list[str], baseline: str, headline: str | None,
                info: dict[str, Any]) -> str:
    """One panel per metric present; LAWA shows only the headline k and copied-BN variants."""
    plt = _plt()
    panels = [c for c in _PANELS if any(f"{c}_mean" in s for s in summary)][:4]
    shown = [m for m in methods if _family(m, info) != "lawa" or m == headline or "bncopy" in m]
    ncols = 2 if len(panels) > 1 else 1
    nrows = (len(panels) + 1) // 2
    fig, axes = plt.subplots(nrows, ncols, figsize=(6.2 * ncols, 4.2 * nrows), squeeze=False)
    for ax, col in zip(axes.flat, panels):
        for m in shown:
            _band(ax, summary, m, col, info, baseline)
        _epochs_axis(ax)
        ax.set_title(_TITLES.get(col, col))
        ax.grid(alpha=0.3)
        if "loss" in col or "ppl" in col:
            ax.set_yscale("log")
        else:
            _zoom(ax, summary, shown, col)
    for ax in list(axes.flat)[len(panels):]:
        ax.axis("off")
    handles, labels = axes.flat[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=min(len(labels), 5), fontsize=9, frameon=False)
    n = max((s["n_seeds"] for s in summary), default=1)
    fig.suptitle(f"every method per epoch (mean ± std over {n} seed{'s' if n > 1 else ''})")
    fig.tight_layout(rect=(0, 0.07 if len(labels) > 5 else 0.04, 1, 1))
    fig.savefig(path, dpi=_DPI)
    plt.close(fig)
    return str(path)


def _zoom(ax, summary, methods, col):
    """Accuracy axes: start at the 10th percentile so the middle phase is readable."""
    vals = sorted(v for m in methods for v in _curve(summary, m, col)[1])
    if len(vals) > 4:
        lo = vals[len(vals) // 10]
        ax.set_ylim(lo - 0.5, vals[-1] + 0.5)


def plot_k_sensitivity(path: Path, summary: list[dict[str, Any]], methods: list[str], baseline: str, metric: str,
                       info: dict[str, Any]) -> str | None:
    """LAWA for every k (BN recomputed) per epoch, and the metric against k at four epochs."""
    ks = sorted((info.get(m, {}).get("k") or int(m.split("_k")[1]), m) for m in methods
                if _family(m, info) == "lawa" and "bncopy" not in m and "_k" in m)
    if len(ks) < 2:
        return None
    plt = _plt()
    cmap = plt.get_cmap("viridis")
    fig, (a, b) = plt.subplots(1, 2, figsize=(12.4, 4.4))
    _band(a, summary, baseline, metric, info, baseline)
    for i, (_k, m) in enumerate(ks):
        _band(a, summary, m, metric, info, baseline, color=cmap(0.85 * i / max(len(ks) - 1, 1)))
    _epochs_axis(a)
    a.set_title(f"LAWA for each k: {_TITLES.get(metric, metric)}")
    a.grid(alpha=0.3)
    a.legend(fontsize=8)
    if "loss" not in metric and "ppl" not in metric:
        _zoom(a, summary, [baseline] + [m for _, m in ks], metric)
    epochs = sorted({s["epoch"] for s in summary if s["method"] == ks[0][1]})
    picks = sorted({epochs[min(len(epochs) - 1, max(0, round(f * len(epochs)) - 1))] for f in (0.25, 0.5, 0.75, 1.0)})
    for j, ep in enumerate(picks):
        xs, ys, es = [], [], []
        for k, m in ks:
            row = next((s for s in summary if s["method"] == m and s["epoch"] == ep and f"{metric}_mean" in s), None)
            if row:
                xs.append(k)
                ys.append(row[f"{metric}_mean"])
                es.append(row[f"{metric}_std"])
        base = next((s for s in summary if s["method"] == baseline and s["epoch"] == ep), None)
        color = plt.get_cmap("plasma")(j / max(len(picks), 1))
        b.errorbar(xs, ys, yerr=es, marker="o", capsize=3, color=color, label=f"epoch {ep}")
        if base and f"{metric}_mean" in base:
            b.axhline(base[f"{metric}_mean"], color=color, ls=":", lw=1)
    b.set_xticks([k for k, _ in ks])
    b.set_xlabel("k (snapshots averaged)")
    b.set_title(f"{_TITLES.get(metric, metric)} against k (dotted: {_label(baseline, info)})")
    b.grid(alpha=0.3)
    b.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=_DPI)
    plt.close(fig)
    return str(path)


def plot_time_saved(path: Path, summary: list[dict[str, Any]], baseline: str, headline: str, metric: str,
                    rows: list[dict[str, Any]], lead: dict[str, Any] | None, info: dict[str, Any],
                    robust: dict[str, Any] | None = None, base_text: str | None = None) -> str:
    """The headline against the baseline(s), and the epochs saved per level.

    With ``robust`` (:func:`lawa_benchmarks.lead.robust_lead`, two seeds or more): the largest lead
    beyond the seed spread is drawn as an arrow, and the right panel shows each level's epochs saved,
    mean ± std over seeds, blue where the lead exceeds the spread, grey where it does not. Else: the
    longest lead of the mean curves, and its epochs saved per level.
    """
    from .report import format_duration

    plt = _plt()
    fig, (a, b) = plt.subplots(1, 2, figsize=(12.4, 4.4))
    for m in dict.fromkeys([baseline] + list((robust or {}).get("baseline", []))):
        _band(a, summary, m, metric, info, baseline, **({"ls": "--", "color": "dimgray"} if m != baseline else {}))
    _band(a, summary, headline, metric, info, baseline)
    spread = robust is not None and robust["n_seeds"] > 1 and robust["levels"]
    if spread and robust["max_saved"] is not None:
        mx = robust["max_saved"]
        x = next((e for e, v in zip(*_curve(summary, headline, metric)[:2])
                  if (v >= mx["level"] - 1e-12 if robust["higher_is_better"] else v <= mx["level"] + 1e-12)), None)
        if x is not None:
            a.annotate("", xy=(x + mx["mean"], mx["level"]), xytext=(x, mx["level"]),
                       arrowprops={"arrowstyle": "<->", "color": "tab:red", "lw": 1.5})
            a.annotate(f"{mx['mean']:.1f} ± {mx['std']:.1f} epochs", xy=(x + mx["mean"] / 2, mx["level"]),
                       xytext=(0, 6), textcoords="offset points", color="tab:red", ha="center", va="bottom",
                       fontsize=9)
    elif not spread and lead is not None and lead["epochs_saved"] > 0:
        a.annotate("", xy=(lead["base_epoch"], lead["level"]), xytext=(lead["method_epoch"], lead["level"]),
                   arrowprops={"arrowstyle": "<->", "color": "tab:red", "lw": 1.5})
        hours = lead["hours_saved"]
        text = f"~{lead['epochs_saved']} epoch{'s' if lead['epochs_saved'] != 1 else ''}"
        if hours is not None:
            text += f"\n~{format_duration(hours)}"
        a.annotate(text, xy=((lead["base_epoch"] + lead["method_epoch"]) / 2, lead["level"]), xytext=(0, 6),
                   textcoords="offset points", color="tab:red", ha="center", va="bottom", fontsize=9)
    _epochs_axis(a)
    a.set_title(f"{_label(headline, info)} against {_label(baseline, info)}")
    a.grid(alpha=0.3)
    a.legend(fontsize=8)
    if "loss" not in metric and "ppl" not in metric:
        _zoom(a, summary, [baseline, headline], metric)
        lo, hi = a.get_ylim()
        a.set_ylim(lo, hi + 0.08 * (hi - lo))  # room for the annotation
    if spread:
        lv = robust["levels"]
        b.bar(range(len(lv)), [x["mean"] for x in lv], yerr=[x["std"] for x in lv], capsize=2,
              color=["tab:blue" if x["significant"] else "lightgray" for x in lv])
        b.set_xticks(range(len(lv)))
        b.set_xticklabels([f"{x['level']:.3g}" for x in lv], rotation=60, fontsize=7)
        b.set_title(f"epochs saved against {base_text or _label(baseline, info)}\nmean ± std over "
                    f"{robust['n_seeds']} seeds (blue: beyond the seed spread)", fontsize=9)
    else:
        reached = [r for r in rows if r["epochs_saved"] is not None]
        b.bar(range(len(reached)), [r["epochs_saved"] for r in reached], color="tab:blue")
        b.set_xticks(range(len(reached)))
        b.set_xticklabels([f"{r['level']:.1f}" for r in reached], rotation=60, fontsize=7)
        b.set_title(f"epochs {_label(baseline, info)} needs beyond {_label(headline, info)} to reach each level")
    b.axhline(0, color="black", lw=0.8)
    b.set_xlabel(f"{metric} level")
    b.set_ylabel("epochs saved")
    b.grid(alpha=0.3, axis="y")
    fig.tight_layout()
    fig.savefig(path, dpi=_DPI)
    plt.close(fig)
    return str(path)
