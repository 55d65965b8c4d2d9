"""The PNG plots of a report, in the style of the paper's figures (matplotlib, Agg).

- :func:`plot_curves`: every metric per epoch for every method, mean line and ± std band
  (Figures 1, 3, 5, 6); LAWA shows the headline k, the second baseline (LAWA k=1) and the
  BN-copied variant.
- :func:`plot_k_sensitivity`: LAWA for each k against the baseline, per epoch and against k at
  a few epochs (Figure 2).
- :func:`plot_time_saved`: the headline's lead, per seed as the report states it (Figure 1):
  one panel per seed with its curves and the arrow between the epochs where the headline and
  the baseline first reach the level of the largest lead, and the epochs saved at every level.

Every method has one colour and line style in every plot (:func:`method_styles`): the colour of
its family in the registry (:attr:`lawa_optim.MethodInfo.color`), a darker or lighter shade for
a second variant of the same family (LAWA k=3 beside k=6), dim grey dashed for the second
baseline. Each ``*_figure`` function returns the figure; each ``plot_*`` saves it.
"""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path
from typing import Any

from .metrics import curve, level_text
from .report_setup import Setup

__all__ = ["curves_figure", "family_color", "k_sensitivity_figure", "method_styles", "plot_curves",
           "plot_k_sensitivity", "plot_time_saved", "shown_level", "time_saved_figure"]

_PANELS = ("top1", "val_loss", "train_loss", "top5", "val_ppl", "ppl", "train_top1")
_TITLES = {"top1": "validation top-1 (%)", "top5": "validation top-5 (%)", "val_loss": "validation loss",
           "train_loss": "training loss", "ppl": "validation perplexity", "val_ppl": "validation perplexity",
           "train_top1": "training top-1 (%)"}
_PERCENT = ("top1", "top5", "train_top1")
_DPI = 90
_SHADES = (0.0, -0.5, 0.5, -0.7, 0.7)  # variant i of a family: negative darker, positive lighter


def _plt():
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def family_color(family: str) -> str:
    """A method family's colour, owned by the registry (:attr:`lawa_optim.MethodInfo.color`: SGD black, LAWA
    blue, EXP orange, ...); grey for a family the registry does not know."""
    from lawa_optim import get_method_info, list_methods

    return get_method_info(family).color if family in list_methods() else "tab:gray"


def _family(method: str, info: dict[str, Any]) -> str:
    return info.get(method, {}).get("family") or method.split("_")[0]


def _shade(color: str, amount: float) -> tuple[float, float, float]:
    from matplotlib.colors import to_rgb

    rgb = to_rgb(color)
    target = 1.0 if amount > 0 else 0.0
    return tuple(round(c + abs(amount) * (target - c), 4) for c in rgb)


def method_styles(setup: Setup) -> dict[str, dict[str, Any]]:
    """The line style of every method of the run, the same in every plot.

    The baseline: its family's colour (SGD black), thick. The second baseline(s) (LAWA k=1 with BN
    recomputed): dim grey, dashed. Any other method: its family's registry colour; the headline (or
    the family's first method) in the colour itself, further variants of the family in shades of it
    (alternately darker and lighter); BN-copied variants dashed.
    """
    styles: dict[str, dict[str, Any]] = {}
    by_family: dict[str, list[str]] = defaultdict(list)
    for m in sorted(setup.methods, key=lambda m: m != setup.headline):
        if m == setup.baseline:
            styles[m] = {"color": family_color(_family(m, setup.info)), "lw": 2.0, "ls": "-"}
        elif m in setup.baselines:
            styles[m] = {"color": "dimgray", "lw": 1.6, "ls": "--"}
        else:
            by_family[_family(m, setup.info)].append(m)
    for family, members in by_family.items():
        base = family_color(family)
        for i, m in enumerate(members):
            amount = _SHADES[i % len(_SHADES)]
            styles[m] = {"color": base if amount == 0 else _shade(base, amount), "lw": 1.6,
                         "ls": "--" if "bncopy" in m else "-"}
    return styles


def _epochs_axis(ax) -> None:
    from matplotlib.ticker import MaxNLocator

    ax.set_xlabel("epoch")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))


def _band(ax, summary, method, col, setup: Setup, styles, **extra):
    e, m, s = curve(summary, method, col)
    if not e:
        return
    style = {**styles[method], **extra}
    ax.plot(e, m, label=setup.label(method), marker="o", ms=2.5, **style)
    if any(s):
        ax.fill_between(e, [a - b for a, b in zip(m, s)], [a + b for a, b in zip(m, s)], alpha=0.12,
                        color=style["color"], lw=0)


def _zoom(ax, values: list[float], col: str) -> None:
    """Accuracy axes start at the 10th percentile so the middle phase is readable; a % axis ends at 100 at most."""
    vals = sorted(values)
    if len(vals) > 4:
        lo, hi = vals[len(vals) // 10], vals[-1]
        pad = max(0.5, 0.05 * (hi - lo))
        top = hi + pad
        ax.set_ylim(lo - pad, min(top, 100.0) if col in _PERCENT else top)


def _loss_axis(ax, values: list[float]) -> None:
    """Logarithmic only where the values span more than a decade (else a log axis shows one or two ticks)."""
    pos = [v for v in values if v > 0]
    if pos and max(pos) / min(pos) > 10:
        ax.set_yscale("log")


# ------------------------------------------------------------------------------ curves.png
def curves_figure(summary: list[dict[str, Any]], setup: Setup, styles: dict[str, dict[str, Any]]):
    """Up to four panels (the metrics present); LAWA: the headline k, the second baseline, the BN-copied variants."""
    plt = _plt()
    panels = [c for c in _PANELS if any(f"{c}_mean" in s for s in summary)][:4]
    shown = [m for m in setup.methods if _family(m, setup.info) != "lawa" or m == setup.headline
             or m in setup.baselines or "bncopy" in m]
    ncols = 2 if len(panels) > 1 else 1
    nrows = (len(panels) + 1) // 2
    fig, axes = plt.subplots(nrows, ncols, figsize=(6.2 * ncols, 4.2 * nrows), squeeze=False)
    for ax, col in zip(axes.flat, panels):
        for m in shown:
            _band(ax, summary, m, col, setup, styles)
        _epochs_axis(ax)
        ax.set_title(_TITLES.get(col, col))
        ax.grid(alpha=0.3)
        values = [v for m in shown for v in curve(summary, m, col)[1]]
        if "loss" in col or "ppl" in col:
            _loss_axis(ax, values)
        else:
            _zoom(ax, values, col)
    for ax in list(axes.flat)[len(panels):]:
        ax.axis("off")
    handles, labels = axes.flat[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=min(len(labels), 5), fontsize=9, frameon=False)
    n = max((s["n_seeds"] for s in summary), default=1)
    fig.suptitle(f"every method per epoch (mean ± std over {n} seed{'s' if n > 1 else ''})")
    fig.tight_layout(rect=(0, 0.04 * ((len(labels) + 4) // 5) + 0.01, 1, 1))
    return fig


def plot_curves(path: Path, summary: list[dict[str, Any]], setup: Setup, styles: dict[str, dict[str, Any]]) -> str:
    """Save :func:`curves_figure` to ``path``."""
    return _save(curves_figure(summary, setup, styles), path)


def _save(fig, path: Path) -> str:
    fig.savefig(path, dpi=_DPI)
    _plt().close(fig)
    return str(path)


# ------------------------------------------------------------------------------ k_sensitivity.png
def _lawa_ks(setup: Setup) -> list[tuple[int, str]]:
    return sorted((setup.info.get(m, {}).get("k") or int(m.split("_k")[1]), m) for m in setup.methods
                  if _family(m, setup.info) == "lawa" and "bncopy" not in m and "_k" in m)


def k_sensitivity_figure(summary: list[dict[str, Any]], setup: Setup, styles: dict[str, dict[str, Any]]):
    """LAWA for every k (BN recomputed) per epoch, and the metric against k at four epochs; None under two ks."""
    ks, metric, baseline = _lawa_ks(setup), setup.metric, setup.baseline
    if len(ks) < 2:
        return None
    plt = _plt()
    fig, (a, b) = plt.subplots(1, 2, figsize=(12.4, 4.4))
    for m in dict.fromkeys([baseline] + [m for _, m in ks]):
        _band(a, summary, m, metric, setup, styles)
    _epochs_axis(a)
    a.set_title(f"LAWA for each k: {_TITLES.get(metric, metric)}")
    a.grid(alpha=0.3)
    a.legend(fontsize=8)
    values = [v for m in [baseline] + [m for _, m in ks] for v in curve(summary, m, metric)[1]]
    if "loss" in metric or "ppl" in metric:
        _loss_axis(a, values)
    else:
        _zoom(a, values, metric)
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
    b.set_title(f"{_TITLES.get(metric, metric)} against k (dotted: {setup.label(baseline)} at that epoch)")
    b.grid(alpha=0.3)
    b.legend(fontsize=8)
    fig.tight_layout()
    return fig


def plot_k_sensitivity(path: Path, summary: list[dict[str, Any]], setup: Setup,
                       styles: dict[str, dict[str, Any]]) -> str | None:
    """Save :func:`k_sensitivity_figure` to ``path``; None (nothing written) under two LAWA ks."""
    fig = k_sensitivity_figure(summary, setup, styles)
    return None if fig is None else _save(fig, path)


# ------------------------------------------------------------------------------ time_saved.png
def _seed_curves(rows: list[dict[str, Any]], method: str, metric: str, seed: Any) -> dict[int, float]:
    return {int(r["epoch"]): float(r[metric]) for r in rows
            if r["method"] == method and r.get("seed") == seed and isinstance(r.get(metric), (int, float))}


def shown_level(lead: dict[str, Any] | None) -> dict[str, Any] | None:
    """The level the seed panels show: the largest lead beyond the spread, else the largest lead."""
    if not lead or not lead["levels"]:
        return None
    return lead["max_saved"] or lead["largest"]


def _seed_panel(ax, rows, setup: Setup, styles, lead, level, i) -> None:
    seed, metric = level["seeds"][i], setup.metric
    sign = 1 if setup.higher_is_better else -1
    curves = {m: _seed_curves(rows, m, metric, seed) for m in dict.fromkeys(setup.baselines + [setup.headline])}
    for m, c in curves.items():
        ax.plot(sorted(c), [c[e] for e in sorted(c)], label=setup.label(m), marker="o", ms=2.5, **styles[m])
    y = level["level"]
    ax.axhline(y, color="tab:red", ls=":", lw=0.8)
    me, be, saved = level["method_epochs"][i], level["base_epochs"][i], level["saved"][i]
    head_value = curves[setup.headline][me]
    ax.plot([me], [head_value], marker="o", ms=9, mfc="none", mec="tab:red", mew=1.5)
    end = be if be is not None else lead["last_epoch"] + 1
    if be is not None:
        base_value = max((c[be] for m, c in curves.items() if m in setup.baselines and be in c), key=lambda v: sign * v)
        ax.plot([be], [base_value], marker="o", ms=9, mfc="none", mec="tab:red", mew=1.5)
    if end != me:
        ax.annotate("", xy=(end, y), xytext=(me, y), arrowprops={"arrowstyle": "<->" if be is not None else "<-",
                                                                 "color": "tab:red", "lw": 1.5})
    text = f"{saved} epoch{'s' if saved != 1 else ''}" if be is not None else \
        f"≥{saved} epochs: the baseline never gets there"
    ax.annotate(text, xy=((me + end) / 2, y), xytext=(0, -8 if sign > 0 else 8), textcoords="offset points",
                color="tab:red", ha="center", va="top" if sign > 0 else "bottom", fontsize=9,
                bbox={"boxstyle": "round,pad=0.2", "fc": "white", "ec": "none", "alpha": 0.85})
    if "loss" in metric or "ppl" in metric:  # zoom on the epochs around the crossing: a loss falls steeply first
        near = [v for c in curves.values() for e, v in c.items() if e >= me - 3] + [y]
        pad = 0.08 * (max(near) - min(near) or abs(y) or 1.0)
        ax.set_ylim(min(near) - pad, max(near) + pad)
    else:
        _zoom(ax, [v for c in curves.values() for v in c.values()], metric)
    if be is None:
        ax.set_xlim(right=end + 0.3)
    _epochs_axis(ax)
    ax.set_title(f"seed {seed}: {metric} {level_text(y)} first reached", fontsize=10)
    ax.grid(alpha=0.3)


def _bars(ax, setup: Setup, styles, lead, shown) -> None:
    lv = lead["levels"]
    color = styles[setup.headline]["color"]
    xs = range(len(lv))
    bars = ax.bar(xs, [x["mean"] for x in lv], yerr=[x["std"] for x in lv], capsize=3, edgecolor="black", lw=0.6,
                  color=[color if x["significant"] else "lightgray" for x in lv])
    for bar, x in zip(bars, lv):
        if x["censored"]:
            bar.set_hatch("//")
    for i, x in enumerate(lv):  # the value on every bar, a zero one included
        ax.annotate(f"{'≥' if x['censored'] else ''}{x['mean']:.1f}", xy=(i, max(x["mean"] + x["std"], 0)),
                    xytext=(0, 3),
                    textcoords="offset points", ha="center", va="bottom", fontsize=8)
        if x["mean"] == 0:
            ax.plot([i - 0.4, i + 0.4], [0, 0], color=color if x["significant"] else "dimgray", lw=3)
    ax.axhline(0, color="black", lw=0.8)
    ax.set_xticks(list(xs))
    ax.set_xticklabels([level_text(x["level"]) for x in lv], rotation=45, fontsize=8)
    for tick, x in zip(ax.get_xticklabels(), lv):
        if shown is not None and x["level"] == shown["level"]:
            tick.set_color("tab:red")
    lo = min([0.0] + [x["mean"] - x["std"] for x in lv])
    hi = max([1.0] + [x["mean"] + x["std"] for x in lv])
    ax.set_ylim(lo - 0.1 * (hi - lo), hi + 0.15 * (hi - lo))
    ax.set_xlabel(f"{setup.metric} level (red: the level of the seed panels)")
    ax.set_ylabel("epochs saved")
    ax.set_title(f"epochs saved against {setup.base_text} at each level, mean ± std over {lead['n_seeds']} "
                 "seed(s)\n(coloured: beyond the seed spread; hatched: a lower bound, some seed's baseline never "
                 "gets there)", fontsize=9)
    ax.grid(alpha=0.3, axis="y")


def time_saved_figure(rows: list[dict[str, Any]], summary: list[dict[str, Any]], setup: Setup,
                      styles: dict[str, dict[str, Any]], lead: dict[str, Any] | None):
    """The headline's lead as the report states it: per seed at one level, and its mean ± std at every level.

    ``lead`` is :func:`lawa_benchmarks.lead.robust_lead` of the headline against ``setup.baselines``.
    Top: one panel per seed (at most 4) with that seed's curves, the level of the largest lead (beyond
    the spread if any) dotted, the two epochs where the headline and the better baseline first reach
    it circled, and the arrow between them. Bottom: the epochs saved at every level. Without a level
    reached in every seed: the mean curves alone.
    """
    plt = _plt()
    level = shown_level(lead)
    if level is None:
        fig, ax = plt.subplots(1, 1, figsize=(6.4, 4.4))
        for m in dict.fromkeys(setup.baselines + [setup.headline]):
            _band(ax, summary, m, setup.metric, setup, styles)
        _epochs_axis(ax)
        ax.set_title(f"{setup.label(setup.headline)}: no {setup.metric} level reached in every seed")
        ax.legend(fontsize=8)
        fig.tight_layout()
        return fig
    n = min(len(level["seeds"]), 4)
    fig = plt.figure(figsize=(max(4.4 * n, 9.0), 8.6))
    grid = fig.add_gridspec(2, n)
    for i in range(n):
        ax = fig.add_subplot(grid[0, i])
        _seed_panel(ax, rows, setup, styles, lead, level, i)
        if i == 0:
            ax.legend(fontsize=8, loc="lower right" if setup.higher_is_better else "upper right")
    _bars(fig.add_subplot(grid[1, :]), setup, styles, lead, level)
    more = f" (the first {n} of {len(level['seeds'])} seeds)" if n < len(level["seeds"]) else ""
    fig.suptitle(f"{setup.label(setup.headline)} against {setup.base_text}, per seed{more}", fontsize=11)
    fig.tight_layout()
    return fig


def plot_time_saved(path: Path, rows: list[dict[str, Any]], summary: list[dict[str, Any]], setup: Setup,
                    styles: dict[str, dict[str, Any]], lead: dict[str, Any] | None) -> str:
    """Save :func:`time_saved_figure` to ``path``."""
    return _save(time_saved_figure(rows, summary, setup, styles, lead), path)

