"""``lawa bench overhead``: what LAWA costs, as ratios to side-by-side references.

:func:`run` takes an :class:`OverheadConfig` and returns the results (also written as
``overhead.json``, ``overhead.md`` and ``overhead.png`` into ``cfg.out``). No click here.

Example:
    >>> from lawa_benchmarks.overhead.run import OverheadConfig, run
    >>> results = run(OverheadConfig(sizes=(100_000,), repeats=5, out="runs/overhead-smoke"))
    >>> results["figures"][0]["figure"], results["figures"][0]["ratio"] > 0
    ('snapshot', True)
"""

from __future__ import annotations

import json
import os
import platform
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from lawa_optim.store import acc_dtype

from .figures import epoch_figure, floors, make_params, resnet, size_figures, step_figure, tiny_mlp
from .measure import Clock, traffic_floors
from .report import markdown_table, plot

__all__ = ["OverheadConfig", "run", "DEFAULT_SIZES"]

DEFAULT_SIZES = (100_000, 1_000_000, 10_000_000, 100_000_000)


DTYPES = ("float32", "bfloat16", "float16")  # what the per-size figures can measure


@dataclass(frozen=True)
class OverheadConfig:
    """What ``lawa bench overhead`` measures.

    Args:
        out (str or Path): the run folder for ``overhead.json``/``.md``/``.png``.
        sizes (tuple of int): parameter counts of the per-size figures (default: 1e5 .. 1e8).
        ks (tuple of int): ring sizes; the main figures use the middle one (the paper's 6 by
            default), the k-independence figure compares the largest with the smallest
            (default: (2, 6, 16)).
        device (str): ``"cpu"`` or ``"cuda"`` (default: ``"cpu"``).
        dtype (str): the parameters' dtype in the per-size figures: ``"float32"``, ``"bfloat16"``
            or ``"float16"`` (default: ``"float32"``).
        repeats (int): interleaved pairs per figure (default: 11).
        large_repeats (int): pairs per figure for sizes >= ``large_size`` (default: 3).
        large_size (int): see ``large_repeats`` (default: 3e7).
        threads (int, optional): torch intra-op threads on the CPU; 1 makes the clock the
            thread's CPU time, robust on a shared machine (default: 1).
        max_gib (float): skip a figure whose tensors would need more memory (default: 6).
        models (bool): also measure step() and epoch overhead on real models (default: True).
        epoch_model (str): torchvision model of the epoch figure (default: ``"resnet18"``).
        epoch_batches, batch_size, image_size (int): the synthetic epoch (default: 16, 16, 32).
        epoch_repeats (int): interleaved epoch pairs (default: 3).
        disk (bool): also measure the disk-backed ring (default: True).
        fused (bool): also measure the snapshot and averaged() with ``fused=True`` (the
            ``torch.compile``'d kernels; CPU only), with each kernel's first-call time (default: False).
    """

    out: str | Path
    sizes: tuple[int, ...] = DEFAULT_SIZES
    ks: tuple[int, ...] = (2, 6, 16)
    device: str = "cpu"
    dtype: str = "float32"
    repeats: int = 11
    large_repeats: int = 3
    large_size: int = 30_000_000
    threads: int | None = 1
    max_gib: float = 6.0
    models: bool = True
    epoch_model: str = "resnet18"
    epoch_batches: int = 16
    batch_size: int = 16
    image_size: int = 32
    epoch_repeats: int = 3
    disk: bool = True
    fused: bool = False
    notes: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        errors = []
        if self.dtype not in DTYPES:
            errors.append(f"dtype={self.dtype!r}: use one of {DTYPES}")
        if not self.sizes or any(not isinstance(s, int) or s < 1000 for s in self.sizes):
            errors.append(f"sizes={self.sizes!r}: give parameter counts >= 1000")
        if len(self.ks) < 2 or any(not isinstance(k, int) or k < 1 for k in self.ks):
            errors.append(f"ks={self.ks!r}: give at least two ring sizes >= 1, e.g. 2,6,16")
        if self.device not in ("cpu", "cuda"):
            errors.append(f"device={self.device!r}: use cpu or cuda")
        elif self.device == "cuda" and not torch.cuda.is_available():
            errors.append("device='cuda' but torch.cuda.is_available() is False on this machine")
        for name in ("repeats", "large_repeats", "epoch_repeats", "epoch_batches", "batch_size", "image_size"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                errors.append(f"{name}={value!r}: use a positive int")
        if self.threads is not None and (not isinstance(self.threads, int) or self.threads < 1):
            errors.append(f"threads={self.threads!r}: use a positive int or None for torch's default")
        if not self.max_gib > 0:
            errors.append(f"max_gib={self.max_gib!r}: use a positive number")
        if errors:
            raise ValueError("Invalid overhead config: " + "; ".join(errors))

    @property
    def main_k(self) -> int:
        ordered = sorted(self.ks)
        return ordered[len(ordered) // 2]


def _machine(device: torch.device) -> dict:
    info = {
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpus": os.cpu_count(),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
    }
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
    return info


def run(cfg: OverheadConfig, progress: bool = True) -> dict:
    """Measure every figure, write ``overhead.json``, ``overhead.md`` and ``overhead.png``, return the results."""
    from tqdm.auto import tqdm

    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    if cfg.threads is not None and cfg.device == "cpu":
        torch.set_num_threads(cfg.threads)
    device = torch.device(cfg.device)
    clock = Clock.for_device(device)
    budget = cfg.max_gib * 2**30
    k = cfg.main_k
    ks = (min(cfg.ks), max(cfg.ks))
    figures: list[dict] = []
    steps = list(cfg.sizes) + (["mlp", "resnet18", "epoch"] if cfg.models else [])
    if cfg.models and device.type == "cuda":
        steps.append("epoch_offload")
    results = {
        "config": {k_: (str(v) if isinstance(v, Path) else v) for k_, v in asdict(cfg).items()},
        "clock": clock.name,
        "machine": _machine(device),
        "complete": False,
        "figures": figures,
    }
    bar = tqdm(steps, desc="overhead", disable=not progress)
    for item in bar:
        (out / "overhead.json").write_text(json.dumps(results, indent=1))  # partial results survive a kill
        bar.set_postfix_str(str(item))
        if isinstance(item, int):
            repeats = cfg.large_repeats if item >= cfg.large_size else cfg.repeats
            params = make_params(item, device, getattr(torch, cfg.dtype))
            figures += size_figures(params, k, ks, clock, repeats, lambda need: need <= budget, disk=cfg.disk,
                                    fused=cfg.fused)
            acc = acc_dtype(params[0].dtype)
            need = item * (2 * params[0].element_size() + 2 * torch.empty((), dtype=acc).element_size())
            if need <= budget:  # what the floors' bytes cost here, moved without arithmetic
                rows = traffic_floors(params, acc, clock, repeats, floors(params[0].dtype, k))
            else:
                rows = [{"figure": f"{kind}_{what}", "skipped": f"needs ~{need / 2**30:.1f} GiB, over --max-gib"}
                        for kind in ("traffic", "arithmetic") for what in ("snapshot", "averaged")]
            figures += [{**row, "size": item} for row in rows]
            del params
        elif item == "mlp":
            figures.append(step_figure("step_tiny_mlp", tiny_mlp().to(device), clock, cfg.repeats, 500, 1.02))
        elif item == "resnet18":
            figures.append(step_figure("step_resnet18", resnet("resnet18").to(device), clock, cfg.repeats, 3, 1.005))
        else:
            figures.append(epoch_figure(
                cfg.epoch_model, device, clock, cfg.epoch_repeats, cfg.epoch_batches, cfg.batch_size,
                cfg.image_size, k=k, offload="cpu" if item == "epoch_offload" else None,
            ))
    results["complete"] = True
    (out / "overhead.json").write_text(json.dumps(results, indent=1))
    table = markdown_table(results)
    (out / "overhead.md").write_text(table + "\n")
    plot(results, out / "overhead.png")
    results["table"] = table
    return results
