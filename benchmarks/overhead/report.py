"""The markdown table and the PNG plot of ``lawa bench overhead`` results."""

from __future__ import annotations

from pathlib import Path

__all__ = ["markdown_table", "plot"]

_TARGET_TEXT = {None: "measured"}


def _fmt_size(n: int | None) -> str:
    if not n:
        return "-"
    exp = len(str(int(n))) - 1
    lead = n / 10**exp
    return f"{lead:.1f}e{exp}" if abs(lead - round(lead)) > 0.05 else f"{round(lead)}e{exp}"


def markdown_table(results: dict) -> str:
    """One row per figure: size, ratio [q1-q3], floor of the design, target, met."""
    lines = [
        "| figure | params | reference | ratio (median [q1, q3]) | floor | target | met |",
        "|---|---|---|---|---|---|---|",
    ]
    for f in results["figures"]:
        if "skipped" in f:
            lines.append(f"| {f['figure']} | {_fmt_size(f.get('size'))} | - | skipped: {f['skipped']} | - | - | - |")
            continue
        ratio = f"{f['ratio']:.3f} [{f['ratio_q1']:.3f}, {f['ratio_q3']:.3f}]"
        extra = []
        if "temp_in_P" in f:
            extra.append(
                f"peak temp {f['temp_in_P']:.2f}P vs {f['reference_temp_in_P']:.2f}P, allocated "
                f"{f['allocated_in_P']:.2f}P vs {f['reference_allocated_in_P']:.2f}P"
            )
        if "compile_s" in f:
            extra.append(f"first call {f['compile_s']:.1f} s")
        if "predicted" in f:
            extra.append(f"1 + snapshot/epoch = {f['predicted']:.3f}")
        if extra:
            ratio += " (" + "; ".join(extra) + ")"
        floor = "-" if f.get("floor") is None else f"{f['floor']:.2f}"
        target = "-" if f.get("target") is None else f"<= {f['target']}"
        met = {True: "yes", False: "no", None: "-"}[f.get("met")]
        lines.append(
            f"| {f['figure']} | {_fmt_size(f.get('size'))} | {f['reference']} | {ratio} | {floor} | {target} | {met} |"
        )
    machine = results.get("machine", {})
    lines.append("")
    lines.append(
        f"Clock: {results.get('clock')}; torch {machine.get('torch')}, {machine.get('threads')} thread(s), "
        f"{machine.get('cpus')} CPUs{', GPU ' + machine['gpu'] if machine.get('gpu') else ''}; parameters "
        f"{results.get('config', {}).get('dtype', 'float32')} in the per-size figures. Ratios are medians "
        "of interleaved pairs; floor = bytes the design moves / bytes of the reference."
    )
    return "\n".join(lines)


def plot(results: dict, path: str | Path) -> None:
    """Left: ratio to the plain copy vs parameters (with floors); right: seconds vs parameters (linearity)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [f for f in results["figures"] if "skipped" not in f and f["reference"] == "foreach_copy"]
    names = sorted({f["figure"] for f in rows})
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 3.8))
    for i, name in enumerate(names):
        pts = sorted((f["size"], f) for f in rows if f["figure"] == name)
        xs = [p for p, _ in pts]
        color = f"C{i}"
        left.errorbar(
            xs, [f["ratio"] for _, f in pts],
            yerr=[[f["ratio"] - f["ratio_q1"] for _, f in pts], [f["ratio_q3"] - f["ratio"] for _, f in pts]],
            marker="o", color=color, label=name, capsize=3,
        )
        if pts[0][1].get("floor"):
            left.axhline(pts[0][1]["floor"], color=color, linestyle=":", linewidth=1)
        right.plot(xs, [f["figure_s"] for _, f in pts], marker="o", color=color, label=name)
    copies = sorted({(f["size"], f["reference_s"]) for f in rows if f["figure"] == "snapshot"})
    if copies:
        right.plot([c[0] for c in copies], [c[1] for c in copies], marker="s", color="k", label="plain copy")
    left.set(xscale="log", xlabel="parameters", ylabel="time / plain copy", title="ratio (dotted: byte floor)")
    right.set(xscale="log", yscale="log", xlabel="parameters", ylabel="seconds per call", title="cost vs size")
    if names:
        left.legend(fontsize=7)
        right.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)
