"""Soak test: a long run of LAWAWrapper on a small model, memory flat and the average exact.

``run(cfg, out)`` trains a small MLP for ``cfg.steps`` optimizer steps with a snapshot every
``cfg.period`` steps (100,000 steps and 10,000 snapshots by default) and, beside the wrapper,
keeps its own float64 copies of the k latest snapshots. Every ``cfg.check_every`` snapshots it
swaps in the average of every window j = 1..k, compares it with ``torch.stack(...).mean(0)`` of
the reference copies, and checks that swapping out restores the training weights bit for bit.
The process's resident memory (RSS) is sampled all along: once the ring is full nothing should
grow. Results go to ``OUT/soak.json`` and ``OUT/soak_rss.csv`` (and ``OUT/soak_rss.png`` when
matplotlib is installed). A checkpoint is written atomically every ``cfg.checkpoint_every``
steps; running again with the same ``OUT`` resumes from it and ends with the same numbers.

Example:
    python -m lawa_benchmarks.soak runs/soak                       # the full soak
    python -m lawa_benchmarks.soak runs/soak-short --steps 5000    # a short one
"""

from __future__ import annotations

import csv
import json
import os
import time
from collections import deque
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

import torch
from torch import nn

from lawa_optim import LAWAWrapper, atomic_save, safe_load

__all__ = ["SoakConfig", "run", "rss_bytes"]

CHECKPOINT = "soak_ckpt.pt"


@dataclass(frozen=True)
class SoakConfig:
    """What the soak runs; every field is checked by :meth:`validate`.

    Args:
        steps (int): optimizer steps (default: 100,000).
        period (int): a snapshot every ``period`` steps (default: 10, so 10,000 snapshots).
        k (int): snapshots averaged (default: 6).
        width (int): hidden width of the MLP (default: 64).
        check_every (int): compare every window with the reference every this many snapshots
            (default: 250).
        rss_every (int): sample the resident memory every this many steps (default: 1,000).
        checkpoint_every (int): write a resumable checkpoint every this many steps; 0 for never
            (default: 10,000).
        seed (int): seed of the model and the data (default: 0).
        stop_after (int): stop (as if killed) after this many steps, leaving the checkpoint;
            0 runs to the end (default: 0; for tests).
    """

    steps: int = 100_000
    period: int = 10
    k: int = 6
    width: int = 64
    check_every: int = 250
    rss_every: int = 1_000
    checkpoint_every: int = 10_000
    seed: int = 0
    stop_after: int = 0

    def validate(self) -> None:
        errors = []
        for f in fields(self):
            value = getattr(self, f.name)
            minimum = 0 if f.name in ("checkpoint_every", "seed", "stop_after") else 1
            if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
                errors.append(f"{f.name}={value!r} (an int >= {minimum})")
        if errors:
            raise ValueError("Invalid soak config: " + "; ".join(errors))


def rss_bytes() -> int:
    """The resident memory of this process (Linux ``/proc``; 0 where unavailable)."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return 0


def _model(cfg: SoakConfig) -> nn.Module:
    torch.manual_seed(cfg.seed)
    return nn.Sequential(nn.Linear(16, cfg.width), nn.Tanh(), nn.Linear(cfg.width, 4))


def _batches(cfg: SoakConfig) -> list[tuple[torch.Tensor, torch.Tensor]]:
    g = torch.Generator().manual_seed(cfg.seed + 1)
    return [(torch.randn(32, 16, generator=g), torch.randn(32, 4, generator=g)) for _ in range(64)]


def _check(model: nn.Module, opt: LAWAWrapper, reference: deque) -> float:
    """Largest relative error of any window's average against the float64 reference mean."""
    params = list(model.parameters())
    before = [p.detach().clone() for p in params]
    worst = 0.0
    window = list(reference)
    for j in range(1, len(window) + 1):
        with opt.averaged(k=j):
            for i, p in enumerate(params):
                want = torch.stack([snap[i] for snap in window[-j:]]).mean(0)
                err = ((p.detach().double() - want).abs() / want.abs().clamp_min(1e-30)).max().item()
                worst = max(worst, err)
        for p, b in zip(params, before):
            if not torch.equal(p.detach(), b):
                raise RuntimeError("soak: swapping out did not restore the training weights bit-exactly")
    return worst


def run(cfg: SoakConfig, out: str | os.PathLike) -> dict[str, Any]:
    """Run (or resume) the soak; write the results into ``out``; return them."""
    cfg.validate()
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(1)
    model = _model(cfg)
    opt = LAWAWrapper(torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9), k=cfg.k, period=cfg.period)
    batches = _batches(cfg)
    reference: deque = deque(maxlen=cfg.k)
    state = {"step": 0, "checks": 0, "max_rel_error": 0.0, "rss": [], "resumed_at": []}
    ckpt = out / CHECKPOINT
    if ckpt.exists():
        saved = safe_load(ckpt)
        same = {key: value for key, value in asdict(cfg).items() if key != "stop_after"}
        if {key: value for key, value in saved["config"].items() if key != "stop_after"} != same:
            raise ValueError(f"Invalid out: {str(out)!r} holds a soak with another config {saved['config']}")
        model.load_state_dict(saved["model"])
        opt.load_state_dict(saved["opt"])
        reference.extend(saved["reference"])
        state = saved["state"]
        state["resumed_at"].append(state["step"])
    try:
        from tqdm.auto import tqdm
    except ImportError:  # tqdm is in the bench extra; without it there is no progress bar
        tqdm = None
    bar = tqdm(total=cfg.steps, initial=state["step"], desc="soak", unit="step") if tqdm else None
    loss_fn = nn.MSELoss()
    start = time.perf_counter()
    stop = cfg.steps if not cfg.stop_after else min(cfg.steps, cfg.stop_after)
    while state["step"] < stop:
        x, y = batches[state["step"] % len(batches)]
        opt.zero_grad()
        loss_fn(model(x), y).backward()
        opt.step()
        state["step"] += 1
        step = state["step"]
        if step % cfg.period == 0:
            reference.append([p.detach().double().clone() for p in model.parameters()])
            if opt.snapshots_taken % cfg.check_every == 0:
                state["max_rel_error"] = max(state["max_rel_error"], _check(model, opt, reference))
                state["checks"] += 1
        if step % cfg.rss_every == 0 or step == 1:
            state["rss"].append((step, rss_bytes()))
        if cfg.checkpoint_every and step % cfg.checkpoint_every == 0:
            payload = {"model": model.state_dict(), "opt": opt.state_dict(), "reference": list(reference),
                       "state": state, "config": asdict(cfg)}
            atomic_save(payload, ckpt)
        if bar is not None and step % 100 == 0:
            bar.update(step - bar.n)
    if bar is not None:
        bar.close()
    if state["step"] < cfg.steps:  # stopped early on purpose (a test of resuming)
        return {"finished": False, "step": state["step"]}
    state["max_rel_error"] = max(state["max_rel_error"], _check(model, opt, reference))
    state["checks"] += 1
    results = _summarize(cfg, opt, state, time.perf_counter() - start)
    results["final_average_sum"] = _average_fingerprint(model, opt)
    _write(out, results, state["rss"])
    return results


def _average_fingerprint(model: nn.Module, opt: LAWAWrapper) -> list[float]:
    with opt.averaged():
        return [float(p.detach().double().sum()) for p in model.parameters()]


def _summarize(cfg: SoakConfig, opt: LAWAWrapper, state: dict, seconds: float) -> dict[str, Any]:
    rss = state["rss"]
    # Memory after the ring filled and the first checks ran (10% of the run) against the end.
    warm = next((b for s, b in rss if s >= cfg.steps // 10), rss[-1][1])
    end = rss[-1][1]
    growth = end - warm
    flat_limit = max(8 << 20, warm // 20)  # 8 MiB or 5%: allocator noise, not a leak
    return {
        "config": asdict(cfg),
        "steps": state["step"],
        "snapshots": opt.snapshots_taken,
        "num_snapshots_held": opt.num_snapshots,
        "checks": state["checks"],
        "windows_per_check": cfg.k,
        "max_rel_error": state["max_rel_error"],
        "exact": state["max_rel_error"] <= 1e-6,
        "rss_warm_bytes": warm,
        "rss_end_bytes": end,
        "rss_growth_bytes": growth,
        "rss_flat_limit_bytes": flat_limit,
        "memory_flat": growth <= flat_limit,
        "resumed_at_steps": state["resumed_at"],
        "seconds_this_process": round(seconds, 1),
    }


def _write(out: Path, results: dict, rss: list) -> None:
    (out / "soak.json").write_text(json.dumps(results, indent=2) + "\n")
    with open(out / "soak_rss.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["step", "rss_bytes"])
        writer.writerows(rss)
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return
    fig, ax = plt.subplots(figsize=(6, 3.5))
    ax.plot([s for s, _ in rss], [b / 2**20 for _, b in rss])
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("RSS (MiB)")
    ax.set_title(f"soak: {results['snapshots']} snapshots, max rel. error {results['max_rel_error']:.1e}")
    ax.set_ylim(bottom=0)
    fig.tight_layout()
    fig.savefig(out / "soak_rss.png", dpi=100)
    plt.close(fig)


def _click_command():
    import click

    @click.command("soak", epilog="Example: lawa bench soak --out runs/soak --steps 100000")
    @click.option("--out", required=True, type=click.Path(file_okay=False), help="Folder for the results.")
    @click.option("--steps", default=SoakConfig.steps, show_default=True, help="Optimizer steps.")
    @click.option("--period", default=SoakConfig.period, show_default=True, help="Steps between snapshots.")
    @click.option("--k", default=SoakConfig.k, show_default=True, help="Snapshots averaged.")
    @click.option("--check-every", default=SoakConfig.check_every, show_default=True,
                  help="Snapshots between exactness checks.")
    def soak(out: str, steps: int, period: int, k: int, check_every: int) -> None:
        """Soak LAWAWrapper: many snapshots, memory flat, average exact; resumes in the same --out."""
        try:
            cfg = SoakConfig(steps=steps, period=period, k=k, check_every=check_every)
            cfg.validate()
        except ValueError as err:
            raise click.UsageError(str(err)) from err
        results = run(cfg, out)
        click.echo(json.dumps({key: results[key] for key in ("steps", "snapshots", "max_rel_error", "exact",
                                                                "rss_growth_bytes", "memory_flat")}))
        if not (results["exact"] and results["memory_flat"]):
            raise SystemExit(1)

    return soak


def __getattr__(name: str):
    if name == "soak":  # the click command, built on first use so importing this module needs no click
        return _click_command()
    raise AttributeError(name)


if __name__ == "__main__":
    import sys

    argv = sys.argv[1:]
    if argv and not argv[0].startswith("-"):
        argv = ["--out", argv[0], *argv[1:]]
    _click_command()(argv)
