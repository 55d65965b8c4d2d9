"""The snapshot ring against a slow, obviously-correct reference (a list of float64 clones)."""

from __future__ import annotations

import pytest
import torch
from reference import reference_average

from lawa_optim import store
from lawa_optim.store import SnapshotRing


def make_params(block_split: bool = True) -> list[torch.Tensor]:
    """Mixed dtypes interleaved, a channels_last (non-contiguous) weight, a scalar, an empty one."""
    g = torch.Generator().manual_seed(0)
    conv = torch.randn(4, 3, 3, 3, generator=g).to(memory_format=torch.channels_last)
    assert not conv.is_contiguous()
    return [
        torch.randn(37, 5, generator=g),  # larger than the patched block: cut into stretches
        torch.randn(6, generator=g).to(torch.bfloat16),
        conv,
        torch.randn((), generator=g),
        torch.empty(0, 3),
        torch.randn(9, generator=g).double(),
        torch.randn(11, generator=g).half(),
        torch.randn(3, 2, generator=g),
    ]


@pytest.fixture
def small_blocks(monkeypatch):
    """Blocks of 16 elements so every code path (cut parameters, many blocks) runs on tiny tensors."""
    monkeypatch.setattr(store, "_CPU_BLOCK", 16)


def perturb(params: list[torch.Tensor], step: int) -> None:
    g = torch.Generator().manual_seed(1000 + step)
    with torch.no_grad():
        for p in params:
            p.add_(torch.randn(p.shape, generator=g).to(p.dtype) * 0.1)


reference = reference_average


def tolerance(dtype: torch.dtype) -> dict:
    if dtype == torch.float32:
        return {"rtol": 1e-6, "atol": 1e-7}
    if dtype == torch.float64:
        return {"rtol": 1e-12, "atol": 1e-14}
    return {"rtol": 1e-2, "atol": 1e-2}  # bf16/fp16: within their own rounding


def check_average(ring: SnapshotRing, params, history, j, coeffs=None) -> None:
    dst = [torch.full_like(p, float("nan")) for p in params]
    ring.write_average(dst, j, coeffs)
    for d, e, p in zip(dst, reference(history, j, coeffs), params):
        assert d.dtype == p.dtype and d.shape == p.shape
        torch.testing.assert_close(d.double(), e, **tolerance(p.dtype))


@pytest.mark.parametrize("k", [1, 3, 6])
def test_average_matches_reference(small_blocks, k):
    params = make_params()
    ring = SnapshotRing(params, k)
    assert len(ring.groups) == 4 and max(len(g.blocks) for g in ring.groups) > 3
    history = []
    for step in range(3 * k + 2):
        perturb(params, step)
        ring.push()
        history.append([p.clone() for p in params])
        assert ring.size == min(step + 1, k) and ring.count == step + 1
        for i in range(len(params)):  # the slots hold exact copies, oldest first
            for got, want in zip(ring.snapshots(i), [h[i] for h in history[-k:]]):
                assert torch.equal(got, want)
        check_average(ring, params, history, ring.size)
    check_average(ring, params, history, 1)
    coeffs = [0.5, 0.3, 0.2][: min(k, 3)]
    coeffs = [c / sum(coeffs) for c in coeffs]
    check_average(ring, params, history, len(coeffs), coeffs)


def test_running_sum_does_not_drift(small_blocks):
    """2,000 snapshots of values of very different magnitudes: still within 1e-6 of the reference."""
    g = torch.Generator().manual_seed(3)
    params = [torch.zeros(40), torch.zeros(3, 3).double()]
    ring = SnapshotRing(params, 5)
    history = []
    for _ in range(2000):
        with torch.no_grad():
            scale = 10.0 ** float(torch.randint(-6, 7, (), generator=g))
            for p in params:
                p.copy_(torch.randn(p.shape, generator=g) * scale)
        ring.push()
        history.append([p.clone() for p in params])
    for i in range(len(params)):
        exact = torch.stack([h[i].double() for h in history[-5:]]).sum(0)
        assert torch.equal(ring.sum_of(i), exact.to(ring.sum_of(i).dtype)) or torch.allclose(
            ring.sum_of(i), exact, rtol=1e-12, atol=0
        )
    check_average(ring, params, history, 5)


def test_rebuild_is_exact_and_keeps_the_average(small_blocks):
    params = make_params()
    ring = SnapshotRing(params, 4)
    history = []
    for step in range(6):
        perturb(params, step)
        ring.push()
        history.append([p.clone() for p in params])
    before = [ring.sum_of(i).clone() for i in range(len(params))]
    ring.rebuild()
    for i in range(len(params)):
        slots = ring.snapshots(i)
        if slots[0].numel():
            acc = torch.zeros_like(before[i])
            for s in slots:
                acc += s.to(acc.dtype)
            assert torch.equal(ring.sum_of(i), acc)
        torch.testing.assert_close(ring.sum_of(i), before[i])
    check_average(ring, params, history, 4)


def _saved(ring: SnapshotRing) -> tuple[int, int, list[list[torch.Tensor]]]:
    """What a checkpoint holds of the ring: count, head and copies of every slot."""
    ring.prepare_save()
    return ring.count, ring.head, [[t.clone() for t in ring.slot_views(i)] for i in range(len(ring.params))]


def test_saved_slots_round_trip_bit_exact(small_blocks):
    params = make_params()
    ring = SnapshotRing(params, 3)
    for step in range(5):  # head is not 0: the slots are saved in ring order with the head
        perturb(params, step)
        ring.push()
    count, head, slots = _saved(ring)
    assert (count, head) == (5, 2) and [len(s) for s in slots] == [3] * len(params)
    for i in range(len(params)):
        assert all(torch.equal(a, b) for a, b in zip([slots[i][s] for s in ring.order()], ring.snapshots(i)))
    other = SnapshotRing([torch.zeros_like(p) for p in params], 3)
    other.push()  # something to overwrite
    other.check_slots(count, head, slots, "test")
    other.load_slots(count, head, slots)
    for i in range(len(params)):  # the sums are rebuilt: equal to the saver's, which the save rebuilt
        assert torch.equal(ring.sum_of(i), other.sum_of(i))
    for step in range(5, 9):  # both continue identically
        perturb(params, step)
        ring.push()
        with torch.no_grad():
            for q, p in zip(other.params, params):
                q.copy_(p)
        other.push()
    for i in range(len(params)):
        assert torch.equal(ring.sum_of(i), other.sum_of(i))
        assert all(torch.equal(a, b) for a, b in zip(ring.snapshots(i), other.snapshots(i)))


def test_unfilled_slots_are_saved_as_zeros():
    ring = SnapshotRing([torch.randn(4)], 3)
    with torch.no_grad():
        ring.groups[0].rows.fill_(float("nan"))  # what torch.empty may hold
    ring.push()
    ring.prepare_save()
    views = ring.slot_views(0)
    assert torch.equal(views[0], ring.params[0]) and not views[1].any() and not views[2].any()


def test_lockstep_save_and_load_keep_the_sums_bit_for_bit(small_blocks):
    """A ring saved and loaded into a fresh one at every snapshot runs in lockstep with the ring
    that saved it: the sums are not saved, but a save rebuilds them exactly as a load does.

    The weights span 2**-40 .. 2**10 so that the running float64 sum of float32 slots rounds
    (a ring that never saves drifts from the rebuilt sum; checked, so the test can fail)."""
    g = torch.Generator().manual_seed(3)

    def weights(step):
        scale = 2.0 ** torch.randint(-40, 10, (64,), generator=g).float()
        return torch.randn(64, generator=g) * scale

    src = torch.zeros(64)
    saver = SnapshotRing([src], 4)
    never = SnapshotRing([src], 4)  # the same snapshots, never saved
    drift = 0
    for step in range(40):
        with torch.no_grad():
            src.copy_(weights(step))
        saver.push()
        never.push()
        count, head, slots = _saved(saver)
        fresh = SnapshotRing([torch.zeros(64)], 4)
        fresh.check_slots(count, head, slots, "lockstep")
        fresh.load_slots(count, head, slots)
        assert torch.equal(fresh.sum_of(0), saver.sum_of(0)), step
        out_a, out_b = torch.empty(64), torch.empty(64)
        saver.write_average([out_a], saver.size, None)
        fresh.write_average([out_b], fresh.size, None)
        assert torch.equal(out_a, out_b), step
        drift += int(not torch.equal(never.sum_of(0), saver.sum_of(0)))
    assert drift > 0, "the running sum never rounded: the data does not test the rebuild"


def test_check_slots_names_the_mismatch():
    ring = SnapshotRing([torch.zeros(3)], 2)
    ring.push()
    count, head, slots = _saved(ring)
    with pytest.raises(ValueError, match=r"slot 1 of parameter 0 has shape \(4,\), dtype torch.float32, expected "
                                         r"shape \(3,\)"):
        ring.check_slots(count, head, [[slots[0][0], torch.zeros(4)]], "x")
    with pytest.raises(ValueError, match="1 snapshot slots for parameter 0, this wrapper has k=2"):
        ring.check_slots(count, head, [slots[0][:1]], "x")
    with pytest.raises(ValueError, match="dtype torch.float64"):
        ring.check_slots(count, head, [[t.double() for t in slots[0]]], "x")
    with pytest.raises(ValueError, match="head=2"):
        ring.check_slots(count, 2, slots, "x")
    with pytest.raises(ValueError, match="count=-1"):
        ring.check_slots(-1, head, slots, "x")
    with pytest.raises(ValueError, match="2 parameters"):
        ring.check_slots(count, head, slots * 2, "x")


def test_legacy_state_loads_with_its_sums_and_names_the_mismatch(small_blocks):
    """Format 1 (the filled slots oldest first and the running sums) loads as saved."""
    params = make_params()
    ring = SnapshotRing(params, 3)
    for step in range(5):
        perturb(params, step)
        ring.push()
    legacy = {"count": 5, "ring": [torch.stack(ring.snapshots(i)) for i in range(len(params))],
              "sums": [ring.sum_of(i).clone() for i in range(len(params))]}
    other = SnapshotRing([torch.zeros_like(p) for p in params], 3)
    other.check_legacy_state(legacy, "x")
    other.load_legacy_state(legacy)
    for i in range(len(params)):
        assert torch.equal(other.sum_of(i), ring.sum_of(i))
        assert all(torch.equal(a, b) for a, b in zip(other.snapshots(i), ring.snapshots(i)))
    bad = dict(legacy, ring=[torch.zeros(1, 4)] + legacy["ring"][1:])
    with pytest.raises(ValueError, match=r"shape \(1, 4\), expected \(3, 37, 5\)"):
        other.check_legacy_state(bad, "x")
    with pytest.raises(ValueError, match="lacks 'sums'"):
        other.check_legacy_state({"count": 5, "ring": legacy["ring"]}, "x")
    with pytest.raises(ValueError, match="dtype|snapshots are"):
        other.check_legacy_state(dict(legacy, sums=[t.float() for t in legacy["sums"]]), "x")


def test_add_params_history_is_the_current_value(small_blocks):
    params = [torch.randn(20)]
    ring = SnapshotRing(params, 3)
    history = []
    for step in range(2):
        perturb(params, step)
        ring.push()
        history.append([params[0].clone()])
    new = torch.randn(30).double()
    ring.add_params([new])
    params.append(new)
    for h in history:
        h.append(new.clone())
    for step in range(2, 5):
        perturb(params, step)
        ring.push()
        history.append([p.clone() for p in params])
        check_average(ring, params, history, ring.size)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_nonfinite_params_is_exact(dtype):
    big = torch.finfo(dtype).max
    params = [
        torch.ones(10, dtype=dtype),
        torch.full((4,), big, dtype=dtype),  # finite, but its sum overflows: not reported
        torch.ones(5, dtype=dtype),
        torch.empty(0, dtype=dtype),
        torch.ones(3, dtype=dtype),
    ]
    ring = SnapshotRing(params, 2)
    assert ring.nonfinite_params() == []
    params[2][3] = float("nan")
    params[4][0] = float("-inf")
    assert ring.nonfinite_params() == [2, 4]


def test_integer_parameters_are_refused():
    with pytest.raises(TypeError, match="only floating-point"):
        SnapshotRing([torch.zeros(3, dtype=torch.long)], 2)


def test_no_allocation_per_snapshot_once_built(small_blocks):
    """The ring's storages stay the same objects; the scratch is made once."""
    params = make_params()
    ring = SnapshotRing(params, 2)
    ring.push()
    ptrs = [(g.rows.data_ptr(), g.total.data_ptr()) for g in ring.groups]
    scratch = {k: v.data_ptr() for k, v in ring._scratch.items()}
    for step in range(5):
        perturb(params, step)
        ring.push()
    assert ptrs == [(g.rows.data_ptr(), g.total.data_ptr()) for g in ring.groups]
    assert scratch == {k: v.data_ptr() for k, v in ring._scratch.items()}


def test_parameter_given_new_storage_is_snapshotted_from_it(small_blocks):
    """Views of the parameters are cached; ``p.data = ...`` (e.g. module.to()) must not leave them stale."""
    p = torch.nn.Parameter(torch.zeros(40))
    ring = SnapshotRing([p], 2)
    ring.push()
    p.data = torch.full((40,), 3.0)
    ring.push()
    assert torch.equal(ring.snapshots(0)[-1], torch.full((40,), 3.0))
    ring.write_average([p], 2, None)
    assert torch.equal(p.detach(), torch.full((40,), 1.5))
