"""The RoBERTa benchmark's figure: validation perplexity per epoch (paper Fig. 1b) and epochs saved."""

from __future__ import annotations

from pathlib import Path
from typing import Any

__all__ = ["plot_results"]


def plot_results(summary: dict[str, Any], path: str | Path) -> Path:
    """Three panels: Adam vs LAWA validation perplexity per epoch, its second half, and epochs saved per target.

    Args:
        summary (dict): what :func:`lawa_benchmarks.roberta.results.write_results` returned.
        path (str or Path): the PNG to write.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    records = summary["epochs"]
    ppl = summary["ppl"]
    k = summary.get("lawa_k", "k")
    fig, (ax, zoom, ax2) = plt.subplots(1, 3, figsize=(15, 4.2))
    ep = [r["epoch"] for r in records]
    adam = [r["adam_ppl"] for r in records]
    lawa = [(r["epoch"], r["lawa_ppl"]) for r in records if r["lawa_ppl"] is not None]
    half = [e for e in ep if e > ep[-1] // 2] if ep else []
    for axis, keep in ((ax, ep), (zoom, half)):
        pts = [(e, a) for e, a in zip(ep, adam) if e in keep and a is not None]
        if pts:
            axis.plot(*zip(*pts), "o-", ms=3, label="Adam (raw weights)", color="tab:blue")
        pts = [(e, v) for e, v in lawa if e in keep]
        if pts:
            axis.plot(*zip(*pts), "s-", ms=3, label=f"LAWA (k={k})", color="tab:orange")
        if ppl.get("adam_best") is not None:
            axis.axhline(ppl["adam_best"], color="grey", ls="--", lw=0.8, label=f"Adam's best ({ppl['adam_best']:.2f})")
        axis.set_xlabel("epoch")
        axis.grid(alpha=0.3, which="both")
    if ppl.get("lawa_epoch") is not None and ppl.get("epochs_saved"):
        zoom.annotate("", xy=(ppl["lawa_epoch"], ppl["adam_best"]), xytext=(ppl["adam_best_epoch"], ppl["adam_best"]),
                      arrowprops={"arrowstyle": "<->", "color": "black"})
        zoom.text((ppl["lawa_epoch"] + ppl["adam_best_epoch"]) / 2, ppl["adam_best"],
                  f"{ppl['epochs_saved']} epochs saved\n", ha="center", va="bottom", fontsize=9)
    ax.set_yscale("log")
    ax.set_ylabel("validation perplexity (masked LM)")
    ax.set_title(f"{summary.get('name', 'roberta')}: validation perplexity")
    ax.legend(fontsize=8)
    zoom.set_title("second half of the run")

    curve = [c for c in summary.get("saved_curve", []) if c["epochs_saved"] is not None]
    if curve:
        ax2.bar([c["epoch"] for c in curve], [c["epochs_saved"] for c in curve],
                color=["tab:green" if c["epochs_saved"] > 0 else "tab:red" for c in curve])
    ax2.axhline(0, color="black", lw=0.8)
    ax2.set_xlabel("Adam epoch (target: Adam's best perplexity so far)")
    ax2.set_ylabel("epochs sooner LAWA reaches it")
    ax2.set_title("epochs saved by LAWA (negative: later)")
    ax2.grid(alpha=0.3)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
