"""``fused=True``: the torch.compile'd push and uniform mean give the eager ring's bits.

The compiling tests are kept to two (one graph per dtype and kernel, compiled once per process and
shared by both): tensors are small and ``FUSED_MIN`` is lowered so they take the fused path. The
fallback tests compile nothing.
"""

from __future__ import annotations

import copy
import warnings

import pytest
import torch
from conftest import require
from torch import nn

from lawa_optim import LAWAWrapper, fused, store
from lawa_optim.store import SnapshotRing

DTYPES = (torch.float32, torch.bfloat16, torch.float16, torch.float64)


@pytest.fixture
def fused_small(monkeypatch):
    """Small tensors take the fused path (the mean's from 100 elements: nine per dtype, one batch
    of MEAN_BATCH=8 and one alone, the other two divided eagerly in blocks); eager blocks of 16
    elements, so the rest is cut too."""
    monkeypatch.setattr(fused, "FUSED_MIN", 64)
    monkeypatch.setattr(fused, "FUSED_MEAN_MIN", 100)
    monkeypatch.setattr(store, "_CPU_BLOCK", 16)


def make_params() -> list[torch.Tensor]:
    """Each dtype: fused ones of several lengths (views at odd offsets included), small ones
    between them (the eager rest, with gaps in its columns), a large non-contiguous one (eager)."""
    g = torch.Generator().manual_seed(0)
    out = []
    for dtype in DTYPES:
        out += [
            torch.randn(70, generator=g).to(dtype),
            torch.randn(3, generator=g).to(dtype),
            torch.randn(7, 19, generator=g).to(dtype),  # 133 elements, 2-d
            torch.randn(300, generator=g).to(dtype)[5:205],  # a view at an offset
            torch.randn(10, generator=g).to(dtype),
            torch.randn(12, 9, generator=g).to(dtype).t(),  # non-contiguous: eager
            torch.randn(64, generator=g).to(dtype),  # exactly FUSED_MIN
        ]
        # enough for a batch of the mean's kernel, equal sizes among them (no graph of their own)
        out += [torch.randn(n, generator=g).to(dtype) for n in (150, 150, 111, 150, 260, 150, 101)]
    return out


def perturb(params: list[torch.Tensor], step: int) -> None:
    g = torch.Generator().manual_seed(1000 + step)
    scale = 10.0 ** (step % 5 - 2)  # magnitudes change: the running sum's roundings matter
    with torch.no_grad():
        for p in params:
            p.add_((torch.randn(p.shape, generator=g) * scale).to(p.dtype))


def same_bits(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Equal bit for bit (NaN included), for the flat running sums."""
    return a.dtype == b.dtype and torch.equal(a.view(torch.uint8), b.view(torch.uint8))


def test_fused_ring_is_bit_exact_with_the_eager_ring_and_the_reference(fused_small, one_thread):
    from torch._dynamo.utils import counters

    pe, pf = make_params(), make_params()  # the same values and layouts, separate memory
    k = 3
    eager, ring = SnapshotRing(pe, k), SnapshotRing(pf, k)
    ring.set_fused(True)
    graphs = counters["stats"]["unique_graphs"]
    history: list[list[torch.Tensor]] = []
    for step in range(8 * k + 5):  # wraps the ring 9 times and passes the exact rebuild at 8k
        perturb(pe, step)
        perturb(pf, step)
        history.append([p.clone() for p in pe])
        eager.push()
        ring.push()
        for ge, gf in zip(eager.groups, ring.groups):
            assert torch.equal(ge.total, gf.total), (step, ge.dtype)
            for slot in eager.order():
                assert torch.equal(ge.rows[slot], gf.rows[slot]), (step, ge.dtype, slot)
        # the uniform mean of the whole ring: into other tensors, and swapped into the ring's own
        out_e = [torch.empty_like(p) for p in pe]
        out_f = [torch.empty_like(p) for p in pf]
        eager.write_average(out_e, eager.size, None)
        ring.write_average(out_f, ring.size, None)
        for i, (a, b) in enumerate(zip(out_e, out_f)):
            assert torch.equal(a, b), (step, i, a.dtype)
            if a.dtype == torch.float32:  # float64 sums of float32 values: the exact mean, rounded once
                ref = torch.stack([h[i] for h in history[-k:]]).double().mean(0).float()
                assert torch.equal(b, ref), (step, i)
        saved = [p.clone() for p in pf]
        ring.write_average(pf, ring.size, None)
        for a, b in zip(out_e, pf):
            assert torch.equal(a, b)
        with torch.no_grad():
            for p, s in zip(pf, saved):
                p.copy_(s)
    assert ring.fused_fallback is None and "mean_batch" in fused._kernels  # the batched mean ran
    fused_groups = [g for g in ring.groups if g.fused]
    assert len(fused_groups) == len(DTYPES)
    assert all(len(g.fused.items) == 11 and g.fused.rest.blocks for g in fused_groups)
    # one graph per dtype and kernel (push, mean, batched mean), whatever the lengths and offsets
    assert counters["stats"]["unique_graphs"] - graphs <= 3 * len(DTYPES)

    # non-finite values (the wrapper refuses them before a push): the same IEEE results either way
    with torch.no_grad():
        for p in (pe[0], pf[0]):
            p[0], p[1], p[2] = float("inf"), float("nan"), -float("inf")
    eager.push()
    ring.push()
    for ge, gf in zip(eager.groups, ring.groups):
        assert same_bits(ge.total, gf.total)


def _model(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(12, 10), nn.ReLU(), nn.Linear(10, 3))


def _train(opt: LAWAWrapper, model: nn.Module, steps: int, seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        x = torch.randn(8, 12, generator=g)
        opt.zero_grad()
        model(x).square().mean().backward()
        opt.step()


def _averaged(opt: LAWAWrapper, model: nn.Module) -> list[torch.Tensor]:
    with opt.averaged():
        return [p.detach().clone() for p in model.parameters()]


def test_fused_and_eager_wrappers_share_checkpoints_and_refuse_nonfinite(fused_small, one_thread):
    runs = {}
    for flag in (False, True):
        model = _model()
        opt = LAWAWrapper(torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9), k=3, period=2, fused=flag)
        _train(opt, model, 11, seed=1)
        runs[flag] = (model, opt, opt.state_dict())
    assert runs[True][1].fused and "fused=True" in repr(runs[True][1])
    assert runs[True][1]._ring.fused_fallback is None
    assert any(g.fused for g in runs[True][1]._ring.groups)
    sd_e, sd_f = runs[False][2], runs[True][2]
    for i, entry in sd_e["state"].items():  # the same checkpoint, key for key and bit for bit
        assert entry.keys() == sd_f["state"][i].keys()
        for key, value in entry.items():
            other = sd_f["state"][i][key]
            assert torch.equal(value, other) if isinstance(value, torch.Tensor) else value == other, key
    # resume each from the other's checkpoint and continue: the same averages as uninterrupted runs
    for src, dst in ((True, False), (False, True)):
        model = _model(seed=5)
        opt = LAWAWrapper(torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9), k=3, period=2, fused=dst)
        model.load_state_dict(runs[src][0].state_dict())
        opt.load_state_dict(copy.deepcopy(runs[src][2]))
        _train(opt, model, 9, seed=2)
        ref_model, ref_opt = copy.deepcopy(runs[dst][0]), None
        ref_opt = LAWAWrapper(torch.optim.SGD(ref_model.parameters(), lr=0.1, momentum=0.9), k=3, period=2,
                              fused=dst)
        ref_opt.load_state_dict(copy.deepcopy(runs[dst][2]))
        _train(ref_opt, ref_model, 9, seed=2)
        for a, b in zip(_averaged(opt, model), _averaged(ref_opt, ref_model)):
            assert torch.equal(a, b)
    # a deep copy gets its own plan on its own ring and continues as the original does
    model, opt, _ = runs[True]
    held = copy.deepcopy({"model": model, "opt": opt})
    _train(opt, model, 4, seed=3)
    _train(held["opt"], held["model"], 4, seed=3)
    assert all(torch.equal(a, b) for a, b in zip(_averaged(opt, model), _averaged(held["opt"], held["model"])))
    assert held["opt"]._ring.groups[0].fused.sums[0].data_ptr() != opt._ring.groups[0].fused.sums[0].data_ptr()
    # the fused mean writes the weights in place as the eager one does: their versions move
    weight = next(model.parameters())
    version = weight._version
    with opt.averaged():
        assert weight._version > version
    # the non-finite check still runs before the fused push
    before = [t.clone() for g in opt._ring.groups for t in (g.total, g.rows)]
    with torch.no_grad():
        next(model.parameters())[0, 0] = float("nan")
    with pytest.raises(RuntimeError, match="NaN or Inf"):
        opt.snapshot()
    after = [t for g in opt._ring.groups for t in (g.total, g.rows)]
    assert all(torch.equal(a, b) for a, b in zip(before, after))


def _failing(*args, **kwargs):
    raise RuntimeError("no C++ compiler")


def test_fused_falls_back_to_eager_with_one_warning(fused_small, monkeypatch):
    monkeypatch.setattr(fused, "push_kernel", lambda: _failing)
    monkeypatch.setattr(fused, "mean_kernel", lambda: _failing)
    pe, pf = make_params(), make_params()
    eager, ring = SnapshotRing(pe, 2), SnapshotRing(pf, 2)
    ring.set_fused(True)
    with pytest.warns(RuntimeWarning, match=r"fused=True: torch.compile failed \(RuntimeError: no C\+\+ compiler"):
        for step in range(5):
            perturb(pe, step)
            perturb(pf, step)
            eager.push()
            ring.push()
    assert "no C++ compiler" in ring.fused_fallback
    for ge, gf in zip(eager.groups, ring.groups):
        assert torch.equal(ge.total, gf.total)
    out_e, out_f = [torch.empty_like(p) for p in pe], [torch.empty_like(p) for p in pf]
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # warned once: the ring now runs the eager ops silently
        ring.push()
        eager.push()
        eager.write_average(out_e, 2, None)
        ring.write_average(out_f, 2, None)
    assert all(torch.equal(a, b) for a, b in zip(out_e, out_f))


def test_fused_refuses_unsafe_inductor_flags_and_bad_values(fused_small, monkeypatch):
    from torch._inductor import config

    monkeypatch.setattr(fused, "push_kernel", lambda: _failing)  # must not be reached
    ring = SnapshotRing(make_params(), 1)
    ring.set_fused(True)
    with config.patch({"cpp.enable_floating_point_contract_flag": "fast"}):  # restores them (not monkeypatch)
        with pytest.warns(RuntimeWarning, match="enable_floating_point_contract_flag is 'fast'"):
            ring.push()
            ring.push()
    with config.patch({"cpp.enable_unsafe_math_opt_flag": True}):
        assert "unsafe-math" in fused.unsafe_reason()
    assert fused.unsafe_reason() is None
    with pytest.raises(TypeError, match="Invalid fused"):
        LAWAWrapper(torch.optim.SGD(_model().parameters(), lr=0.1), fused="yes")  # type: ignore[arg-type]
    eager = LAWAWrapper(torch.optim.SGD(_model().parameters(), lr=0.1))
    assert not eager.fused and "fused=True" not in repr(eager) and not eager._ring.fused


def test_overhead_benchmark_measures_the_fused_rows(tmp_path, fused_small):
    for module in ("click", "matplotlib", "tqdm"):
        require(module)
    from lawa_benchmarks.overhead import run

    cfg = run.OverheadConfig(out=tmp_path, sizes=(4000,), ks=(2, 3, 5), repeats=1, models=False, disk=False,
                             fused=True)
    rows = {f["figure"]: f for f in run.run(cfg, progress=False)["figures"]}
    for name in ("snapshot_fused", "snapshot_fused_vs_eager", "averaged_fused", "averaged_fused_vs_eager"):
        assert rows[name]["ratio"] > 0 and "skipped" not in rows[name]
    assert rows["snapshot_fused"]["compile_s"] >= 0 and "fell back" not in rows["snapshot_fused"]["note"]
    assert rows["snapshot_fused_vs_eager"]["reference"] == "snapshot_eager"
    assert "first call" in (tmp_path / "overhead.md").read_text()
    assert "snapshot_fused" not in {f["figure"] for f in run.run(
        run.OverheadConfig(out=tmp_path, sizes=(4000,), ks=(2, 3, 5), repeats=1, models=False, disk=False),
        progress=False)["figures"]}
