"""A lead that survives the seed spread: epochs saved at the levels where they exceed the noise.

The paper's Figure 1 figure — the longest lead at any one level — picks the single most
favourable level, which is fragile where the baseline's curve is flat: a small wobble moves the
epoch at which it first crosses a level by many epochs. :func:`robust_lead` instead compares
each seed's own curves (paired: the method and the baseline of the same seed), at every level the
method's mean curve reaches as a new best, and keeps the levels where the epochs saved, averaged
over seeds, exceed their sample standard deviation (mean - std > 0) with every seed's method
reaching the level. Its result says at how many levels that holds, over which range, the median
and largest lead there, and :func:`lead_sentence` says it in one sentence — or "no lead beyond
the seed spread" when there is none. With one seed there is no spread to compare with, and the
sentence says so.

The baseline may be several methods (``["base", "base_bn"]``): per seed and epoch the better of
them, so that a method is credited only for what it adds to the best baseline (e.g. LAWA against
the raw weights with BatchNorm statistics recomputed as LAWA's are).
"""

from __future__ import annotations

import math
from collections import defaultdict
from statistics import median
from typing import Any

from .metrics import level_text

__all__ = ["censored_note", "lead_sentence", "list_levels", "robust_lead"]


def _curves(rows: list[dict[str, Any]], methods: list[str], metric: str, hib: bool) -> dict[Any, dict[int, float]]:
    """Per seed, epoch -> the best value over ``methods`` (one method: its value)."""
    sign = 1 if hib else -1
    out: dict[Any, dict[int, float]] = defaultdict(dict)
    for r in rows:
        v = r.get(metric)
        if r["method"] not in methods or not isinstance(v, (int, float)) or not math.isfinite(v):
            continue
        cur = out[r.get("seed")].get(int(r["epoch"]))
        if cur is None or sign * v > sign * cur:
            out[r.get("seed")][int(r["epoch"])] = float(v)
    return out


def _first(curve: dict[int, float], level: float, sign: int) -> int | None:
    for e in sorted(curve):
        if sign * curve[e] >= sign * level - 1e-12:
            return e
    return None


def _times(rows: list[dict[str, Any]], method: str, own_cost: bool) -> dict[Any, dict[int, float]]:
    """Per seed, epoch -> training seconds so far (plus the method's own averaging time if ``own_cost``)."""
    out: dict[Any, dict[int, float]] = defaultdict(dict)
    by_seed: dict[Any, list[dict[str, Any]]] = defaultdict(list)
    for r in rows:
        if r["method"] == method and isinstance(r.get("train_time_s"), (int, float)):
            by_seed[r.get("seed")].append(r)
    for seed, rs in by_seed.items():
        extra = 0.0
        for r in sorted(rs, key=lambda r: int(r["epoch"])):
            extra += float(r.get("avg_time_s") or 0.0) if own_cost else 0.0
            out[seed][int(r["epoch"])] = float(r["train_time_s"]) + extra
    return out


def _mean_std(xs: list[float]) -> tuple[float, float]:
    m = sum(xs) / len(xs)
    return m, (math.sqrt(sum((x - m) ** 2 for x in xs) / (len(xs) - 1)) if len(xs) > 1 else 0.0)


def robust_lead(rows: list[dict[str, Any]], baseline: str | list[str], method: str, metric: str,
                higher_is_better: bool = True, steps_per_epoch: int | None = None) -> dict[str, Any]:
    """The method's lead over the baseline, level by level, seed by seed, and where it exceeds the seed spread.

    Args:
        rows: metrics rows (``method``, ``seed``, ``epoch``, ``metric``, optionally ``train_time_s``
            and ``avg_time_s``) in the schema of :mod:`lawa_benchmarks.report`.
        baseline (str or list of str): the baseline method, or several (per seed and epoch the better).
        method (str): the method measured.
        metric (str): the column compared; ``higher_is_better`` says its direction.
        steps_per_epoch (int, optional): also give the lead in optimizer steps.

    Returns:
        dict: ``levels`` (one entry per level: ``level``, per seed (in the order of ``seeds``) the
        first epoch the method reaches it (``method_epochs``), the first epoch the baseline does
        (``base_epochs``, None: never) and the ``saved`` epochs, their ``mean`` and ``std``,
        ``censored`` when a seed's baseline never reaches it — its lead then counted as the epochs
        left after the method reaches it, a lower bound —, ``significant``,
        ``seconds_saved`` mean over seeds when times are present), ``n_seeds``, ``significant``
        (the significant levels), ``median_saved``, ``max_saved`` (the significant level with the
        largest mean lead), ``last_epoch``, ``steps_per_epoch``, and the names.
    """
    baselines = [baseline] if isinstance(baseline, str) else list(baseline)
    sign = 1 if higher_is_better else -1
    base, meth = _curves(rows, baselines, metric, higher_is_better), _curves(rows, [method], metric, higher_is_better)
    seeds = sorted(set(base) & set(meth), key=str)
    btime = {b: _times(rows, b, False) for b in baselines}
    mtime = _times(rows, method, True)
    mean_curve: dict[int, list[float]] = defaultdict(list)
    for s in seeds:
        for e, v in meth[s].items():
            mean_curve[e].append(v)
    levels, best = [], -math.inf
    for e in sorted(mean_curve):
        v = sum(mean_curve[e]) / len(mean_curve[e])
        if sign * v > best:
            best = sign * v
            levels.append(v)
    out_levels = []
    for level in levels:
        saved, seconds, censored, m_epochs, b_epochs = [], [], False, [], []
        for s in seeds:
            me, be = _first(meth[s], level, sign), _first(base[s], level, sign)
            if me is None:
                break
            m_epochs.append(me)
            b_epochs.append(be)
            last = max(base[s])
            if be is None:
                censored, be = True, last + 1
            saved.append(be - me)
            bt = [btime[b][s].get(be) for b in baselines if btime[b].get(s, {}).get(be) is not None]
            mt = mtime.get(s, {}).get(me)
            if bt and mt is not None and be <= last:
                seconds.append(min(bt) - mt)
        if len(saved) < len(seeds) or not saved:
            continue  # some seed's method never reaches this level
        mean, std = _mean_std([float(x) for x in saved])
        out_levels.append({"level": level, "seeds": seeds, "method_epochs": m_epochs, "base_epochs": b_epochs,
                           "saved": saved, "mean": mean, "std": std, "censored": censored,
                           "significant": len(saved) > 1 and mean - std > 0,
                           "seconds_saved": sum(seconds) / len(seconds) if len(seconds) == len(saved) else None})
    sig = [lv for lv in out_levels if lv["significant"]]
    return {"baseline": baselines, "method": method, "metric": metric, "higher_is_better": higher_is_better,
            "n_seeds": len(seeds), "levels": out_levels, "significant": sig,
            "median_saved": median(lv["mean"] for lv in sig) if sig else None,
            "max_saved": max(sig, key=lambda lv: lv["mean"]) if sig else None,
            "largest": max(out_levels, key=lambda lv: lv["mean"]) if out_levels else None,
            "last_epoch": max((max(c) for c in base.values()), default=None), "steps_per_epoch": steps_per_epoch}


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return ""
    if abs(seconds) < 120:
        return f"{seconds:.0f} s"
    return f"{seconds / 60:.1f} min"


def lead_sentence(lead: dict[str, Any], method_label: str, base_label: str, unit: str = "epoch") -> str:
    """One sentence that states the lead of :func:`robust_lead` with its spread, or that there is none."""
    metric, n = lead["metric"], lead["n_seeds"]
    levels, sig = lead["levels"], lead["significant"]
    if not levels:
        return f"{method_label} never reaches a {metric} level in every seed: no lead to measure against {base_label}."
    if n < 2:
        top = lead["largest"]
        return (f"One seed only, so no seed spread to test against: {method_label}'s largest lead over {base_label} "
                f"is {top['mean']:g} {unit}(s) at {metric} {level_text(top['level'])} (run >= 2 seeds for a lead that "
                "survives the noise).")
    if not sig:
        top = lead["largest"]
        return (f"No lead beyond the seed spread: at none of the {len(levels)} {metric} levels {method_label} reaches "
                f"does it get there earlier than {base_label} by more than the spread over {n} seeds (its largest "
                f"lead: {top['mean']:.1f} ± {top['std']:.1f} {unit}s at {metric} {level_text(top['level'])}).")
    mx = lead["max_saved"]
    spe = lead.get("steps_per_epoch")
    steps = f", {mx['mean'] * spe:.0f} steps" if spe else ""
    secs = f", {_duration(mx['seconds_saved'])} of training" if mx.get("seconds_saved") is not None else ""
    return (f"{method_label} is ahead of {base_label} beyond the seed spread ({n} seeds) at {len(sig)} of "
            f"{len(levels)} {metric} levels ({list_levels(sig)}): a median {lead['median_saved']:.1f} {unit}s "
            f"earlier, at most {mx['mean']:.1f} ± {mx['std']:.1f} {unit}s{steps}{secs} at {metric} "
            f"{level_text(mx['level'])}{censored_note(mx, lead['last_epoch'], unit)}, of a "
            f"{lead['last_epoch']}-{unit} run.")


def list_levels(levels: list[dict[str, Any]]) -> str:
    """The levels named one by one (``"80.85, 82.45 and 82.5"``): they are not a continuous range."""
    names = [level_text(lv["level"]) for lv in levels]
    return names[0] if len(names) == 1 else ", ".join(names[:-1]) + " and " + names[-1]


def censored_note(level: dict[str, Any], last_epoch: int, unit: str = "epoch") -> str:
    """`` (a lower bound: ...)`` naming the seeds whose baseline never reaches the level, or ``""``."""
    never = [str(s) for s, b in zip(level.get("seeds", []), level.get("base_epochs", [])) if b is None]
    if not level["censored"] or not never:
        return ""
    seeds = f"seed{'s' if len(never) > 1 else ''} {', '.join(never)}"
    return (f" (a lower bound: in {seeds} the baseline never gets there in {last_epoch} {unit}s, counted as "
            f"reaching it at {unit} {last_epoch + 1})")
