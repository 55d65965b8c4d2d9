"""LookaheadWrapper against unmodified ``torch_optimizer.Lookahead``, and the upstream bugs fixed."""

from __future__ import annotations

import pytest
import torch
from conftest import require
from helpers import class_batches, mlp, train_classifier
from test_zoo import _eval_weights, _weights
from torch import nn

from lawa_optim import LookaheadWrapper, create


@pytest.fixture
def to():
    return require("torch_optimizer", "Lookahead")


@pytest.fixture
def fixed(to):
    from lawa_optim.baselines.torch_optimizer_fix import Lookahead

    return Lookahead


def _sgd(model):
    return torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-4)


def test_matches_upstream_lookahead_step_by_step(to):
    data = class_batches(n=16, seed=123)
    model, ref_model = mlp(4, 8, 3), mlp(4, 8, 3)
    opt = create("lookahead", _sgd(model))
    assert (opt.k, opt.alpha) == (5, 0.8)
    ref = to.Lookahead(_sgd(ref_model), k=5, alpha=0.8)
    # no slow weights before the first step: the weights themselves
    assert all(torch.equal(a, b) for a, b in zip(_eval_weights(model, opt), _weights(model), strict=True))
    for step in range(1, 14):
        train_classifier(model, opt, data, 1, start=step - 1)
        train_classifier(ref_model, ref, data, 1, start=step - 1)
        fast, ref_fast = _weights(model), _weights(ref_model)
        assert all(torch.equal(a, b) for a, b in zip(fast, ref_fast, strict=True)), step
        slow_ref = [ref.state[p]["slow_param"] for p in ref_model.parameters()]
        assert all(torch.equal(a, b) for a, b in zip(opt.slow_weights(), slow_ref, strict=True)), step
        assert all(torch.equal(a, b) for a, b in zip(_eval_weights(model, opt), slow_ref, strict=True)), step
        synced = all(torch.equal(a, b) for a, b in zip(fast, slow_ref, strict=True))
        assert synced == (step % 5 == 1), step  # upstream syncs after steps 1, k+1, 2k+1, ...
        assert opt.num_snapshots == (step - 1) // 5 + 1


def test_upstream_state_dict_is_broken_on_current_torch(to):
    la = to.Lookahead(_sgd(mlp(4, 8, 3)), k=5, alpha=0.8)
    with pytest.raises(AttributeError, match="_optimizer_state_dict_pre_hooks"):
        la.state_dict()


@pytest.mark.filterwarnings("ignore:Detected call of `lr_scheduler.step\\(\\)` before")
def test_fixed_state_dict_round_trip_keeps_groups_shared(fixed):
    data = class_batches(n=16, seed=123)
    model = mlp(4, 8, 3)
    la = fixed(_sgd(model), k=3, alpha=0.5)
    train_classifier(model, la, data, 4)
    sd = la.state_dict()
    assert set(sd) == {"fast_state", "slow_state", "param_groups"} and sd["param_groups"][0]["counter"] == 1

    model2 = mlp(4, 8, 3, seed=1)
    model2.load_state_dict(model.state_dict())
    la2 = fixed(_sgd(model2), k=3, alpha=0.5)
    sched = torch.optim.lr_scheduler.StepLR(la2, step_size=1, gamma=0.5)
    la2.load_state_dict(sd)
    assert la2.param_groups is la2.optimizer.param_groups  # upstream's load rebinds them apart
    sched.step()
    assert la2.optimizer.param_groups[0]["lr"] == pytest.approx(0.05)  # the schedule reaches SGD
    slow = [la2.state[p]["slow_param"] for p in model2.parameters()]
    assert all(torch.equal(a, la.state[p]["slow_param"]) for a, p in zip(slow, model.parameters(), strict=True))
    assert all(a.data_ptr() != la.state[p]["slow_param"].data_ptr() for a, p in zip(slow, model.parameters()))


def test_fixed_hooks_add_param_group_zero_grad_and_arguments(fixed, to):
    a, b = nn.Linear(2, 2), nn.Linear(2, 1)
    la = fixed(torch.optim.SGD(a.parameters(), lr=0.1), k=2)
    calls = []
    la.register_step_post_hook(lambda opt, args, kwargs: calls.append(1))
    la.add_param_group({"params": list(b.parameters())})
    assert len(la.optimizer.param_groups) == 2 and la.param_groups[1]["counter"] == 0
    b(a(torch.ones(1, 2))).sum().backward()
    la.step()
    assert calls == [1] and la.state[b.weight]["slow_param"] is not None
    la.zero_grad()
    assert a.weight.grad is None  # torch's default set_to_none=True (upstream: zeros)
    # upstream: the group lacks 'counter' and step() fails
    up = to.Lookahead(torch.optim.SGD(nn.Linear(2, 2).parameters(), lr=0.1), k=2)
    up.add_param_group({"params": [nn.Parameter(torch.ones(1))]})
    with pytest.raises(KeyError, match="counter"):
        up.step()
    for bad in ({"k": 0}, {"k": 2.5}, {"alpha": 1.5}, {"alpha": 0.0}):
        with pytest.raises(ValueError, match=next(iter(bad))):
            fixed(torch.optim.SGD(a.parameters(), lr=0.1), **bad)


def test_wrapper_refuses_a_lookahead_and_a_mismatched_state(to):
    model = mlp(4, 8, 3)
    with pytest.raises(TypeError, match="Lookahead already"):
        LookaheadWrapper(to.Lookahead(_sgd(model)))
    opt = LookaheadWrapper(_sgd(model), k=5, alpha=0.8)
    other = LookaheadWrapper(_sgd(mlp(4, 8, 3)), k=4, alpha=0.8)
    with pytest.raises(ValueError, match="k=4"):
        opt.load_state_dict(other.state_dict())
