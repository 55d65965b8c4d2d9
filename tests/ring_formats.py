"""Test helper: a LAWA state dict in the format before the ring moved into the per-parameter state.

Format 1 kept the ring under ``sd["lawa"]`` as ``"ring"`` (per parameter, the filled slots oldest
first, ``Tensor[size, *shape]``) and ``"sums"`` (the running sums, float64 for float32 parameters);
:func:`to_format1` turns a format-2 state dict into the one that version saved for the same ring.
"""

from __future__ import annotations

import copy

import torch

from lawa_optim.ring_state import read_meta, slot_key, slot_order


def _acc(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype in (torch.float32, torch.float64) else torch.float32


def to_format1(sd: dict) -> dict:
    """The format-1 state dict of the ring a format-2 ``sd`` holds (its running sums summed oldest first)."""
    sd = copy.deepcopy(sd)
    ring, sums = [], []
    k = sd["lawa"]["k"]
    for key in [key for key, entry in sd["state"].items() if slot_key(0) in entry]:
        entry = sd["state"][key]
        meta = read_meta(entry)
        order = slot_order(meta["count"], meta["head"], k)
        first = entry[slot_key(0)]
        ring.append(torch.stack([entry[slot_key(s)] for s in order]) if order else first.new_empty((0, *first.shape)))
        total = torch.zeros(first.shape, dtype=_acc(first.dtype))
        for s in order:
            total += entry[slot_key(s)].to(total.dtype)
        sums.append(total)
        rest = {n: v for n, v in entry.items() if not n.startswith("lawa_")}
        if rest:
            sd["state"][key] = rest
        else:
            del sd["state"][key]
    sd["lawa"].update(format=1, ring=ring, sums=sums)
    return sd


def ring_tensors(sd: dict) -> list[torch.Tensor]:
    """Every ring entry (``lawa_*``: slots and counters) of a format-2 state dict, in a fixed order,
    to compare two state dicts' rings; never empty (a comparison of nothing would pass)."""
    out = [entry[name] for _, entry in sorted(sd["state"].items(), key=lambda kv: str(kv[0]))
           for name in sorted(entry) if name.startswith("lawa_")]
    assert out, "the state dict holds no ring"
    return out
