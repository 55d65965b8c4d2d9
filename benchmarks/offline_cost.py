"""`lawa bench average-cost`: what `lawa average` costs, side by side with only reading the same files.

    lawa bench average-cost --out runs/average_cost          # BERT-base size (110M parameters), k=6

A BERT-base-sized model (``transformers.BertModel`` built from its config, nothing downloaded,
109.5M float32 parameters) is saved as k Hugging Face checkpoint folders
(``save_pretrained``: one ``model.safetensors`` each), each a perturbed copy of the last. Then,
alternating, each in a fresh process so its peak memory is its own:

- **read**: read every byte of the k weight files once (``readinto`` a reused 1 MiB buffer, which
  stays in the CPU cache: faster here than larger buffers): the physical floor of any averaging,
  which must read them all;
- **read+sum**: the same reads, each 1 MiB piece added into a float64 buffer: the floor of any
  float64 average (every value read once and added once), without the writing;
- **average**: ``write_average`` of the k folders into a new folder (what ``lawa average DIR
  --out OUT`` runs), written and fsynced.

The files are read once before the first measurement, so every run finds them in the page cache
(neither run pays the disk; on a cold cache both would pay it once). Reported: the medians over
``repeats`` of the time and of the peak RSS (``VmHWM``), the RSS after the imports (the
interpreter and torch: the same in both), and the ratios average/read for the time and
(peak - imports)/fp32 size for the memory. Results: ``results.json`` and ``results.csv`` in ``--out``.
Both run on one thread (``OMP_NUM_THREADS=1``): on a shared CPU more threads only add noise.
Compare the ratios, not the absolute times.
"""

from __future__ import annotations

import csv
import json
import os
import shutil
import statistics
import subprocess
import sys
from dataclasses import asdict, dataclass
from pathlib import Path

import click

__all__ = ["CostConfig", "run"]

# Runs in a fresh interpreter: imports first (the baseline), then one task; prints one JSON line.
_CHILD = r"""
import json, sys, time
import torch
import safetensors.torch  # noqa: F401
from lawa_optim.offline import write_average

def status_mib(field):  # VmHWM: this process's peak (ru_maxrss would include the parent's, inherited by fork)
    with open("/proc/self/status") as f:
        return int(f.read().split(field + ":")[1].split()[0]) / 1024

task, args = sys.argv[1], json.loads(sys.argv[2])
torch.set_num_threads(1)
base = status_mib("VmRSS")
start = time.perf_counter()
if task in ("read", "read+sum"):
    buf = torch.empty(1 << 18)  # 1 MiB
    acc = torch.zeros(1 << 18, dtype=torch.float64)
    raw = memoryview(buf.view(torch.uint8).numpy())
    for name in args["files"]:
        with open(name, "rb", buffering=0) as f:
            while n := f.readinto(raw):
                if task == "read+sum":  # the floor of a float64 average: every value read once and added once
                    acc[: n // 4].add_(buf[: n // 4])
else:
    write_average(args["folders"], args["out"])
elapsed = time.perf_counter() - start
peak = status_mib("VmHWM")
print(json.dumps({"task": task, "seconds": elapsed, "rss_after_imports_mib": base, "peak_rss_mib": peak}))
"""


@dataclass
class CostConfig:
    """What to measure: a BERT-size model saved ``k`` times; ``repeats`` alternating read/average pairs."""

    out: Path
    k: int = 6
    repeats: int = 3
    hidden: int = 768
    layers: int = 12
    vocab: int = 30522
    keep_checkpoints: bool = False


def make_checkpoints(cfg: CostConfig, folder: Path) -> tuple[list[Path], int]:
    """``k`` HF checkpoint folders of a BERT model (perturbed copies); returns them and the parameter count."""
    import torch
    import transformers

    torch.manual_seed(0)
    config = transformers.BertConfig(vocab_size=cfg.vocab, hidden_size=cfg.hidden, num_hidden_layers=cfg.layers,
                                     num_attention_heads=max(1, cfg.hidden // 64), intermediate_size=4 * cfg.hidden)
    model = transformers.BertModel(config)
    params = sum(p.numel() for p in model.parameters())
    folders = []
    for i in range(cfg.k):
        with torch.no_grad():
            for p in model.parameters():
                p.add_(torch.randn_like(p), alpha=0.01)
        path = folder / f"checkpoint-{(i + 1) * 500}"
        if not (path / "model.safetensors").is_file():
            model.save_pretrained(path)
        folders.append(path)
    return folders, params


def _child(task: str, args: dict) -> dict:
    env_cmd = [sys.executable, "-c", _CHILD, task, json.dumps(args)]
    proc = subprocess.run(env_cmd, capture_output=True, text=True, check=False,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    if proc.returncode != 0:
        raise RuntimeError(f"the {task} run failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def run(cfg: CostConfig, progress=None) -> dict:
    """Measure; write ``results.json`` and ``results.csv`` into ``cfg.out``; return the results."""
    if cfg.k < 1 or cfg.repeats < 1:
        raise ValueError(f"Invalid k={cfg.k} or repeats={cfg.repeats}; both must be at least 1")
    cfg.out.mkdir(parents=True, exist_ok=True)
    ckpts = cfg.out / "checkpoints"
    folders, params = make_checkpoints(cfg, ckpts)
    files = [str(f / "model.safetensors") for f in folders]
    nbytes = sum(Path(f).stat().st_size for f in files)
    _child("read", {"files": files})  # warm the page cache: both measurements find the files in memory
    rows = []
    for r in range(cfg.repeats):
        for task in ("read", "read+sum", "average"):
            out = cfg.out / "lawa"
            shutil.rmtree(out, ignore_errors=True)
            row = _child(task, {"files": files, "folders": [str(f) for f in folders], "out": str(out)})
            row["repeat"] = r
            rows.append(row)
            if progress:
                progress(row)
    shutil.rmtree(cfg.out / "lawa", ignore_errors=True)
    if not cfg.keep_checkpoints:
        shutil.rmtree(ckpts, ignore_errors=True)
    fp32_mib = params * 4 / 2**20

    def median(task, field):
        return statistics.median(row[field] for row in rows if row["task"] == task)

    read_s, avg_s, floor_s = median("read", "seconds"), median("average", "seconds"), median("read+sum", "seconds")
    base = median("average", "rss_after_imports_mib")
    peak = median("average", "peak_rss_mib")
    results = {
        "config": {**asdict(cfg), "out": str(cfg.out)},
        "parameters": params, "fp32_mib": fp32_mib, "files_mib": nbytes / 2**20,
        "read_seconds": read_s, "read_sum_seconds": floor_s, "average_seconds": avg_s,
        "time_ratio": avg_s / read_s, "floor_ratio": floor_s / read_s, "time_ratio_to_floor": avg_s / floor_s,
        "average_peak_rss_mib": peak, "average_rss_after_imports_mib": base,
        "read_peak_rss_mib": median("read", "peak_rss_mib"),
        "memory_ratio_above_imports": (peak - base) / fp32_mib, "memory_ratio_total": peak / fp32_mib,
        "targets": {"time_ratio": 1.5, "memory_ratio": 2.2},
        "rows": rows,
    }
    (cfg.out / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    with open(cfg.out / "results.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=["repeat", "task", "seconds", "rss_after_imports_mib", "peak_rss_mib"])
        writer.writeheader()
        writer.writerows(rows)
    return results


@click.command(epilog="""\b
Examples:
  lawa bench average-cost --out runs/average_cost                 # 110M parameters, k=6, 3 repeats
  lawa bench average-cost --out runs/small --layers 2 --vocab 1000 --k 3 --repeats 1   # a quick check
""")
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), default=Path("runs/average_cost"),
              show_default=True, help="Folder for results.json / results.csv (and the checkpoints, while it runs).")
@click.option("--k", type=click.IntRange(min=1), default=6, show_default=True, help="Checkpoints averaged.")
@click.option("--repeats", type=click.IntRange(min=1), default=3, show_default=True, help="Read/average pairs.")
@click.option("--layers", type=click.IntRange(min=1), default=12, show_default=True, help="BERT layers.")
@click.option("--hidden", type=click.IntRange(min=64), default=768, show_default=True, help="BERT hidden size.")
@click.option("--vocab", type=click.IntRange(min=8), default=30522, show_default=True, help="Vocabulary size.")
@click.option("--keep-checkpoints", is_flag=True, help="Keep the k checkpoints in OUT/checkpoints (reused by a rerun).")
def average_cost(out, k, repeats, layers, hidden, vocab, keep_checkpoints) -> None:
    """Time and peak memory of `lawa average` over k safetensors checkpoints, beside reading them once."""
    cfg = CostConfig(out=out, k=k, repeats=repeats, hidden=hidden, layers=layers, vocab=vocab,
                     keep_checkpoints=keep_checkpoints)
    res = run(cfg, progress=lambda row: click.echo(
        f"  {row['task']:9s} {row['seconds']:7.2f} s  peak RSS {row['peak_rss_mib']:7.0f} MiB", err=True))
    click.echo(f"{res['parameters'] / 1e6:.1f}M parameters ({res['fp32_mib']:.0f} MiB fp32), k={k}: "
               f"average {res['time_ratio']:.2f}x the read time (target <= 1.5; read+float64 sum: "
               f"{res['floor_ratio']:.2f}x); peak RSS "
               f"{res['average_peak_rss_mib']:.0f} MiB = {res['memory_ratio_above_imports']:.2f}x fp32 above the "
               f"{res['average_rss_after_imports_mib']:.0f} MiB of the imports ({res['memory_ratio_total']:.2f}x "
               f"in all; target <= 2.2). Results in {out}")
