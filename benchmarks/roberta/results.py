"""From fairseq's JSON log to the benchmark's results: Adam vs LAWA validation perplexity per epoch.

``fairseq-train --log-format json`` logs one line per epoch and validation subset, e.g.::

    2026-11-28 22:10:00 | INFO | valid | {"epoch": 3, "valid_loss": "7.9", "valid_ppl": "238.9",
        "valid_lawa_loss": "7.6", "valid_lawa_ppl": "194.1", "valid_num_updates": "300", ...}

The raw model is Adam's curve, ``lawa_*`` the LAWA plugin's. A resumed run may log an epoch again;
the last line of an epoch wins. "Epochs saved" follows the paper: Adam reaches its best validation
perplexity at epoch ``E_adam``; LAWA first reaches it at ``E_lawa``; ``E_adam - E_lawa`` epochs are
saved. The same is reported for every Adam epoch's perplexity as a target (the curve of the plot).
"""

from __future__ import annotations

import csv
import json
import math
from collections.abc import Iterable
from pathlib import Path
from typing import Any

__all__ = ["epochs_saved", "parse_log", "saved_curve", "summary_line", "write_results"]


def _num(v: Any) -> float | None:
    try:
        x = float(v)
    except (TypeError, ValueError):
        return None
    return x if math.isfinite(x) else None


def parse_log(lines: Iterable[str], subset: str = "valid") -> list[dict[str, Any]]:
    """Per-epoch records ``{epoch, num_updates, adam_loss, adam_ppl, lawa_loss, lawa_ppl, train_loss, wall}``.

    Reads fairseq's JSON log lines (anything else is skipped); sorted by epoch, the last line of an
    epoch winning. ``lawa_*`` are ``None`` for epochs before the first snapshot.
    """
    valid: dict[int, dict[str, Any]] = {}
    train: dict[int, dict[str, Any]] = {}
    for line in lines:
        start = line.find("{")
        if start < 0 or '"epoch"' not in line:
            continue
        try:
            rec = json.loads(line[start:])
        except json.JSONDecodeError:
            continue
        if not isinstance(rec, dict) or "epoch" not in rec:
            continue
        epoch = int(rec["epoch"])
        if f"{subset}_loss" in rec:
            valid[epoch] = rec
        elif "train_loss" in rec and "train_wall" in rec:
            train[epoch] = rec
    out = []
    for epoch in sorted(valid):
        v, t = valid[epoch], train.get(epoch, {})
        out.append({
            "epoch": epoch,
            "num_updates": _num(v.get(f"{subset}_num_updates")),
            "adam_loss": _num(v.get(f"{subset}_loss")),
            "adam_ppl": _num(v.get(f"{subset}_ppl")),
            "lawa_loss": _num(v.get(f"{subset}_lawa_loss")),
            "lawa_ppl": _num(v.get(f"{subset}_lawa_ppl")),
            "train_loss": _num(t.get("train_loss")),
            "wall": _num(t.get("train_train_wall")) if t else None,  # training time of the epoch
            "cum_wall": _num(t.get("train_wall")) if t else None,  # wall time since the start (resumes included)
        })
    return out


def _first_reaching(epochs: list[int], values: list[float | None], target: float) -> int | None:
    for e, v in zip(epochs, values):
        if v is not None and v <= target:
            return e
    return None


def epochs_saved(records: list[dict[str, Any]], metric: str = "ppl") -> dict[str, Any]:
    """The paper's figure: how many epochs sooner LAWA reaches Adam's best validation ``metric``."""
    epochs = [r["epoch"] for r in records]
    adam = [r[f"adam_{metric}"] for r in records]
    lawa = [r[f"lawa_{metric}"] for r in records]
    scored = [(v, e) for e, v in zip(epochs, adam) if v is not None]
    if not scored:
        return {"adam_best": None, "adam_best_epoch": None, "lawa_epoch": None, "epochs_saved": None}
    best, best_epoch = min(scored)
    lawa_epoch = _first_reaching(epochs, lawa, best)
    lawa_scored = [(v, e) for e, v in zip(epochs, lawa) if v is not None]
    lawa_best, lawa_best_epoch = min(lawa_scored) if lawa_scored else (None, None)
    return {
        "adam_best": best,
        "adam_best_epoch": best_epoch,
        "lawa_epoch": lawa_epoch,
        "epochs_saved": None if lawa_epoch is None else best_epoch - lawa_epoch,
        "lawa_best": lawa_best,
        "lawa_best_epoch": lawa_best_epoch,
        "adam_final": adam[-1],
        "lawa_final": lawa[-1],
    }


def summary_line(ppl: dict[str, Any]) -> str:
    """One sentence for the log from :func:`epochs_saved`'s dict; no ``None`` ever reaches the text."""
    if ppl.get("adam_best") is None:
        return "no validation perplexity was logged yet"
    text = f"Adam's best validation ppl {ppl['adam_best']:.2f} at epoch {ppl['adam_best_epoch']}; "
    saved = ppl.get("epochs_saved")
    if ppl.get("lawa_epoch") is None:
        best = ppl.get("lawa_best")
        text += "LAWA never reaches it" + (f" (its best: {best:.2f} at epoch {ppl['lawa_best_epoch']})"
                                           if best is not None else " (no LAWA validation logged)")
    elif saved >= 0:
        text += f"LAWA reaches it at epoch {ppl['lawa_epoch']}: {saved} epoch(s) saved"
    else:
        text += f"LAWA reaches it at epoch {ppl['lawa_epoch']}, {-saved} epoch(s) after Adam"
    final = [f"{name} {v:.2f}" for name, v in (("Adam", ppl.get("adam_final")), ("LAWA", ppl.get("lawa_final")))
             if v is not None]
    return text + ("; final " + ", ".join(final) if final else "")


def saved_curve(records: list[dict[str, Any]], metric: str = "ppl") -> list[dict[str, Any]]:
    """For every epoch ``e``: the first epoch LAWA reaches Adam's ``metric`` at ``e`` (best so far), and the gap."""
    epochs = [r["epoch"] for r in records]
    lawa = [r[f"lawa_{metric}"] for r in records]
    out, best = [], math.inf
    for r in records:
        if r[f"adam_{metric}"] is None:
            continue
        best = min(best, r[f"adam_{metric}"])
        first = _first_reaching(epochs, lawa, best)
        out.append({"epoch": r["epoch"], "adam_best_so_far": best, "lawa_epoch": first,
                    "epochs_saved": None if first is None else r["epoch"] - first})
    return out


def metrics_rows(records: list[dict[str, Any]], k: int, seed: int = 1) -> tuple[list[dict], dict]:
    """Rows and meta in :mod:`lawa_benchmarks.report`'s schema: methods ``adam`` and ``lawa_k{k}``."""
    lawa = f"lawa_k{k}"
    rows = []
    for r in records:
        common = {"seed": seed, "epoch": r["epoch"], "steps": r["num_updates"], "train_time_s": r["cum_wall"]}
        rows.append({"method": "adam", **common, "val_loss": r["adam_loss"], "val_ppl": r["adam_ppl"],
                     "train_loss": r["train_loss"]})
        if r["lawa_ppl"] is not None:
            rows.append({"method": lawa, **common, "val_loss": r["lawa_loss"], "val_ppl": r["lawa_ppl"]})
    meta = {"baseline": "adam", "headline": lawa, "metric": "val_ppl", "higher_is_better": False,
            "methods": {"adam": {"label": "Adam (raw weights)", "family": "base"},
                        lawa: {"label": f"LAWA (k={k})", "family": "lawa", "k": k}}}
    return rows, meta


def write_results(records: list[dict[str, Any]], out: str | Path, meta: dict[str, Any]) -> dict[str, Any]:
    """Write ``metrics.csv``/``metrics.json`` (the shared report schema), ``epochs.csv``, ``results.json``.

    ``meta`` needs ``lawa_k``; the summary returned (and written to ``results.json``) holds it,
    the paper's epochs saved for perplexity and loss, the per-epoch curve and the records.
    """
    from lawa_benchmarks.report import write_metrics

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    rows, report_meta = metrics_rows(records, int(meta["lawa_k"]), seed=int(meta.get("seed", 1)))
    write_metrics(out, rows, {**report_meta, "name": meta.get("name", "")})
    with open(out / "epochs.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(records[0]) if records else ["epoch"])
        w.writeheader()
        w.writerows(records)
    summary = {**meta, "ppl": epochs_saved(records, "ppl"), "loss": epochs_saved(records, "loss"),
               "saved_curve": saved_curve(records, "ppl"), "epochs": records}
    with open(out / "results.json", "w") as f:
        json.dump(summary, f, indent=2)
    return summary
