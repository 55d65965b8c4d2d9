"""Checkpoint bytes of a LAWA optimizer against the bare optimizer's, on torchvision's ResNet-18.

``python -m lawa_benchmarks.checkpoint_bytes RUN_DIR`` (or ``python benchmarks/checkpoint_bytes.py
RUN_DIR``) builds a ResNet-18 (11.7 M float32 parameters), wraps SGD with momentum in
``LAWAWrapper(k=3)`` and ``LAWAWrapper(k=6)``, takes one optimizer step with real gradients (so
SGD holds its momentum buffers) and then ``snapshots`` snapshots (the ring 5 / 4 deep), and
measures ``len(torch.save(...))`` of

- the bare optimizer's ``state_dict()``;
- the wrapper's ``state_dict()`` (format 2: all k slots, no running sums);
- the same ring in format 1 (what versions before saved: the filled slots plus the float64
  running sums), built here from the same ring;

and the floor ``bare + k * P * 4`` bytes. Writes ``checkpoint_bytes.json`` and
``checkpoint_bytes.md`` (a Markdown table of the ratios to the bare optimizer) into RUN_DIR.
"""

from __future__ import annotations

import io
import json
import sys
from pathlib import Path

import torch

from lawa_optim.protocol import PARAM_STATE_PREFIX, STATE_KEY

CASES = ((3, 5), (6, 4), (6, 8))  # (k, snapshots taken): (k=6 with 4: the ring not yet full) and k=6 full


def _nbytes(obj: object) -> int:
    buf = io.BytesIO()
    torch.save(obj, buf)
    return len(buf.getvalue())


def _format1(opt) -> dict:
    """The wrapper's state dict as format 1 held it: filled slots oldest first, float64 sums."""
    sd = opt.state_dict()
    ring = opt._ring
    lawa = dict(sd[STATE_KEY], format=1)
    lawa["ring"] = [torch.stack(ring.snapshots(i)) for i in range(len(ring.params))]
    lawa["sums"] = [ring.sum_of(i).clone() for i in range(len(ring.params))]
    state = {key: {n: v for n, v in entry.items() if not n.startswith(PARAM_STATE_PREFIX)}
             for key, entry in sd["state"].items()}
    return {"state": {key: entry for key, entry in state.items() if entry}, "param_groups": sd["param_groups"],
            STATE_KEY: lawa}


def measure() -> list[dict]:
    from torchvision.models import resnet18

    from lawa_optim import LAWAWrapper

    rows = []
    for k, snapshots in CASES:
        torch.manual_seed(0)
        model = resnet18()
        opt = LAWAWrapper(torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9), k=k)
        opt.zero_grad()
        model(torch.randn(2, 3, 64, 64)).logsumexp(1).mean().backward()
        opt.step()
        for _ in range(snapshots):
            opt.snapshot()
        n = sum(p.numel() for p in model.parameters())
        bare, lawa, old = _nbytes(opt.optimizer.state_dict()), _nbytes(opt.state_dict()), _nbytes(_format1(opt))
        floor = bare + k * n * 4
        rows.append({
            "k": k, "snapshots": snapshots, "parameters": n, "tensors": len(list(model.parameters())),
            "bare": bare, "lawa_format2": lawa, "lawa_format1": old, "floor": floor,
            "ratio_format2": lawa / bare, "ratio_format1": old / bare, "ratio_floor": floor / bare,
            "over_floor_bytes": lawa - floor,
        })
    return rows


def table(rows: list[dict]) -> str:
    mb = 1e6
    lines = ["| k | snapshots | bare SGD | LAWA before (format 1) | LAWA now (format 2) | floor: bare + k snapshots |",
             "|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(
            f"| {r['k']} | {r['snapshots']} | {r['bare'] / mb:.1f} MB (1.00) | {r['lawa_format1'] / mb:.1f} MB "
            f"({r['ratio_format1']:.2f}) | {r['lawa_format2'] / mb:.1f} MB ({r['ratio_format2']:.2f}) | "
            f"{r['floor'] / mb:.1f} MB ({r['ratio_floor']:.2f}); now {r['over_floor_bytes'] / 1e3:.0f} KB above |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        raise SystemExit("usage: python -m lawa_benchmarks.checkpoint_bytes RUN_DIR")
    out = Path(args[0])
    out.mkdir(parents=True, exist_ok=True)
    rows = measure()
    (out / "checkpoint_bytes.json").write_text(json.dumps(rows, indent=2))
    (out / "checkpoint_bytes.md").write_text(table(rows) + "\n")
    print(table(rows))


if __name__ == "__main__":
    main()
