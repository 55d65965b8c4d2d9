"""One PNG per workload: the validation metric against optimizer steps, mean line and ± std band over seeds.

The baselines are black (``base_bn`` dashed), each method family has its colour from
:func:`lawa_benchmarks.report_plots.family_color`; the target is a dotted line.
"""

from __future__ import annotations

import math
from collections import defaultdict
from pathlib import Path
from typing import Any

__all__ = ["plot_workload"]


def _curve(rows: list[dict[str, Any]], method: str, metric: str) -> tuple[list[int], list[float], list[float]]:
    by: dict[int, list[float]] = defaultdict(list)
    for r in rows:
        if r["method"] == method and isinstance(r.get(metric), (int, float)):
            by[int(r["steps"])].append(float(r[metric]))
    xs = sorted(by)
    means = [sum(by[x]) / len(by[x]) for x in xs]
    stds = [math.sqrt(sum((v - m) ** 2 for v in by[x]) / (len(by[x]) - 1)) if len(by[x]) > 1 else 0.0
            for x, m in zip(xs, means)]
    return xs, means, stds


def plot_workload(path: Path, res: dict[str, Any], shown: list[tuple[dict[str, Any], str]]) -> str:
    """The curves of a :func:`~lawa_benchmarks.suite.results.workload_results` result; the path written.

    ``shown``: the rows of its table to draw (``res["methods"]`` entries), each with its legend label.
    """
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    from ..report_plots import family_color

    fig, ax = plt.subplots(figsize=(7.5, 4.6))
    rows, metric = res["rows"], res["metric"]
    ys = []
    for r, label in shown:
        m = r["method"]
        xs, mean, std = _curve(rows, m, metric)
        if not xs:
            continue
        if m in ("base", "base_bn"):
            style = {"color": "black", "lw": 2.0, "ls": "--" if m == "base_bn" else "-"}
        else:
            style = {"color": family_color(r["family"]), "lw": 1.5}
            if m == res["tuned"] and m != res.get("headline", "lawa_k6"):
                style["ls"] = "-."
            if "bncopy" in m:
                style.update(ls=":", lw=1.2)
        ax.plot(xs, mean, label=label, marker="o", ms=2, **style)
        if any(std):
            ax.fill_between(xs, [a - b for a, b in zip(mean, std)], [a + b for a, b in zip(mean, std)], alpha=0.12,
                            color=style["color"])
        ys += mean[len(mean) // 3:]
    ax.axhline(res["target"], color="grey", ls=":", lw=1, label=f"target {res['target']:.4g}")
    if ys:  # zoom on the later two thirds, where the methods differ
        lo, hi = min(ys + [res["target"]]), max(ys + [res["target"]])
        pad = 0.15 * (hi - lo or 1.0)
        ax.set_ylim(lo - pad, hi + pad)
    ax.set_xlabel("optimizer steps")
    ax.set_ylabel(metric)
    ax.set_title(f"{res['label']} ({len(res['seeds'])} seeds, mean ± std)", fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return str(path)
