"""Non-finite weights never enter the ring (issue 7).

``LAWAWrapper(nonfinite="raise")`` (the default) raises ``RuntimeError`` on a snapshot of weights
holding NaN or Inf; ``nonfinite="skip"`` skips it with a ``RuntimeWarning``. Either way the ring,
its running sum and every average stay exactly what they were, and the next finite snapshot is
taken normally.
"""

from __future__ import annotations

import math
import warnings

import pytest
import torch
from torch import nn

from lawa_optim import LAWAWrapper

BAD_VALUES = {"nan": math.nan, "inf": math.inf, "-inf": -math.inf}


def _make(dtype=torch.float32, nonfinite="raise", k=3, period=None):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 5), nn.Tanh(), nn.Linear(5, 2)).to(dtype)
    model.register_parameter("empty", nn.Parameter(torch.zeros(0, 3, dtype=dtype)))  # holds nothing: fine
    opt = LAWAWrapper(torch.optim.SGD(model.parameters(), lr=0.1), k=k, period=period, nonfinite=nonfinite)
    return model, opt


def _train(model, opt, steps, seed=0):
    g = torch.Generator().manual_seed(seed)
    dtype = next(model.parameters()).dtype
    for _ in range(steps):
        opt.zero_grad()
        model(torch.randn(3, 4, generator=g).to(dtype)).float().pow(2).mean().backward()
        opt.step()


def _ring_state(opt) -> dict:
    """The ring as it is (not through state_dict(), which rebuilds the running sums): its slots,
    running sums and counters; the steps go on and skipped_snapshots counts the refusals."""
    ring = opt._ring
    n = len(ring.params)
    return {"count": ring.count, "size": ring.size, "head": ring.head, "k": opt.k,
            "snapshots": [[s.clone() for s in opt.snapshots(i)] for i in range(n)],
            "sums": [ring.sum_of(i).clone() for i in range(n)]}


def _averages(model, opt) -> list[list[torch.Tensor]]:
    out = []
    for j in range(1, opt.num_snapshots + 1):
        with opt.averaged(k=j):
            out.append([p.detach().clone() for p in model.parameters()])
    return out


def _assert_same(a, b) -> None:
    if isinstance(a, torch.Tensor):
        assert a.dtype == b.dtype and torch.equal(a, b)
    elif isinstance(a, dict):
        assert a.keys() == b.keys()
        for key in a:
            _assert_same(a[key], b[key])
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b)
        for x, y in zip(a, b):
            _assert_same(x, y)
    else:
        assert a == b


def _poison(model, where: str, value: float) -> None:
    layer = model[0] if where == "first" else model[2]
    with torch.no_grad():
        layer.weight[1, 2] = value


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16, torch.float64])
@pytest.mark.parametrize("bad", sorted(BAD_VALUES))
@pytest.mark.parametrize("mode", ["raise", "skip"])
def test_a_nonfinite_snapshot_leaves_the_ring_and_averages_unchanged(dtype, bad, mode):
    model, opt = _make(dtype, nonfinite=mode)
    for seed in range(4):  # a full ring, then one more: the oldest slot would be overwritten
        _train(model, opt, 2, seed)
        opt.snapshot()
    ring, averages = _ring_state(opt), _averages(model, opt)
    _poison(model, "last", BAD_VALUES[bad])
    poisoned = [p.detach().clone() for p in model.parameters()]
    if mode == "raise":
        with pytest.raises(RuntimeError, match=r"NaN or Inf.*unchanged.*nonfinite='skip'"):
            opt.snapshot()
        assert opt.skipped_snapshots == 0
    else:
        with pytest.warns(RuntimeWarning, match=r"parameter\(s\) \[3\] hold NaN or Inf"):
            opt.snapshot()
        assert opt.skipped_snapshots == 1
    _assert_same(ring, _ring_state(opt))
    _assert_same(averages, _averages(model, opt))
    for p, q in zip(model.parameters(), poisoned):  # the training weights are the user's business
        assert torch.equal(p.detach().nan_to_num(), q.nan_to_num())
    # Finite again: the next snapshot is taken as usual and the average is the reference mean.
    _poison(model, "last", 0.25)
    opt.snapshot()
    assert opt.snapshots_taken == ring["count"] + 1
    assert torch.equal(opt.snapshots(3)[-1], model[2].weight.detach())


@pytest.mark.parametrize("mode", ["raise", "skip"])
def test_period_snapshots_in_a_diverged_run(mode):
    """A run diverging mid-way: every period snapshot from then on is refused, never averaged."""
    model, opt = _make(nonfinite=mode, k=2, period=2)
    _train(model, opt, 4)
    assert opt.snapshots_taken == 2
    ring = _ring_state(opt)
    with torch.no_grad():
        model[0].bias.fill_(math.inf)  # the next steps keep (or spread) the non-finite values
    if mode == "raise":
        _train(model, opt, 1)
        with pytest.raises(RuntimeError, match="NaN or Inf after 6 steps"):
            _train(model, opt, 1)
        assert opt.num_steps == 6  # the base optimizer did step: the count says so
    else:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            _train(model, opt, 6)
        assert opt.skipped_snapshots == 3
        assert sum(issubclass(w.category, RuntimeWarning) for w in caught) >= 3
    assert opt.snapshots_taken == 2
    _assert_same(ring, _ring_state(opt))
    with opt.averaged():
        assert all(bool(p.isfinite().all()) for p in model.parameters())


def test_a_large_finite_half_precision_model_is_not_refused():
    """fp16 weights whose sum overflows fp16 are finite; the check must not refuse them."""
    model, opt = _make(torch.float16)
    with torch.no_grad():
        model[0].weight.fill_(60000.0)  # the sum of 20 such values is inf in fp16
    opt.snapshot()
    assert opt.snapshots_taken == 1 and torch.equal(opt.snapshots(1)[-1], model[0].weight.detach())


def test_bad_nonfinite_argument():
    with pytest.raises(ValueError, match="nonfinite: 'ignore'"):
        LAWAWrapper(torch.optim.SGD([nn.Parameter(torch.zeros(2))], lr=0.1), nonfinite="ignore")
