"""The snapshot ring's block loop (lawa_optim.store: push, _fold, write_average) against a float64 reference.

The running sum is updated in place by mixed-dtype ops on cache-sized blocks; parameters longer
than a block, cut across blocks, strided and of every floating dtype must give the sum and the
averages a float64 reference computes from the kept snapshots.
"""

from __future__ import annotations

import pytest
import torch

from lawa_optim import store
from lawa_optim.store import SnapshotRing


def _params(dtype):
    g = torch.Generator().manual_seed(0)
    big = torch.randn(store._CPU_BLOCK + 1000, generator=g).to(dtype)  # longer than a block
    cut = torch.randn(store._CPU_BLOCK // 2 + 7, generator=g).to(dtype)  # crosses a block boundary
    strided = torch.randn(40, 30, generator=g).to(dtype).t()  # kept whole, copied with its strides
    return [big, torch.randn(3, generator=g).to(dtype), cut, strided]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.float16, torch.bfloat16])
def test_running_sum_and_averages_match_float64_reference(dtype):
    params = _params(dtype)
    k = 3
    ring = SnapshotRing(params, k)
    history = []
    g = torch.Generator().manual_seed(1)
    for step in range(2 * k + 2):  # the ring fills, then every push subtracts the oldest
        for p in params:
            p.copy_(p + torch.randn(p.shape, generator=g).to(dtype) * 0.1)
        ring.push()
        history.append([p.clone() for p in params])
        kept = history[-k:]
        for i in range(len(params)):
            want = torch.stack([h[i].to(torch.float64) for h in kept]).sum(0)
            got = ring.sum_of(i).to(torch.float64)
            if dtype == torch.float64:  # a float64 sum of float64 values rounds: close, rebuilt every 8k pushes
                torch.testing.assert_close(got, want, rtol=1e-15, atol=1e-15)
            else:  # a few values summed in a wider dtype: exact
                assert torch.equal(got, want), (step, i)
            assert all(torch.equal(s, h[i]) for s, h in zip(ring.snapshots(i), kept))
    out = [torch.empty_like(p) for p in params]
    ring.write_average(out, k, None)
    for i in range(len(params)):
        want = (torch.stack([h[i].to(torch.float64) for h in history[-k:]]).sum(0) / k).to(dtype)
        if dtype == torch.float64:
            torch.testing.assert_close(out[i], want, rtol=1e-15, atol=1e-15)
        else:
            assert torch.equal(out[i], want), i
    ring.write_average(out, 2, [0.75, 0.25])  # the two newest, weighted
    for i in range(len(params)):
        want = (history[-1][i].to(torch.float64) * 0.75 + history[-2][i].to(torch.float64) * 0.25).to(dtype)
        torch.testing.assert_close(out[i], want)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("own", [True, False])
def test_uniform_average_divided_straight_into_the_parameters_is_the_float64_reference(dtype, own):
    """The uniform mean of the full ring is divided from the running sum straight into the
    parameters' pieces (or into other tensors of their dtype): bit for bit the sum divided in the
    sum's dtype and rounded once, for a parameter longer than a block, one cut across blocks, a
    strided one and a block of several pieces."""
    params = _params(dtype)
    k = 4
    ring = SnapshotRing(params, k)
    assert max(len(pieces) for _, _, pieces in ring.groups[0].blocks) > 1  # a block of several pieces
    g = torch.Generator().manual_seed(2)
    history = []
    for _ in range(k + 3):
        for p in params:
            p.copy_(p + torch.randn(p.shape, generator=g).to(dtype) * 0.1)
        ring.push()
        history.append([p.clone() for p in params])
    dst = params if own else [torch.full_like(p, float("nan")) for p in params]
    ring.write_average(dst, k, None)
    for i, d in enumerate(dst):
        total = ring.sum_of(i)
        assert torch.equal(d, (total / k).to(dtype)), i  # the sum divided in its dtype, rounded once
        if dtype != torch.float64:  # the sum of a few values in the wider dtype is exact: the float64 mean
            want = (torch.stack([h[i].to(torch.float64) for h in history[-k:]]).sum(0) / k).to(dtype)
            assert torch.equal(d, want), i
    if own:  # the strided parameter is still strided and the ring can go on
        assert params[3].stride() == (1, 30)
        ring.push()
