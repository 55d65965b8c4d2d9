"""A swap without a per-swap backup (issue 12, item 7): right after a snapshot the training weights
are the ring's newest slot, restored from there; otherwise one backup buffer, kept on request."""

from __future__ import annotations

import copy
import weakref

import pytest
import torch
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

from lawa_optim import LAWAWrapper


class NewStorageBytes(TorchDispatchMode):
    """Bytes of the CPU storages the aten ops create while active (outputs that are no input)."""

    def __init__(self) -> None:
        super().__init__()
        self.created = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        tensors = [t for t in tree_flatten((args, kwargs))[0] if isinstance(t, torch.Tensor)]
        inputs = {t.untyped_storage().data_ptr() for t in tensors}
        out = func(*args, **kwargs)
        for t in tree_flatten(out)[0]:
            if isinstance(t, torch.Tensor) and t.untyped_storage().data_ptr() not in inputs:
                self.created += t.untyped_storage().nbytes()
        return out


def _setup(keep=False, **kwargs):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 8))
    opt = LAWAWrapper(torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9), k=3, period=2, **kwargs)
    opt.keep_swap_buffer = keep
    return model, opt


def _step(model, opt, seed):
    opt.zero_grad()
    model(torch.randn(4, 64, generator=torch.Generator().manual_seed(seed))).pow(2).mean().backward()
    opt.step()


def _weights(model):
    return [p.detach().clone() for p in model.parameters()]


def _param_bytes(model):
    return sum(p.numel() * p.element_size() for p in model.parameters())


def _swap_bytes(opt, times=3):
    with NewStorageBytes() as counter:
        for _ in range(times):
            with opt.averaged():
                pass
    return counter.created


@pytest.mark.parametrize("steps", [4, 5], ids=["right_after_a_snapshot", "one_step_later"])
@pytest.mark.parametrize("offload", [None, "cpu"])
def test_swap_restores_bit_exactly_and_state_dict_holds_the_training_weights(steps, offload):
    model, opt = _setup(offload=offload)
    for i in range(steps):
        _step(model, opt, i)
    train = _weights(model)
    assert opt._weights_are_newest_snapshot() == (steps % 2 == 0)
    for _ in range(2):  # twice: the restore from the ring leaves the weights the newest snapshot again
        with opt.averaged():
            assert not all(torch.equal(p, t) for p, t in zip(model.parameters(), train))
            saved = opt.state_dict()["lawa"]["training_weights"]
            assert all(torch.equal(s, t) for s, t in zip(saved, train))
        assert all(torch.equal(p, t) for p, t in zip(model.parameters(), train))
    assert opt._weights_are_newest_snapshot() == (steps % 2 == 0)


def test_the_common_case_allocates_nothing():
    model, opt = _setup()
    for i in range(4):
        _step(model, opt, i)
    _swap_bytes(opt, 1)  # the ring's averaging scratch is made on first use
    assert opt._weights_are_newest_snapshot()
    assert _swap_bytes(opt) == 0


def test_the_backup_is_one_buffer_reused_only_when_kept():
    size = _param_bytes(_setup()[0])
    for keep in (False, True):
        model, opt = _setup(keep=keep)
        for i in range(5):  # one step past the snapshot: the weights need a backup
            _step(model, opt, i)
        _swap_bytes(opt, 1)
        assert not opt._weights_are_newest_snapshot()
        # Freed after each swap out: one P-sized allocation per swap; kept: none after the first.
        assert _swap_bytes(opt, 3) == (0 if keep else 3 * size)
        assert (opt._backup is not None) == keep


@pytest.mark.parametrize(
    "change",
    ["load_model_state", "base_optimizer_step", "add_param_group", "load_optimizer_state"],
)
def test_a_change_after_the_snapshot_is_backed_up(change):
    """Anything that changes the weights after the snapshot, other than the wrapper's own step,
    must end the restore-from-the-ring shortcut (version counters, step count, ring reload)."""
    model, opt = _setup()
    for i in range(4):
        _step(model, opt, i)
    sd = copy.deepcopy(opt.state_dict())
    if change == "load_model_state":
        state = {k: v + 1 for k, v in model.state_dict().items()}
        model.load_state_dict(state)
    elif change == "base_optimizer_step":
        model(torch.randn(2, 64)).sum().backward()
        opt.optimizer.step()  # not through the wrapper: only the version counters see it
    elif change == "add_param_group":
        opt.add_param_group({"params": [nn.Parameter(torch.ones(3))]})
    else:
        opt.load_state_dict(sd)
    assert not opt._weights_are_newest_snapshot()
    train = _weights(model)
    with opt.averaged():
        pass
    assert all(torch.equal(p, t) for p, t in zip(model.parameters(), train))


def test_a_failed_swap_in_restores_from_the_ring_too(monkeypatch):
    model, opt = _setup()
    for i in range(4):
        _step(model, opt, i)
    train = _weights(model)
    write = opt._write_eval_weights

    def half_then_boom(params, k):
        write(params, k)  # the average is in the parameters when the error comes
        raise KeyError("bad batch")

    monkeypatch.setattr(opt, "_write_eval_weights", half_then_boom)
    with pytest.raises(KeyError):
        opt.swap_in()
    assert not opt.swapped_in
    assert all(torch.equal(p, t) for p, t in zip(model.parameters(), train))


def test_the_backup_is_released_with_the_wrapper():
    model, opt = _setup(keep=True)
    for i in range(5):
        _step(model, opt, i)
    with opt.averaged():
        pass
    ref = weakref.ref(opt._backup[0])
    opt.keep_swap_buffer = False
    with opt.averaged():
        pass
    assert opt._backup is None and ref() is None
