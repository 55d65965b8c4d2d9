"""What a report is about: the metric, its direction, the baseline(s) and the headline of a run (the defaults).

:func:`settings` resolves them once from the run's ``meta`` (see :mod:`lawa_benchmarks.metrics`)
and the caller's overrides, checks them against the run's rows, and returns a :class:`Setup` that
the report's text, tables and plots all read, so that every part names the same baseline.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .metrics import KEYS

__all__ = ["Setup", "settings"]


@dataclass(frozen=True)
class Setup:
    """The resolved settings of one report.

    Attributes:
        run_dir (Path): the run folder.
        metric (str): the column the leads are measured on (e.g. ``top1``).
        higher_is_better (bool): the metric's direction.
        baseline (str): the method every final value is compared with (e.g. ``base``, SGD).
        baselines (list of str): the baseline and, where the run has it, the second baseline (the
            raw weights with BatchNorm statistics recomputed as every average gets them, e.g.
            ``lawa_k1``): leads are measured against the better of them, per seed and epoch.
        headline (str or None): the method the report opens with (e.g. ``lawa_k6``).
        methods (list of str): every method of the run, in the order of its rows.
        info (dict): ``meta["methods"]`` (label, family, k, bn of each method).
        meta (dict): the run's meta.
    """

    run_dir: Path
    metric: str
    higher_is_better: bool
    baseline: str
    baselines: list[str]
    headline: str | None
    methods: list[str]
    info: dict[str, Any] = field(default_factory=dict)
    meta: dict[str, Any] = field(default_factory=dict)

    def label(self, method: str) -> str:
        """The method's label (``"LAWA k=6"``), or its name."""
        return self.info.get(method, {}).get("label", method)

    @property
    def base_text(self) -> str:
        """The baseline of every lead, named once: ``"SGD"`` or ``"the better of SGD / SGD with BN recomputed ..."``."""
        names = [self.label(b) if b != "lawa_k1" else f"{self.label(self.baseline)} with BN recomputed (LAWA k=1)"
                 for b in self.baselines]
        return f"the better of {' / '.join(names)}" if len(names) > 1 else names[0]


def _baselines(meta: dict[str, Any], methods: list[str], baseline: str) -> list[str]:
    """The baseline and, where the run has them, the raw weights with BatchNorm statistics recomputed as the
    averages get them (``base_bn``; the ResNet benchmark's ``lawa_k1``, the mean of one snapshot, is the same):
    a method's lead is measured against the better of them, so that what is credited to averaging is averaging."""
    if meta.get("baselines"):
        return [b for b in meta["baselines"] if b in methods] or [baseline]
    extra = [m for m in ("base_bn", "lawa_k1") if m in methods and meta.get("methods", {}).get(m, {}).get("bn")
             == "recompute"]
    return [baseline] + extra[:1] if baseline == "base" else [baseline]


def settings(run_dir: str | Path, rows: list[dict[str, Any]], meta: dict[str, Any], *, metric: str | None = None,
             baseline: str | None = None, headline: str | None = None,
             higher_is_better: bool | None = None) -> Setup:
    """The report's :class:`Setup`: the overrides given, else what ``meta`` says, else the defaults.

    Defaults: the run's metric or the first of ``top1``, ``val_ppl``, ``ppl``, ``val_loss`` its rows
    hold; higher is better unless the metric is a loss or perplexity; baseline ``base`` (else the
    first method); headline ``meta["headline"]``, else the first LAWA method that copies no BN.

    Raises:
        ValueError: no rows, a metric no row has (the message lists the numeric columns), or a
            baseline the run does not have.
    """
    if not rows:
        raise ValueError(f"Invalid run folder {str(run_dir)!r}: its metrics hold no rows yet")
    methods = list(dict.fromkeys(r["method"] for r in rows))
    if metric is None:  # the run's own, else the first known metric its rows hold
        present = [m for m in ("top1", "val_ppl", "ppl", "val_loss") if any(r.get(m) is not None for r in rows)]
        metric = meta.get("metric") or (present[0] if present else "top1")
    if not any(r.get(metric) is not None for r in rows):
        cols = sorted({k for r in rows for k, v in r.items() if isinstance(v, (int, float)) and k not in KEYS})
        raise ValueError(f"Invalid metric {metric!r}: no row of {str(run_dir)!r} has it; its numeric columns are "
                         f"{cols} (pass one with --metric; the schema is in benchmarks/metrics.py)")
    hib = higher_is_better if higher_is_better is not None else meta.get(
        "higher_is_better", not any(w in metric for w in ("loss", "ppl")))
    baseline = baseline or meta.get("baseline") or ("base" if "base" in methods else methods[0])
    if baseline not in methods:
        raise ValueError(f"Invalid baseline {baseline!r}: the run has methods {methods}")
    headline = headline or meta.get("headline")
    if headline not in methods:
        headline = next((m for m in methods if m.startswith("lawa") and "bncopy" not in m), None)
    return Setup(run_dir=Path(run_dir), metric=metric, higher_is_better=hib, baseline=baseline,
                 baselines=_baselines(meta, methods, baseline), headline=headline, methods=methods,
                 info=meta.get("methods", {}), meta=meta)
