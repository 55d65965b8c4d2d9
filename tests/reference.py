"""The slow, obviously-correct reference every averaging test compares against."""

from __future__ import annotations

import torch


def reference_average(history: list[list[torch.Tensor]], j: int, coeffs=None) -> list[torch.Tensor]:
    """Float64 mean (or weighted sum, coefficients newest first) of the ``j`` latest snapshots.

    ``history`` is a list of snapshots, oldest first, each a list of tensors (one per parameter).
    """
    window = history[-j:]
    out = []
    for i in range(len(window[0])):
        stack = torch.stack([snap[i].double() for snap in window])
        if coeffs is None:
            out.append(stack.mean(0))
        else:
            w = torch.tensor(coeffs[::-1], dtype=torch.float64).view(-1, *[1] * (stack.dim() - 1))
            out.append((stack * w).sum(0))
    return out
