"""The ring's checkpoint format in one process: its size, torch's state-dict API and DCP without
a process group, the ring offloaded to host memory or disk, mid-swap saves, the jump wrapper.

- Bytes: ``torch.save(opt.state_dict())`` is at most the base optimizer's bytes plus k copies of
  the parameters in their dtype plus a small constant per parameter; the format before (with the
  float64 running sums) is bigger by at least the sums.
- ``get_optimizer_state_dict`` on a fresh wrapper, or on one whose base optimizer keeps no state
  (SGD without momentum), makes torch call ``step()`` with lr 0 and zero gradients: it is not
  counted, so the snapshot schedule is that of a run that never saved. A real step with lr 0
  still counts.
"""

from __future__ import annotations

import copy
import io
import os

import pytest
import torch
import torch.distributed.checkpoint as dcp
from ring_formats import to_format1
from torch import nn
from torch.distributed.checkpoint.state_dict import (
    get_model_state_dict,
    get_optimizer_state_dict,
    set_model_state_dict,
    set_optimizer_state_dict,
)

from lawa_optim import LAWAWrapper
from lawa_optim.baselines.jump import LAWAJumpWrapper


def _model(seed=0, dtype=torch.float32):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(6, 16), nn.Tanh(), nn.Linear(16, 16), nn.Tanh(), nn.Linear(16, 3)).to(dtype)


def _train(model, opt, start, stop):
    for step in range(start, stop):
        x = torch.randn(8, 6, generator=torch.Generator().manual_seed(step)).to(next(model.parameters()).dtype)
        opt.zero_grad()
        model(x).float().pow(2).mean().backward()
        opt.step()


def _record(model, opt):
    out = {"weights": [p.detach().clone() for p in model.parameters()], "avg": {},
           "steps": (opt.num_steps, opt.snapshots_taken)}
    for j in range(1, min(opt.k, opt.num_snapshots) + 1):
        with opt.averaged(j):
            out["avg"][j] = [p.detach().clone() for p in model.parameters()]
    return out


def _assert_same(a, b):
    assert a["steps"] == b["steps"]
    for x, y in zip(a["weights"], b["weights"], strict=True):
        assert torch.equal(x, y)
    assert a["avg"].keys() == b["avg"].keys() and a["avg"]
    for j in a["avg"]:
        for x, y in zip(a["avg"][j], b["avg"][j], strict=True):
            assert torch.equal(x, y), j


def _nbytes(obj) -> int:
    buf = io.BytesIO()
    torch.save(obj, buf)
    return len(buf.getvalue())


# ----------------------------------------------------------------------------- bytes
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("k,snapshots", [(3, 5), (6, 4)])
def test_checkpoint_holds_base_state_plus_k_snapshots_plus_a_constant(dtype, k, snapshots):
    model = _model(dtype=dtype)
    opt = LAWAWrapper(torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9), k=k, period=1)
    _train(model, opt, 0, snapshots)
    params = list(model.parameters())
    n, elem = sum(p.numel() for p in params), params[0].element_size()
    base, lawa = _nbytes(opt.optimizer.state_dict()), _nbytes(opt.state_dict())
    per_param = 320 * (k + 5)  # torch.save's record (name, 64-byte alignment) of k slots and 5 counters
    assert base + k * n * elem <= lawa <= base + k * n * elem + per_param * len(params) + 4096
    # The format before held the float64 (float32 for bf16) running sums beside the filled slots.
    old = _nbytes(to_format1(opt.state_dict()))
    sums = n * (8 if dtype == torch.float32 else 4)
    assert old >= base + min(snapshots, k) * n * elem + sums


# ----------------------------------------------------------------------------- torch's initialising step
def test_fresh_wrapper_through_get_optimizer_state_dict_takes_no_step():
    model = _model()
    opt = LAWAWrapper(torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9), k=3, period=1)
    calls = []
    opt.optimizer.register_step_pre_hook(lambda *_: calls.append(1))
    sd = get_optimizer_state_dict(model, opt)
    assert calls == [1], "torch did not initialise the state through step(): the test tests nothing"
    assert (opt.num_steps, opt.snapshots_taken) == (0, 0)
    entry = sd["state"]["0.weight"]
    assert "momentum_buffer" in entry and int(entry["lawa_count"]) == 0
    assert all(not entry[f"lawa_slot_{s}"].any() for s in range(3))  # present before any snapshot, zeros


def test_saving_a_stateless_optimizer_midway_keeps_the_snapshot_schedule():
    """SGD without momentum keeps no state: torch steps it at every get_optimizer_state_dict."""

    def build():
        model = _model()
        return model, LAWAWrapper(torch.optim.SGD(model.parameters(), lr=0.1), k=3, period=3)

    model, opt = build()
    _train(model, opt, 0, 10)
    straight = _record(model, opt)
    model, opt = build()
    calls = []
    opt.optimizer.register_step_pre_hook(lambda *_: calls.append(1))
    for stop in (4, 7, 10):  # saves between steps (grads set to None), the schedule goes on
        _train(model, opt, stop - 3 if stop > 4 else 0, stop)
        opt.zero_grad()
        get_optimizer_state_dict(model, opt)
    assert len(calls) == 10 + 3, "torch did not step the stateless optimizer: the test tests nothing"
    _assert_same(_record(model, opt), straight)


def test_a_real_step_with_learning_rate_zero_still_counts():
    model = _model()
    opt = LAWAWrapper(torch.optim.SGD(model.parameters(), lr=0.0), k=3, period=2)  # warmup from 0
    _train(model, opt, 0, 4)
    assert (opt.num_steps, opt.snapshots_taken) == (4, 2)


# ----------------------------------------------------------------------------- DCP in one process
@pytest.mark.parametrize("save_offload,load_offload", [(None, None), ("cpu", None), ("disk", "disk"), (None, "disk")])
def test_dcp_round_trip_with_the_ring_offloaded(tmp_path, save_offload, load_offload):
    """dcp.save/dcp.load without a process group; a ring kept in host memory or on disk saves and
    loads like one beside the parameters, and into a wrapper keeping it elsewhere."""
    (tmp_path / "ring").mkdir()

    def build(seed, offload):
        model = _model(seed)
        where = {"offload_dir": tmp_path / "ring"} if offload == "disk" else {}
        return model, LAWAWrapper(torch.optim.Adam(model.parameters(), lr=1e-2), k=3, period=2,
                                  offload=offload, **where)

    model, opt = build(0, save_offload)
    _train(model, opt, 0, 9)
    dcp.save({"model": get_model_state_dict(model), "optim": get_optimizer_state_dict(model, opt)},
             checkpoint_id=tmp_path / "ckpt")
    assert os.listdir(tmp_path / "ring") == []  # the disk ring's save made no file of its own
    model2, opt2 = build(3, load_offload)
    sd = {"model": get_model_state_dict(model2), "optim": get_optimizer_state_dict(model2, opt2)}
    dcp.load(sd, checkpoint_id=tmp_path / "ckpt")
    set_model_state_dict(model2, sd["model"])
    set_optimizer_state_dict(model2, opt2, sd["optim"])
    _train(model, opt, 9, 16)
    _train(model2, opt2, 9, 16)
    _assert_same(_record(model2, opt2), _record(model, opt))


def test_torch_api_round_trip_saved_mid_swap(tmp_path):
    """Saved while the average is swapped in: the training weights come back from the newest slot
    (swapped right after a snapshot) or from lawa_training (only torch.save carries it: a fresh
    wrapper's state dict has no such entry for dcp.load to fill, and the load says so)."""
    model, opt = _model(), None
    opt = LAWAWrapper(torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9), k=3, period=2)
    _train(model, opt, 0, 6)
    training = [p.detach().clone() for p in model.parameters()]
    with opt.averaged():  # right after a snapshot: the training weights are the newest slot
        sd = copy.deepcopy(get_optimizer_state_dict(model, opt))
        model_sd = copy.deepcopy(model.state_dict())
    assert int(sd["state"]["0.weight"]["lawa_swapped_in"]) == 1
    model2 = _model(4)
    opt2 = LAWAWrapper(torch.optim.SGD(model2.parameters(), lr=0.1, momentum=0.9), k=3, period=2)
    model2.load_state_dict(model_sd)  # the average's weights
    set_optimizer_state_dict(model2, opt2, sd)
    for p, t in zip(model2.parameters(), training):
        assert torch.equal(p, t)
    _train(model, opt, 6, 7)  # the weights move past the newest snapshot
    with opt.averaged():
        sd = get_optimizer_state_dict(model, opt)
        assert int(sd["state"]["0.weight"]["lawa_swapped_in"]) == 2 and "lawa_training" in sd["state"]["0.weight"]
        dcp.save({"optim": sd}, checkpoint_id=tmp_path / "mid")
    model3 = _model(5)
    opt3 = LAWAWrapper(torch.optim.SGD(model3.parameters(), lr=0.1, momentum=0.9), k=3, period=2)
    fresh = {"optim": get_optimizer_state_dict(model3, opt3)}
    dcp.load(fresh, checkpoint_id=tmp_path / "mid")
    before = [p.detach().clone() for p in model3.parameters()]
    with pytest.raises(ValueError, match="swapped in.*'lawa_training'"):
        set_optimizer_state_dict(model3, opt3, fresh["optim"])
    assert all(torch.equal(p, b) for p, b in zip(model3.parameters(), before))


def test_jump_schedule_survives_the_torch_api():
    def build(seed):
        model = _model(seed)
        return model, LAWAJumpWrapper(torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9), k=3, period=2,
                                      every=3, start=3)

    model, opt = build(0)
    _train(model, opt, 0, 14)
    assert opt.jumps, "no jump before the save: the test tests nothing"
    sd = copy.deepcopy(get_optimizer_state_dict(model, opt))
    model2, opt2 = build(1)
    model2.load_state_dict(model.state_dict())
    set_optimizer_state_dict(model2, opt2, sd)
    assert opt2.snapshots_taken == opt.snapshots_taken and opt2._last_jump == opt._last_jump
    _train(model, opt, 14, 30)
    _train(model2, opt2, 14, 30)
    assert opt2.jumps == [j for j in opt.jumps if j > 14]  # the history before the save is not carried
    _assert_same(_record(model2, opt2), _record(model, opt))


def test_a_frozen_parameter_through_the_torch_api():
    """set_optimizer_state_dict passes no state for a parameter that needs no gradient: its
    snapshots are its current value (a frozen parameter never changes)."""

    def build(seed):
        model = _model(seed)
        model[0].requires_grad_(False)
        return model, LAWAWrapper(torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9), k=3, period=2)

    model, opt = build(0)
    _train(model, opt, 0, 9)
    sd = copy.deepcopy(get_optimizer_state_dict(model, opt))
    model2, opt2 = build(1)
    model2.load_state_dict(model.state_dict())
    set_optimizer_state_dict(model2, opt2, sd)
    assert all(torch.equal(a, b) for a, b in zip(opt2.snapshots(0), opt.snapshots(0)))
    _train(model, opt, 9, 14)
    _train(model2, opt2, 9, 14)
    _assert_same(_record(model2, opt2), _record(model, opt))
