"""lawa_benchmarks.resnet.methods and the runner's LR schedule: the benchmark follows the zoo's registry.

A method registered in ``lawa_optim``'s registry (a dummy one here, monkeypatched in) gets a
config section, a place in the runs chosen by its ``changes_trajectory`` and a plot colour with
no edit in ``benchmarks/``. The LR schedule built from torch's schedulers matches the formula
the runner used to compute by hand and resumes exactly.
"""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path
from types import MappingProxyType, SimpleNamespace

import pytest
import torch

from tests.conftest import require

require("yaml")
require("pydantic")

import lawa_optim  # noqa: E402
from lawa_benchmarks.resnet.config import ConfigError, load_config, parse_config  # noqa: E402
from lawa_benchmarks.resnet.methods import plan_runs  # noqa: E402
from lawa_optim import registry  # noqa: E402

QUICK = Path(__file__).resolve().parent.parent / "configs" / "quick.yaml"


def _dummy(optimizer, k: int = 3, gain: float = 0.5, period=None):
    """A new method of the zoo: LAWA under another name, with an option of its own."""
    if isinstance(gain, bool) or not isinstance(gain, (int, float)) or not 0 < gain <= 1:
        raise ValueError(f"Invalid gain: {gain!r}; use a number in (0, 1]")
    return lawa_optim.LAWAWrapper(optimizer, k=k, period=period)


@pytest.fixture(params=[False, True], ids=["observer", "own-run"])
def dummy(request, monkeypatch):
    info = dataclasses.replace(lawa_optim.get_method_info("lawa"), name="dummy", factory=_dummy,
                               defaults=MappingProxyType({"k": 3}), changes_trajectory=request.param,
                               units=MappingProxyType({}))
    monkeypatch.setattr(registry, "_METHODS", MappingProxyType({**registry._METHODS, "dummy": info}))
    assert "dummy" in lawa_optim.list_methods()
    return info


def test_a_registered_method_gets_a_config_section(dummy):
    cfg = load_config(QUICK, ["methods.dummy.gain=0.25"])
    section = cfg.methods.dummy
    assert section.method_kwargs() == {"k": 3, "gain": 0.25}  # the registry's default k, the override's gain
    assert section.enabled is not dummy.changes_trajectory  # own runs are opt-in
    with pytest.raises(ConfigError) as info:
        load_config(QUICK, ["methods.dummy.gain=2", "methods.dummy.bogus=1"])
    assert any(e.startswith("methods.dummy: Invalid gain: 2") for e in info.value.errors), info.value.errors
    assert any(e.startswith("methods.dummy.bogus: unknown key") for e in info.value.errors), info.value.errors
    # the registry without it: a config naming it is refused
    with pytest.raises(ConfigError, match="methods.dummy: unknown key"):
        with pytest.MonkeyPatch.context() as mp:
            mp.setattr(registry, "_METHODS", MappingProxyType({k: v for k, v in registry._METHODS.items()
                                                               if k != "dummy"}))
            load_config(QUICK, ["methods.dummy.gain=0.25"])


def test_plan_runs_places_it_by_changes_trajectory(dummy):
    cfg = load_config(QUICK, ["methods.dummy.enabled=true"])
    plans = {p.run: p for p in plan_runs(cfg, None, steps_per_epoch=7)}
    if dummy.changes_trajectory:
        assert "dummy" not in plans["base"].observers
        assert (plans["dummy"].driver, plans["dummy"].driver_kwargs) == ("dummy", {"k": 3, "gain": 0.5, "period": 7})
        assert [(e.name, e.wrapper, e.family) for e in plans["dummy"].evals] == [("dummy", "driver", "dummy")]
    else:
        assert "dummy" not in plans
        assert plans["base"].observers["dummy"] == ("dummy", {"k": 3, "gain": 0.5, "period": 7})
        assert [(e.name, e.wrapper) for e in plans["base"].evals if e.family == "dummy"] == [("dummy_k3", "dummy")]
    # the known methods are where they were: observers of the base run, or runs of their own
    assert set(plans["base"].observers) - {"dummy"} == {"lawa", "exp", "swa", "ema"}
    assert set(plans) - {"dummy"} == {"base", "lookahead", "schedulefree"}
    only = plan_runs(cfg, ["dummy"], steps_per_epoch=7)
    assert [p.run for p in only] == (["base", "dummy"] if dummy.changes_trajectory else ["base"])


def _timed(optimizer, k: int = 3, warm_steps: int = 0, period=None):
    """A method with options in other units: windows, steps stated in epochs, and a learning rate of its own."""
    return lawa_optim.LAWAWrapper(optimizer, k=k, period=period)


def test_units_say_how_the_benchmark_states_options(monkeypatch):
    """No method is named in the benchmark: a new method's MethodInfo.units shape its section and its plan."""
    info = dataclasses.replace(lawa_optim.get_method_info("lawa"), name="timed", factory=_timed,
                               defaults=MappingProxyType({}), changes_trajectory=True,
                               units=MappingProxyType({"k": "windows", "warm_steps": "epochs", "lr": "constant"}))
    monkeypatch.setattr(registry, "_METHODS", MappingProxyType({**registry._METHODS, "timed": info}))
    cfg = load_config(QUICK, ["methods.timed.k=[2,4]", "methods.timed.bncopy_k=[5]", "methods.timed.warm_epochs=1.5",
                              "methods.timed.lr=0.5"])
    assert cfg.methods.timed.method_kwargs() == {}  # every option is stated in the benchmark's units
    with pytest.raises(ConfigError, match="methods.timed.warm_steps: unknown key"):
        load_config(QUICK, ["methods.timed.warm_steps=3"])
    (plan,) = [p for p in plan_runs(cfg, ["timed"], steps_per_epoch=10) if p.run == "timed"]
    assert plan.driver_kwargs == {"k": 5, "warm_steps": 15, "period": 10}  # one ring of the largest window
    assert (plan.base_options, plan.lr_schedule) == ({"lr": 0.5}, False)
    assert [(e.name, e.k, e.bn, e.label) for e in plan.evals] == [
        ("timed_k2", 2, "recompute", "timed k=2"), ("timed_k4", 4, "recompute", "timed k=4"),
        ("timed_k5_bncopy", 5, "copy", "timed k=5, BN copied")]
    assert load_config(QUICK).methods.timed.lr is None  # null: the recipe's learning rate
    assert plan_runs(load_config(QUICK), ["timed"], 10)[1].base_options == {}


def test_every_method_states_known_units():
    for name in lawa_optim.list_methods():
        info = lawa_optim.get_method_info(name)
        for option, unit in info.units.items():
            if option == "lr":
                assert unit == "constant", name
            else:
                assert option in info.accepted_kwargs() and unit in ("snapshots", "windows", "steps", "epochs"), name


def test_the_plots_colour_it(dummy, tmp_path, monkeypatch):
    require("matplotlib")
    from lawa_benchmarks.report_plots import family_color, method_styles, plot_curves
    from lawa_benchmarks.report_setup import settings

    monkeypatch.setattr(registry, "_METHODS", MappingProxyType(
        {**registry._METHODS, "dummy": dataclasses.replace(dummy, color="tab:olive")}))  # its MethodInfo's colour
    colours = {m: family_color(m) for m in lawa_optim.list_methods()}
    assert colours["dummy"] == "tab:olive" and colours["dummy"] not in {c for m, c in colours.items() if m != "dummy"}
    assert colours["base"] == "black" and colours["lawa"] == "tab:blue" and family_color("adam") == "tab:gray"
    meta = {"methods": {"dummy_k3": {"family": "dummy", "label": "Dummy"}}}
    rows = [{"method": m, "seed": 0, "epoch": e, "top1": v + e} for e in (1, 2, 3)
            for m, v in (("base", 50.0), ("dummy_k3", 51.0))]
    setup = settings(tmp_path, rows, meta)
    assert method_styles(setup)["dummy_k3"]["color"] == colours["dummy"]
    summary = [{"method": m, "epoch": e, "n_seeds": 1, "top1_mean": v + e, "top1_std": 0.0}
               for e in (1, 2, 3) for m, v in (("base", 50.0), ("dummy_k3", 51.0))]
    path = plot_curves(tmp_path / "c.png", summary, setup, method_styles(setup))
    assert open(path, "rb").read(8) == b"\x89PNG\r\n\x1a\n"


def test_the_shipped_methods_are_planned_as_before():
    """The runs and keyword arguments the former hand-written plan made for configs/quick.yaml."""
    cfg = load_config(QUICK, ["train.epochs=10", "methods.lawa.k=[2,4,6]",  # the demo's former epochs and windows
                              "methods.swa.swa_start=5"])
    plans = plan_runs(cfg, None, steps_per_epoch=20)
    assert [p.run for p in plans] == ["base", "lookahead", "schedulefree"]
    base, la, sf = plans
    obs = {n: {k: v for k, v in kw.items() if lawa_optim.get_method_info(m).accepted_kwargs().get(k, object()) != v
               or k in ("k", "period", "alpha", "decay", "swa_start")} for n, (m, kw) in base.observers.items()}
    assert obs == {"lawa": {"k": 6, "period": 20, "alpha": 0.9}, "exp": {"k": 6, "alpha": 0.9, "period": 20},
                   "swa": {"period": 20, "swa_start": 5}, "ema": {"decay": 0.98}}
    assert [e.name for e in base.evals] == ["base", "lawa_k2", "lawa_k4", "lawa_k6", "lawa_k6_bncopy", "exp_k6",
                                            "swa", "ema"]
    assert (la.driver_kwargs, la.base_options, la.lr_schedule) == ({"k": 5, "alpha": 0.8}, {}, True)
    assert sf.driver_kwargs["warmup_steps"] == 20 and (sf.base_options, sf.lr_schedule) == ({"lr": 1.0}, False)
    assert [e.label for e in sf.evals] == ["Schedule-free SGD warmup_steps=20"]
    with pytest.raises(ValueError, match=r"unknown \['adam'\]"):
        plan_runs(cfg, ["lawa", "adam"], steps_per_epoch=20)
    assert [e.name for e in plan_runs(parse_config({"eval": {"bn": "copy"}}), ["lawa"], 5)[0].evals] == [
        "base", "lawa_k6"]  # with copied statistics everywhere there is no separate copied-BN variant


def _reference_factor(t, steps_per_epoch: int):
    """The schedule the runner computed by hand before it used torch's schedulers."""
    total, warm = t.epochs * steps_per_epoch, t.warmup_epochs * steps_per_epoch
    milestones = [e * steps_per_epoch for e in t.step_epochs]

    def factor(step: int) -> float:
        if step < warm:
            return (step + 1) / warm
        if t.schedule == "constant":
            return 1.0
        if t.schedule == "step":
            return 0.1 ** sum(step >= m for m in milestones)
        return 0.5 * (1 + math.cos(math.pi * min(step - warm, total - warm) / max(total - warm, 1)))

    return factor


@pytest.mark.parametrize("schedule", ["cosine", "step", "constant"])
@pytest.mark.parametrize("warmup", [0, 1, 2])
@pytest.mark.parametrize("steps_per_epoch", [1, 3])
def test_lr_schedule_is_the_formula_and_resumes_exactly(schedule, warmup, steps_per_epoch):
    require("torchvision")
    from lawa_benchmarks.suite.workloads.base import lr_schedule

    t = SimpleNamespace(epochs=6, warmup_epochs=warmup, schedule=schedule,
                        step_epochs=[e for e in (3, 5) if e > warmup])
    factor = _reference_factor(t, steps_per_epoch)

    def fresh():
        opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.1)
        return opt, lr_schedule(opt, steps_per_epoch, t.epochs, t.warmup_epochs, t.schedule, t.step_epochs)

    opt, sched = fresh()
    lrs, half = [], t.epochs * steps_per_epoch // 2
    for step in range(t.epochs * steps_per_epoch):
        if step == half:
            saved = {"opt": opt.state_dict(), "sched": sched.state_dict()}
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    for step, lr in enumerate(lrs):
        assert lr == pytest.approx(0.1 * factor(step), rel=1e-12, abs=1e-18), step
    opt2, sched2 = fresh()
    opt2.load_state_dict(saved["opt"])
    sched2.load_state_dict(saved["sched"])
    resumed = []
    for _ in range(half, t.epochs * steps_per_epoch):
        resumed.append(opt2.param_groups[0]["lr"])
        opt2.step()
        sched2.step()
    assert resumed == lrs[half:]  # bit-exact


def test_a_method_not_run_leaves_the_config_hash_alone(dummy):
    """Run folders resume after a method joins the registry, unless the run uses it."""
    from lawa_benchmarks.resnet.config import config_to_dict
    from lawa_benchmarks.suite.runner import config_hash

    def _config_hash(cfg, plans):
        d = config_to_dict(cfg)
        return config_hash({"train": d["train"]}, d["methods"], plans)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(registry, "_METHODS", MappingProxyType({k: v for k, v in registry._METHODS.items()
                                                           if k != "dummy"}))
        cfg = load_config(QUICK)
        before = _config_hash(cfg, plan_runs(cfg, None, 7))
    cfg = load_config(QUICK)
    plans = plan_runs(cfg, None, 7)
    ran = "dummy" in {m for p in plans for m, _ in p.observers.values()} | {p.driver for p in plans}
    assert ran is not dummy.changes_trajectory  # an observer is on by default, an own run is opt-in
    assert (_config_hash(cfg, plans) == before) is (not ran)
    assert _config_hash(cfg, plan_runs(cfg, ["lawa"], 7)) != before
