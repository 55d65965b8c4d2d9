"""``lawa_jump``: jumps to the average against a slow hand-written loop, resume, refusals.

The reference loop trains a plain torch optimizer, keeps every snapshot in a Python list, and at
each jump writes ``torch.stack(last_k).double().mean(0)`` into the weights, then handles the
optimizer state and the snapshot list as the option says.
"""

from __future__ import annotations

import copy
import io

import pytest
import torch
import torch.nn.functional as F
from helpers import class_batches, mlp
from torch import nn

from lawa_optim import LAWAJumpWrapper, LAWAWrapper, create, get_method_info

pytestmark = pytest.mark.usefixtures("one_thread")


def _base(model: nn.Module, kind: str) -> torch.optim.Optimizer:
    if kind == "sgd":
        return torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-4)
    return torch.optim.Adam(model.parameters(), lr=0.01)


def _step(model, opt, batch) -> None:
    x, y = batch
    opt.zero_grad()
    F.cross_entropy(model(x), y).backward()
    opt.step()


def _weights(model: nn.Module) -> list[torch.Tensor]:
    return [p.detach().clone() for p in model.parameters()]


def _same(a, b) -> bool:
    return all(torch.equal(x, y) for x, y in zip(a, b, strict=True))


def _reference(kind, data, steps, *, k, period, every, start, optimizer_state, restart_ring):
    """The slow loop: returns (weights, average of the k latest snapshots, steps at which it jumped)."""
    model = mlp(4, 8, 3)
    opt = _base(model, kind)
    params = list(model.parameters())
    history: list[list[torch.Tensor]] = []
    taken, last, jumps = 0, None, []
    for i in range(steps):
        _step(model, opt, data[i % len(data)])
        if (i + 1) % period:
            continue
        history.append(_weights(model))
        taken += 1
        if taken < start or (last is not None and taken - last < every):
            continue
        window = history[-k:]
        with torch.no_grad():
            for j, p in enumerate(params):
                p.copy_(torch.stack([s[j].double() for s in window]).mean(0).to(p.dtype))
        for p in params:
            if optimizer_state == "reset":
                opt.state.pop(p, None)
            elif optimizer_state == "reset_momentum":
                for key in ("momentum_buffer", "exp_avg"):
                    if key in opt.state[p]:
                        opt.state[p][key].zero_()
        if restart_ring:
            history = [_weights(model)]
        jumps.append(i + 1)
        last = taken
    window = history[-k:]
    average = [torch.stack([s[j].double() for s in window]).mean(0).float() for j in range(len(params))]
    return _weights(model), average, jumps


@pytest.mark.parametrize("kind", ["sgd", "adam"])
@pytest.mark.parametrize("optimizer_state", ["keep", "reset_momentum", "reset"])
@pytest.mark.parametrize("restart_ring", [False, True])
def test_jumps_match_the_slow_reference_loop(kind, optimizer_state, restart_ring):
    options = {"k": 3, "period": 3, "every": 2, "start": 3, "optimizer_state": optimizer_state,
               "restart_ring": restart_ring}
    data, steps = class_batches(), 31
    ref_w, ref_avg, ref_jumps = _reference(kind, data, steps, **options)
    model = mlp(4, 8, 3)
    opt = LAWAJumpWrapper(_base(model, kind), **options)
    for i in range(steps):
        _step(model, opt, data[i % len(data)])
    assert opt.jumps == ref_jumps == [9, 15, 21, 27]  # snapshots 3, 5, 7, 9 (every 3 steps)
    assert opt.snapshots_taken == 10
    assert _same(_weights(model), ref_w)  # bit-exact after four jumps and their optimizer-state changes
    with opt.averaged():
        assert _same(_weights(model), ref_avg)


def test_a_jump_writes_the_average_and_leaves_the_learning_rate_alone():
    model = mlp(4, 8, 3)
    opt = LAWAJumpWrapper(_base(model, "sgd"), k=4, period=2)  # every=None: only explicit jumps
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=3, gamma=0.5)
    data = class_batches()
    for i in range(8):
        _step(model, opt, data[i])
        sched.step()
    assert opt.jumps == [] and opt.every is None
    with opt.averaged():
        average = _weights(model)
    lr = opt.param_groups[0]["lr"]
    momentum = [opt.state[p]["momentum_buffer"].clone() for p in model.parameters()]
    opt.jump()
    assert _same(_weights(model), average) and opt.jumps == [8]
    assert opt.param_groups[0]["lr"] == lr == pytest.approx(0.1 * 0.5**2)
    assert _same([opt.state[p]["momentum_buffer"] for p in model.parameters()], momentum)  # "keep"
    with opt.averaged():  # the ring is kept: the average is unchanged by the jump
        assert _same(_weights(model), average)


def test_without_jumps_it_is_lawa_bit_for_bit():
    """Opt-in: with no jump made, the trajectory, the average and the ring are LAWAWrapper's."""
    data = class_batches()
    m1, m2 = mlp(4, 8, 3), mlp(4, 8, 3)
    a = LAWAJumpWrapper(_base(m1, "sgd"), k=3, period=2, every=4, start=100)
    b = LAWAWrapper(_base(m2, "sgd"), k=3, period=2)
    for i in range(20):
        _step(m1, a, data[i])
        _step(m2, b, data[i])
    assert a.jumps == [] and _same(_weights(m1), _weights(m2))
    for j in (1, 2, 3):
        with a.averaged(j), b.averaged(j):
            pass
        with a.averaged(j):
            wa = _weights(m1)
        with b.averaged(j):
            assert _same(_weights(m2), wa)
    n = len(a._ring.params)
    assert _same([a._ring.sum_of(i) for i in range(n)], [b._ring.sum_of(i) for i in range(n)])
    sa, sb = a.state_dict()["state"], b.state_dict()["state"]  # every slot and counter of the ring
    assert sa.keys() == sb.keys()
    for key in sa:
        lawa = [n for n in sb[key] if n.startswith("lawa_")]  # the jump wrapper adds lawa_jump_* counters
        assert len(lawa) == 3 + 5 and _same([sa[key][n] for n in lawa], [sb[key][n] for n in lawa])


def test_registry_entry():
    info = get_method_info("lawa_jump")
    assert info.changes_trajectory and info.defaults == {"k": 6, "every": 6}
    opt = create("lawa_jump", torch.optim.SGD(mlp(4, 8, 3).parameters(), lr=0.1), period=5)
    assert isinstance(opt, LAWAJumpWrapper) and (opt.k, opt.every, opt.start, opt.period) == (6, 6, 6, 5)
    assert (opt.optimizer_state, opt.restart_ring) == ("keep", False)


@pytest.mark.parametrize("kind", ["sgd", "adam"])
def test_resume_mid_schedule_is_exact(kind):
    """Save between two jumps with the ring restarted and the state reset, load into a fresh model
    and wrapper through torch.save(weights_only=True), continue both: bit-identical, same jumps."""
    options = {"k": 3, "period": 2, "every": 3, "start": 2, "optimizer_state": "reset", "restart_ring": True}
    data = class_batches()
    ma = mlp(4, 8, 3)
    a = LAWAJumpWrapper(_base(ma, kind), **options)
    for i in range(11):  # jumps after snapshots 2 and 5 (steps 4 and 10)
        _step(ma, a, data[i])
    assert a.jumps == [4, 10]
    buf = io.BytesIO()
    torch.save({"model": ma.state_dict(), "opt": a.state_dict()}, buf)
    buf.seek(0)
    ckpt = torch.load(buf, weights_only=True)
    mb = mlp(4, 8, 3, seed=1)
    b = LAWAJumpWrapper(_base(mb, kind), **options)
    mb.load_state_dict(ckpt["model"])
    b.load_state_dict(ckpt["opt"])
    assert (b.jumps, b.snapshots_taken, b.num_snapshots) == (a.jumps, 5, a.num_snapshots)
    for i in range(11, 30):
        _step(ma, a, data[i])
        _step(mb, b, data[i])
    assert a.jumps == b.jumps == [4, 10, 16, 22, 28]
    assert _same(_weights(ma), _weights(mb))
    with a.averaged():
        wa = _weights(ma)
    with b.averaged():
        assert _same(_weights(mb), wa)


def test_jump_if_ahead_decides_on_the_lead():
    data, selection = class_batches(), class_batches(4, seed=99)
    model = mlp(4, 8, 3)
    opt = LAWAJumpWrapper(_base(model, "sgd"), k=4, period=2)

    def evaluate() -> float:
        with torch.no_grad():
            return sum(F.cross_entropy(model(x), y).item() for x, y in selection)

    for i in range(10):
        _step(model, opt, data[i])
    raw = evaluate()
    with opt.averaged():
        avg, average = evaluate(), _weights(model)
    before = _weights(model)
    assert not opt.jump_if_ahead(evaluate, threshold=raw - avg + 1.0)  # lead below the threshold
    assert opt.last_lead == pytest.approx(raw - avg) and opt.jumps == [] and _same(_weights(model), before)
    assert opt.jump_if_ahead(evaluate, threshold=raw - avg - 1.0)
    assert opt.jumps == [10] and _same(_weights(model), average)


def test_bad_input_is_refused_with_the_argument_named():
    model = mlp(4, 8, 3)
    sgd = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    for kwargs, match in (({"every": 0}, "every"), ({"every": 1.5}, "every"), ({"start": 0}, "start"),
                          ({"optimizer_state": "zero"}, "optimizer_state"), ({"restart_ring": 1}, "restart_ring"),
                          ({"k": 0}, "k")):
        with pytest.raises((ValueError, TypeError), match=match):
            LAWAJumpWrapper(sgd, **kwargs)
    assert not sgd.state
    opt = LAWAJumpWrapper(sgd, k=3, period=2)
    with pytest.raises(RuntimeError, match="No snapshot"):
        opt.jump()
    data = class_batches()
    for i in range(6):
        _step(model, opt, data[i])
    weights, sd = _weights(model), copy.deepcopy(opt.state_dict())
    with opt.averaged():
        with pytest.raises(RuntimeError, match=r"jump\(\) while the averaged weights are swapped in"):
            opt.jump()
        with pytest.raises(RuntimeError, match="swapped in"):
            opt.jump_if_ahead(lambda: 0.0)
    assert _same(_weights(model), weights) and opt.jumps == []
    with pytest.raises(TypeError, match="evaluate"):
        opt.jump_if_ahead(3.0)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="threshold"):
        opt.jump_if_ahead(lambda: 0.0, threshold=float("nan"))
    bad = copy.deepcopy(sd)
    bad["lawa"]["jump"]["last_jump"] = 99  # after the snapshots taken: corrupted
    with pytest.raises(ValueError, match="jump entry"):
        opt.load_state_dict(bad)
    del bad["lawa"]["jump"]
    with pytest.raises(ValueError, match="jump entry"):
        opt.load_state_dict(bad)
    lawa_sd = LAWAWrapper(torch.optim.SGD(mlp(4, 8, 3).parameters(), lr=0.1), k=3, period=2).state_dict()
    with pytest.raises(ValueError, match="'lawa'"):
        opt.load_state_dict(lawa_sd)  # a LAWA state is not a lawa_jump state
    assert _same(_weights(model), weights) and opt.jumps == []


def test_jump_if_ahead_compares_both_sides_with_batchnorm_recomputed():
    """With bn_loader the training weights are scored with recomputed statistics too (the lead is the
    weights', not the stale running statistics'), and the model's buffers are restored."""
    from lawa_optim import recompute_bn

    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 8), nn.BatchNorm1d(8), nn.Tanh(), nn.Linear(8, 3))
    opt = LAWAJumpWrapper(_base(model, "sgd"), k=3, period=2)
    data, selection = class_batches(), class_batches(3, seed=5)
    bn_loader = [x for x, _ in data[:4]]

    def evaluate() -> float:
        model.eval()
        with torch.no_grad():
            out = sum(F.cross_entropy(model(x), y).item() for x, y in selection)
        model.train()
        return out

    for i in range(8):
        _step(model, opt, data[i])
    buffers = [b.clone() for b in model.buffers()]
    twin = copy.deepcopy(model)
    recompute_bn(twin, bn_loader)
    twin.eval()
    with torch.no_grad():
        raw_bn = sum(F.cross_entropy(twin(x), y).item() for x, y in selection)
    with opt.averaged(model=model, bn_loader=bn_loader):
        avg = evaluate()
    jumped = opt.jump_if_ahead(evaluate, model=model, bn_loader=bn_loader)
    assert opt.last_lead == pytest.approx(raw_bn - avg) and jumped == (raw_bn > avg)
    assert _same(list(model.buffers()), buffers)  # a jump moves the weights, never the statistics


@pytest.mark.parametrize("offload", ["cpu", "disk"])
def test_offloaded_rings_jump_and_restart_like_the_default(offload, tmp_path):
    data = class_batches()
    options = {"k": 3, "period": 2, "every": 2, "start": 2, "restart_ring": True}
    runs = []
    for extra in ({}, {"offload": offload, **({"offload_dir": str(tmp_path)} if offload == "disk" else {})}):
        model = mlp(4, 8, 3)
        opt = LAWAJumpWrapper(_base(model, "sgd"), **options, **extra)
        for i in range(13):
            _step(model, opt, data[i])
        with opt.averaged():
            runs.append((opt.jumps, opt.num_snapshots, _weights(model)))
    (jumps_a, n_a, avg_a), (jumps_b, n_b, avg_b) = runs
    assert jumps_a == jumps_b == [4, 8, 12] and n_a == n_b == 1 and _same(avg_a, avg_b)
