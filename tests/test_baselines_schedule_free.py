"""ScheduleFreeAdapter against the schedulefree package's own train()/eval() on the same steps."""

from __future__ import annotations

import pytest
import torch
from conftest import require
from helpers import class_batches, mlp, train_classifier
from test_zoo import _eval_weights, _weights

from lawa_optim import ScheduleFreeAdapter, create


@pytest.fixture
def sf():
    return require("schedulefree", "schedule-free optimizers")


@pytest.mark.parametrize("variant", ["sgd", "adamw"])
def test_matches_the_package_eval_bit_exactly(sf, variant):
    data = class_batches(n=16, seed=123)
    model, ref_model = mlp(4, 8, 3), mlp(4, 8, 3)
    if variant == "sgd":
        opt = create(
            "schedulefree", torch.optim.SGD(model.parameters(), lr=0.5, momentum=0.9, weight_decay=1e-4), warmup_steps=3
        )
        ref = sf.SGDScheduleFree(ref_model.parameters(), lr=0.5, momentum=0.9, weight_decay=1e-4, warmup_steps=3)
    else:
        opt = create("schedulefree", torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=1e-2), warmup_steps=3)
        ref = sf.AdamWScheduleFree(ref_model.parameters(), lr=1e-2, weight_decay=1e-2, warmup_steps=3)
    assert type(opt.optimizer) is type(ref)
    ref.train()
    for step in range(1, 9):
        train_classifier(model, opt, data, 1, start=step - 1)
        train_classifier(ref_model, ref, data, 1, start=step - 1)
        assert all(torch.equal(a, b) for a, b in zip(_weights(model), _weights(ref_model), strict=True))
        got = _eval_weights(model, opt)
        ref.eval()
        assert all(torch.equal(a, b) for a, b in zip(got, _weights(ref_model), strict=True)), step
        ref.train()  # the package's train() recomputes y with rounding: restore it as the adapter does
        with torch.no_grad():
            for p, w in zip(ref_model.parameters(), _weights(model), strict=True):
                p.copy_(w)


def test_wraps_a_schedule_free_optimizer_as_it_is(sf):
    model = mlp(4, 8, 3)
    base = sf.AdamWScheduleFree(model.parameters(), lr=1e-3)
    opt = ScheduleFreeAdapter(base)
    assert opt.optimizer is base and all(g["train_mode"] for g in base.param_groups)
    with pytest.raises(ValueError, match="warmup_steps"):
        ScheduleFreeAdapter(sf.AdamWScheduleFree(mlp(4, 8, 3).parameters()), warmup_steps=5)


def test_conversion_errors_name_the_fix(sf):
    model = mlp(4, 8, 3)
    cases = [
        (torch.optim.SGD(model.parameters(), lr=0.1), ValueError, "momentum"),
        (torch.optim.Adam(model.parameters(), weight_decay=0.1), ValueError, "AdamW"),
        (torch.optim.RMSprop(model.parameters()), TypeError, "RMSprop"),
    ]
    for base, err, match in cases:
        with pytest.raises(err, match=match):
            ScheduleFreeAdapter(base)
    stepped = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    train_classifier(model, stepped, class_batches(n=16, seed=123), 1)
    with pytest.raises(ValueError, match="already stepped"):
        ScheduleFreeAdapter(stepped)


def test_eval_mode_is_refused_for_step_and_state(sf):
    model = mlp(4, 8, 3)
    opt = create("schedulefree", torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9))
    train_classifier(model, opt, class_batches(n=16, seed=123), 2)
    sd = opt.state_dict()
    opt.optimizer.eval()
    with pytest.raises(RuntimeError, match="eval mode"):
        opt.step()
    bad = opt.state_dict()
    opt.optimizer.train()
    with pytest.raises(ValueError, match="eval mode"):
        opt.load_state_dict(bad)
    opt.load_state_dict(sd)


def test_a_group_added_later_trains_and_swapping_changes_no_state(sf):
    """The package gives a new group train_mode=False (its eval mode): the adapter keeps every group
    in train mode, so the new group steps, and a swap leaves the state dict as an unswapped twin's."""
    twins = []
    for swap in (False, True):
        torch.manual_seed(0)
        model = torch.nn.Linear(3, 2)
        opt = create("schedulefree", torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9))
        extra = torch.nn.Parameter(torch.ones(2))
        opt.add_param_group({"params": [extra], "lr": 0.05})
        if swap:
            with opt.averaged():
                pass
        for i in range(3):
            opt.zero_grad()
            (model(torch.randn(4, 3, generator=torch.Generator().manual_seed(i))).sum() + extra.pow(2).sum()).backward()
            opt.step()
        assert not torch.equal(extra.detach(), torch.ones(2))
        twins.append((opt.state_dict(), [p.detach().clone() for p in (*model.parameters(), extra)]))
    (sd_a, w_a), (sd_b, w_b) = twins
    assert sd_a["param_groups"] == sd_b["param_groups"] and sd_a["state"].keys() == sd_b["state"].keys()
    assert all(torch.equal(a, b) for a, b in zip(w_a, w_b))
