"""The disk-backed ring: the same numbers as the in-memory ring, files that leave nothing behind."""

from __future__ import annotations

import os

import pytest
import torch
from helpers import mlp, train_mse

from lawa_optim import LAWAWrapper, store
from lawa_optim.disk_store import DiskSnapshotRing
from lawa_optim.store import SnapshotRing


def make_params() -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return [torch.randn(37, 5, generator=g), torch.randn(6, generator=g).half(), torch.randn(3, generator=g).double()]


def perturb(params, step):
    g = torch.Generator().manual_seed(100 + step)
    with torch.no_grad():
        for p in params:
            p.add_(torch.randn(p.shape, generator=g).to(p.dtype))


def test_disk_ring_equals_memory_ring_bit_for_bit(tmp_path, monkeypatch):
    monkeypatch.setattr(store, "_CPU_BLOCK", 16)
    params = make_params()
    mem = SnapshotRing(params, 3)
    disk = DiskSnapshotRing(params, 3, tmp_path)
    assert os.listdir(tmp_path) == []  # mapped, then unlinked at once
    assert all(g.rows.untyped_storage().filename is not None for g in disk.groups)
    for step in range(3 * 8 + 2):  # past one exact rebuild of the sums
        perturb(params, step)
        mem.push()
        disk.push()
    for i in range(len(params)):
        assert torch.equal(mem.sum_of(i), disk.sum_of(i))
        assert all(torch.equal(a, b) for a, b in zip(mem.snapshots(i), disk.snapshots(i)))
    out_m = [torch.empty_like(p) for p in params]
    out_d = [torch.empty_like(p) for p in params]
    mem.write_average(out_m, 3, None)
    disk.write_average(out_d, 3, None)
    assert all(torch.equal(a, b) for a, b in zip(out_m, out_d))
    mem.write_average(out_m, 2, [0.7, 0.3])
    disk.write_average(out_d, 2, [0.7, 0.3])
    assert all(torch.equal(a, b) for a, b in zip(out_m, out_d))
    disk.prepare_save()
    mem.prepare_save()
    assert os.listdir(tmp_path) == []  # a save makes no file: the state dict holds views of the mapped slots
    for i in range(len(params)):
        assert all(torch.equal(a, b) for a, b in zip(disk.slot_views(i), mem.slot_views(i)))


def test_wrapper_disk_offload_average_and_lockstep_resume(tmp_path):
    model = mlp(5, 7, 3)
    opt = LAWAWrapper(torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9), k=4, period=2,
                      offload="disk", offload_dir=tmp_path)
    history = []
    for s in range(12):
        train_mse(model, opt, 1, s, batch=8)
        if (s + 1) % 2 == 0:
            history.append([p.detach().clone() for p in model.parameters()])
    with opt.averaged():
        for p, *snaps in zip(model.parameters(), *history[-4:]):
            ref = torch.stack([x.double() for x in snaps]).mean(0)
            torch.testing.assert_close(p.detach().double(), ref, rtol=1e-6, atol=1e-7)
    path = tmp_path / "ckpt.pt"
    torch.save({"model": model.state_dict(), "opt": opt.state_dict()}, path)
    # a fresh disk-backed wrapper and an in-memory one both continue bit-identically
    for offload, kwargs in (("disk", {"offload_dir": tmp_path}), (None, {})):
        ckpt = torch.load(path, weights_only=True)  # loaded anew: the optimizer keeps its tensors
        fresh = mlp(5, 7, 3)
        fresh.load_state_dict(ckpt["model"])
        opt2 = LAWAWrapper(torch.optim.SGD(fresh.parameters(), lr=0.1, momentum=0.9), k=4, period=2,
                           offload=offload, **kwargs)
        opt2.load_state_dict(ckpt["opt"])
        train_mse(fresh, opt2, 5, 12, batch=8)
        if offload == "disk":
            train_mse(model, opt, 5, 12, batch=8)
        assert all(torch.equal(a, b) for a, b in zip(model.parameters(), fresh.parameters()))
        with opt.averaged():
            want = [p.detach().clone() for p in model.parameters()]
        with opt2.averaged():
            assert all(torch.equal(a, b) for a, b in zip(fresh.parameters(), want))
    assert sorted(os.listdir(tmp_path)) == ["ckpt.pt"]


@pytest.mark.parametrize(
    "kwargs,err,match",
    [
        ({"offload": "disk"}, TypeError, "offload_dir: None"),
        ({"offload": "disk", "offload_dir": "/no/such/dir"}, ValueError, "offload_dir: '/no/such/dir'"),
        ({"offload": "cpu", "offload_dir": "."}, ValueError, "offload_dir: '.' is only used with offload='disk'"),
    ],
)
def test_bad_offload_dir(kwargs, err, match):
    model = mlp(5, 7, 3)
    base = torch.optim.SGD(model.parameters(), lr=0.1)
    before = [p.detach().clone() for p in model.parameters()]
    with pytest.raises(err, match=match):
        LAWAWrapper(base, k=3, **kwargs)
    assert all(torch.equal(a, b) for a, b in zip(model.parameters(), before))
    assert base.state == {}
