"""The ring's bytes per rank under FSDP2: the formula, the table for large models, and a measurement.

Under FSDP2 each rank keeps the snapshots of its own shards: ``n`` = the rank's share of the
parameters (``P / N`` for ``P`` parameters on ``N`` ranks, the local shards' element count). With
parameters of ``b`` bytes (4 for float32, 2 for bfloat16/float16) the ring holds

- in memory: ``k * n * b`` for the k slots plus ``n * s`` for the running sum (``s`` = 8, a float64
  sum, for float32 parameters; 4, a float32 sum, for half-precision ones), wherever ``offload``
  puts it: on the device (``None``), in pinned host memory (``"cpu"``), in memory-mapped files
  (``"disk"``), plus a scratch block (at most 1 MiB per dtype) on the CPU;
- in a checkpoint: ``k * n * b`` (all k slots; the sums are rebuilt on load, not saved), plus a few
  counters per parameter;
- while the average is evaluated: one more ``n * b`` on the device for the training weights' copy
  (none right after a snapshot, when the training weights are the newest slot).

``python -m lawa_benchmarks.ring_memory table`` prints the table of docs/sharded.md;
``torchrun --nproc_per_node=N -m lawa_benchmarks.ring_memory measure OUT.json`` measures a small
FSDP2 model on N CPU processes (gloo): each rank's local parameter count, the bytes of its ring's
tensors, the bytes of the slots in its optimizer state dict and of its file in a DCP checkpoint
of that state dict, written to ``OUT.json`` (tests/test_sharded_memory.py compares them with
:func:`ring_bytes`).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch

from lawa_optim.ring_state import SLOT_PREFIX

GIB = 2**30
MODELS = {"1B": 1e9, "7B": 7e9, "70B": 70e9}
RANKS = (8, 64, 512)
KS = (4, 6, 8, 16)


def _bytes(dtype: torch.dtype) -> tuple[int, int]:
    """(parameter bytes, running-sum bytes) per element."""
    b = torch.empty((), dtype=dtype).element_size()
    return b, (8 if dtype in (torch.float32, torch.float64) else 4)


def ring_bytes(n: int, k: int, dtype: torch.dtype = torch.float32) -> dict[str, int]:
    """Bytes of one rank's ring for ``n`` local parameter elements: ``memory`` (slots + running sum,
    on the device, pinned host or disk by ``offload``), ``slots``, ``sums``, ``checkpoint`` and
    ``swap`` (the extra copy while the average is evaluated)."""
    b, s = _bytes(dtype)
    return {"slots": k * n * b, "sums": n * s, "memory": k * n * b + n * s, "checkpoint": k * n * b, "swap": n * b}


def table(dtype: torch.dtype = torch.float32) -> str:
    """Markdown: per-rank GiB of the ring in memory (and in each checkpoint) for the models and ranks."""
    head = "| model | ranks | parameters per rank | " + " | ".join(f"k={k}" for k in KS) + " |"
    lines = [head, "|" + "---|" * (3 + len(KS))]
    for name, p in MODELS.items():
        for world in RANKS:
            n = int(p // world)
            cells = []
            for k in KS:
                r = ring_bytes(n, k, dtype)
                cells.append(f"{r['memory'] / GIB:.2f} ({r['checkpoint'] / GIB:.2f})")
            lines.append(f"| {name} | {world} | {n / 1e6:,.1f} M | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def measure(out: Path, k: int = 4) -> None:
    """One rank of the measurement (under torchrun): see the module docstring."""
    import torch.distributed as dist
    import torch.distributed.checkpoint as dcp
    from torch import nn
    from torch.distributed.checkpoint.state_dict import get_optimizer_state_dict
    from torch.distributed.fsdp import fully_shard

    from lawa_optim import LAWAWrapper

    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(37, 301), nn.Tanh(), nn.Linear(301, 129), nn.Tanh(), nn.Linear(129, 5))
    total = sum(p.numel() for p in model.parameters())
    for layer in model:
        if isinstance(layer, nn.Linear):
            fully_shard(layer)
    fully_shard(model)
    opt = LAWAWrapper(torch.optim.SGD(model.parameters(), lr=0.01), k=k, period=1)  # SGD: no state of its own
    for _ in range(k + 1):
        opt.zero_grad()
        model(torch.randn(8, 37)).square().mean().backward()
        opt.step()
    local = sum(p.to_local().numel() for p in model.parameters())
    ring = opt._ring  # the measured object: every tensor the ring allocated
    ring_tensors = [t for g in ring.groups for t in (g.rows, g.total)]
    scratch = sum(t.nbytes for t in ring._scratch.values())
    sd = get_optimizer_state_dict(model, opt)
    slots = sum(v.to_local().nbytes if hasattr(v, "to_local") else v.nbytes
                for entry in sd["state"].values() for key, v in entry.items() if key.startswith(SLOT_PREFIX))
    folder = out.parent / f"{out.stem}_dcp"
    dcp.save({"optim": sd}, checkpoint_id=folder)
    dist.barrier()
    file_bytes = (folder / f"__{rank}_0.distcp").stat().st_size
    row = {"rank": rank, "world": world, "k": k, "total_params": total, "local_params": local,
           "ring_bytes": sum(t.nbytes for t in ring_tensors), "scratch_bytes": scratch,
           "state_dict_slot_bytes": slots, "dcp_file_bytes": file_bytes}
    rows = [None] * world
    dist.all_gather_object(rows, row)
    if rank == 0:
        out.write_text(json.dumps(rows, indent=1))
    dist.destroy_process_group()


if __name__ == "__main__":
    if sys.argv[1:2] == ["table"]:
        print(table())
    elif sys.argv[1:2] == ["measure"] and len(sys.argv) == 3:
        measure(Path(sys.argv[2]))
    else:
        sys.exit("usage: python -m lawa_benchmarks.ring_memory table | torchrun ... measure OUT.json")
