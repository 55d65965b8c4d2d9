"""Odd models (issue 7): tied weights, parameters without gradients, frozen then unfrozen ones,
parameters added mid-run, mixed dtypes, empty and 0-d parameters, non-contiguous and
channels-last tensors, sparse gradients and ``torch.compile``.

LAWA is checked against the float64 reference mean of snapshots kept by the test; every method
of the zoo is checked for what the protocol promises on the same models: the swap restores the
training weights bit-exactly, keeps the ``Parameter`` objects, their memory format and the ties,
and a state dict round trip reproduces the evaluated weights bit for bit.
"""

from __future__ import annotations

import copy

import pytest
import torch
from conftest import require
from torch import nn

from lawa_optim import LAWAWrapper, create, get_method_info, list_methods

TOL = {torch.float32: (1e-6, 1e-7), torch.float64: (1e-12, 1e-14), torch.bfloat16: (1e-2, 1e-3),
       torch.float16: (1e-3, 1e-4)}


pytestmark = pytest.mark.usefixtures("one_thread")


def _unique_params(opt) -> list[torch.Tensor]:
    seen: dict[int, torch.Tensor] = {}
    for g in opt.param_groups:
        for p in g["params"]:
            seen.setdefault(id(p), p)
    return list(seen.values())


def _clone(params) -> list[torch.Tensor]:
    return [p.detach().clone() for p in params]


def _reference_mean(history, j):
    return [torch.stack([snap[i].double() for snap in history[-j:]]).mean(0) for i in range(len(history[-1]))]


def _assert_average(params, expected):
    for p, e in zip(params, expected):
        rtol, atol = TOL[p.dtype]
        torch.testing.assert_close(p.detach().double(), e, rtol=rtol, atol=atol)


def _check_lawa_against_reference(opt, history):
    """Every window j: the swapped-in weights are the reference mean; swap out is bit-exact."""
    params = _unique_params(opt)
    before = _clone(params)
    for j in range(1, opt.k + 1):
        with opt.averaged(k=j):
            _assert_average(params, _reference_mean(history, min(j, len(history))))
        for p, b in zip(params, before):
            assert torch.equal(p.detach(), b)


# ----------------------------------------------------------------------------- models
class Tied(nn.Module):
    """An embedding tied to the output layer, and a parameter registered in two modules."""

    def __init__(self) -> None:
        super().__init__()
        self.emb = nn.Embedding(7, 4)
        self.out = nn.Linear(4, 7, bias=False)
        self.out.weight = self.emb.weight
        self.scale = nn.Parameter(torch.ones(4))
        self.other = nn.Module()
        self.other.scale = self.scale  # the same Parameter object registered twice

    def loss(self, g):
        idx = torch.randint(0, 7, (5,), generator=g)
        return self.out(self.emb(idx) * self.other.scale).pow(2).mean()


class Mixed(nn.Module):
    """fp32, bf16, fp16 and fp64 layers; a 0-d, an empty, a non-contiguous and an unused parameter."""

    def __init__(self) -> None:
        super().__init__()
        self.f32 = nn.Linear(3, 4)
        self.bf16 = nn.Linear(3, 4).to(torch.bfloat16)
        self.f16 = nn.Linear(3, 4).to(torch.float16)
        self.f64 = nn.Linear(3, 4).to(torch.float64)
        self.temperature = nn.Parameter(torch.tensor(1.5))
        self.empty = nn.Parameter(torch.zeros(0, 3))
        self.transposed = nn.Parameter(torch.randn(5, 3).t())  # stride (1, 3): not contiguous
        self.unused = nn.Parameter(torch.randn(2))  # never gets a gradient

    def loss(self, g):
        x = torch.randn(2, 3, generator=g)
        total = sum(m(x.to(m.weight.dtype)).double().pow(2).mean() for m in (self.f32, self.bf16, self.f16, self.f64))
        total = total + (x @ self.transposed).pow(2).mean() * self.temperature + self.empty.sum()
        return total


class ChannelsLast(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.bn = nn.BatchNorm2d(4)
        self.head = nn.Linear(4, 2)

    def loss(self, g):
        x = torch.randn(2, 3, 6, 6, generator=g).to(memory_format=torch.channels_last)
        return self.head(self.bn(self.conv(x)).mean((2, 3))).pow(2).mean()


class SparseEmb(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.emb = nn.Embedding(10, 3, sparse=True)

    def loss(self, g):
        return self.emb(torch.randint(0, 10, (4,), generator=g)).pow(2).sum()


def _channels_last():
    return ChannelsLast().to(memory_format=torch.channels_last)


MODELS = {"tied": Tied, "mixed": Mixed, "channels_last": _channels_last}


def _train(model, opt, steps, seed=0, history=None, snapshot_every=None):
    g = torch.Generator().manual_seed(seed)
    for i in range(steps):
        opt.zero_grad()
        model.loss(g).backward()
        opt.step()
        if snapshot_every and (i + 1) % snapshot_every == 0:
            opt.snapshot()
            if history is not None:
                history.append(_clone(_unique_params(opt)))


# ----------------------------------------------------------------------------- LAWA vs reference
@pytest.mark.parametrize("name", sorted(MODELS))
@pytest.mark.parametrize("optim", ["sgd_momentum", "adam_foreach"])
def test_lawa_on_odd_models_equals_the_reference_mean(name, optim):
    torch.manual_seed(0)
    model = MODELS[name]()
    if optim == "sgd_momentum":
        base = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    else:
        base = torch.optim.Adam(model.parameters(), lr=1e-2, foreach=True)
    opt = LAWAWrapper(base, k=3)
    history: list = []
    _train(model, opt, 10, history=history, snapshot_every=2)
    _check_lawa_against_reference(opt, history)
    if name == "tied":
        assert len(_unique_params(opt)) == 2  # the tied weight and the twice-registered scale
        with opt.averaged():
            assert model.out.weight is model.emb.weight and model.other.scale is model.scale
        averaged = opt.averaged_state_dict(model)
        assert torch.equal(averaged["emb.weight"], averaged["out.weight"])
    if name == "mixed":
        assert model.unused.grad is None
        with opt.averaged():
            assert model.transposed.stride() == (1, 3)  # the parameter's own layout is kept
    if name == "channels_last":
        with opt.averaged():
            assert model.conv.weight.is_contiguous(memory_format=torch.channels_last)
        assert model.conv.weight.is_contiguous(memory_format=torch.channels_last)


def test_frozen_then_unfrozen_parameter():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 2))
    model[0].requires_grad_(False)
    opt = LAWAWrapper(torch.optim.Adam(model.parameters(), lr=1e-2), k=4)
    history: list = []
    g = torch.Generator().manual_seed(0)

    def train(n):
        for _ in range(n):
            opt.zero_grad()
            model(torch.randn(5, 3, generator=g)).pow(2).mean().backward()
            opt.step()
            opt.snapshot()
            history.append(_clone(_unique_params(opt)))

    frozen = model[0].weight.detach().clone()
    train(3)
    assert all(torch.equal(s, frozen) for s in opt.snapshots(0))
    model[0].requires_grad_(True)
    train(2)  # the window now straddles the unfreezing
    assert not torch.equal(opt.snapshots(0)[-1], frozen)
    _check_lawa_against_reference(opt, history)


@pytest.mark.parametrize("weights", ["uniform", "exp"])
def test_parameters_added_mid_run_have_their_value_as_history(weights):
    """Documented (store.add_params): a parameter added with add_param_group has its current value
    in every existing slot, so the average treats it as constant so far."""
    torch.manual_seed(0)
    model = nn.Linear(3, 2)
    opt = LAWAWrapper(torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9), k=4, weights=weights)
    history: list = []
    extra: list[nn.Parameter] = []
    g = torch.Generator().manual_seed(1)

    def train(n):
        for _ in range(n):
            opt.zero_grad()
            loss = model(torch.randn(4, 3, generator=g)).pow(2).mean()
            (loss + sum((e - 1).pow(2).sum() for e in extra)).backward()
            opt.step()
            opt.snapshot()
            history.append(_clone(_unique_params(opt)))

    train(3)
    new = nn.Parameter(torch.tensor([2.0, -1.0]))
    opt.add_param_group({"params": [new], "lr": 0.5})
    for snap in history:
        snap.append(new.detach().clone())
    extra.append(new)
    assert [s.tolist() for s in opt.snapshots(2)] == [[2.0, -1.0]] * 3
    with opt.averaged():
        assert new.tolist() == [2.0, -1.0]
    train(2)
    assert not torch.equal(opt.snapshots(2)[-1], torch.tensor([2.0, -1.0]))
    if weights == "uniform":
        _check_lawa_against_reference(opt, history)
    # and the extended ring survives a state dict round trip into a fresh wrapper
    sd = copy.deepcopy(opt.state_dict())
    model2 = copy.deepcopy(model)
    new2 = nn.Parameter(new.detach().clone())
    opt2 = LAWAWrapper(torch.optim.SGD(model2.parameters(), lr=0.1, momentum=0.9), k=4, weights=weights)
    opt2.add_param_group({"params": [new2], "lr": 0.5})
    opt2.load_state_dict(sd)
    with opt.averaged(), opt2.averaged():
        for p, q in zip(_unique_params(opt), _unique_params(opt2)):
            assert torch.equal(p, q)


@pytest.mark.parametrize("optim", ["sparse_adam", "sgd"])
def test_sparse_gradients(optim):
    """nn.Embedding(sparse=True): the parameter is dense, only its gradient is sparse; averaging works."""
    torch.manual_seed(0)
    model = SparseEmb()
    if optim == "sparse_adam":
        base = torch.optim.SparseAdam(model.parameters(), lr=0.05)
    else:
        base = torch.optim.SGD(model.parameters(), lr=0.05)
    opt = LAWAWrapper(base, k=3, period=2)
    history: list = []
    g = torch.Generator().manual_seed(0)
    for i in range(8):
        opt.zero_grad()
        model.loss(g).backward()
        assert model.emb.weight.grad.is_sparse
        opt.step()
        if (i + 1) % 2 == 0:
            history.append(_clone(_unique_params(opt)))
    assert opt.snapshots_taken == 4
    _check_lawa_against_reference(opt, history)
    sd = copy.deepcopy(opt.state_dict())
    opt.load_state_dict(sd)


@pytest.mark.slow
@pytest.mark.parametrize("backend", ["eager", "inductor"])
def test_torch_compile_sees_the_swap_without_recompiling(backend):
    import torch._dynamo

    torch._dynamo.reset()
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 2))
    opt = LAWAWrapper(torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9), k=2, period=1)
    compiled = torch.compile(model, backend=backend)
    x = torch.randn(3, 4)

    def train(n):
        for _ in range(n):
            opt.zero_grad()
            compiled(x).pow(2).mean().backward()
            opt.step()

    train(3)
    with torch.no_grad():
        raw = compiled(x)  # compiles the no-grad graph before recompilation becomes an error
    try:
        torch._dynamo.config.error_on_recompile = True
        graphs = torch._dynamo.utils.counters["stats"]["unique_graphs"]
        with torch.no_grad():
            with opt.averaged():
                swapped = compiled(x)
                eager = model(x)
            after = compiled(x)
        train(2)  # training resumes on the same graph
        assert torch._dynamo.utils.counters["stats"]["unique_graphs"] == graphs
    finally:
        torch._dynamo.config.error_on_recompile = False
        torch._dynamo.reset()
    assert torch.equal(after, raw)
    assert not torch.equal(swapped, raw)
    torch.testing.assert_close(swapped, eager, rtol=1e-6, atol=1e-6)


# ----------------------------------------------------------------------------- the zoo
ZOO_KWARGS = {
    "lawa": {"k": 3, "period": 2},
    "exp": {"k": 3, "period": 2, "alpha": 0.5},
    "swa": {"period": 2, "swa_start": 1},
    "ema": {"decay": 0.9},
    "lookahead": {"k": 3},
    "lawa_jump": {"k": 3, "period": 2, "every": 2, "start": 2},
}


def _zoo(name, model):
    module = get_method_info(name).requires
    if module is not None:
        require(module, f"the {name!r} method")
    base = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    return create(name, base, **ZOO_KWARGS.get(name, {}))


def _memory_formats(params):
    return [(p.stride(), p.is_contiguous(memory_format=torch.channels_last) if p.dim() == 4 else None) for p in params]


@pytest.mark.parametrize("model_name", sorted(MODELS))
@pytest.mark.parametrize("name", list_methods())
def test_every_method_on_odd_models(name, model_name):
    torch.manual_seed(0)
    model = MODELS[model_name]()
    opt = _zoo(name, model)
    _train(model, opt, 6, seed=1)
    params = _unique_params(opt)
    before, formats = _clone(params), _memory_formats(params)
    ids = [id(p) for p in model.parameters()]
    with opt.averaged():
        evaluated = _clone(params)
        assert [id(p) for p in model.parameters()] == ids
        assert _memory_formats(params) == formats
        assert all(bool(p.isfinite().all()) for p in params)
        if model_name == "tied":
            assert model.out.weight is model.emb.weight
    for p, b in zip(params, before):
        assert torch.equal(p.detach(), b)
    assert _memory_formats(params) == formats
    # A state dict round trip into a fresh model and wrapper evaluates the same weights.
    sd = copy.deepcopy(opt.state_dict())
    model2 = copy.deepcopy(model)
    opt2 = _zoo(name, model2)
    opt2.load_state_dict(sd)
    with opt2.averaged():
        for p, e in zip(_unique_params(opt2), evaluated):
            assert torch.equal(p.detach(), e)


@pytest.mark.parametrize("name", list_methods())
def test_every_method_with_sparse_gradients_works_or_says_why(name):
    torch.manual_seed(0)
    model = SparseEmb()
    before = model.emb.weight.detach().clone()
    try:
        opt = _zoo(name, model)
        _train(model, opt, 4, seed=1)
    except (RuntimeError, ValueError, TypeError) as err:
        assert "sparse" in str(err).lower(), f"{name}: unclear error for sparse gradients: {err}"
        return
    assert not torch.equal(model.emb.weight.detach(), before)
    trained = model.emb.weight.detach().clone()
    with opt.averaged():
        assert bool(model.emb.weight.isfinite().all())
    assert torch.equal(model.emb.weight.detach(), trained)
