"""The zoo behind one protocol: every registered method gets these tests for free.

Parametrized over ``list_methods()``: swap exactness (also when the body raises), lockstep
resume through ``torch.save``/``torch.load(weights_only=True)`` into a fresh model and wrapper,
an LR scheduler and ``torch.amp.GradScaler`` driving it (including a skipped step), bad input
rejected with nothing changed, and several wrappers observing one base optimizer.
"""

from __future__ import annotations

import copy
import io
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F
from conftest import require
from helpers import class_batches, mlp, train_classifier
from torch import nn

from lawa_optim import AveragingOptimizer, EXPWrapper, LAWAWrapper, create, get_method_info, list_methods

METHODS = list_methods()
# Small settings so a few steps exercise each method (windows fill, SWA starts, syncs happen).
TEST_KWARGS = {
    "lawa": {"k": 3, "period": 2},
    "exp": {"k": 3, "period": 2, "alpha": 0.5},
    "swa": {"period": 2, "swa_start": 1},
    "ema": {"decay": 0.9},
    "lookahead": {"k": 4},
    "lawa_jump": {"k": 3, "period": 2, "every": 2, "start": 2},
}
# A bad value per method: (kwargs, the argument name the error must mention).
BAD_KWARGS = {
    "lawa": ({"k": 0}, "k"),
    "exp": ({"alpha": 1.5}, "alpha"),
    "lookahead": ({"alpha": 0.0}, "alpha"),
    "swa": ({"swa_start": -1}, "swa_start"),
    "ema": ({"decay": 1.5}, "decay"),
    "schedulefree": ({"warmup_steps": -1}, "warmup_steps"),
    "base": ({"period": 0}, "period"),
}


pytestmark = pytest.mark.usefixtures("one_thread")


def _needs(name: str) -> None:
    module = get_method_info(name).requires
    if module is not None:
        require(module, f"the {name!r} method")


def _make(name: str, model: nn.Module, **extra) -> AveragingOptimizer:
    base = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, weight_decay=1e-4)
    return create(name, base, **{**TEST_KWARGS.get(name, {}), **extra})


def _weights(model: nn.Module) -> list[torch.Tensor]:
    return [p.detach().clone() for p in model.parameters()]


def _eval_weights(model: nn.Module, opt: AveragingOptimizer) -> list[torch.Tensor]:
    with opt.averaged():
        return _weights(model)


def _same(a: list[torch.Tensor], b: list[torch.Tensor]) -> bool:
    return len(a) == len(b) and all(torch.equal(x, y) for x, y in zip(a, b, strict=True))


def _sd_equal(a, b) -> bool:
    """Nested dicts/lists/tensors equal, tensors bit for bit."""
    if isinstance(a, torch.Tensor) or isinstance(b, torch.Tensor):
        return isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor) and a.dtype == b.dtype and torch.equal(a, b)
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_sd_equal(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return len(a) == len(b) and all(_sd_equal(x, y) for x, y in zip(a, b, strict=True))
    return a == b


def _optimizer_chain(opt):
    while opt is not None:
        yield opt
        opt = getattr(opt, "optimizer", None)


# ------------------------------------------------------------------------------------- registry
def test_registry_lists_every_method_with_its_info():
    assert METHODS == ["base", "lawa", "exp", "lookahead", "swa", "ema", "schedulefree", "lawa_jump"]
    assert list_methods(changes_trajectory=False) == ["base", "lawa", "exp", "swa", "ema"]
    assert list_methods(changes_trajectory=True) == ["lookahead", "schedulefree", "lawa_jump"]
    assert get_method_info("lawa").defaults == {"k": 6}
    assert get_method_info("exp").defaults == {"k": 10, "alpha": 0.9}
    assert get_method_info("lookahead").defaults == {"k": 5, "alpha": 0.8}
    assert get_method_info("ema").defaults["decay"] == 0.999
    for name in METHODS:
        info = get_method_info(name)
        assert info.name == name and info.source and info.description and info.evaluates
        with pytest.raises(TypeError):
            info.defaults["x"] = 1  # read-only
        with pytest.raises(AttributeError):
            info.name = "other"  # frozen


def test_unknown_method_and_kwarg_errors_list_what_exists():
    opt = torch.optim.SGD(mlp(4, 8, 3).parameters(), lr=0.1)
    with pytest.raises(ValueError, match=r"Unknown method: 'lawaa'.*'lawa'.*'schedulefree'"):
        create("lawaa", opt)
    with pytest.raises(ValueError, match="Unknown method"):
        get_method_info(None)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match=r"\['kk'\].*'lawa'.*'k': 6.*'period'"):
        create("lawa", opt, kk=3)
    with pytest.raises(ValueError, match="changes_trajectory"):
        list_methods(changes_trajectory="yes")  # type: ignore[arg-type]


def test_import_does_not_load_optional_packages():
    code = (
        "import sys, lawa_optim; lawa_optim.list_methods(); "
        "bad = [m for m in ('torch_optimizer', 'schedulefree', 'click', 'torchvision', 'matplotlib') "
        "if m in sys.modules]; print(bad); sys.exit(1 if bad else 0)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0, out.stdout + out.stderr


@pytest.mark.parametrize("name", [m for m in METHODS if get_method_info(m).requires])
def test_missing_optional_package_names_the_extra(name, monkeypatch):
    module = get_method_info(name).requires
    monkeypatch.setitem(sys.modules, module, None)  # makes `import module` raise ImportError
    monkeypatch.delitem(sys.modules, "lawa_optim.baselines.torch_optimizer_fix", raising=False)
    with pytest.raises(ImportError, match=r"pip install lawa-optim\[zoo\]"):
        _make(name, mlp(4, 8, 3))


# ------------------------------------------------------------------------------------- protocol
@pytest.mark.parametrize("name", METHODS)
def test_is_an_optimizer_with_the_protocol(name):
    _needs(name)
    opt = _make(name, mlp(4, 8, 3))
    assert isinstance(opt, torch.optim.Optimizer) and isinstance(opt, AveragingOptimizer)
    assert opt.method == name and not opt.swapped_in and opt.num_steps == 0
    for attr in (
        "step",
        "zero_grad",
        "state_dict",
        "load_state_dict",
        "averaged",
        "swap_in",
        "swap_out",
        "snapshot",
        "observe_step",
        "num_snapshots",
    ):
        assert hasattr(opt, attr), attr
    assert opt.state_dict()["lawa"]["method"] == name


@pytest.mark.parametrize("name", METHODS)
def test_swap_restores_training_weights_bit_exactly(name):
    _needs(name)
    model, data = mlp(4, 8, 3), class_batches(n=16, seed=123)
    opt = _make(name, model)
    train_classifier(model, opt, data, 7)
    train_w = _weights(model)
    with opt.averaged():
        assert opt.swapped_in
        eval_w = _weights(model)
        with pytest.raises(RuntimeError, match="swapped in"):
            opt.step()
    assert not opt.swapped_in and _same(_weights(model), train_w)
    evaluates_training = get_method_info(name).evaluates == "the training weights"
    assert _same(eval_w, train_w) == evaluates_training
    # the body raises: still restored, and the evaluation weights do not depend on the swap count
    with pytest.raises(KeyError):
        with opt.averaged():
            assert _same(_weights(model), eval_w)
            raise KeyError("evaluation failed")
    assert not opt.swapped_in and _same(_weights(model), train_w)
    # the pair of calls (frameworks with separate validation start/end hooks)
    opt.swap_in()
    assert _same(_weights(model), eval_w)
    opt.swap_out()
    assert _same(_weights(model), train_w)
    # training continues exactly as without the swaps
    ref_model = mlp(4, 8, 3)
    ref = _make(name, ref_model)
    train_classifier(ref_model, ref, data, 7)
    train_classifier(model, opt, data, 3, start=7)
    train_classifier(ref_model, ref, data, 3, start=7)
    assert _same(_weights(model), _weights(ref_model))


@pytest.mark.parametrize("name", METHODS)
def test_lockstep_resume_through_torch_save(name):
    """Save after 5 steps, load into a fresh model + wrapper + scheduler, continue both: identical."""
    _needs(name)
    data = class_batches(n=16, seed=123)
    model_a = mlp(4, 8, 3, seed=0)
    opt_a = _make(name, model_a)
    sched_a = torch.optim.lr_scheduler.StepLR(opt_a, step_size=2, gamma=0.7)
    train_classifier(model_a, opt_a, data, 5, sched=sched_a)
    buf = io.BytesIO()
    torch.save({"model": model_a.state_dict(), "opt": opt_a.state_dict(), "sched": sched_a.state_dict()}, buf)
    buf.seek(0)
    ckpt = torch.load(buf, weights_only=True)

    model_b = mlp(4, 8, 3, seed=1)  # different initial weights: everything must come from the checkpoint
    opt_b = _make(name, model_b)
    sched_b = torch.optim.lr_scheduler.StepLR(opt_b, step_size=2, gamma=0.7)  # created before loading
    model_b.load_state_dict(ckpt["model"])
    opt_b.load_state_dict(ckpt["opt"])
    sched_b.load_state_dict(ckpt["sched"])
    assert opt_b.num_steps == opt_a.num_steps == 5 and opt_b.num_snapshots == opt_a.num_snapshots

    train_classifier(model_a, opt_a, data, 6, start=5, sched=sched_a)
    train_classifier(model_b, opt_b, data, 6, start=5, sched=sched_b)
    assert _same(_weights(model_a), _weights(model_b))
    assert _same(_eval_weights(model_a, opt_a), _eval_weights(model_b, opt_b))
    for a, b in zip(_optimizer_chain(opt_a), _optimizer_chain(opt_b), strict=True):
        assert a.param_groups[0]["lr"] == b.param_groups[0]["lr"] == pytest.approx(0.05 * 0.7**5)


@pytest.mark.parametrize("name", METHODS)
def test_scheduler_and_gradscaler_drive_it(name):
    """GradScaler's power-of-two scaling is exact in float32: same weights as plain steps.

    A faked Inf gradient makes GradScaler skip the step: nothing changes and the step is not counted.
    """
    _needs(name)
    data = class_batches(n=16, seed=123)
    model, ref_model = mlp(4, 8, 3), mlp(4, 8, 3)
    opt, ref = _make(name, model), _make(name, ref_model)
    lam = lambda step: 1.0 / (1 + step)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lam)
    ref_sched = torch.optim.lr_scheduler.LambdaLR(ref, lam)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**10)
    assert scaler.is_enabled()
    train_classifier(model, opt, data, 6, sched=sched, scaler=scaler)
    train_classifier(ref_model, ref, data, 6, sched=ref_sched)
    assert _same(_weights(model), _weights(ref_model))
    assert _same(_eval_weights(model, opt), _eval_weights(ref_model, ref))
    for o in _optimizer_chain(opt):  # the schedule reached the optimizer that steps
        assert o.param_groups[0]["lr"] == pytest.approx(0.05 / 7)

    before, eval_before, sd_before = _weights(model), _eval_weights(model, opt), copy.deepcopy(opt.state_dict())
    x, y = data[0]
    opt.zero_grad()
    scaler.scale(F.cross_entropy(model(x), y)).backward()
    next(model.parameters()).grad[0, 0] = float("inf")
    scale = scaler.get_scale()
    scaler.step(opt)
    scaler.update()
    assert scaler.get_scale() == scale / 2
    assert opt.num_steps == 6 and _same(_weights(model), before) and _same(_eval_weights(model, opt), eval_before)
    assert opt.state_dict()["lawa"]["num_steps"] == sd_before["lawa"]["num_steps"]


@pytest.mark.parametrize("name", METHODS)
def test_bad_input_is_rejected_and_nothing_changes(name):
    _needs(name)
    model = mlp(4, 8, 3)
    base = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    groups = copy.deepcopy([{k: v for k, v in g.items() if k != "params"} for g in base.param_groups])
    bad, arg = BAD_KWARGS.get(name, ({"no_such_argument": 1}, "no_such_argument"))
    with pytest.raises((ValueError, TypeError), match=arg):
        create(name, base, **bad)
    with pytest.raises(TypeError, match="no_such_argument"):
        create(name, base, no_such_argument=1)
    with pytest.raises(TypeError, match="optimizer"):
        create(name, list(model.parameters()))  # type: ignore[arg-type]
    assert [{k: v for k, v in g.items() if k != "params"} for g in base.param_groups] == groups and not base.state

    # a state dict from another model, or another method, is refused before anything changes
    data = class_batches(n=16, seed=123)
    opt = _make(name, model)
    train_classifier(model, opt, data, 5)
    sd, weights, eval_w = copy.deepcopy(opt.state_dict()), _weights(model), _eval_weights(model, opt)
    other_method = "ema" if name != "ema" else "swa"
    wrong = [_make(other_method, mlp(4, 8, 3)).state_dict(), {"state": {}, "param_groups": []}]
    other_models = [nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 3, bias=False))]  # 3 tensors, not 4
    if get_method_info(name).evaluates != "the training weights":
        # same number of tensors, other shapes: torch's Optimizer.load_state_dict does not notice, the
        # method's own weight copies must
        other_models.append(nn.Sequential(nn.Linear(4, 5), nn.Tanh(), nn.Linear(5, 3)))
    for other_model in other_models:
        other = _make(name, other_model)
        train_classifier(other_model, other, data, 5)
        wrong.append(other.state_dict())
    for bad_sd in wrong:
        with pytest.raises(ValueError):
            opt.load_state_dict(bad_sd)
        assert _same(_weights(model), weights) and _same(_eval_weights(model, opt), eval_w)
        assert _sd_equal(opt.state_dict(), sd)
    with pytest.raises(ValueError, match="k"):
        opt.averaged(k=0)
    assert not opt.swapped_in


# --------------------------------------------------------------------- one base run, many wrappers
def test_wrappers_observing_one_base_optimizer_match_their_own_runs():
    """The ResNet runner's pattern: step the base optimizer once, ``observe_step()`` each wrapper."""
    data = class_batches(n=16, seed=123)
    names = list_methods(changes_trajectory=False)
    model = mlp(4, 8, 3)
    base = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, weight_decay=1e-4)
    wrappers = {n: create(n, base, **TEST_KWARGS.get(n, {})) for n in names}
    for i in range(9):
        x, y = data[i]
        base.zero_grad()
        F.cross_entropy(model(x), y).backward()
        base.step()
        for w in wrappers.values():
            w.observe_step()
    for n in names:
        alone_model = mlp(4, 8, 3)
        alone = _make(n, alone_model)
        train_classifier(alone_model, alone, data, 9)
        assert _same(_weights(alone_model), _weights(model)), n
        assert _same(_eval_weights(alone_model, alone), _eval_weights(model, wrappers[n])), n


@pytest.mark.parametrize("name", METHODS)
def test_batchnorm_recompute_restores_buffers_too(name):
    """``averaged(model=, bn_loader=)`` recomputes BN statistics for the evaluation weights, then restores all."""
    _needs(name)
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 8), nn.BatchNorm1d(8), nn.Tanh(), nn.Linear(8, 3))
    opt = _make(name, model)
    data = class_batches(n=16, seed=123)
    train_classifier(model, opt, data, 5)
    weights, buffers = _weights(model), [b.clone() for b in model.buffers()]
    loader = [x for x, _ in data[:4]]
    with opt.averaged(model=model, bn_loader=loader):
        assert not torch.equal(model[1].running_mean, buffers[0])  # recomputed for the swapped-in weights
    assert _same(_weights(model), weights) and _same(list(model.buffers()), buffers)


@pytest.mark.parametrize("name", [n for n in METHODS if issubclass(get_method_info(n).factory, LAWAWrapper)])
def test_every_option_lawa_accepts_is_accepted_by_its_variants(name, tmp_path):
    """EXP (and any registered LAWA variant) forwards everything to LAWAWrapper: every LAWA option,
    offload="disk" with offload_dir included, is accepted by name through create()."""
    lawa = get_method_info("lawa").accepted_kwargs()
    variant = get_method_info(name).accepted_kwargs()
    fixed = {"weights"} if name == "exp" else set()  # what the variant decides itself
    assert set(lawa) - fixed <= set(variant)  # a variant may add options of its own (lawa_jump)
    values = {"k": 3, "period": 2, "weights": "exp", "alpha": 0.5, "offload": "disk",
              "offload_dir": str(tmp_path), "nonfinite": "skip", "fused": True}
    assert set(values) == set(lawa), "a new LAWA option: give it a non-default value here"
    model = nn.Linear(3, 2)
    opt = create(name, torch.optim.SGD(model.parameters(), lr=0.1), **{k: v for k, v in values.items() if k in variant})
    for key, value in values.items():
        assert getattr(opt, key) == value, key
    assert opt.method == name and opt._ring.offload == "disk"


def test_exp_refuses_weights_and_unknown_options():
    model = nn.Linear(3, 2)
    with pytest.raises(TypeError, match="weights"):
        EXPWrapper(torch.optim.SGD(model.parameters(), lr=0.1), weights="uniform")
    with pytest.raises(TypeError, match="swa_start"):
        EXPWrapper(torch.optim.SGD(model.parameters(), lr=0.1), swa_start=3)
    opt = EXPWrapper(torch.optim.SGD(model.parameters(), lr=0.1), 4, 2, alpha=0.5)  # positional as LAWA's
    assert (opt.k, opt.period, opt.alpha, opt.weights) == (4, 2, 0.5, "exp")
    assert (EXPWrapper(torch.optim.SGD(model.parameters(), lr=0.1)).k, opt.method) == (10, "exp")
