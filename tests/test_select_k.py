"""Online k (:class:`lawa_optim.OnlineK`): the choice against a slow reference, no effect on training,
exact resume through the wrapper's state dict, refusals."""

from __future__ import annotations

import copy
import io

import pytest
import torch
import torch.nn.functional as F
from helpers import class_batches, mlp
from reference import reference_average
from ring_formats import ring_tensors
from torch import nn

from lawa_optim import EMAWrapper, LAWAJumpWrapper, LAWAWrapper, OnlineK
from lawa_optim.select_k import candidate_windows

pytestmark = pytest.mark.usefixtures("one_thread")


SELECTION = class_batches(3, seed=99)


def _loss(model: nn.Module) -> float:
    was = model.training
    model.eval()
    with torch.no_grad():
        out = sum(F.cross_entropy(model(x), y).item() for x, y in SELECTION)
    model.train(was)
    return out


def _wrapper(model: nn.Module, k: int = 5) -> LAWAWrapper:
    return LAWAWrapper(torch.optim.SGD(model.parameters(), lr=0.2, momentum=0.9), k=k, period=2)


def _step(model, opt, batch) -> None:
    x, y = batch
    opt.zero_grad()
    F.cross_entropy(model(x), y).backward()
    opt.step()


def _weights(model):
    return [p.detach().clone() for p in model.parameters()]


def _same(a, b) -> bool:
    return all(torch.equal(x, y) for x, y in zip(a, b, strict=True))


def test_candidate_windows_of_each_strategy():
    assert candidate_windows("all", 4) == [1, 2, 3, 4]
    assert candidate_windows("doubling", 12) == [1, 2, 4, 8, 12]
    assert candidate_windows("doubling", 8) == [1, 2, 4, 8]
    assert candidate_windows("doubling", 1) == [1]
    assert candidate_windows("local", 12) == [1, 2]  # no previous choice: start at 1
    assert candidate_windows("local", 12, previous=5) == [4, 5, 6]
    assert candidate_windows("local", 3, previous=5) == [2, 3]  # fewer snapshots than the previous window
    with pytest.raises(ValueError, match="strategy"):
        candidate_windows("best", 3)
    with pytest.raises(ValueError, match="available"):
        candidate_windows("all", 0)


def test_select_picks_the_window_the_slow_reference_picks():
    """Each score is the selection loss of the float64 mean of the j latest snapshots (loaded into a
    copy of the model), and the choice is their argmin, at every evaluation."""
    data = class_batches()
    model = mlp(4, 8, 3)
    opt = _wrapper(model, k=5)
    online = OnlineK(opt, lambda: _loss(model))
    history, chosen = [], []
    for epoch in range(8):
        for i in range(2):
            _step(model, opt, data[2 * epoch + i])
        history.append(_weights(model))
        j = online.select()
        ref_scores = {}
        for w in range(1, min(5, len(history)) + 1):
            twin = copy.deepcopy(model)
            with torch.no_grad():
                for p, avg in zip(twin.parameters(), reference_average(history, w)):
                    p.copy_(avg)
            ref_scores[w] = _loss(twin)
        scores = online.history[-1]["scores"]
        assert list(scores) == list(ref_scores)
        assert scores == pytest.approx(ref_scores, rel=1e-5)
        assert j == online.k == min(ref_scores, key=ref_scores.get)
        chosen.append(j)
        with online.averaged():
            assert _same(_weights(model), [a.float() for a in reference_average(history, j)]) or all(
                torch.allclose(p, a.float(), rtol=1e-6, atol=1e-7)
                for p, a in zip(_weights(model), reference_average(history, j)))
    assert [h["step"] for h in online.history] == [2 * (e + 1) for e in range(8)]
    assert len(set(chosen)) > 1  # the choice changes over training here (else the test would prove little)


def test_local_strategy_climbs_one_step_per_evaluation():
    data = class_batches()
    model = mlp(4, 8, 3)
    opt = _wrapper(model, k=5)
    calls = []

    def evaluate():  # prefers the largest window: the climb moves up by one per select()
        calls.append(opt.num_steps)
        return -float(opt.swapped_in and opt._swap["args"]["k"])

    online = OnlineK(opt, evaluate, strategy="local")
    picks = []
    for epoch in range(6):
        for i in range(2):
            _step(model, opt, data[2 * epoch + i])
        picks.append(online.select())
    assert picks == [1, 2, 3, 4, 5, 5]
    assert [len(h["scores"]) for h in online.history] == [1, 2, 3, 3, 3, 2]


def test_selecting_leaves_training_bit_identical():
    """Opt-in and side-effect free: the same run with and without select() every epoch."""
    data = class_batches()
    m1, m2 = mlp(4, 8, 3, bn=True), mlp(4, 8, 3, bn=True)
    a, b = _wrapper(m1), _wrapper(m2)
    bn_loader = [x for x, _ in data[:3]]
    online = OnlineK(a, lambda: _loss(m1), strategy="doubling", swap_kwargs={"model": m1, "bn_loader": bn_loader})
    for epoch in range(6):
        for i in range(2):
            _step(m1, a, data[2 * epoch + i])
            _step(m2, b, data[2 * epoch + i])
        online.select()
        assert _same(list(m1.buffers()), list(m2.buffers()))  # BatchNorm's training statistics restored
    assert _same(_weights(m1), _weights(m2))
    sa, sb = a.state_dict(), b.state_dict()
    assert _same(ring_tensors(sa), ring_tensors(sb)) and "online_k" not in sb["lawa"]
    assert sa["lawa"]["online_k"]["history"] == online.history


def test_resume_through_the_wrappers_state_dict_chooses_exactly_as_before():
    data = class_batches()
    ma = mlp(4, 8, 3)
    a = LAWAJumpWrapper(torch.optim.SGD(ma.parameters(), lr=0.2, momentum=0.9), k=4, period=2, every=3)
    oa = OnlineK(a, lambda: _loss(ma), strategy="local")
    for epoch in range(5):
        for i in range(2):
            _step(ma, a, data[2 * epoch + i])
        oa.select()
    buf = io.BytesIO()
    torch.save({"model": ma.state_dict(), "opt": a.state_dict()}, buf)
    buf.seek(0)
    ckpt = torch.load(buf, weights_only=True)
    mb = mlp(4, 8, 3, seed=1)
    b = LAWAJumpWrapper(torch.optim.SGD(mb.parameters(), lr=0.2, momentum=0.9), k=4, period=2, every=3)
    ob = OnlineK(b, lambda: _loss(mb), strategy="local")
    mb.load_state_dict(ckpt["model"])
    b.load_state_dict(ckpt["opt"])
    assert ob.history == oa.history and ob.k == oa.k
    for epoch in range(5, 12):
        for i in range(2):
            _step(ma, a, data[2 * epoch + i])
            _step(mb, b, data[2 * epoch + i])
        assert oa.select() == ob.select()
    assert ob.history == oa.history and _same(_weights(ma), _weights(mb))
    # a state saved without online k loads with no choice made yet
    fresh = mlp(4, 8, 3)
    c = LAWAJumpWrapper(torch.optim.SGD(fresh.parameters(), lr=0.2, momentum=0.9), k=4, period=2, every=3)
    plain = c.state_dict()
    ob.load_state_dict(ob.state_dict())  # its own round trip
    b.load_state_dict({**plain, "lawa": {k: v for k, v in plain["lawa"].items() if k != "online_k"}})
    assert ob.history == [] and ob.k is None


def test_bad_input_is_refused_and_nothing_changes():
    model = mlp(4, 8, 3)
    opt = _wrapper(model, k=4)
    with pytest.raises(TypeError, match="optimizer"):
        OnlineK(EMAWrapper(torch.optim.SGD(mlp(4, 8, 3).parameters(), lr=0.1)), lambda: 0.0)
    with pytest.raises(TypeError, match="evaluate"):
        OnlineK(opt, 1.0)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"max_k: 5.*\[1, 4\]"):
        OnlineK(opt, lambda: 0.0, max_k=5)
    with pytest.raises(ValueError, match="strategy"):
        OnlineK(opt, lambda: 0.0, strategy="golden")
    with pytest.raises(TypeError, match="swap_kwargs"):
        OnlineK(opt, lambda: 0.0, swap_kwargs=[1])  # type: ignore[arg-type]
    online = OnlineK(opt, lambda: _loss(model), max_k=3)
    with pytest.raises(RuntimeError, match="no snapshot"):
        online.select()
    data = class_batches()
    for i in range(6):
        _step(model, opt, data[i])
    online.select()
    with opt.averaged():
        with pytest.raises(RuntimeError, match="swapped in"):
            online.select()
    history, weights, sd = copy.deepcopy(online.history), _weights(model), copy.deepcopy(opt.state_dict())
    with pytest.raises(RuntimeError, match="already has an OnlineK"):
        OnlineK(opt, lambda: 0.0)
    online.evaluate = lambda: float("nan")
    with pytest.raises(ValueError, match="finite number"):
        online.select()
    assert online.history == history and _same(_weights(model), weights) and not opt.swapped_in
    bad = copy.deepcopy(sd)
    bad["lawa"]["online_k"]["max_k"] = 2
    with pytest.raises(ValueError, match="max_k=2"):
        opt.load_state_dict(bad)
    bad["lawa"]["online_k"] = {"max_k": 3, "strategy": "all", "history": [{"step": 1, "k": 9, "scores": {9: 0.0}}]}
    with pytest.raises(ValueError, match="Invalid OnlineK state"):
        opt.load_state_dict(bad)
    assert online.history == history and _same(_weights(model), weights)
