"""LAWAWrapper around every optimizer timm and torch-optimizer create, driven as their users drive them.

timm: each name of ``timm.optim.list_optimizers()`` that runs on CPU, plus ``lookahead_*`` names,
created with ``timm.optim.create_optimizer_v2(model, opt=name, ...)`` and stepped as timm's
``train.py`` steps it (``loss.backward(create_graph=second_order)`` where ``second_order`` is read
from the optimizer's ``is_second_order``, through the wrapper). torch-optimizer: each optimizer
class the package exports. For each: wrap, train, check the average against the float64 reference,
round-trip the state dict through ``torch.save``/``torch.load(weights_only=True)`` into a fresh
model and wrapper, then step the original and the resumed run in lockstep: weights and averages
must stay bit-identical.

Left out, with the reason (docs/optimizers.md lists them): timm's ``bnb*`` (bitsandbytes) and
``fused*`` (apex) names, CUDA-only packages; torch-optimizer's own ``Lookahead`` cannot save its
state dict on current torch (the zoo's fixed ``lawa_optim.baselines.torch_optimizer_fix.Lookahead``
is tested in its place).
"""

from __future__ import annotations

import inspect
import io

import pytest
import torch
import torch.nn.functional as F
from conftest import require
from reference import reference_average
from torch import nn

from lawa_optim import LAWAWrapper

try:
    import timm.optim as timm_optim
except ImportError:  # the test below fails under CI, skips elsewhere (conftest.require)
    timm_optim = None
try:
    import torch_optimizer
except ImportError:
    torch_optimizer = None

K, PERIOD, STEPS_BEFORE, STEPS_AFTER = 3, 2, 5, 4
# timm's Kron draws when to update its preconditioners; deterministic=True (timm's option) resumes exactly
TIMM_KWARGS = {name: {"deterministic": True} for name in ("kron", "kronc", "kronw")}
# their own state dict leaves out the torch.Generator of their random Hessian probes
TIMM_INEXACT_RESUME = {"adahessian"}


def _timm_names() -> list[str]:
    """timm's optimizer names that run on CPU (not the bitsandbytes/apex ones), plus Lookahead variants."""
    if timm_optim is None:
        return ["timm-missing"]
    names = [n for n in timm_optim.list_optimizers() if not isinstance(timm_optim.get_optimizer_info(n).opt_class, str)]
    return names + [f"lookahead_{n}" for n in ("sgd", "adamw", "adahessian", "novograd")]


def _torch_optimizer_names() -> list[str]:
    """Every optimizer class torch-optimizer exports (its ``__all__``)."""
    if torch_optimizer is None:
        return ["torch_optimizer-missing"]
    classes = {n: getattr(torch_optimizer, n) for n in torch_optimizer.__all__}
    return [n for n, c in classes.items() if isinstance(c, type) and issubclass(c, torch.optim.Optimizer)]


def _model(seed: int = 0, conv: bool = True) -> nn.Module:
    torch.manual_seed(seed)  # a conv layer: per-layer state (NovoGrad), factored state (Adafactor), matrices (Muon)
    if not conv:
        return nn.Sequential(nn.Flatten(), nn.Linear(72, 8), nn.Tanh(), nn.Linear(8, 3))
    return nn.Sequential(nn.Conv2d(2, 4, 3), nn.Tanh(), nn.Flatten(), nn.Linear(64, 3))


def _batches(n: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    g = torch.Generator().manual_seed(1)
    return [(torch.randn(4, 2, 6, 6, generator=g), torch.randint(0, 3, (4,), generator=g)) for _ in range(n)]


def _step(model: nn.Module, opt: torch.optim.Optimizer, batch, index: int, second_order: bool | None) -> None:
    """One step the way timm's train.py takes it: ``create_graph`` from the optimizer's ``is_second_order``.

    The global RNG is seeded per step: optimizers that draw from it (torch-optimizer's Adahessian)
    then draw the same numbers in an uninterrupted and a resumed run.
    """
    if second_order is None:
        second_order = hasattr(opt, "is_second_order") and opt.is_second_order
    x, y = batch
    torch.manual_seed(1000 + index)
    opt.zero_grad()
    F.cross_entropy(model(x), y).backward(create_graph=second_order)
    opt.step()


def _weights(model: nn.Module) -> list[torch.Tensor]:
    return [p.detach().clone() for p in model.parameters()]


def _end_of_epoch(opt: torch.optim.Optimizer) -> None:
    """What timm's train.py does after each epoch: ``sync_lookahead()`` where the optimizer has it."""
    if hasattr(opt, "sync_lookahead"):
        opt.sync_lookahead()


def _round_trip(checkpoint: dict) -> dict:
    """``checkpoint`` through ``torch.save`` and ``torch.load(weights_only=True)``."""
    buffer = io.BytesIO()
    torch.save(checkpoint, buffer)
    buffer.seek(0)
    return torch.load(buffer, weights_only=True)


def _same(a: list[torch.Tensor], b, what: str) -> None:
    for i, (p, q) in enumerate(zip(a, b, strict=True)):
        assert torch.equal(p.detach(), q.detach()), f"{what}: tensor {i} differs"


def _bare_run(make_base, make_model, batches, second_order, resume: bool) -> list[list[torch.Tensor]]:
    """The weights after each step of the base optimizer alone; with ``resume``, it is saved and
    loaded into a fresh model and optimizer after ``STEPS_BEFORE`` steps, as the wrapped run is."""
    model = make_model()
    base = make_base(model)
    trajectory = []
    for i, batch in enumerate(batches):
        if i == STEPS_BEFORE:
            _end_of_epoch(base)
        if resume and i == STEPS_BEFORE:
            ckpt = _round_trip({"model": model.state_dict(), "opt": base.state_dict()})
            model = make_model(seed=1)
            base = make_base(model)
            model.load_state_dict(ckpt["model"])
            base.load_state_dict(ckpt["opt"])
        _step(model, base, batch, i, second_order)
        trajectory.append(_weights(model))
    return trajectory


def _lockstep(make_base, *, second_order: bool | None = None, conv: bool = True, exact_resume: bool = True) -> None:
    """Wrap, train, average, save, resume into a fresh model and wrapper, continue both in lockstep.

    The wrapped run must follow the bare optimizer's trajectory bit for bit. With ``exact_resume``
    the resumed run must then follow the uninterrupted one bit for bit (weights and every window's
    average); an optimizer whose own state dict leaves out state it draws from (the random probes
    of timm's Adahessian) cannot resume exactly even bare: the resumed wrapped run must then
    follow the bare optimizer resumed the same way.
    """
    def make_model(seed=0):
        return _model(seed, conv)

    batches = _batches(STEPS_BEFORE + STEPS_AFTER)
    bare = _bare_run(make_base, make_model, batches, second_order, resume=False)
    model = make_model()
    base = make_base(model)
    opt = LAWAWrapper(base, k=K, period=PERIOD)
    # the attributes a training script reads on the optimizer reach it through the wrapper
    assert hasattr(opt, "is_second_order") == hasattr(base, "is_second_order")
    if hasattr(base, "is_second_order"):
        assert opt.is_second_order == base.is_second_order
    history = []
    start = _weights(model)
    for i, batch in enumerate(batches[:STEPS_BEFORE]):
        _step(model, opt, batch, i, second_order)
        _same(bare[i], model.parameters(), f"the wrapped run left the bare optimizer's at step {i + 1}")
        if opt.num_steps % PERIOD == 0:
            history.append(_weights(model))
    _end_of_epoch(opt)  # through the wrapper, as train.py calls it
    trained = _weights(model)
    assert any(not torch.equal(a, b) for a, b in zip(start, trained)), "the optimizer did not move the weights"
    with opt.averaged():
        for p, ref in zip(model.parameters(), reference_average(history, K)):
            torch.testing.assert_close(p.detach(), ref.to(p.dtype))
    _same(trained, model.parameters(), "swap_out restores the training weights")

    ckpt = _round_trip({"model": model.state_dict(), "opt": opt.state_dict()})
    model2 = make_model(seed=1)
    opt2 = LAWAWrapper(make_base(model2), k=K, period=PERIOD)
    model2.load_state_dict(ckpt["model"])
    opt2.load_state_dict(ckpt["opt"])
    assert opt2.num_steps == opt.num_steps and opt2.num_snapshots == opt.num_snapshots

    resumed = None if exact_resume else _bare_run(make_base, make_model, batches, second_order, resume=True)
    history2 = list(history)
    for i, batch in enumerate(batches[STEPS_BEFORE:], start=STEPS_BEFORE):
        _step(model, opt, batch, i, second_order)
        _step(model2, opt2, batch, i, second_order)
        _same(bare[i], model.parameters(), f"the wrapped run left the bare optimizer's at step {i + 1}")
        if exact_resume:
            _same(model.parameters(), model2.parameters(), f"the resumed run left the uninterrupted at step {i + 1}")
        else:
            _same(resumed[i], model2.parameters(), f"the resumed run left the bare resumed one at step {i + 1}")
        if opt.num_steps % PERIOD == 0:
            history.append(_weights(model))
            history2.append(_weights(model2))
    for j in range(1, K + 1):
        with opt.averaged(k=j), opt2.averaged(k=j):
            for p, q, ref, ref2 in zip(model.parameters(), model2.parameters(),
                                       reference_average(history, j), reference_average(history2, j)):
                torch.testing.assert_close(p.detach(), ref.to(p.dtype))
                torch.testing.assert_close(q.detach(), ref2.to(q.dtype))
                if exact_resume:
                    assert torch.equal(p, q), f"the averages of the {j} latest snapshots differ after resuming"


@pytest.mark.parametrize("name", _timm_names())
def test_timm_optimizer(name):
    require("timm", "timm's optimizers")

    def make_base(model):
        kwargs = TIMM_KWARGS.get(name.removeprefix("lookahead_"), {})
        return timm_optim.create_optimizer_v2(model, opt=name, lr=1e-2, weight_decay=1e-2, **kwargs)

    _lockstep(make_base, exact_resume=name.removeprefix("lookahead_") not in TIMM_INEXACT_RESUME)


def test_timm_names_left_out_need_cuda_packages():
    """The names the timm test leaves out are exactly those of bitsandbytes and apex (CUDA only)."""
    require("timm", "timm's optimizers")
    left_out = set(timm_optim.list_optimizers()) - set(_timm_names())
    assert left_out and all(n.startswith(("bnb", "fused")) for n in left_out), sorted(left_out)
    # and every one of them is such a name: none of timm's own (CPU) optimizers is left out
    assert not {n for n in timm_optim.list_optimizers() if not n.startswith(("bnb", "fused"))} - set(_timm_names())


def _torch_optimizer_base(name: str, model: nn.Module) -> torch.optim.Optimizer:
    cls = getattr(torch_optimizer, name)
    if name == "Lookahead":  # upstream's cannot save its state dict (see the module docstring): the fixed one
        from lawa_optim.baselines.torch_optimizer_fix import Lookahead

        return Lookahead(torch.optim.SGD(model.parameters(), lr=1e-2, momentum=0.9), k=2)
    kwargs = {"lr": 1e-2} if "lr" in inspect.signature(cls).parameters else {}
    return cls(model.parameters(), **kwargs)


@pytest.mark.parametrize("name", _torch_optimizer_names())
def test_torch_optimizer_optimizer(name):
    require("torch_optimizer", "torch-optimizer's optimizers")
    # Adahessian needs the graph of the gradients; torch-optimizer's declares no is_second_order
    _lockstep(
        lambda model: _torch_optimizer_base(name, model),
        second_order=True if name == "Adahessian" else None,
        conv=name != "Adafactor",  # torch-optimizer's Adafactor fails on its own with 4-D (conv) weights
    )


def test_base_optimizer_attributes_reach_the_caller_and_nothing_else():
    """What a script reads on the optimizer (timm's ``is_second_order``) is the base optimizer's, also
    through Lightning's proxy; private names and the wrapper's own state are never forwarded."""
    require("timm", "timm's optimizers")
    model = _model()
    base = timm_optim.create_optimizer_v2(model, opt="adahessian", lr=1e-2)
    opt = LAWAWrapper(base, k=K, period=PERIOD)
    assert opt.is_second_order is True
    assert opt.generator is base.generator  # a public attribute of timm's Adahessian
    assert not hasattr(opt, "_step_supports_amp_scaling") and not hasattr(opt, "_no_such_thing")
    with pytest.raises(AttributeError, match=r"'LAWAWrapper' object has no attribute 'no_such_thing'.*Adahessian"):
        opt.no_such_thing  # noqa: B018
    assert not hasattr(LAWAWrapper(torch.optim.SGD(_model().parameters(), lr=0.1)), "is_second_order")
    opt.label = "mine"  # writes stay on the wrapper
    assert not hasattr(base, "label")
    # the wrapper's own (shared) state is never read from the base: a missing one stays missing
    del opt.__dict__["_shared"]["online_k"]
    assert not hasattr(opt, "online_k")

    require("lightning", "Lightning's optimizer proxy")
    from lightning.pytorch.core.optimizer import LightningOptimizer

    proxy = LightningOptimizer(LAWAWrapper(timm_optim.create_optimizer_v2(_model(), opt="adahessian", lr=1e-2), k=K))
    assert proxy.is_second_order is True


@pytest.mark.parametrize("opt_name", ["novograd", "adafactor"])
def test_state_dict_of_another_model_is_refused_by_what_the_wrapper_owns(opt_name):
    """The base optimizer's own state is left to it (NovoGrad: one value per layer); a state dict
    saved for another model of as many tensors is still refused, by the wrapper's own snapshots,
    before anything changes."""
    require("timm", "timm's optimizers")

    def trained(model):
        opt = LAWAWrapper(timm_optim.create_optimizer_v2(model, opt=opt_name, lr=1e-2), k=K, period=1)
        for i, batch in enumerate(_batches(3)):
            _step(model, opt, batch, i, None)
        return opt

    other = nn.Sequential(nn.Conv2d(2, 5, 3), nn.Tanh(), nn.Flatten(), nn.Linear(80, 3))  # as many tensors
    opt = trained(_model())
    sd = trained(other).state_dict()
    before = _round_trip(opt.state_dict())
    with pytest.raises(ValueError, match="another model"):
        opt.load_state_dict(sd)
    after = _round_trip(opt.state_dict())
    assert before["lawa"]["num_steps"] == after["lawa"]["num_steps"]
    for i, entry in before["state"].items():
        for key, value in entry.items():
            assert torch.equal(torch.as_tensor(value), torch.as_tensor(after["state"][i][key])), (i, key)
