"""EXPWrapper against the paper's formula (Appendix C), computed in float64 from recorded snapshots."""

from __future__ import annotations

import pytest
import torch
from helpers import class_batches, mlp, train_classifier
from test_zoo import _eval_weights

from lawa_optim import EXPWrapper, create


def _snapshots_run(k, alpha, n_snapshots, period=2):
    data = class_batches(n=16, seed=123)
    model = mlp(4, 8, 3)
    opt = EXPWrapper(torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9), k=k, period=period, alpha=alpha)
    snaps = []
    for step in range(1, n_snapshots * period + 1):
        train_classifier(model, opt, data, 1, start=step - 1)
        if step % period == 0:
            snaps.append([p.detach().double().clone() for p in model.parameters()])
    return model, opt, snaps


@pytest.mark.parametrize("k,alpha,n", [(3, 0.5, 5), (4, 0.9, 2), (10, 0.9, 12)])
def test_matches_normalized_exp_coefficients(k, alpha, n):
    """sum_i c_i theta_{E-i} over the j = min(k, n) newest, c_i = alpha (1-alpha)^i / sum."""
    model, opt, snaps = _snapshots_run(k, alpha, n)
    window = snaps[::-1][: min(k, n)]  # newest first
    raw = [alpha * (1 - alpha) ** i for i in range(len(window))]
    coeffs = [c / sum(raw) for c in raw]
    expect = [sum(c * s[i] for c, s in zip(coeffs, window, strict=True)) for i in range(len(window[0]))]
    for got, want in zip(_eval_weights(model, opt), expect, strict=True):
        torch.testing.assert_close(got.double(), want, rtol=0, atol=1e-6)


def test_paper_setting_matches_the_recursion_of_equation_1():
    """k=10, alpha=0.9: theta_EXP = alpha theta_E + (1-alpha) theta_EXP_{E-1}, started at the window's oldest."""
    model, opt, snaps = _snapshots_run(10, 0.9, 12)
    window = snaps[-10:]
    rec = window[0]
    for s in window[1:]:
        rec = [0.9 * a + 0.1 * b for a, b in zip(s, rec, strict=True)]
    for got, want in zip(_eval_weights(model, opt), rec, strict=True):
        torch.testing.assert_close(got.double(), want, rtol=0, atol=1e-6)


def test_registry_defaults_and_method_name():
    opt = create("exp", torch.optim.SGD(mlp(4, 8, 3).parameters(), lr=0.1))
    assert (opt.k, opt.alpha, opt.weights, opt.method) == (10, 0.9, "exp", "exp")
    assert opt.state_dict()["lawa"]["method"] == "exp"
