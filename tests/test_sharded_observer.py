"""The Observer's wrapper through torch's distributed state-dict API (what the Lightning sharded path uses).

``get_optimizer_state_dict`` / ``set_optimizer_state_dict`` call ``step()`` once on an optimizer
that looks fresh (no state): the observer's stand-in must never be stepped, no step may be counted,
and the model's gradients must stay as they were; the ring must round-trip into a fresh observer.
"""

from __future__ import annotations

import torch
from torch import nn

from lawa_optim.integrations.observer import Observer
from tests.reference import reference_average


def _train(model, opt, obs, history, steps):
    for _ in range(steps):
        opt.zero_grad()
        model(torch.randn(4, 3)).square().mean().backward()
        opt.step()
        obs.snapshot()
        history.append([p.detach().double().clone() for p in model.parameters()])


def test_the_ring_round_trips_through_get_and_set_optimizer_state_dict():
    from torch.distributed.checkpoint.state_dict import get_optimizer_state_dict, set_optimizer_state_dict

    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 5), nn.Tanh(), nn.Linear(5, 1))
    opt = torch.optim.SGD(model.parameters(), lr=0.1)  # no state of its own
    fresh = Observer(opt, "lawa", k=3)
    empty = get_optimizer_state_dict(model, fresh.wrapper)  # a fresh observer: torch would step() it
    assert fresh.num_steps == 0 and all(p.grad is None for p in model.parameters())
    fresh.close()

    obs, history = Observer(opt, "lawa", k=3), []
    _train(model, opt, obs, history, 4)
    saved = get_optimizer_state_dict(model, obs.wrapper)
    assert saved["state"].keys() == empty["state"].keys() == {"0.weight", "0.bias", "2.weight", "2.bias"}
    assert {k for k in saved["state"]["0.weight"] if k.startswith("lawa_slot_")} == {f"lawa_slot_{j}" for j in range(3)}
    before = obs.averaged_state(model)
    obs.close()

    again = Observer(opt, "lawa", k=3)
    set_optimizer_state_dict(model, again.wrapper, saved)
    assert again.num_steps == 4 and again.wrapper.snapshots_taken == 4
    after = again.averaged_state(model)
    assert all(torch.equal(before[n], after[n]) for n in before)
    for p, ref in zip(model.parameters(), reference_average(history, 3)):
        name = next(n for n, q in model.named_parameters() if q is p)
        torch.testing.assert_close(after[name].double(), ref, rtol=0, atol=1e-6)
    _train(model, opt, again, history, 1)  # and it goes on: a fifth snapshot drops the second
    latest = again.averaged_state(model)
    for name, ref in zip([n for n, _ in model.named_parameters()], reference_average(history, 3)):
        torch.testing.assert_close(latest[name].double(), ref, rtol=0, atol=1e-6)
