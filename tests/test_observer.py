"""The framework shim (lawa_optim.integrations.observer): Observer, StateSwap, TimeSaved.

The observer never owns the optimizer: training with it is bit-identical to training without
it, its average equals the float64 reference of the snapshots it was shown, and its state dict
(only the averaging state) resumes it exactly.
"""

from __future__ import annotations

import io

import pytest
import torch
from helpers import mlp, train_mse
from torch import nn

from lawa_optim.integrations.observer import Observer, StateSwap, TimeSaved, check_model
from tests.reference import reference_average


def test_training_unchanged_and_average_matches_reference():
    plain, observed = mlp(3, 5, 2), mlp(3, 5, 2)
    opt_plain = torch.optim.SGD(plain.parameters(), lr=0.1, momentum=0.9)
    opt = torch.optim.SGD(observed.parameters(), lr=0.1, momentum=0.9)
    obs = Observer(opt, k=3, period=2)
    history: list = []
    train_mse(plain, opt_plain, 9)
    train_mse(observed, opt, 9, history=history, every=2)
    assert all(torch.equal(a, b) for a, b in zip(plain.parameters(), observed.parameters()))
    assert obs.num_steps == 9 and obs.wrapper.num_snapshots == 3
    before = [p.detach().clone() for p in observed.parameters()]
    with obs.averaged(observed):
        for p, ref in zip(observed.parameters(), reference_average(history, 3)):
            torch.testing.assert_close(p.double(), ref, rtol=0, atol=1e-6)
    assert all(torch.equal(a, b) for a, b in zip(before, observed.parameters()))
    assert opt.state_dict()["state"].keys() == opt_plain.state_dict()["state"].keys()
    assert "lawa" not in opt.state_dict()  # the framework's optimizer state is its own


def test_grad_scaler_skipped_step_is_not_counted():
    model = mlp(3, 5, 2)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    obs = Observer(opt, k=2, period=1)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**10)
    for bad in (False, True, False):
        opt.zero_grad()
        loss = model(torch.randn(2, 3)).sum() * (float("inf") if bad else 1.0)
        scaler.scale(loss).backward()
        scaler.step(opt)
        scaler.update()
    assert obs.num_steps == 2 and obs.wrapper.snapshots_taken == 2


def test_state_dict_round_trip_is_exact_and_plain():
    model = mlp(3, 5, 2)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    obs = Observer(opt, k=3, period=2)
    train_mse(model, opt, 7)
    buffer = io.BytesIO()
    torch.save(obs.state_dict(), buffer)
    buffer.seek(0)
    state = torch.load(buffer, weights_only=True)  # plain tensors and values only
    fresh = Observer(torch.optim.SGD(model.parameters(), lr=0.1), k=3, period=2)
    fresh.load_state_dict(state)
    assert fresh.num_steps == 7
    assert all(
        torch.equal(a, b) for a, b in zip(obs.averaged_state(model).values(), fresh.averaged_state(model).values())
    )
    other_k = Observer(torch.optim.SGD(model.parameters(), lr=0.1), k=4, period=2)
    with pytest.raises(ValueError, match="k=3"):
        other_k.load_state_dict(state)
    assert other_k.num_steps == 0  # nothing loaded
    ema = Observer(torch.optim.SGD(model.parameters(), lr=0.1), "ema")
    with pytest.raises(ValueError, match="method 'lawa'"):
        ema.load_state_dict(state)


def test_state_dict_taken_while_swapped_in_records_training_weights_only():
    model = mlp(3, 5, 2)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    obs = Observer(opt, k=2, period=1)
    train_mse(model, opt, 3)
    inner, model = model, nn.Sequential(model, nn.BatchNorm1d(2))
    with obs.averaged(model, bn_loader=[torch.randn(4, 3)]):
        state = obs.state_dict()
    assert state["wrapper"]["lawa"]["swapped_in"] is False
    assert state["wrapper"]["lawa"]["training_weights"] is None
    assert state["wrapper"]["lawa"].get("training_buffers") is None
    trained = {k: v.clone() for k, v in model.state_dict().items()}
    fresh = Observer(torch.optim.SGD(inner.parameters(), lr=0.1), k=2, period=1)
    fresh.load_state_dict(state)
    assert not fresh.swapped_in
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in trained.items())  # the model is left alone


def test_new_param_group_is_tracked_and_close_stops_counting():
    model, extra = mlp(3, 5, 2), nn.Linear(2, 2)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    obs = Observer(opt, k=2, period=1)
    train_mse(model, opt, 1)
    opt.add_param_group({"params": extra.parameters(), "lr": 0.1})  # e.g. Lightning's BaseFinetuning
    train_mse(model, opt, 1)
    assert len(obs.wrapper._params) == len(list(model.parameters())) + 2
    obs.close()
    train_mse(model, opt, 2)
    assert obs.num_steps == 2


@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        ({"method": "nope"}, ValueError, "Unknown method"),
        ({"method": "lookahead"}, ValueError, "changes the training trajectory"),
        ({"method": "schedulefree"}, ValueError, "changes the training trajectory"),
        ({"k": 0}, ValueError, "Invalid k"),
        ({"period": 0}, ValueError, "Invalid period"),
        ({"method": "ema", "period": 3}, TypeError, "does not take snapshots"),
        ({"method": "ema", "decay": 1.5}, ValueError, "Invalid decay"),
        ({"kk": 3}, TypeError, "kk"),
    ],
)
def test_bad_arguments_are_named(kwargs, error, match):
    opt = torch.optim.SGD(mlp(3, 5, 2).parameters(), lr=0.1)
    with pytest.raises(error, match=match):
        Observer(opt, **kwargs)
    assert not opt._optimizer_step_post_hooks  # nothing registered


def test_bad_optimizer_and_model():
    from lawa_optim import LAWAWrapper

    wrapped = LAWAWrapper(torch.optim.SGD(mlp(3, 5, 2).parameters(), lr=0.1))
    with pytest.raises(TypeError, match="already a lawa_optim wrapper"):
        Observer(wrapped)
    with pytest.raises(TypeError, match="not a torch.optim.Optimizer"):
        Observer(object())
    frozen = mlp(3, 5, 2).requires_grad_(False)
    with pytest.raises(ValueError, match="no trainable parameters"):
        check_model(frozen)


def test_state_swap_restores_bit_exactly_even_when_evaluation_raises():
    model = mlp(3, 5, 2)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    average = {k: torch.randn_like(v) for k, v in model.state_dict().items()}
    swap = StateSwap(model, average)
    with pytest.raises(ZeroDivisionError):
        with swap:
            assert all(torch.equal(model.state_dict()[k], v) for k, v in average.items())
            assert all(torch.equal(swap.training_state()[k], v) for k, v in before.items())
            raise ZeroDivisionError
    assert all(torch.equal(model.state_dict()[k], v) for k, v in before.items())
    with pytest.raises(ValueError, match="shape"):
        StateSwap(model, {"0.weight": torch.zeros(1)})


def test_time_saved_earlier_later_and_never():
    ts = TimeSaved("val_loss")
    for step, raw, avg in [(10, 0.9, None), (20, 0.7, 0.6), (30, 0.6, 0.5), (40, 0.65, 0.55)]:
        ts.record(step, step // 10, raw, avg)
    assert ts.result()["saved_steps"] == 10 and ts.result()["avg_step"] == 20
    assert "first reached the raw weights' best val_loss 0.6 at step 20 (epoch 2), 10 steps / 1 epochs before" in (
        ts.summary()
    )
    acc = TimeSaved("val_acc", mode="max")
    acc.record(1, 0, 0.5, 0.4)
    acc.record(2, 1, 0.8, 0.7)
    acc.record(3, 2, 0.6, 0.9)
    assert "1 steps / 1 epochs after the raw weights" in acc.summary()
    never = TimeSaved("val_loss")
    never.record(1, 0, 0.5, 0.6)
    never.record(2, 1, float("nan"), 0.55)
    assert "never reached the raw weights' best val_loss 0.5" in never.summary() and "0.55 at step 2" in never.summary()
    restored = TimeSaved("val_loss")
    restored.load_state_dict(ts.state_dict())
    assert restored.summary() == ts.summary()
    assert "nothing to compare" in TimeSaved("val_loss").summary()
    with pytest.raises(ValueError, match="mode"):
        TimeSaved("val_loss", mode="lowest")


def test_batchnorm_recomputation_keeps_the_models_mode():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4))
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    obs = Observer(opt, k=2, period=1)
    model(torch.randn(8, 3)).sum().backward()
    opt.step()
    model.eval()  # as during a framework's validation
    before = {k: v.clone() for k, v in model.state_dict().items()}
    state = obs.averaged_state(model, bn_loader=[torch.randn(8, 3)])
    assert not model.training and not model[1].training  # recompute_bn used to leave it in train mode
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())
    assert not torch.equal(state["1.running_mean"], before["1.running_mean"])
