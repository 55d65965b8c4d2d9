"""`lawa bench average-cost`: `lawa average` side by side with its peers and with the floor, per format.

    lawa bench average-cost --out runs/average_cost            # SmolLM-135M's shapes (134.5M parameters), k=6

A Llama-style state dict (the shapes of SmolLM-135M: hidden 576, 30 layers, grouped-query
attention with 3 key/value heads, MLP 1536, vocabulary 49152, tied embeddings: 134.5M float32
parameters; ``--layers`` scales it) is saved k times, each a perturbed copy of the last, in each
format measured:

- ``pt``: fairseq-style ``torch.save({"model": sd, ...})`` files (the paper's own format);
- ``hf``: Hugging Face folders (``config.json`` of a ``LlamaForCausalLM`` and ``model.safetensors``);
- ``dcp``: ``torch.distributed.checkpoint`` folders of ``{"model": sd}`` (when ``lawa average``
  reads them).

Then, in interleaved rounds (every tool once per round, the order rotated between rounds, at one
thread and at all threads), each in a fresh process so its peak memory is its own:

- **read**: every byte of the k files read once (``readinto`` a reused 1 MiB buffer): the
  physical floor of any averaging;
- **floor**: the same reads, each float32 value added once into a float64 sum (pieces of 2**16
  elements, the sum kept in the cache): the floor of any float64 average, without writing it;
- **floor+write**: the same, then the average (a k-th of the bytes) divided piece by piece into
  a reused buffer, written, the disk started on every 8 MiB (``sync_file_range``) and the file
  fsynced: the floor of any tool that writes its average durably;
- **plain loop** (``pt`` only): the in-memory loop of fairseq's ``scripts/average_checkpoints.py``
  (load each file whole, add in float32, divide, ``torch.save``), written here as the reference;
- **mergekit** (``hf`` only, when installed): mergekit's ``linear`` merge with its default options;
- **lawa average**: the command line, ``lawa average FILES --out OUT --threads N -q``.

Every process times its work after ``import torch`` (the wall time and its own CPU time) and
reports its peak resident memory (``VmHWM``: the process's own peak; ``ru_maxrss`` of a child
also counts the pages of the parent it was forked from). The files are read once before the
first round, so every run finds them in the page cache. Reported per format and thread count:
the medians over rounds, and the ratios the targets name (lawa / plain loop, lawa / mergekit,
lawa / floor), in ``results.json``, ``results.csv`` (one row per run), ``table.md`` and
``cost.png`` in ``--out``. On a shared machine the ratios are what to compare, not the times.
"""

from __future__ import annotations

import csv
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import click

__all__ = ["CostConfig", "markdown_table", "run"]

FORMATS = ("pt", "hf", "dcp")
TOOLS = {"pt": ("read", "floor", "floor+write", "plain", "lawa"),
         "hf": ("read", "floor", "floor+write", "mergekit", "lawa"), "dcp": ("read", "floor", "floor+write", "lawa")}
FLOORS = ("read", "floor", "floor+write")  # measured at one thread only
TOOL_NAMES = {"read": "read the files (the physical floor)", "floor": "read + float64 sum (the floor)",
              "floor+write": "read + float64 sum + write the average, fsync",
              "plain": "plain in-memory loop (fairseq's script)", "mergekit": "mergekit `linear`",
              "lawa": "`lawa average`"}
FORMAT_NAMES = {"pt": "fairseq-style .pt", "hf": "HF folders (safetensors)", "dcp": "DCP folders"}

# Runs in a fresh interpreter: import torch (not timed), then one task; prints one JSON line.
_CHILD = r"""
import json, os, sys, time
t0 = time.perf_counter()
task, args = sys.argv[1], json.loads(sys.argv[2])
threads = args["threads"]
if task != "read":
    import torch
    torch.set_num_threads(threads)
imported = time.perf_counter()
start, cpu = time.perf_counter(), time.process_time()
if task in ("read", "floor", "floor+write"):
    piece = 1 << 16
    if task != "read":
        buf = torch.empty(piece)
        acc = torch.zeros(piece, dtype=torch.float64)
        raw = memoryview(buf.view(torch.uint8).numpy())
    else:
        raw = memoryview(bytearray(1 << 20))
    for name in args["files"]:
        with open(name, "rb", buffering=0) as f:
            while n := f.readinto(raw):
                if task != "read":  # every value read once and added once into a float64 sum
                    acc[: n // 4].add_(buf[: n // 4])
    if task == "floor+write":  # and the average (a k-th of the bytes) divided piece by piece, written, fsynced
        import ctypes
        try:
            start_disk = ctypes.CDLL(None).sync_file_range  # start the disk on what was written, as lawa does
            start_disk.argtypes = [ctypes.c_int, ctypes.c_int64, ctypes.c_int64, ctypes.c_uint]
        except AttributeError:
            start_disk = None
        n_out = sum(os.path.getsize(f) for f in args["files"]) // 4 // len(args["inputs"])
        out_buf = torch.empty(piece)
        out_raw = memoryview(out_buf.view(torch.uint8).numpy())
        fd = os.open(args["out"] + ".floor", os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        written = started = 0
        for a in range(0, n_out, piece):
            m = min(piece, n_out - a)
            torch.div(acc[:m], len(args["inputs"]), out=out_buf[:m])
            written += os.write(fd, out_raw[: 4 * m])
            if start_disk is not None and written - started >= 8 << 20:
                start_disk(fd, started, written - started, 2)
                started = written
        os.fsync(fd)
        os.close(fd)
        os.unlink(args["out"] + ".floor")
elif task == "plain":  # fairseq's scripts/average_checkpoints.py, in memory and in float32
    params, new_state = {}, None
    for path in args["inputs"]:
        state = torch.load(path, map_location="cpu", weights_only=False)
        if new_state is None:
            new_state = state
        for k, p in state["model"].items():
            if p.dtype == torch.float16:
                p = p.float()
            if k not in params:
                params[k] = p.clone()
            else:
                params[k] += p
    for k, v in params.items():
        if v.is_floating_point():
            v.div_(len(args["inputs"]))
        else:
            v //= len(args["inputs"])
    new_state["model"] = params
    torch.save(new_state, args["out"])
elif task == "mergekit":
    from mergekit.config import MergeConfiguration
    from mergekit.merge import MergeOptions, run_merge
    config = MergeConfiguration.model_validate({"merge_method": "linear", "dtype": "float32", "models": [
        {"model": path, "parameters": {"weight": 1.0}} for path in args["inputs"]]})
    run_merge(config, args["out"], MergeOptions(copy_tokenizer=False, write_model_card=False, quiet=True,
                                                 num_threads=threads))
else:
    from lawa_optim.cli import main
    main(["average", *args["inputs"], "--out", args["out"], "--threads", str(threads), "-q"], standalone_mode=False)
end, cpu_end = time.perf_counter(), time.process_time()
with open("/proc/self/status") as f:
    peak = int(f.read().split("VmHWM:")[1].split()[0]) / 1024
print(json.dumps({"task": task, "seconds": end - start, "cpu_seconds": cpu_end - cpu, "import_seconds": imported - t0,
                  "peak_rss_mib": peak}))
"""


@dataclass
class CostConfig:
    """What to measure: a Llama-style model saved ``k`` times per format; ``repeats`` interleaved rounds."""

    out: Path
    k: int = 6
    repeats: int = 3
    hidden: int = 576
    layers: int = 30
    intermediate: int = 1536
    heads: int = 9
    kv_heads: int = 3
    vocab: int = 49152
    formats: tuple[str, ...] = FORMATS
    threads: tuple[int, ...] = field(default_factory=lambda: (1, os.cpu_count() or 1))
    keep_checkpoints: bool = False

    def __post_init__(self) -> None:
        bad = [f for f in self.formats if f not in FORMATS]
        if bad or not self.formats:
            raise ValueError(f"Invalid formats: {self.formats!r}; choose from {', '.join(FORMATS)}")
        if self.k < 1 or self.repeats < 1:
            raise ValueError(f"Invalid k={self.k} or repeats={self.repeats}; both must be at least 1")
        if not self.threads or any(t < 1 for t in self.threads):
            raise ValueError(f"Invalid threads: {self.threads!r}; give thread counts >= 1")
        self.threads = tuple(dict.fromkeys(self.threads))


def llama_state_dict(cfg: CostConfig, seed: int = 0) -> dict:
    """A ``LlamaForCausalLM`` state dict with tied embeddings (no ``lm_head``), random float32 values."""
    import torch

    g = torch.Generator().manual_seed(seed)
    h, kv = cfg.hidden, cfg.hidden // cfg.heads * cfg.kv_heads
    sd = {"model.embed_tokens.weight": torch.randn(cfg.vocab, h, generator=g) * 0.02}
    for i in range(cfg.layers):
        p = f"model.layers.{i}."
        shapes = {"self_attn.q_proj": (h, h), "self_attn.k_proj": (kv, h), "self_attn.v_proj": (kv, h),
                  "self_attn.o_proj": (h, h), "mlp.gate_proj": (cfg.intermediate, h),
                  "mlp.up_proj": (cfg.intermediate, h), "mlp.down_proj": (h, cfg.intermediate)}
        for name, shape in shapes.items():
            sd[p + name + ".weight"] = torch.randn(*shape, generator=g) * 0.02
        sd[p + "input_layernorm.weight"] = torch.ones(h)
        sd[p + "post_attention_layernorm.weight"] = torch.ones(h)
    sd["model.norm.weight"] = torch.ones(h)
    return sd


def _llama_config(cfg: CostConfig) -> dict:
    return {"architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": cfg.hidden,
            "num_hidden_layers": cfg.layers, "intermediate_size": cfg.intermediate,
            "num_attention_heads": cfg.heads, "num_key_value_heads": cfg.kv_heads, "vocab_size": cfg.vocab,
            "tie_word_embeddings": True, "torch_dtype": "float32", "max_position_embeddings": 2048,
            "rms_norm_eps": 1e-5, "hidden_act": "silu"}


def make_checkpoints(cfg: CostConfig, folder: Path) -> tuple[dict[str, list[Path]], int]:
    """``{format: k checkpoint paths}`` (perturbed copies, reused when present) and the parameter count."""
    import torch

    sd = llama_state_dict(cfg)
    params = sum(v.numel() for v in sd.values())
    g = torch.Generator().manual_seed(1)
    paths: dict[str, list[Path]] = {f: [] for f in cfg.formats}
    for i in range(cfg.k):
        for v in sd.values():
            v.add_(torch.randn(v.shape, generator=g), alpha=1e-3)
        step = (i + 1) * 500
        for fmt in cfg.formats:
            path = folder / fmt / (f"checkpoint{i + 1}.pt" if fmt == "pt" else f"checkpoint-{step}")
            paths[fmt].append(path)
            if path.exists():
                continue
            path.parent.mkdir(parents=True, exist_ok=True)
            if fmt == "pt":
                torch.save({"model": sd, "args": None, "extra_state": {"epoch": i + 1}}, path)
            elif fmt == "hf":
                from safetensors.torch import save_file

                path.mkdir()
                save_file(sd, path / "model.safetensors", metadata={"format": "pt"})
                (path / "config.json").write_text(json.dumps(_llama_config(cfg), indent=2))
            else:
                import torch.distributed.checkpoint as dcp

                dcp.save({"model": sd}, checkpoint_id=str(path), no_dist=True)
    return paths, params


def _files(path: Path) -> list[Path]:
    return sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]


def _child(task: str, args: dict) -> dict:
    env = {**os.environ, "OMP_NUM_THREADS": str(args["threads"]), "MKL_NUM_THREADS": str(args["threads"])}
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, "-c", _CHILD, task, json.dumps(args)], capture_output=True, text=True,
                          check=False, env=env)
    if proc.returncode != 0:
        raise RuntimeError(f"the {task} run failed:\n{proc.stderr[-3000:]}")
    row = json.loads(proc.stdout.strip().splitlines()[-1])
    row["process_seconds"] = time.perf_counter() - start
    return row


def lawa_reads(fmt: str) -> bool:
    """Whether this ``lawa average`` reads the format (DCP folders came later)."""
    if fmt != "dcp":
        return True
    import importlib.util

    return importlib.util.find_spec("lawa_optim.offline.dcp_io") is not None


def mergekit_installed() -> bool:
    import importlib.util

    return importlib.util.find_spec("mergekit") is not None


def _compile_bytecode() -> None:
    """Byte-compile lawa_optim as ``pip install`` does, so no run pays for compiling it.

    With ``PYTHONDONTWRITEBYTECODE`` set (or a read-only checkout) every fresh process would
    compile the package's modules again: 0.02-0.04 s of each `lawa average` run, which an installed
    package never pays.
    """
    import compileall

    import lawa_optim

    try:
        compileall.compile_dir(Path(lawa_optim.__file__).parent, quiet=1)
    except OSError:
        pass  # a read-only install: already compiled by pip, or measured as it is


def run(cfg: CostConfig, progress=None) -> dict:
    """Measure; write ``results.json``, ``results.csv``, ``table.md`` and ``cost.png`` into ``cfg.out``."""
    cfg.out.mkdir(parents=True, exist_ok=True)
    ckpts = cfg.out / "checkpoints"
    paths, params = make_checkpoints(cfg, ckpts)
    missing = {}
    tasks = []
    for fmt in cfg.formats:
        for tool in TOOLS[fmt]:
            if tool == "mergekit" and not mergekit_installed():
                missing[(fmt, tool)] = "not installed"
            elif tool == "lawa" and not lawa_reads(fmt):
                missing[(fmt, tool)] = "not supported by this version"
            else:
                tasks.append((fmt, tool))
    files = {fmt: [str(f) for p in paths[fmt] for f in _files(p)] for fmt in cfg.formats}
    nbytes = {fmt: sum(Path(f).stat().st_size for f in files[fmt]) for fmt in cfg.formats}
    for fmt in cfg.formats:  # warm the page cache: every measurement finds the files in memory
        _child("read", {"files": files[fmt], "threads": 1})
    _compile_bytecode()
    rows = []
    out = cfg.out / "output"
    for r in range(cfg.repeats):
        order = [(t, (fmt, tool)) for t in cfg.threads for fmt, tool in tasks if t == cfg.threads[0]
                 or tool not in FLOORS]
        shift = (r * len(order)) // cfg.repeats  # rotate: no tool always runs right after another
        for threads, (fmt, tool) in order[shift:] + order[:shift]:
            shutil.rmtree(out, ignore_errors=True)
            if out.exists():
                out.unlink()
            target = out.with_suffix(".pt") if fmt == "pt" else out
            args = {"files": files[fmt], "inputs": [str(p) for p in paths[fmt]], "out": str(target),
                    "threads": threads}
            row = {"round": r, "format": fmt, "tool": tool, "threads": threads, **_child(tool, args)}
            row.pop("task")
            rows.append(row)
            for p in (out, out.with_suffix(".pt")):
                shutil.rmtree(p, ignore_errors=True) if p.is_dir() else p.unlink(missing_ok=True)
            if progress:
                progress(row)
    if not cfg.keep_checkpoints:
        shutil.rmtree(ckpts, ignore_errors=True)
    results = summarize(cfg, rows, params, nbytes, missing)
    (cfg.out / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    with open(cfg.out / "results.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=["round", "format", "tool", "threads", "seconds", "cpu_seconds",
                                               "process_seconds", "import_seconds", "peak_rss_mib"])
        writer.writeheader()
        writer.writerows(rows)
    results["table"] = markdown_table(results)
    (cfg.out / "table.md").write_text(results["table"] + "\n")
    plot(results, cfg.out / "cost.png")
    return results


def summarize(cfg: CostConfig, rows: list[dict], params: int, nbytes: dict, missing: dict) -> dict:
    """Medians per (format, threads, tool) and the target ratios."""
    cells: dict = {}
    for fmt in cfg.formats:
        for threads in cfg.threads:
            for tool in TOOLS[fmt]:
                runs = [r for r in rows if (r["format"], r["threads"], r["tool"]) == (fmt, threads, tool)]
                key = f"{fmt}/{threads}/{tool}"
                if not runs:
                    cells[key] = {"missing": missing.get((fmt, tool), "not measured")}
                    continue
                cells[key] = {f: statistics.median(r[f] for r in runs) for f in
                              ("seconds", "cpu_seconds", "process_seconds", "import_seconds", "peak_rss_mib")}
                cells[key]["runs"] = len(runs)
    ratios = {}
    one, most = cfg.threads[0], cfg.threads[-1]

    def ratio(a: str, b: str, field: str) -> float | None:
        x, y = cells.get(a, {}), cells.get(b, {})
        return x[field] / y[field] if field in x and field in y and y[field] else None

    for fmt in cfg.formats:
        for threads in cfg.threads:
            lawa = f"{fmt}/{threads}/lawa"
            base = f"{fmt}/{one}"  # the floors, measured at one thread
            r = {"lawa_vs_floor_time": ratio(lawa, f"{base}/floor", "seconds"),
                 "lawa_vs_floor_cpu": ratio(lawa, f"{base}/floor", "cpu_seconds"),
                 "lawa_vs_floor+write_time": ratio(lawa, f"{base}/floor+write", "seconds"),
                 "lawa_vs_floor+write_cpu": ratio(lawa, f"{base}/floor+write", "cpu_seconds")}
            peer = {"pt": "plain", "hf": "mergekit"}.get(fmt)
            if peer:
                r[f"lawa_vs_{peer}_time"] = ratio(lawa, f"{fmt}/{threads}/{peer}", "seconds")
                r[f"lawa_vs_{peer}_cpu"] = ratio(lawa, f"{fmt}/{threads}/{peer}", "cpu_seconds")
                r[f"lawa_vs_{peer}_memory"] = ratio(lawa, f"{fmt}/{threads}/{peer}", "peak_rss_mib")
            ratios[f"{fmt}/{threads}"] = r
        if most != one:
            ratios[f"{fmt}/speedup_{most}_threads"] = ratio(f"{fmt}/{one}/lawa", f"{fmt}/{most}/lawa", "seconds")
    # the issue's targets; and 1.3x the floor that also writes the average (which any tool writing it pays)
    floors = {"lawa_vs_floor_time": 1.3, "lawa_vs_floor+write_time": 1.3}
    targets = {"pt": {"lawa_vs_plain_time": 0.7, "lawa_vs_plain_memory": 1.0, **floors},
               "hf": {"lawa_vs_mergekit_time": 0.5, "lawa_vs_mergekit_memory": 0.25, **floors},
               "dcp": dict(floors)}
    met = {}
    for fmt in cfg.formats:
        for name, limit in targets[fmt].items():
            value = ratios[f"{fmt}/{one}"].get(name)
            met[f"{fmt}/{one}/{name}"] = None if value is None else bool(value <= limit)
    return {
        "config": {**{k: v for k, v in asdict(cfg).items() if k != "out"}, "out": str(cfg.out)},
        "parameters": params, "fp32_mib": params * 4 / 2**20, "files_mib": {f: b / 2**20 for f, b in nbytes.items()},
        "machine": {"cpus": os.cpu_count(), "load_average": os.getloadavg()},
        "cells": cells, "ratios": ratios, "targets": targets, "met": met, "rows": rows,
    }


def _fmt(x: float | None, spec: str, suffix: str = "") -> str:
    return "-" if x is None else f"{x:{spec}}{suffix}"


def markdown_table(results: dict) -> str:
    """One row per (format, tool), a time and a memory column per thread count, and the target ratios."""
    cfg = results["config"]
    threads = cfg["threads"]
    head = "| input | tool | " + " | ".join(f"time, {t} thread{'s' if t > 1 else ''} (CPU)" for t in threads)
    head += f" | peak RSS, {threads[0]} thread |"
    lines = [head, "|" + "---|" * (3 + len(threads))]
    for fmt in cfg["formats"]:
        for tool in TOOLS[fmt]:
            cells = [results["cells"][f"{fmt}/{t}/{tool}"] for t in threads]
            if "missing" in cells[0]:
                lines.append(f"| {FORMAT_NAMES[fmt]} | {TOOL_NAMES[tool]} | {cells[0]['missing']} |"
                             + " |" * len(threads))
                continue
            times = " | ".join("-" if "missing" in c else f"{c['seconds']:.2f} s ({c['cpu_seconds']:.2f} s)"
                               for c in cells)
            name = f"**{TOOL_NAMES[tool]}**" if tool == "lawa" else TOOL_NAMES[tool]
            lines.append(f"| {FORMAT_NAMES[fmt]} | {name} | {times} | {cells[0]['peak_rss_mib']:,.0f} MiB |")
    lines.append("")
    one = threads[0]
    for fmt in cfg["formats"]:
        r = results["ratios"][f"{fmt}/{one}"]
        parts = [f"{name.replace('lawa_vs_', 'vs ').replace('_', ' ')} {_fmt(v, '.2f', 'x')}"
                 + ("" if results["met"].get(f"{fmt}/{one}/{name}") is None else
                    f" (target <= {results['targets'][fmt][name]}: "
                    f"{'met' if results['met'][f'{fmt}/{one}/{name}'] else 'missed'})")
                 for name, v in r.items()]
        speedup = results["ratios"].get(f"{fmt}/speedup_{threads[-1]}_threads")
        extra = f"; {threads[-1]} threads: {_fmt(speedup, '.2f', 'x')} faster" if len(threads) > 1 else ""
        lines.append(f"- {FORMAT_NAMES[fmt]}, `lawa average` at {one} thread: " + "; ".join(parts) + extra)
    lines.append("")
    lines.append(f"{results['parameters'] / 1e6:.1f}M float32 parameters ({results['fp32_mib']:.0f} MiB), "
                 f"k={cfg['k']}; medians of {cfg['repeats']} interleaved rounds; time = wall time of the work "
                 "after `import torch` (its CPU time in parentheses); peak RSS = VmHWM of the process, the "
                 f"interpreter and torch included; {results['machine']['cpus']} CPUs, load average "
                 f"{results['machine']['load_average'][0]:.1f} at the end (other jobs shared the cores).")
    return "\n".join(lines)


def plot(results: dict, path: Path) -> None:
    """Time (one thread) and peak memory of every tool, per format."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cfg = results["config"]
    one = cfg["threads"][0]
    fig, axes = plt.subplots(1, 2, figsize=(11, 3.8))
    labels, times, mems = [], [], []
    for fmt in cfg["formats"]:
        for tool in TOOLS[fmt]:
            cell = results["cells"][f"{fmt}/{one}/{tool}"]
            if "missing" in cell:
                continue
            labels.append(f"{fmt}: {tool}")
            times.append(cell["seconds"])
            mems.append(cell["peak_rss_mib"])
    colors = ["C3" if lbl.endswith("lawa") else "C7" if lbl.endswith(("read", "floor", "floor+write")) else "C0"
              for lbl in labels]
    for ax, values, title in ((axes[0], times, f"time, {one} thread (s)"), (axes[1], mems, "peak RSS (MiB)")):
        ax.barh(range(len(values)), values, color=colors)
        ax.set_yticks(range(len(values)), labels, fontsize=7)
        ax.invert_yaxis()
        ax.set_title(title, fontsize=9)
    fig.suptitle(f"{results['parameters'] / 1e6:.1f}M parameters, k={cfg['k']}", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def _ints(value: str) -> tuple[int, ...]:
    return tuple(os.cpu_count() or 1 if v.strip() == "all" else int(v) for v in value.split(","))


@click.command(epilog="""\b
Examples:
  lawa bench average-cost --out runs/average_cost                        # 134.5M parameters, k=6, 3 rounds
  lawa bench average-cost --out runs/small --layers 4 --repeats 3        # 42.5M parameters
  lawa bench average-cost --out runs/tiny --layers 1 --vocab 1000 --k 3 --repeats 1 --formats pt,hf
""")
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), default=Path("runs/average_cost"),
              show_default=True, help="Run folder for results.json/.csv, table.md, cost.png (and the checkpoints).")
@click.option("--k", type=click.IntRange(min=1), default=6, show_default=True, help="Checkpoints averaged.")
@click.option("--repeats", type=click.IntRange(min=1), default=3, show_default=True, help="Interleaved rounds.")
@click.option("--layers", type=click.IntRange(min=1), default=30, show_default=True, help="Llama layers.")
@click.option("--hidden", type=click.IntRange(min=8), default=576, show_default=True,
              help="Hidden size (MLP: 8/3 of it; heads of 64; a third as many key/value heads).")
@click.option("--vocab", type=click.IntRange(min=8), default=49152, show_default=True, help="Vocabulary size.")
@click.option("--formats", default="pt,hf,dcp", show_default=True, help="Comma-separated: pt, hf, dcp.")
@click.option("--threads", "threads", default="1,all", show_default=True,
              help="Comma-separated thread counts ('all': every core).")
@click.option("--keep-checkpoints", is_flag=True, help="Keep OUT/checkpoints (a rerun reuses them).")
def average_cost(out, k, repeats, layers, hidden, vocab, formats, threads, keep_checkpoints) -> None:
    """Time and peak memory of `lawa average` beside the plain loop, mergekit and the floor, per format."""
    try:
        cfg = CostConfig(out=out, k=k, repeats=repeats, layers=layers, hidden=hidden, vocab=vocab,
                         intermediate=hidden * 8 // 3,
                         heads=max(1, hidden // 64), kv_heads=max(1, hidden // 192),
                         formats=tuple(f.strip() for f in formats.split(",")), threads=_ints(threads),
                         keep_checkpoints=keep_checkpoints)
    except ValueError as err:
        raise click.UsageError(str(err)) from err
    res = run(cfg, progress=lambda row: click.echo(
        f"  {row['format']:3s} {row['tool']:8s} {row['threads']}t {row['seconds']:7.2f} s "
        f"(CPU {row['cpu_seconds']:6.2f} s)  peak RSS {row['peak_rss_mib']:7.0f} MiB", err=True))
    click.echo(res["table"])
    click.echo(f"Results in {out}")
