"""The core contract of LAWAWrapper: math, swap, API surface (issue 2, points 1, 2 and 4)."""

from __future__ import annotations

import copy

import pytest
import torch
from reference import reference_average
from torch import nn

from lawa_optim import LAWAWrapper, exp_coefficients


def make_model(dtype=torch.float32) -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(5, 7), nn.Tanh(), nn.Linear(7, 3)).to(dtype)


def train_step(model: nn.Module, opt: torch.optim.Optimizer, seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    dtype = next(model.parameters()).dtype
    x = torch.randn(8, 5, generator=g).to(dtype)
    opt.zero_grad()
    model(x).pow(2).mean().backward()
    opt.step()


def params_of(model: nn.Module) -> list[torch.Tensor]:
    return [p.detach().clone() for p in model.parameters()]


def assert_close_to(model: nn.Module, expected: list[torch.Tensor], rtol=1e-6, atol=1e-7) -> None:
    for p, e in zip(model.parameters(), expected):
        torch.testing.assert_close(p.detach().double(), e, rtol=rtol, atol=atol)


OPTIMIZERS = {
    "sgd": lambda ps: torch.optim.SGD(ps, lr=0.1),
    "sgd_momentum_foreach": lambda ps: torch.optim.SGD(ps, lr=0.1, momentum=0.9, foreach=True),
    "sgd_momentum_loop": lambda ps: torch.optim.SGD(ps, lr=0.1, momentum=0.9, foreach=False),
    "adam": lambda ps: torch.optim.Adam(ps, lr=1e-2),
    "adam_fused": lambda ps: torch.optim.Adam(ps, lr=1e-2, fused=True),
    "adamw_foreach": lambda ps: torch.optim.AdamW(ps, lr=1e-2, weight_decay=0.1, foreach=True),
}


# ------------------------------------------------------------------------------------------- math
@pytest.mark.parametrize("name", sorted(OPTIMIZERS))
@pytest.mark.parametrize("k,period", [(1, 1), (3, 2), (6, 3)])
def test_average_equals_reference_mean(name, k, period):
    model = make_model()
    opt = LAWAWrapper(OPTIMIZERS[name](model.parameters()), k=k, period=period)
    history = []
    for step in range(1, 25):
        train_step(model, opt, step)
        if step % period == 0:
            history.append(params_of(model))
        if history:
            assert opt.num_snapshots == min(len(history), k)
            with opt.averaged():
                assert_close_to(model, reference_average(history, min(k, len(history))))


def test_training_trajectory_is_the_base_optimizers():
    a, b = make_model(), make_model()
    bare = torch.optim.SGD(a.parameters(), lr=0.1, momentum=0.9)
    opt = LAWAWrapper(torch.optim.SGD(b.parameters(), lr=0.1, momentum=0.9), k=3, period=2)
    for step in range(12):
        train_step(a, bare, step)
        train_step(b, opt, step)
        if step % 3 == 0 and opt.num_snapshots:
            with opt.averaged():
                pass
    for pa, pb in zip(a.parameters(), b.parameters()):
        assert torch.equal(pa, pb)


def test_no_drift_after_2000_snapshots():
    torch.manual_seed(1)
    model = nn.Linear(64, 32)
    opt = LAWAWrapper(torch.optim.SGD(model.parameters(), lr=0.1), k=7)
    history = []
    for i in range(2000):
        with torch.no_grad():  # large, varied values make a drifting running sum visible
            for p in model.parameters():
                p.copy_(torch.randn_like(p) * (1 + (i % 13) * 100) + (i % 5) * 1e3)
        opt.snapshot()
        history.append(params_of(model))
        history = history[-7:]
    with opt.averaged():
        assert_close_to(model, reference_average(history, 7), rtol=1e-6, atol=1e-5)


@pytest.mark.parametrize("dtype,rtol", [(torch.bfloat16, 2**-7), (torch.float16, 2**-10), (torch.float64, 1e-12)])
def test_low_and_high_precision_parameters(dtype, rtol):
    model = make_model(dtype)
    opt = LAWAWrapper(torch.optim.SGD(model.parameters(), lr=0.05), k=4, period=1)
    history = []
    for step in range(10):
        train_step(model, opt, step)
        history.append(params_of(model))
    with opt.averaged():
        for p in model.parameters():
            assert p.dtype == dtype
        # one rounding of the exact mean into the parameter dtype
        assert_close_to(model, reference_average(history, 4), rtol=rtol, atol=rtol * 1e-3)


@pytest.mark.parametrize("alpha", [0.9, 0.5, 1.0])
def test_exp_weights_match_appendix_c_formula(alpha):
    model = make_model()
    opt = LAWAWrapper(torch.optim.SGD(model.parameters(), lr=0.1), k=5, period=1, weights="exp", alpha=alpha)
    history = []
    for step in range(9):
        train_step(model, opt, step)
        history.append(params_of(model))
        n = min(len(history), 5)
        raw = [alpha * (1 - alpha) ** i for i in range(n)]
        coeffs = [c / sum(raw) for c in raw]
        with opt.averaged():
            assert_close_to(model, reference_average(history, n, coeffs))
    assert exp_coefficients(0.9, 3) == pytest.approx([0.9 / 0.999, 0.09 / 0.999, 0.009 / 0.999])


def test_custom_weights_and_window():
    model = make_model()
    raw = [3.0, 0.0, 1.0, 2.0]
    opt = LAWAWrapper(torch.optim.SGD(model.parameters(), lr=0.1), k=4, period=1, weights=raw)
    history = []
    for step in range(7):
        train_step(model, opt, step)
        history.append(params_of(model))
    for j in range(1, 5):
        coeffs = [c / sum(raw[:j]) for c in raw[:j]]
        with opt.averaged(k=j):
            assert_close_to(model, reference_average(history, j, coeffs))


def test_averaged_k_sweep_from_one_ring():
    model = make_model()
    opt = LAWAWrapper(torch.optim.SGD(model.parameters(), lr=0.1), k=6, period=1)
    history = []
    for step in range(10):
        train_step(model, opt, step)
        history.append(params_of(model))
    for j in range(1, 7):
        with opt.averaged(k=j):
            assert_close_to(model, reference_average(history, j))
    # before the ring is full, averaged(k=j) with j > num_snapshots averages what it has
    small = LAWAWrapper(torch.optim.SGD(make_model().parameters(), lr=0.1), k=6)
    small.snapshot()
    with small.averaged(k=4):
        pass


def test_period_none_and_manual_snapshots():
    model = make_model()
    opt = LAWAWrapper(torch.optim.SGD(model.parameters(), lr=0.1), k=3)
    for step in range(5):
        train_step(model, opt, step)
    assert opt.num_snapshots == 0 and opt.num_steps == 5
    with pytest.raises(RuntimeError, match="No snapshot"):
        opt.averaged()
    opt.snapshot()
    expected = params_of(model)
    with opt.averaged():
        assert_close_to(model, [e.double() for e in expected], rtol=0, atol=0)


def test_gradient_accumulation_counts_optimizer_steps():
    model = make_model()
    opt = LAWAWrapper(torch.optim.SGD(model.parameters(), lr=0.1), k=2, period=2)
    for _ in range(3):
        for _micro in range(4):  # 4 micro-batches, one optimizer step
            model(torch.randn(2, 5)).sum().backward()
        opt.step()
        opt.zero_grad()
    assert opt.num_steps == 3 and opt.snapshots_taken == 1


# ------------------------------------------------------------------------------------------- swap
def test_swap_restores_training_weights_bit_exactly_and_keeps_parameter_objects():
    model = make_model()
    opt = LAWAWrapper(torch.optim.Adam(model.parameters(), lr=1e-2), k=3, period=1)
    for step in range(5):
        train_step(model, opt, step)
    before = params_of(model)
    ids = [id(p) for p in model.parameters()]
    with opt.averaged():
        assert any(not torch.equal(p, b) for p, b in zip(model.parameters(), before))
        assert [id(p) for p in model.parameters()] == ids
        assert all(p is q for p, q in zip(model.parameters(), opt.param_groups[0]["params"]))
    for p, b in zip(model.parameters(), before):
        assert torch.equal(p, b)


def test_swap_restores_when_the_body_raises():
    model = make_model()
    opt = LAWAWrapper(torch.optim.SGD(model.parameters(), lr=0.1), k=3, period=1)
    for step in range(4):
        train_step(model, opt, step)
    before = params_of(model)
    with pytest.raises(ZeroDivisionError):
        with opt.averaged():
            1 / 0  # noqa: B018
    assert not opt.swapped_in
    for p, b in zip(model.parameters(), before):
        assert torch.equal(p, b)
    train_step(model, opt, 99)  # training continues normally


def test_step_snapshot_and_second_swap_in_raise_while_swapped():
    model = make_model()
    opt = LAWAWrapper(torch.optim.SGD(model.parameters(), lr=0.1), k=3, period=1)
    train_step(model, opt, 0)
    opt.swap_in()
    swapped = params_of(model)
    for call in (
        opt.step,
        opt.snapshot,
        opt.swap_in,
        lambda: opt.add_param_group({"params": [nn.Parameter(torch.ones(1))]}),
    ):
        with pytest.raises(RuntimeError, match="swapped in"):
            call()
    with pytest.raises(RuntimeError):
        opt.load_state_dict(opt.state_dict())
    for p, s in zip(model.parameters(), swapped):
        assert torch.equal(p, s)
    assert opt.num_steps == 1 and opt.snapshots_taken == 1
    opt.swap_out()
    with pytest.raises(RuntimeError, match="without swap_in"):
        opt.swap_out()


def test_swap_in_out_pair_and_context_managers():
    model = make_model()
    opt = LAWAWrapper(torch.optim.SGD(model.parameters(), lr=0.1), k=2, period=1)
    for step in range(3):
        train_step(model, opt, step)
    train = params_of(model)
    opt.swap_in()
    avg = params_of(model)
    opt.swap_out()
    assert all(torch.equal(p, t) for p, t in zip(model.parameters(), train))
    with opt.swap_in():
        assert all(torch.equal(p, a) for p, a in zip(model.parameters(), avg))
        with opt.swap_out():  # the training weights, temporarily
            assert all(torch.equal(p, t) for p, t in zip(model.parameters(), train))
        assert all(torch.equal(p, a) for p, a in zip(model.parameters(), avg))
    assert all(torch.equal(p, t) for p, t in zip(model.parameters(), train))


def test_averaged_state_dict_holds_the_average_and_leaves_the_model():
    model = nn.Sequential(nn.Linear(4, 4), nn.BatchNorm1d(4))
    opt = LAWAWrapper(torch.optim.SGD(model.parameters(), lr=0.1), k=2, period=1)
    history = []
    for _step in range(3):
        opt.zero_grad()
        model(torch.randn(6, 4)).sum().backward()
        opt.step()
        history.append(params_of(model))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    sd = opt.averaged_state_dict(model)
    expected = reference_average(history, 2)
    names = [n for n, _ in model.named_parameters()]
    for n, e in zip(names, expected):
        torch.testing.assert_close(sd[n].double(), e, rtol=1e-6, atol=1e-7)
    assert torch.equal(sd["1.running_mean"], before["1.running_mean"])  # buffers kept by default
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k])


def test_frozen_and_gradless_parameters():
    model = make_model()
    model[0].bias.requires_grad_(False)
    extra = nn.Parameter(torch.randn(3))  # in the optimizer, never gets a gradient
    extra0 = extra.detach().clone()
    opt = LAWAWrapper(
        torch.optim.SGD([{"params": model.parameters()}, {"params": [extra], "lr": 1.0}], lr=0.1), k=3, period=1
    )
    history = []
    for step in range(5):
        train_step(model, opt, step)
        history.append(params_of(model))
    frozen = model[0].bias.detach().clone()
    with opt.averaged():
        assert torch.equal(model[0].bias, frozen)
        assert torch.equal(extra.detach(), extra0)
        assert_close_to(model, reference_average(history, 3))


def test_add_param_group_midrun():
    model = make_model()
    head = nn.Linear(3, 2)
    opt = LAWAWrapper(torch.optim.SGD(model.parameters(), lr=0.1), k=3, period=1)
    for step in range(2):
        train_step(model, opt, step)
    frozen_head = params_of(head)
    opt.add_param_group({"params": head.parameters(), "lr": 0.01})
    assert len(opt.param_groups) == 2 and opt.optimizer.param_groups is opt.param_groups
    # documented: a new parameter's history is its value when added, in every earlier slot
    head_history = [frozen_head, frozen_head]
    for _ in range(2):
        opt.zero_grad()
        head(model(torch.randn(4, 5))).sum().backward()
        opt.step()
        head_history.append(params_of(head))
    assert not torch.equal(head_history[-1][0], frozen_head[0])
    with opt.averaged():
        assert_close_to(head, reference_average(head_history, 3))


# ------------------------------------------------------------------------------------------- BN
def _bn_model():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 8), nn.BatchNorm1d(8), nn.ReLU(), nn.Linear(8, 2))


@pytest.mark.parametrize("as_dict", [False, True])
def test_bn_recompute_matches_update_bn_and_restores_buffers(as_dict):
    model = _bn_model()
    opt = LAWAWrapper(torch.optim.SGD(model.parameters(), lr=0.1), k=3, period=1)
    data = [torch.randn(16, 4) for _ in range(5)]
    for x in data:
        opt.zero_grad()
        model(x).sum().backward()
        opt.step()
    buffers = {k: v.clone() for k, v in model.state_dict().items() if "running" in k or "num_batches" in k}
    # reference: torch's update_bn on a deep copy holding the averaged weights
    ref = copy.deepcopy(model)
    with opt.averaged():
        ref.load_state_dict(model.state_dict())
    torch.optim.swa_utils.update_bn([(x, None) for x in data[:3]], ref)
    loader = [{"input": x, "label": None} for x in data] if as_dict else [(x, None) for x in data]

    class Net(nn.Module):  # dict batches call model(**batch) minus labels
        def __init__(self, inner):
            super().__init__()
            self.inner = inner

        def forward(self, input):  # noqa: A002
            return self.inner(input)

    target = Net(model) if as_dict else model
    with opt.averaged(model=target, bn_loader=loader, bn_batches=3):
        for k in buffers:
            torch.testing.assert_close(model.state_dict()[k], ref.state_dict()[k])
    for k, v in buffers.items():
        assert torch.equal(model.state_dict()[k], v)


def test_bn_loader_needs_model():
    model = _bn_model()
    opt = LAWAWrapper(torch.optim.SGD(model.parameters(), lr=0.1), k=3)
    opt.snapshot()
    with pytest.raises(ValueError, match="model="):
        opt.averaged(bn_loader=[torch.randn(2, 4)])
    assert not opt.swapped_in


# ------------------------------------------------------------------------------------------- bad input
def _fresh():
    model = make_model()
    return model, torch.optim.SGD(model.parameters(), lr=0.1)


@pytest.mark.parametrize(
    "kwargs,exc,match",
    [
        ({"k": 0}, ValueError, "k: 0"),
        ({"k": -2}, ValueError, "k: -2"),
        ({"k": 2.5}, TypeError, "k: 2.5"),
        ({"k": True}, TypeError, "k: True"),
        ({"period": 0}, ValueError, "period: 0"),
        ({"period": -1}, ValueError, "period: -1"),
        ({"period": 1.5}, ValueError, "period: 1.5"),
        ({"weights": "step"}, ValueError, "weights: 'step'"),
        ({"weights": "exp", "alpha": 0.0}, ValueError, "alpha: 0.0"),
        ({"weights": "exp", "alpha": 1.5}, ValueError, "alpha: 1.5"),
        ({"k": 3, "weights": [1.0, 2.0]}, ValueError, "2 coefficients given for k=3"),
        ({"k": 2, "weights": [1.0, -1.0]}, ValueError, "non-negative"),
        ({"k": 2, "weights": [0.0, 0.0]}, ValueError, "positive"),
        ({"offload": "gpu"}, ValueError, "offload: 'gpu'"),
        ({"nonfinite": "ignore"}, ValueError, "nonfinite: 'ignore'"),
    ],
)
def test_bad_constructor_arguments(kwargs, exc, match):
    model, base = _fresh()
    groups_before = copy.deepcopy(base.state_dict())
    with pytest.raises(exc, match=match):
        LAWAWrapper(base, **kwargs)
    assert base.state_dict() == groups_before


def test_non_optimizer_and_double_wrapping_rejected():
    model, base = _fresh()
    with pytest.raises(TypeError, match="not a torch.optim.Optimizer"):
        LAWAWrapper(model.parameters())
    opt = LAWAWrapper(base)
    with pytest.raises(TypeError, match="already wrapped"):
        LAWAWrapper(opt)


def test_bad_k_for_averaged_changes_nothing():
    model, base = _fresh()
    opt = LAWAWrapper(base, k=3)
    opt.snapshot()
    before = params_of(model)
    for bad in (0, 4, 1.5, True):
        with pytest.raises(ValueError, match="Invalid k"):
            opt.averaged(k=bad)
        assert not opt.swapped_in
    assert all(torch.equal(p, b) for p, b in zip(model.parameters(), before))
