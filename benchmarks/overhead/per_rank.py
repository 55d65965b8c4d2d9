"""``lawa bench overhead-per-rank``: snapshot and swap time per rank under FSDP2, world 1 vs 2 (vs 3).

Under FSDP2 each rank keeps the ring of its own shards (see ``ring_memory.py``), so one snapshot
and one swap in + out should cost each rank time in proportion to its local shard: half of world
1's at world 2, with the same ratio to a plain copy of those bytes. This measures it on CPU
processes (gloo, one thread each): a stack of ``layers`` square ``Linear`` layers of about
``params`` parameters, ``fully_shard`` on each layer and the root, ``LAWAWrapper(SGD, k, period=1)``
filled by ``k`` real steps (each takes a snapshot), then on every rank, interleaved over
``repeats`` rounds (the order rotating, the ranks lined up by a barrier before each call):

- ``snapshot``: ``opt.snapshot()``, the wrapper's snapshot of its local shards alone (what
  ``step()`` adds every ``period`` steps);
- ``swap``: ``opt.swap_in(model=model)`` then ``opt.swap_out()`` (under FSDP2 the training shards
  are always backed up, so this is backup + average written + restore);
- ``copy``: ``torch._foreach_copy_`` of the same local shards into preallocated tensors: the
  memcpy floor of those bytes.

Each time is the median over the rounds of ``time.perf_counter`` (``wall``) and of the process's
thread CPU time (``cpu``, not inflated by other processes sharing the cores); each ratio is the
median of the per-round ratios to the copy. Per world the figures are the mean over its ranks.

:func:`run` launches ``torch.distributed.run`` once per world size and writes ``per_rank.json``
(every rank's numbers), ``per_rank.csv`` (one row per world), ``per_rank.md`` and
``per_rank.png`` (seconds per rank vs local shard elements, one line per operation) into
``cfg.out``. No click here (``cli.py`` parses the options).

Example:
    >>> from lawa_benchmarks.overhead.per_rank import PerRankConfig, run
    >>> results = run(PerRankConfig(out="runs/per-rank-smoke", params=200_000, repeats=3))
    >>> [w["world"] for w in results["worlds"]]
    [1, 2]
"""

from __future__ import annotations

import csv
import json
import math
import os
import platform
import statistics
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

__all__ = ["PerRankConfig", "run", "width_for", "measure", "OPERATIONS"]

OPERATIONS = ("snapshot", "swap", "copy")
_LABELS = {"snapshot": "snapshot", "swap": "swap in + out", "copy": "foreach_copy (memcpy floor)"}


@dataclass(frozen=True)
class PerRankConfig:
    """What ``lawa bench overhead-per-rank`` measures.

    Args:
        out (str or Path): the run folder for ``per_rank.json``/``.csv``/``.md``/``.png``.
        params (int): about this many parameters in the model (default: 4e6).
        worlds (tuple of int): the world sizes, each a separate launch (default: (1, 2)).
        repeats (int): interleaved rounds per rank; the medians are over them (default: 7).
        k (int): the ring's size (default: 4).
        layers (int): square ``Linear`` layers in the stack (default: 8).
        timeout (float): seconds one world's launch may take before it is killed (default: 1800).
    """

    out: str | Path
    params: int = 4_000_000
    worlds: tuple[int, ...] = (1, 2)
    repeats: int = 7
    k: int = 4
    layers: int = 8
    timeout: float = 1800.0

    def __post_init__(self) -> None:
        errors = []
        if not isinstance(self.layers, int) or self.layers < 1:
            errors.append(f"layers={self.layers!r}: use a positive int")
        elif not isinstance(self.params, int) or self.params < 2 * self.layers:
            errors.append(f"params={self.params!r}: use an int >= 2 * layers ({2 * self.layers})")
        if not self.worlds or any(not isinstance(w, int) or w < 1 for w in self.worlds):
            errors.append(f"worlds={self.worlds!r}: give world sizes >= 1, e.g. (1, 2)")
        elif len(set(self.worlds)) != len(self.worlds):
            errors.append(f"worlds={self.worlds!r}: each world size once")
        for name in ("repeats", "k"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                errors.append(f"{name}={value!r}: use a positive int")
        if not self.timeout > 0:
            errors.append(f"timeout={self.timeout!r}: use a positive number of seconds")
        if errors:
            raise ValueError("Invalid overhead-per-rank config: " + "; ".join(errors))


def width_for(params: int, layers: int) -> int:
    """The width ``d`` of ``layers`` layers ``Linear(d, d)`` (``d * d + d`` parameters each) closest to ``params``."""
    per_layer = params / layers
    d = max(1, int((math.sqrt(1 + 4 * per_layer) - 1) / 2))
    return min((d, d + 1), key=lambda w: abs(layers * (w * w + w) - params))


# ------------------------------------------------------------------------------- one rank
def _timed(fn) -> tuple[float, float]:
    """(wall, thread CPU) seconds of one call of ``fn``."""
    w, c = time.perf_counter(), time.thread_time()
    fn()
    return time.perf_counter() - w, time.thread_time() - c


def measure(out: Path, params: int, layers: int, k: int, repeats: int) -> None:
    """One rank of the measurement (under ``torch.distributed.run``): see the module docstring.

    Rank 0 writes every rank's row to ``out`` (JSON).
    """
    import torch.distributed as dist
    from torch import nn
    from torch.distributed.fsdp import fully_shard

    from lawa_optim import LAWAWrapper

    torch.set_num_threads(1)
    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    d = width_for(params, layers)
    torch.manual_seed(0)
    model = nn.Sequential(*[nn.Linear(d, d) for _ in range(layers)])
    total = sum(p.numel() for p in model.parameters())
    for layer in model:
        fully_shard(layer)
    fully_shard(model)
    opt = LAWAWrapper(torch.optim.SGD(model.parameters(), lr=1e-3), k=k, period=1)
    for _ in range(k):  # period=1: every step takes a snapshot, so the ring is full (a snapshot also drops the oldest)
        opt.zero_grad()
        model(torch.randn(4, d)).square().mean().backward()
        opt.step()
    by_steps = opt.snapshots_taken
    src = [p.to_local().detach() for p in model.parameters()]
    dst = [torch.empty_like(t) for t in src]

    def swap() -> None:
        opt.swap_in(model=model)
        opt.swap_out()

    ops = {"snapshot": opt.snapshot, "swap": swap, "copy": lambda: torch._foreach_copy_(dst, src)}
    for fn in ops.values():  # warm-up
        dist.barrier()
        fn()
    wall: dict[str, list[float]] = {name: [] for name in ops}
    cpu: dict[str, list[float]] = {name: [] for name in ops}
    names = list(ops)
    for r in range(repeats):
        for name in names[r % 3:] + names[:r % 3]:  # the order rotates from round to round
            dist.barrier()  # the ranks run each call side by side, as in training
            w, c = _timed(ops[name])
            wall[name].append(w)
            cpu[name].append(c)
    row = {
        "rank": rank, "world": world, "width": d, "layers": layers, "k": k, "total_params": total,
        "local_elements": sum(t.numel() for t in src), "local_bytes": sum(t.nbytes for t in src),
        "local_shapes": [list(t.shape) for t in src],
        "snapshots_by_steps": by_steps, "snapshots_taken": opt.snapshots_taken, "num_snapshots": opt.num_snapshots,
        "expected_snapshots": k + 1 + repeats, "repeats": repeats,
    }
    for clock, times in (("wall", wall), ("cpu", cpu)):
        for name in ops:
            row[f"{name}_{clock}_s"] = statistics.median(times[name])
        for name in ("snapshot", "swap"):
            row[f"{name}_over_copy_{clock}"] = statistics.median(
                a / b if b > 0 else math.inf for a, b in zip(times[name], times["copy"]))
    row["rounds"] = {"wall": wall, "cpu": cpu}
    rows: list = [None] * world
    dist.all_gather_object(rows, row)
    if rank == 0:
        out.write_text(json.dumps(rows, indent=1))
    dist.destroy_process_group()


# ------------------------------------------------------------------------------- the launcher
def _launch(world: int, out: Path, cfg: PerRankConfig) -> list[dict]:
    """Run :func:`measure` on ``world`` CPU processes; every rank's row."""
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={world}",
           "-m", "lawa_benchmarks.overhead.per_rank", "measure", str(out),
           str(cfg.params), str(cfg.layers), str(cfg.k), str(cfg.repeats)]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=cfg.timeout, env=env)
    except subprocess.TimeoutExpired as err:
        raise RuntimeError(f"world {world}: the ranks ran past timeout={cfg.timeout} s") from err
    if proc.returncode != 0 or not out.is_file():
        raise RuntimeError(f"world {world}: torch.distributed.run exited {proc.returncode}:\n{proc.stderr[-4000:]}")
    return json.loads(out.read_text())


def _summary(rows: list[dict]) -> dict:
    """One world: the mean over its ranks of each rank's medians and ratios."""
    out = {"world": rows[0]["world"], "local_elements": max(r["local_elements"] for r in rows),
           "local_elements_per_rank": [r["local_elements"] for r in rows]}
    for key in rows[0]:
        if key.endswith("_s") or "_over_copy_" in key:
            out[key] = statistics.fmean(r[key] for r in rows)
    return out


def _scale(worlds: list[dict]) -> None:
    """Each world's local elements and times as fractions of the first world's (the smallest)."""
    base = worlds[0]
    for w in worlds:
        w["local_vs_first"] = w["local_elements"] / base["local_elements"]
        for name in OPERATIONS:
            w[f"{name}_wall_vs_first"] = w[f"{name}_wall_s"] / base[f"{name}_wall_s"]
            w[f"{name}_cpu_vs_first"] = w[f"{name}_cpu_s"] / base[f"{name}_cpu_s"]


_CSV = ["world", "local_elements", "snapshot_wall_s", "swap_wall_s", "copy_wall_s", "snapshot_over_copy_wall",
        "swap_over_copy_wall", "snapshot_cpu_s", "swap_cpu_s", "copy_cpu_s", "snapshot_over_copy_cpu",
        "swap_over_copy_cpu", "local_vs_first", "snapshot_wall_vs_first", "swap_wall_vs_first", "copy_wall_vs_first",
        "snapshot_cpu_vs_first", "swap_cpu_vs_first", "copy_cpu_vs_first"]


def markdown_table(results: dict) -> str:
    """One row per world: local elements per rank, ms per rank (wall, CPU) and the ratios to the copy."""
    lines = ["| ranks | local elements per rank | snapshot ms | swap in + out ms | copy ms | snapshot / copy | "
             "swap / copy | time vs first world (snapshot, swap, copy) |",
             "|---|---|---|---|---|---|---|---|"]
    for w in results["worlds"]:
        ms = {n: f"{w[f'{n}_wall_s'] * 1e3:.2f} ({w[f'{n}_cpu_s'] * 1e3:.2f})" for n in OPERATIONS}
        scale = ", ".join(f"{w[f'{n}_wall_vs_first']:.2f}" for n in OPERATIONS)
        lines.append(
            f"| {w['world']} | {' / '.join(f'{n:,}' for n in w['local_elements_per_rank'])} | {ms['snapshot']} | "
            f"{ms['swap']} | {ms['copy']} | {w['snapshot_over_copy_wall']:.2f} ({w['snapshot_over_copy_cpu']:.2f}) | "
            f"{w['swap_over_copy_wall']:.2f} ({w['swap_over_copy_cpu']:.2f}) | {scale} |")
    cfg = results["config"]
    lines += ["", f"{results['total_params']:,} parameters ({cfg['layers']} x Linear({results['width']}, "
              f"{results['width']})), k={cfg['k']}, {cfg['repeats']} rounds; medians of time.perf_counter per rank "
              "(in parentheses: the thread's CPU time), mean over the ranks; one thread per rank, gloo on "
              f"{results['machine']['cpus']} CPUs."]
    return "\n".join(lines)


def plot(results: dict, path: str | Path) -> None:
    """Seconds per rank (wall) vs local shard elements, one line per operation, with the proportional line."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    worlds = results["worlds"]
    xs = [w["local_elements"] for w in worlds]
    fig, ax = plt.subplots(figsize=(6, 4))
    for i, name in enumerate(OPERATIONS):
        ys = [w[f"{name}_wall_s"] * 1e3 for w in worlds]
        ax.plot(xs, ys, marker="o", color=f"C{i}", label=_LABELS[name])
        slope = ys[-1] / xs[-1]  # proportional to the shard, through the smallest shard's point
        ax.plot([0, max(xs)], [0, slope * max(xs)], color=f"C{i}", linestyle=":", linewidth=1)
        for x, y, w in zip(xs, ys, worlds):
            ax.annotate(f"world {w['world']}", (x, y), textcoords="offset points", xytext=(4, 4), fontsize=7)
    ax.set_xlim(0, 1.15 * max(xs))
    ax.set_ylim(bottom=0)
    ax.set_xlabel("local shard elements per rank")
    ax.set_ylabel("ms per rank (median, wall)")
    ax.set_title(f"LAWA under FSDP2, {results['total_params']:,} parameters (dotted: proportional)", fontsize=9)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def run(cfg: PerRankConfig, progress: bool = True) -> dict:
    """Launch every world size, write ``per_rank.json``, ``.csv``, ``.md`` and ``.png``; return the results."""
    from tqdm.auto import tqdm

    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    ranks: dict[int, list[dict]] = {}
    bar = tqdm(sorted(cfg.worlds), desc="overhead-per-rank", disable=not progress)
    for world in bar:
        bar.set_postfix_str(f"world {world}")
        ranks[world] = _launch(world, out / f"ranks_world{world}.json", cfg)
    worlds = [_summary(ranks[w]) for w in sorted(ranks)]
    _scale(worlds)
    first = ranks[min(ranks)][0]
    results = {
        "config": {key: (str(v) if isinstance(v, Path) else v) for key, v in asdict(cfg).items()},
        "machine": {"platform": platform.platform(), "cpus": os.cpu_count(), "torch": torch.__version__,
                    "threads_per_rank": 1},
        "total_params": first["total_params"], "width": first["width"],
        "worlds": worlds, "ranks": {str(w): rows for w, rows in sorted(ranks.items())},
    }
    (out / "per_rank.json").write_text(json.dumps(results, indent=1))
    with open(out / "per_rank.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=_CSV, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(worlds)
    table = markdown_table(results)
    (out / "per_rank.md").write_text(table + "\n")
    plot(results, out / "per_rank.png")
    for world in ranks:
        (out / f"ranks_world{world}.json").unlink(missing_ok=True)  # in per_rank.json now
    results["table"] = table
    return results


if __name__ == "__main__":
    if sys.argv[1:2] == ["measure"] and len(sys.argv) == 7:
        measure(Path(sys.argv[2]), *(int(v) for v in sys.argv[3:7]))
    else:
        sys.exit("usage: torchrun ... -m lawa_benchmarks.overhead.per_rank measure OUT.json PARAMS LAYERS K REPEATS "
                 "(or `lawa bench overhead-per-rank`)")
