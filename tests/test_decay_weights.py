"""Weight schemes from decay shapes (WSM): a merge of the ring equals a run with a decayed step size.

The slow reference trains from the oldest snapshot of the window again, applying the recorded
gradients with the step size multiplied by the decay, and is compared with the wrapper's average.
"""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from lawa_optim import LAWAWrapper
from lawa_optim.averaging import (
    DECAY_SHAPES,
    WEIGHT_NAMES,
    decay_coefficients,
    emulated_decay,
    resolve_weights,
    window_coefficients,
)

SHAPES = tuple(DECAY_SHAPES)


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("n", [1, 2, 3, 6, 16])
def test_coefficients_are_the_negative_differences_of_the_decay(shape, n):
    f = DECAY_SHAPES[shape]
    coeffs = decay_coefficients(shape, n)
    oldest_first = coeffs[::-1]
    expected = [f(q / n) - f((q + 1) / n) for q in range(n)]
    assert len(coeffs) == n
    assert math.isclose(math.fsum(coeffs), 1.0, rel_tol=1e-12)
    assert all(c >= 0 for c in coeffs)
    assert oldest_first == pytest.approx(expected, rel=1e-12, abs=1e-15)
    # and back: the merge emulates f sampled at the end of each interval
    assert emulated_decay(coeffs) == pytest.approx([f(p / n) for p in range(1, n)], abs=1e-12)


def test_linear_decay_is_lawas_uniform_mean():
    for n in (1, 4, 6, 10):
        assert decay_coefficients("linear", n) == pytest.approx([1 / n] * n, rel=1e-12)
        assert emulated_decay([1 / n] * n) == pytest.approx([(n - p) / n for p in range(1, n)])
    assert resolve_weights("linear", 6, 0.9) == ("uniform", None)


def test_known_values_and_shapes_differ():
    assert decay_coefficients("cosine", 4) == pytest.approx([0.146447, 0.353553, 0.353553, 0.146447], abs=1e-6)
    assert decay_coefficients("1-sqrt", 4) == pytest.approx([0.133975, 0.158919, 0.207107, 0.5], abs=1e-6)
    # 1-sqrt decays fastest at first, so the oldest snapshot weighs most
    assert decay_coefficients("1-sqrt", 6)[-1] == max(decay_coefficients("1-sqrt", 6))


def test_bad_input_is_named():
    with pytest.raises(ValueError, match="Invalid decay shape: 'square'"):
        decay_coefficients("square", 4)
    with pytest.raises(ValueError, match="Invalid n: 0"):
        decay_coefficients("cosine", 0)
    with pytest.raises(ValueError, match="Invalid weights: 'cosin'"):
        resolve_weights("cosin", 4, 0.9)
    with pytest.raises(ValueError, match="Invalid coefficients"):
        emulated_decay([])
    assert set(SHAPES) <= set(WEIGHT_NAMES)


@pytest.mark.parametrize("shape", ["cosine", "1-sqrt"])
def test_a_partial_ring_spreads_the_decay_over_what_it_holds(shape):
    assert window_coefficients(shape, None, 0.9, 3) == pytest.approx(decay_coefficients(shape, 3))


# ----------------------------------------------------------------------------- the slow reference
def _problem(seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(256, 8, generator=g, dtype=torch.float64)
    y = torch.sin(x @ torch.randn(8, 1, generator=g, dtype=torch.float64))
    model = nn.Sequential(nn.Linear(8, 16), nn.Tanh(), nn.Linear(16, 1)).double()
    torch.manual_seed(seed)
    for p in model.parameters():
        nn.init.normal_(p, std=0.5)
    return model, x, y


def _loss(model, x, y, step):
    idx = torch.arange(step * 32, step * 32 + 32) % x.shape[0]
    return nn.functional.mse_loss(model(x[idx]), y[idx])


def _train_constant_lr(make_opt, shape, k, nu, steps):
    """Constant step size, LAWA ring with ``weights=shape``; returns the model, wrapper, the
    parameters at every step and the gradients of every step."""
    model, x, y = _problem()
    opt = LAWAWrapper(make_opt(model.parameters()), k=k, period=nu, weights=shape)
    params, grads = [], []
    for step in range(steps):
        params.append([p.detach().clone() for p in model.parameters()])
        opt.zero_grad()
        _loss(model, x, y, step).backward()
        grads.append([p.grad.detach().clone() for p in model.parameters()])
        opt.step()
    params.append([p.detach().clone() for p in model.parameters()])
    return model, opt, params, grads


def _replay_with_decay(make_opt, start_params, grads, multipliers, lr):
    """Train from ``start_params`` again, applying the recorded ``grads`` with the step size
    ``lr * multipliers[t]`` (a fresh optimizer of the same kind, its state rebuilt by the replay)."""
    model, _, _ = _problem()
    with torch.no_grad():
        for p, s in zip(model.parameters(), start_params):
            p.copy_(s)
    opt = make_opt(model.parameters())
    for g_t, m in zip(grads, multipliers):
        for group in opt.param_groups:
            group["lr"] = lr * m
        for p, g in zip(model.parameters(), g_t):
            p.grad = g.clone()
        opt.step()
    return [p.detach().clone() for p in model.parameters()]


LR = 0.05
OPTIMIZERS = {
    "sgd": lambda ps: torch.optim.SGD(ps, lr=LR),
    "sgd_momentum": lambda ps: torch.optim.SGD(ps, lr=LR, momentum=0.9),
    "adamw_no_wd": lambda ps: torch.optim.AdamW(ps, lr=LR / 10, weight_decay=0.0),
}


def _window_replay(name, shape, k=5, nu=7):
    """(merge, replay): the wrapper's average and the decayed replay over the ring's window.

    The replay starts at the oldest snapshot of the window with the optimizer state the run had
    there: for a stateful optimizer it replays the whole run, at full step size before the window.
    """
    make = OPTIMIZERS[name]
    lr = make([torch.zeros(1, requires_grad=True)]).param_groups[0]["lr"]
    steps = nu * (k + 3)  # the ring has wrapped around
    model, opt, params, grads = _train_constant_lr(make, shape, k, nu, steps)
    newest = steps // nu * nu
    oldest = newest - (k - 1) * nu
    coeffs = window_coefficients(*resolve_weights(shape, k, 0.9), 0.9, k) or [1 / k] * k
    decay = emulated_decay(coeffs)  # one multiplier per interval, oldest first
    multipliers = [1.0] * oldest + [decay[(t - oldest) // nu] for t in range(oldest, newest)]
    replay = _replay_with_decay(make, params[0], grads[:newest], multipliers, lr)
    with opt.averaged():
        merge = [p.detach().clone() for p in model.parameters()]
    return merge, replay, params[newest]


@pytest.mark.parametrize("name", list(OPTIMIZERS))
@pytest.mark.parametrize("shape", ["uniform", "cosine", "1-sqrt"])
def test_merge_equals_the_decayed_run_on_the_same_gradients(name, shape):
    """Exact for an update that is a function of the gradients alone (SGD, SGD with momentum,
    Adam without weight decay): the merge rescales the updates like the decay does."""
    merge, replay, newest = _window_replay(name, shape)
    for m, r, n in zip(merge, replay, newest):
        torch.testing.assert_close(m, r, rtol=1e-10, atol=1e-12)
        assert not torch.allclose(m, n)  # the merge is not the newest snapshot


def test_weight_decay_makes_it_approximate():
    """AdamW's decoupled weight decay scales the weights, not the update: the equivalence holds
    only to first order in ``lr * weight_decay``."""
    OPTIMIZERS["adamw_wd"] = lambda ps: torch.optim.AdamW(ps, lr=LR / 10, weight_decay=0.5)
    try:
        merge, replay, newest = _window_replay("adamw_wd", "cosine")
    finally:
        del OPTIMIZERS["adamw_wd"]
    gap = math.sqrt(sum(float((m - r).pow(2).sum()) for m, r in zip(merge, replay)))
    move = math.sqrt(sum(float((m - n).pow(2).sum()) for m, n in zip(merge, newest)))
    assert 0 < gap < 0.01 * move


# ----------------------------------------------------------------------------- offline and plugins
def test_every_weight_name_is_offered_offline_and_by_the_plugin_config():
    from lawa_optim.cli.average import average

    choices = next(p for p in average.params if p.name == "weights").type.choices
    assert set(choices) == set(WEIGHT_NAMES)
    from lawa_benchmarks.roberta.config import LAWACfg

    for name in WEIGHT_NAMES:
        assert LAWACfg(weights=name).weights == name


@pytest.mark.cli
@pytest.mark.parametrize("shape", ["cosine", "1-sqrt"])
def test_lawa_average_weights_a_decay_shape(tmp_path, shape):
    from click.testing import CliRunner

    from lawa_optim.cli import main

    sds = [{"w": torch.randn(5, 3, dtype=torch.float64), "b": torch.randn(3)} for _ in range(4)]
    paths = []
    for i, sd in enumerate(sds):
        paths.append(str(tmp_path / f"epoch{i + 1}.pt"))
        torch.save(sd, paths[-1])
    out = tmp_path / "avg.pt"
    result = CliRunner().invoke(main, ["average", *paths, "--weights", shape, "--out", str(out)])
    assert result.exit_code == 0, result.output
    coeffs = decay_coefficients(shape, 4)[::-1]  # oldest first, like the files
    got = torch.load(out, weights_only=True)
    for key in ("w", "b"):
        ref = sum(c * sd[key].double() for c, sd in zip(coeffs, sds)).to(sds[0][key].dtype)
        torch.testing.assert_close(got[key], ref, rtol=1e-6, atol=1e-7)


def test_swap_in_with_other_weights_evaluates_every_scheme_on_one_ring():
    """``averaged(k, weights=...)`` averages the same ring with other coefficients, once."""
    torch.manual_seed(0)
    model = nn.Linear(4, 3).double()
    opt = LAWAWrapper(torch.optim.SGD(model.parameters(), lr=0.1), k=6, period=1)
    for _ in range(9):
        opt.zero_grad()
        model(torch.randn(2, 4, dtype=torch.float64)).pow(2).sum().backward()
        opt.step()
    training = [p.detach().clone() for p in model.parameters()]
    for shape, j in [("cosine", 6), ("1-sqrt", 4), ("exp", 3), ("uniform", 5)]:
        newest_first = [s[::-1] for s in (opt.snapshots(i) for i in range(2))]
        coeffs = window_coefficients(*resolve_weights(shape, 6, 0.9), 0.9, j) or [1 / j] * j
        with opt.averaged(j, weights=shape):
            merged = [p.detach().clone() for p in model.parameters()]
            for p, snaps in zip(model.parameters(), newest_first):
                ref = sum(c * s for c, s in zip(coeffs, snaps[:j]))
                torch.testing.assert_close(p.detach(), ref, rtol=1e-12, atol=1e-14)
            with opt.swap_out():  # the training weights for a moment, then the same merge back
                assert all(torch.equal(p, t) for p, t in zip(model.parameters(), training))
            assert all(torch.equal(p, m) for p, m in zip(model.parameters(), merged)), shape
        for p, t in zip(model.parameters(), training):
            assert torch.equal(p, t)
    with opt.averaged():  # the wrapper's own weights again
        torch.testing.assert_close(model.weight.detach(), torch.stack(opt.snapshots(0)).mean(0))
    with pytest.raises(ValueError, match="Invalid weights: 'cos'"):
        opt.swap_in(weights="cos")
    assert not opt.swapped_in
