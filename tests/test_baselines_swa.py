"""SWAWrapper against the plain float64 mean of its snapshots; SWALR drives it."""

from __future__ import annotations

import pytest
import torch
from helpers import class_batches, mlp, train_classifier
from test_zoo import _eval_weights, _weights
from torch.optim.swa_utils import SWALR

from lawa_optim import SWAWrapper


@pytest.mark.parametrize("swa_start", [0, 3])
def test_is_the_mean_of_snapshots_from_swa_start(swa_start):
    data = class_batches(n=16, seed=123)
    model = mlp(4, 8, 3)
    opt = SWAWrapper(torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9), period=2, swa_start=swa_start)
    snapshots = []
    for step in range(1, 21):
        train_classifier(model, opt, data, 1, start=step - 1)
        if step % 2 == 0:
            snapshots.append([p.detach().double().clone() for p in model.parameters()])
    assert opt.snapshots_taken == 10 and opt.n_averaged == opt.num_snapshots == 10 - swa_start
    used = snapshots[swa_start:]
    mean = [torch.stack([s[i] for s in used]).mean(0) for i in range(len(used[0]))]
    got = _eval_weights(model, opt)
    for g, m in zip(got, mean, strict=True):
        torch.testing.assert_close(g.double(), m, rtol=0, atol=2e-7)  # float32 running mean, as torch's
    assert not all(torch.equal(g, w) for g, w in zip(got, _weights(model), strict=True))


def test_no_mean_before_swa_start_then_the_first_snapshot_itself():
    model = mlp(4, 8, 3)
    opt = SWAWrapper(torch.optim.SGD(model.parameters(), lr=0.1), swa_start=1)
    opt.snapshot()
    with pytest.raises(RuntimeError, match="No SWA mean yet.*swa_start"):
        opt.averaged()
    train_classifier(model, opt, class_batches(n=16, seed=123), 1)
    opt.snapshot()
    w = _weights(model)
    assert all(torch.equal(a, b) for a, b in zip(_eval_weights(model, opt), w, strict=True))


def test_swalr_anneals_the_wrapped_optimizer():
    model = mlp(4, 8, 3)
    opt = SWAWrapper(torch.optim.SGD(model.parameters(), lr=0.1), period=1)
    sched = SWALR(opt, swa_lr=0.01, anneal_epochs=3, anneal_strategy="linear")
    for i in range(4):
        train_classifier(model, opt, class_batches(n=16, seed=123), 1, start=i)
        sched.step()
    assert opt.optimizer.param_groups[0]["lr"] == pytest.approx(0.01)
    assert opt.n_averaged == 4
