"""Probe: LAWA's observer under accelerate's FSDP2 path, which runs on GPUs only (gpu_check.sh runs it).

accelerate (1.16) turns an FSDP plugin on only for GPU-like devices: with ``cpu=True`` it runs
MULTI_CPU with plain parameters, so ``LAWATrainerCallback`` refuses FSDP (an untested path is
not shipped as supported). This probe checks on a GPU what supporting it would rest on:

1. ``Accelerator(fsdp_plugin=FullyShardedDataParallelPlugin(fsdp_version=2))`` + ``prepare``
   gives DTensor parameters;
2. an :class:`~lawa_optim.integrations.observer.Observer` on the prepared optimizer counts its
   steps, snapshots the local shards, and its average (gathered) equals the float64 mean of the
   gathered snapshots;
3. the ring saved with ``get_optimizer_state_dict`` + :func:`lawa_optim.dcp_atomic.atomic_save`
   and loaded into a fresh observer gives the same average, bit for bit.

Run: ``torchrun --nproc_per_node=<GPUs> benchmarks/gpu_fsdp2_accelerate.py OUT_DIR``; writes
``OUT_DIR/fsdp2_accelerate.json`` (one entry per check: passed, detail). ``--smoke`` runs the same
steps on the CPU (accelerate ignores the plugin there: a test of this script, not of FSDP2).
"""

from __future__ import annotations

import json
import sys
import traceback
from pathlib import Path

import torch
from torch import nn


def _full(t: torch.Tensor) -> torch.Tensor:
    return (t.full_tensor() if hasattr(t, "full_tensor") else t).detach().double().cpu()


def main(out: Path, smoke: bool) -> dict:
    from accelerate import Accelerator
    from accelerate.utils import FullyShardedDataParallelPlugin
    from torch.distributed.checkpoint.state_dict import get_optimizer_state_dict, set_optimizer_state_dict

    from lawa_optim import dcp_atomic
    from lawa_optim.integrations.observer import Observer

    checks: dict[str, dict] = {}
    acc = Accelerator(cpu=smoke, fsdp_plugin=FullyShardedDataParallelPlugin(fsdp_version=2))
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(32, 64), nn.Tanh(), nn.Linear(64, 1))
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    model, opt = acc.prepare(model, opt)
    params = list(model.parameters())
    sharded = all(hasattr(p, "to_local") for p in params)
    checks["fsdp2_dtensor_parameters"] = {  # not run in smoke mode: accelerate ignores the FSDP plugin on CPU
        "passed": None if smoke else bool(acc.is_fsdp2 and sharded),
        "detail": f"distributed_type={acc.distributed_type}, is_fsdp2={acc.is_fsdp2}, DTensor parameters={sharded}",
    }
    obs = Observer(opt, "lawa", k=3)
    history = []
    g = torch.Generator().manual_seed(acc.process_index)
    for step in range(6):
        x = torch.randn(16, 32, generator=g).to(acc.device)
        loss = nn.functional.mse_loss(model(x), x.sum(1, keepdim=True))
        opt.zero_grad()
        acc.backward(loss)
        opt.step()
        if step % 2 == 1:
            obs.snapshot()
            history.append([_full(p) for p in params])
    reference = [torch.stack(ws).mean(0) for ws in zip(*history)]
    with obs.averaged(model):
        averaged = [_full(p) for p in params]
    diff = max((a - r).abs().max().item() for a, r in zip(averaged, reference))
    checks["observer_average_equals_float64_mean"] = {
        "passed": obs.num_steps == 6 and diff < 1e-6,
        "detail": f"steps counted {obs.num_steps} of 6; max |average - float64 mean| = {diff:.3g}",
    }
    folder = out / "fsdp2_accelerate_ring"
    dcp_atomic.atomic_save({"ring": get_optimizer_state_dict(model, obs.wrapper)}, folder)
    obs.close()
    fresh = Observer(opt, "lawa", k=3)
    state = {"ring": get_optimizer_state_dict(model, fresh.wrapper)}
    dcp_atomic.load(state, folder)
    set_optimizer_state_dict(model, fresh.wrapper, state["ring"])
    with fresh.averaged(model):
        reloaded = [_full(p) for p in params]
    checks["ring_dcp_round_trip_bit_exact"] = {
        "passed": all(torch.equal(a, b) for a, b in zip(averaged, reloaded)),
        "detail": f"snapshots after load: {fresh.wrapper.num_snapshots} of 3",
    }
    return {"accelerate_process": acc.process_index, "world": acc.num_processes, "smoke": smoke, "checks": checks}


if __name__ == "__main__":
    out_dir = Path(sys.argv[1] if len(sys.argv) > 1 else "runs/gpu_check")
    out_dir.mkdir(parents=True, exist_ok=True)
    try:
        result = main(out_dir, smoke="--smoke" in sys.argv)
    except Exception:  # the probe reports what broke instead of stopping gpu_check.sh
        result = {"error": traceback.format_exc()}
    if "error" in result or result["accelerate_process"] == 0:
        text = json.dumps(result, indent=2)
        (out_dir / "fsdp2_accelerate.json").write_text(text)
        print(text)
