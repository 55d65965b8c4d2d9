"""Resume (issue 2, point 3) and state-dict validation (point 4): PyTorch's lockstep recipe."""

from __future__ import annotations

import copy
import subprocess
import sys
import textwrap

import pytest
import torch
from ring_formats import to_format1
from torch import nn

from lawa_optim import LAWAWrapper

# The same deterministic run, importable by the fresh process below.
RUN = textwrap.dedent(
    """
    import torch
    from torch import nn
    from lawa_optim import LAWAWrapper

    def build(k=4, weights="uniform", offload=None):
        torch.manual_seed(0)
        model = nn.Sequential(nn.Linear(6, 9), nn.ReLU(), nn.Linear(9, 2))
        base = torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.1)
        opt = LAWAWrapper(base, k=k, period=3, weights=weights, offload=offload)
        sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=0.05, total_steps=200)
        return model, opt, sched

    def steps(model, opt, sched, start, stop):
        for i in range(start, stop):
            g = torch.Generator().manual_seed(i)
            x = torch.randn(8, 6, generator=g)
            opt.zero_grad()
            model(x).pow(2).mean().backward()
            opt.step()
            sched.step()

    def result(model, opt):
        out = {"weights": [p.detach().clone() for p in model.parameters()]}
        with opt.averaged():
            out["avg"] = [p.detach().clone() for p in model.parameters()]
        with opt.averaged(k=2):
            out["avg2"] = [p.detach().clone() for p in model.parameters()]
        out["lr"] = opt.param_groups[0]["lr"]
        return out
    """
)


def _namespace():
    ns: dict = {}
    exec(RUN, ns)  # noqa: S102 - test helper code defined above
    return ns


@pytest.mark.parametrize("weights,offload", [("uniform", None), ("exp", None), ("uniform", "cpu")])
def test_lockstep_resume_in_a_fresh_process(tmp_path, weights, offload):
    ns = _namespace()
    # uninterrupted: 40 steps (13 snapshots, the ring wrapped several times)
    model, opt, sched = ns["build"](weights=weights, offload=offload)
    ns["steps"](model, opt, sched, 0, 40)
    expected = ns["result"](model, opt)
    # interrupted after 23 steps (mid-period), saved, resumed elsewhere
    model, opt, sched = ns["build"](weights=weights, offload=offload)
    ns["steps"](model, opt, sched, 0, 23)
    ckpt = tmp_path / "ckpt.pt"
    torch.save({"model": model.state_dict(), "opt": opt.state_dict(), "sched": sched.state_dict()}, ckpt)
    out = tmp_path / "resumed.pt"
    script = RUN + textwrap.dedent(
        f"""
        state = torch.load({str(ckpt)!r}, weights_only=True)
        model, opt, sched = build(weights={weights!r}, offload={offload!r})
        model.load_state_dict(state["model"]); opt.load_state_dict(state["opt"]); sched.load_state_dict(state["sched"])
        steps(model, opt, sched, 23, 40)
        torch.save(result(model, opt), {str(out)!r})
        """
    )
    subprocess.run([sys.executable, "-c", script], check=True)
    got = torch.load(out, weights_only=True)
    assert got["lr"] == expected["lr"]
    for key in ("weights", "avg", "avg2"):
        for a, b in zip(got[key], expected[key]):
            assert torch.equal(a, b), key


def test_state_dict_is_plain_and_loads_with_weights_only(tmp_path):
    ns = _namespace()
    model, opt, sched = ns["build"]()
    ns["steps"](model, opt, sched, 0, 10)
    torch.save(opt.state_dict(), tmp_path / "o.pt")
    sd = torch.load(tmp_path / "o.pt", weights_only=True)
    assert sd["lawa"]["k"] == 4 and sd["lawa"]["count"] == 3 and sd["lawa"]["num_steps"] == 10
    entry = sd["state"][0]  # the ring in the first parameter's state: all k slots, shaped like it
    assert [tuple(entry[f"lawa_slot_{s}"].shape) for s in range(4)] == [(9, 6)] * 4
    assert int(entry["lawa_count"]) == 3 and int(entry["lawa_head"]) == 3 and int(entry["lawa_num_steps"]) == 10


def test_host_ring_loads_into_a_wrapper_on_another_placement():
    """A ring saved from host memory (offload='cpu') loads into a wrapper keeping it beside the params."""
    ns = _namespace()
    model, opt, sched = ns["build"](offload="cpu")
    ns["steps"](model, opt, sched, 0, 20)
    expected = ns["result"](model, opt)
    model2, opt2, sched2 = ns["build"](offload=None)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    model2.to(device)
    model2.load_state_dict(model.state_dict())
    opt2.load_state_dict(opt.state_dict())
    got = ns["result"](model2, opt2)
    for a, b in zip(got["avg"], expected["avg"]):
        assert torch.equal(a.cpu(), b)


@pytest.mark.parametrize("stop", [9, 10], ids=["right_after_a_snapshot", "mid_period"])
def test_saved_while_swapped_in_resumes_swapped_out_and_continues_bit_exactly(tmp_path, stop):
    """A checkpoint written inside a swap (a framework saving during validation) holds the average
    as the model's weights; loading the model, then the optimizer (every framework's order) puts
    the training weights back and the run continues as the uninterrupted one, bit for bit. Step 9
    is a snapshot (the swap restores from the ring), step 10 is not (from the backup)."""
    ns = _namespace()
    model, opt, sched = ns["build"]()
    ns["steps"](model, opt, sched, 0, 30)
    expected = ns["result"](model, opt)

    model, opt, sched = ns["build"]()
    ns["steps"](model, opt, sched, 0, stop)
    train = [p.detach().clone() for p in model.parameters()]
    with opt.averaged():
        state = {"model": model.state_dict(), "opt": opt.state_dict(), "sched": sched.state_dict()}
        torch.save(state, tmp_path / "c.pt")
        averaged = [p.detach().clone() for p in model.parameters()]
    assert not all(torch.equal(a, t) for a, t in zip(averaged, train))  # the model saved the average
    state = torch.load(tmp_path / "c.pt", weights_only=True)
    assert state["opt"]["lawa"]["swapped_in"]
    model2, opt2, sched2 = ns["build"]()
    model2.load_state_dict(state["model"])
    opt2.load_state_dict(state["opt"])
    sched2.load_state_dict(state["sched"])
    assert not opt2.swapped_in
    for p, t in zip(model2.parameters(), train):
        assert torch.equal(p, t)
    ns["steps"](model2, opt2, sched2, stop, 30)
    got = ns["result"](model2, opt2)
    for key in ("weights", "avg", "avg2"):
        for a, b in zip(got[key], expected[key]):
            assert torch.equal(a, b), key


def test_saved_while_swapped_in_with_bn_recomputed_restores_the_training_buffers(tmp_path):
    """With BatchNorm recomputed for the swap the model's checkpoint holds the average's statistics;
    the optimizer's state holds the training ones, written back by restore_training_buffers."""

    def build():
        torch.manual_seed(0)
        model = nn.Sequential(nn.Linear(4, 8), nn.BatchNorm1d(8), nn.ReLU(), nn.Linear(8, 1))
        return model, LAWAWrapper(torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9), k=3, period=2)

    def run(model, opt, start, stop):
        for i in range(start, stop):
            x = torch.randn(16, 4, generator=torch.Generator().manual_seed(i))
            opt.zero_grad()
            model(x).pow(2).mean().backward()
            opt.step()

    loader = [torch.randn(16, 4, generator=torch.Generator().manual_seed(100 + i)) for i in range(3)]
    model, opt = build()
    run(model, opt, 0, 12)
    expected = [t.detach().clone() for t in model.state_dict().values()]

    model, opt = build()
    run(model, opt, 0, 5)
    training_buffers = [b.clone() for b in model.buffers()]
    with opt.averaged(model=model, bn_loader=loader):
        state = {"model": copy.deepcopy(model.state_dict()), "opt": copy.deepcopy(opt.state_dict())}
    assert not torch.equal(state["model"]["1.running_mean"], training_buffers[0])
    model2, opt2 = build()
    model2.load_state_dict(state["model"])
    with pytest.warns(RuntimeWarning, match="restore_training_buffers"):
        opt2.load_state_dict(state["opt"])
    assert opt2.restore_training_buffers(model2) is True
    assert opt2.restore_training_buffers(model2) is False  # nothing pending any more
    for b, t in zip(model2.buffers(), training_buffers):
        assert torch.equal(b, t)
    run(model2, opt2, 5, 12)
    for a, b in zip(model2.state_dict().values(), expected):
        assert torch.equal(a, b)


def test_restore_training_buffers_refuses_another_model():
    model = nn.Sequential(nn.Linear(2, 3), nn.BatchNorm1d(3))
    opt = LAWAWrapper(torch.optim.SGD(model.parameters(), lr=0.1), k=2)
    opt.snapshot()
    with opt.averaged(model=model, bn_loader=[torch.randn(4, 2)]):
        sd = copy.deepcopy(opt.state_dict())
    with pytest.warns(RuntimeWarning):
        opt.load_state_dict(sd)
    with pytest.raises(ValueError, match="Invalid model: it has 0 buffers"):
        opt.restore_training_buffers(nn.Linear(2, 3))


def _snapshot_everything(model, opt):
    sd = copy.deepcopy(opt.state_dict())  # a copy: the state dict's slots are views of the live ring
    sums = [opt._ring.sum_of(i).clone() for i in range(len(opt._ring.params))]
    return [p.detach().clone() for p in model.parameters()], sd, sums


def _assert_unchanged(model, opt, before):
    params, sd, sums = before
    for p, b in zip(model.parameters(), params):
        assert torch.equal(p, b)
    for i, total in enumerate(sums):  # read before state_dict(), which rebuilds them
        assert torch.equal(opt._ring.sum_of(i), total)
    after = opt.state_dict()
    assert after["lawa"]["count"] == sd["lawa"]["count"] and after["lawa"]["num_steps"] == sd["lawa"]["num_steps"]
    assert after["param_groups"] == sd["param_groups"]
    for pid, st in sd["state"].items():
        for key, v in st.items():
            assert torch.equal(after["state"][pid][key], v)


def _trained(k=4, hidden=9):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, hidden), nn.ReLU(), nn.Linear(hidden, 2))
    opt = LAWAWrapper(torch.optim.Adam(model.parameters(), lr=1e-2), k=k, period=1)
    for _i in range(6):
        opt.zero_grad()
        model(torch.randn(3, 6)).sum().backward()
        opt.step()
    return model, opt


@pytest.mark.parametrize(
    "corrupt,match",
    [
        (lambda sd: [sd.pop("lawa"), *[e.pop(n) for e in sd["state"].values() for n in list(e)
                                       if n.startswith("lawa_")]], "no 'lawa' entry"),
        (lambda sd: sd["lawa"].update(k=5), "saved with k=5"),
        (lambda sd: sd["lawa"].update(method="ema"), "method 'ema'"),
        (lambda sd: [sd["state"][3].pop(n) for n in list(sd["state"][3]) if n.startswith("lawa_")],
         r"no lawa_slot_\* entries for parameter\(s\) \[3\]"),
        (lambda sd: sd["state"][0].__setitem__("lawa_slot_0", torch.zeros(9, 7)), "shape"),
        (lambda sd: sd["state"][0].__setitem__("lawa_slot_0", sd["state"][0]["lawa_slot_0"].double()), "float64"),
        (lambda sd: [e.__setitem__("lawa_count", torch.tensor(-1)) for e in sd["state"].values()], "count"),
        (lambda sd: [e.pop("lawa_slot_3") for e in sd["state"].values()], "3 snapshot slots"),
        # format 1 (the ring as lists under "lawa") still loads, so it is still checked
        (lambda sd: sd.update(to_format1(sd)) or sd["lawa"]["ring"].pop(), "snapshots of 3 parameters"),
        (lambda sd: sd.update(to_format1(sd)) or sd["lawa"]["ring"].__setitem__(0, torch.zeros(4, 9, 7)), "shape"),
        (lambda sd: sd.update(to_format1(sd)) or sd["lawa"].pop("sums"), "lacks 'sums'"),
    ],
)
def test_bad_state_dict_rejected_and_nothing_changes(corrupt, match):
    model, opt = _trained()
    donor_model, donor = _trained()
    for _i in range(3):  # make the donor differ, so a partial load would show
        donor.zero_grad()
        donor_model(torch.randn(3, 6)).sum().backward()
        donor.step()
    sd = donor.state_dict()
    corrupt(sd)
    before = _snapshot_everything(model, opt)
    with pytest.raises(ValueError, match=match):
        opt.load_state_dict(sd)
    _assert_unchanged(model, opt, before)


def test_state_dict_from_another_model_rejected():
    model, opt = _trained(hidden=9)
    _, other = _trained(hidden=11)
    before = _snapshot_everything(model, opt)
    with pytest.raises(ValueError, match="shape"):
        opt.load_state_dict(other.state_dict())
    _assert_unchanged(model, opt, before)


def test_skipped_snapshot_count_survives_resume():
    model, opt = _trained()
    opt.nonfinite = "skip"
    with torch.no_grad():
        model[0].weight[0, 0] = float("nan")
    with pytest.warns(RuntimeWarning, match="NaN or Inf"):
        opt.snapshot()
    _, fresh = _trained()
    fresh.load_state_dict(opt.state_dict())
    assert opt.skipped_snapshots == fresh.skipped_snapshots == 1


def _continue(model, opt, steps=7):
    for i in range(steps):
        opt.zero_grad()
        model(torch.randn(3, 6, generator=torch.Generator().manual_seed(50 + i))).sum().backward()
        opt.step()
    out = {"weights": [p.detach().clone() for p in model.parameters()], "avg": {}}
    for j in range(1, opt.k + 1):
        with opt.averaged(j):
            out["avg"][j] = [p.detach().clone() for p in model.parameters()]
    return out


@pytest.mark.parametrize("fmt", [1, 2])
def test_a_checkpoint_of_either_format_resumes_bit_exactly(tmp_path, fmt):
    """Format 2 (the ring in the per-parameter state) and format 1 (the ring and its float64 sums
    under "lawa", what versions before saved) both load and continue as the run that saved."""
    model, opt = _trained()
    sd = opt.state_dict()
    torch.save({"model": model.state_dict(), "opt": to_format1(sd) if fmt == 1 else sd}, tmp_path / "c.pt")
    assert ("ring" in torch.load(tmp_path / "c.pt", weights_only=True)["opt"]["lawa"]) == (fmt == 1)
    straight = _continue(model, opt)
    model2, opt2 = _trained(hidden=9)
    with torch.no_grad():
        for p in model2.parameters():
            p.add_(1.0)  # other weights and ring before loading
    opt2.snapshot()
    state = torch.load(tmp_path / "c.pt", weights_only=True)
    model2.load_state_dict(state["model"])
    opt2.load_state_dict(state["opt"])
    assert (opt2.num_steps, opt2.snapshots_taken) == (6, 6)
    resumed = _continue(model2, opt2)
    for a, b in zip(resumed["weights"], straight["weights"]):
        assert torch.equal(a, b)
    for j in straight["avg"]:
        for a, b in zip(resumed["avg"][j], straight["avg"][j]):
            assert torch.equal(a, b), j


def test_a_format1_checkpoint_written_by_the_old_code_resumes_as_the_old_code_continued():
    """``tests/data/lawa_format1.pt``: saved by the code of commit bdafb80 (the last to write format 1,
    ``tests/data/make_lawa_format1.py``) after 7 steps with 3 of 4 snapshots, together with what that
    code computed 5 steps later (weights and every window's average). Today's code loads it and
    continues to the same numbers."""
    from pathlib import Path

    from torch import nn

    saved = torch.load(Path(__file__).parent / "data" / "lawa_format1.pt", weights_only=True)
    assert saved["opt"]["lawa"]["format"] == 1 and "sums" in saved["opt"]["lawa"]
    torch.manual_seed(1)
    model = nn.Sequential(nn.Linear(4, 6), nn.Tanh(), nn.Linear(6, 2))
    opt = LAWAWrapper(torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9), k=4, period=2)
    model.load_state_dict(saved["model"])
    opt.load_state_dict(saved["opt"])
    assert (opt.num_steps, opt.num_snapshots) == (7, 3)
    for step in range(7, 12):
        g = torch.Generator().manual_seed(step)
        x, y = torch.randn(5, 4, generator=g), torch.randn(5, 2, generator=g)
        opt.zero_grad()
        nn.functional.mse_loss(model(x), y).backward()
        opt.step()
    expected = saved["expected_after_5_more_steps"]
    assert all(torch.equal(p, e) for p, e in zip(model.parameters(), expected["weights"], strict=True))
    for j, avg in expected["avg"].items():
        with opt.averaged(j):
            assert all(torch.equal(p, e) for p, e in zip(model.parameters(), avg, strict=True)), j
