"""The metrics a benchmark run writes, read back and summarized over seeds (the bottom of the report layers).

**The schema.** ``RUN_DIR/metrics.json`` is ``{"schema": 1, "meta": {...}, "rows": [...]}`` and
``RUN_DIR/metrics.csv`` holds the same rows, long format, one row per (seed, epoch, method):

- ``method`` (str), ``seed`` (int), ``epoch`` (int, 1-based: after that many epochs), and
  optionally ``run`` (the training run that produced it);
- any numeric metric columns; the known ones are ``train_loss``, ``train_top1``, ``val_loss``,
  ``top1``, ``top5`` (in %), ``ppl``, ``val_ppl``, ``train_time_s`` (cumulative wall time of
  training so far), ``avg_time_s`` and ``eval_time_s`` (the method's averaging and evaluation
  time in that epoch), ``lr``, ``steps``. Missing values are left empty (CSV) or null (JSON).

``meta`` names ``baseline`` (the method every other is measured against, e.g. ``"base"``),
``headline`` (e.g. ``"lawa_k6"``), ``metric`` (e.g. ``"top1"``, or ``"val_loss"`` for RoBERTa),
``higher_is_better`` and ``methods``: ``{name: {"label": ..., "family": ..., "k": ...}}``.

One rounding for people: :func:`level_text` writes a metric value (4 significant digits) the same
way in the report's sentences, its tables and the plots' labels; the CSV files a report writes
hold 6 significant digits (:func:`csv_text`), the JSON files the full floats.
"""

from __future__ import annotations

import csv
import io
import json
import math
from collections import defaultdict
from pathlib import Path
from typing import Any

__all__ = ["KEYS", "SCHEMA", "atomic_text", "csv_text", "curve", "level_text", "load_metrics", "pm_text", "summarize",
           "write_metrics"]

SCHEMA = 1
KEYS = ("method", "seed", "epoch")


# ------------------------------------------------------------------------------ files
def atomic_text(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` atomically (never half-written)."""
    from lawa_optim.io import atomic_write_bytes

    atomic_write_bytes(path, lambda f: f.write(text.encode()))


def _cell(v: Any) -> Any:
    if v is None:
        return ""
    if isinstance(v, float):
        return f"{v:.6g}"  # 82.45, not 82.44999999999999
    return v


def csv_text(rows: list[dict[str, Any]], columns: list[str] | None = None) -> str:
    """CSV of ``rows`` (columns in first appearance unless given; floats to 6 significant digits; None empty)."""
    if columns is None:
        columns = []
        for r in rows:
            columns.extend(c for c in r if c not in columns)
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=columns, extrasaction="ignore", lineterminator="\n")
    w.writeheader()
    for r in rows:
        w.writerow({c: _cell(r.get(c)) for c in columns})
    return buf.getvalue()


def _finite(v: Any) -> Any:
    return None if isinstance(v, float) and not math.isfinite(v) else v


def write_metrics(run_dir: str | Path, rows: list[dict[str, Any]], meta: dict[str, Any]) -> None:
    """Write ``metrics.json`` and ``metrics.csv`` (atomically) in the schema of the module docstring.

    ``metrics.json`` keeps every float as computed; ``metrics.csv`` is its rounded copy for people.
    """
    run_dir = Path(run_dir)
    clean = [{k: _finite(v) for k, v in r.items()} for r in rows]
    atomic_text(run_dir / "metrics.json", json.dumps({"schema": SCHEMA, "meta": meta, "rows": clean}, indent=1))
    atomic_text(run_dir / "metrics.csv", csv_text(clean))


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
        with open(run_dir / "metrics.csv", newline="") as f:
            return [{k: _parse(v) for k, v in r.items()} for r in csv.DictReader(f)], {}
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
def level_text(v: float) -> str:
    """A metric value as the report writes it everywhere: 4 significant digits (``82.45``, ``1.836``, ``192.3``)."""
    return f"{v:.4g}"


def pm_text(mean: float, std: float) -> str:
    """``"81.75 ± 0.92"``: the mean by :func:`level_text`, the standard deviation to 2 significant digits."""
    return f"{level_text(mean)} ± {std:.2g}"


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


def curve(summary: list[dict[str, Any]], method: str, col: str) -> tuple[list[int], list[float], list[float]]:
    """``(epochs, means, stds)`` of one method's column in a :func:`summarize` result."""
    pts = [(s["epoch"], s[f"{col}_mean"], s[f"{col}_std"]) for s in summary
           if s["method"] == method and f"{col}_mean" in s]
    return [p[0] for p in pts], [p[1] for p in pts], [p[2] for p in pts]
