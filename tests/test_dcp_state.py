"""The ring in torch's distributed checkpoints: ``get/set_optimizer_state_dict`` and ``dcp.save``/``dcp.load``.

Spawned gloo processes on the CPU (``torch.multiprocessing.spawn``, as in test_distributed.py):

- world 2: the torch state-dict API round trip on a plain model (every rank the same replica)
  and on a ``fully_shard`` model (sharded, and with ``full_state_dict=True``), each continued
  bit-exactly; a ``dcp.save`` of the FSDP2 run,
  loaded by a fresh model and wrapper on the same world, continues bit-exactly (training weights,
  every window's average, the later snapshots) as the run that saved it;
- worlds 1 and 3: the world-2 checkpoint resharded: the average equals the float64 mean of the
  last k full parameters (and the saver's average), and training goes on (snapshots on schedule).

torch's ``_init_optim_state`` (called by ``get/set_optimizer_state_dict`` on an optimizer without
state) steps the wrapper once with zero gradients and lr 0: that step is not counted.
"""

from __future__ import annotations

import copy
import os
import socket
import traceback

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from helpers import mlp
from torch import nn

from lawa_optim import LAWAWrapper

pytestmark = [pytest.mark.distributed, pytest.mark.slow]

STEPS, CUT, K, PERIOD, SAVE_WORLD = 14, 8, 3, 2, 2


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _batch(step: int, rank: int) -> torch.Tensor:
    return torch.randn(4, 4, generator=torch.Generator().manual_seed(1000 * step + rank))


def _wrap(model: nn.Module) -> LAWAWrapper:
    return LAWAWrapper(torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9), k=K, period=PERIOD)


def _train(model, opt, rank: int, start: int, stop: int) -> None:
    for step in range(start, stop):
        opt.zero_grad()
        model(_batch(step, rank)).pow(2).mean().backward()
        opt.step()


def _full(t: torch.Tensor) -> torch.Tensor:
    return (t.full_tensor() if hasattr(t, "full_tensor") else t).detach().clone()


def _record(model, opt, sharded: bool) -> dict:
    """Training weights, every window's average and every snapshot, as full tensors."""
    params = list(model.parameters())
    out = {"training": [_full(p) for p in params], "avg": {}, "num_steps": opt.num_steps,
           "taken": opt.snapshots_taken}
    for j in range(1, K + 1):
        with opt.averaged(k=j, model=model) if sharded else opt.averaged(k=j):
            out["avg"][j] = [_full(p) for p in params]
    sd = opt.state_dict()["state"]
    out["slots"] = [[_full(sd[i][f"lawa_slot_{s}"]) for s in range(K)] for i in range(len(params))]
    return out


def _reference(world: int, stop: int) -> list[torch.Tensor]:
    """Single process: the mean of the ranks' losses (FSDP2's averaged gradient); the float64 mean
    of the k latest snapshots taken by step ``stop``."""
    model = mlp(4, 8, 2, seed=0)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    history = []
    for step in range(stop):
        opt.zero_grad()
        (sum(model(_batch(step, r)).pow(2).mean() for r in range(world)) / world).backward()
        opt.step()
        if (step + 1) % PERIOD == 0:
            history.append([p.detach().double().clone() for p in model.parameters()])
    return [torch.stack([h[i] for h in history[-K:]]).mean(0) for i in range(len(history[0]))]


def _fsdp(seed: int):
    from torch.distributed.fsdp import fully_shard

    model = mlp(4, 8, 2, seed=seed)
    fully_shard(model[0])
    fully_shard(model)
    return model, _wrap(model)


def _dcp_state(model, opt) -> dict:
    from torch.distributed.checkpoint.state_dict import get_model_state_dict, get_optimizer_state_dict

    return {"model": get_model_state_dict(model), "optim": get_optimizer_state_dict(model, opt)}


def _dcp_resume(model, opt, folder: str) -> None:
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import set_model_state_dict, set_optimizer_state_dict

    sd = _dcp_state(model, opt)  # a fresh wrapper: all k slots already there, so dcp.load fills them
    assert opt.num_steps == 0 and opt.snapshots_taken == 0, "torch's initialising step() was counted"
    dcp.load(sd, checkpoint_id=folder)
    set_model_state_dict(model, sd["model"])
    set_optimizer_state_dict(model, opt, sd["optim"])


# ----------------------------------------------------------------------------- workers
def _plain_round_trip(rank: int, out: str) -> None:
    """A plain model (the same replica on every rank) through get/set_optimizer_state_dict and dcp."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import set_model_state_dict, set_optimizer_state_dict

    model = mlp(4, 8, 2, seed=0)
    opt = _wrap(model)
    _train(model, opt, 0, 0, CUT)  # rank 0's batches everywhere: a replicated state
    sd = _dcp_state(model, opt)
    state = sd["optim"]["state"]
    assert set(state) == {name for name, _ in model.named_parameters()}
    assert {f"lawa_slot_{s}" for s in range(K)} <= set(state["0.weight"]) and "lawa" not in sd["optim"]
    # In process: a fresh model and wrapper take the state dict through the torch API.
    model2 = mlp(4, 8, 2, seed=5)
    opt2 = _wrap(model2)
    set_model_state_dict(model2, copy.deepcopy(sd["model"]))
    set_optimizer_state_dict(model2, opt2, copy.deepcopy(sd["optim"]))
    folder = os.path.join(out, "plain_ckpt")
    dcp.save(sd, checkpoint_id=folder)
    model3 = mlp(4, 8, 2, seed=7)
    opt3 = _wrap(model3)
    _dcp_resume(model3, opt3, folder)
    records = []
    for m, o in ((model, opt), (model2, opt2), (model3, opt3)):
        _train(m, o, 0, CUT, STEPS)
        records.append(_record(m, o, sharded=False))
    torch.save(records, os.path.join(out, f"plain_rank{rank}.pt"))


def _fsdp_save_and_resume(rank: int, world: int, out: str) -> None:
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import (
        StateDictOptions,
        get_model_state_dict,
        get_optimizer_state_dict,
        set_model_state_dict,
        set_optimizer_state_dict,
    )

    model, opt = _fsdp(0)
    _train(model, opt, rank, 0, CUT)
    sd = _dcp_state(model, opt)
    slot = sd["optim"]["state"]["0.weight"]["lawa_slot_0"]
    assert type(slot).__name__ == "DTensor" and slot.placements == model[0].weight.placements
    # The torch API in process: a fresh sharded model and wrapper (the model state copied directly).
    model2, opt2 = _fsdp(5)
    model2.load_state_dict(model.state_dict())
    set_optimizer_state_dict(model2, opt2, copy.deepcopy(sd["optim"]))
    # Full (unsharded) state dicts: the slots gathered to full tensors, distributed again on load.
    full = StateDictOptions(full_state_dict=True)
    full_sd = (get_model_state_dict(model, options=full), get_optimizer_state_dict(model, opt, options=full))
    assert tuple(full_sd[1]["state"]["0.weight"]["lawa_slot_0"].shape) == tuple(model[0].weight.shape)
    model4, opt4 = _fsdp(9)
    set_model_state_dict(model4, full_sd[0], options=full)
    set_optimizer_state_dict(model4, opt4, full_sd[1], options=full)
    folder = os.path.join(out, "fsdp_ckpt")
    dcp.save(sd, checkpoint_id=folder)
    at_cut = _record(model, opt, sharded=True)
    model3, opt3 = _fsdp(7)
    _dcp_resume(model3, opt3, folder)
    records = []
    for m, o in ((model, opt), (model2, opt2), (model3, opt3), (model4, opt4)):
        _train(m, o, rank, CUT, STEPS)
        records.append(_record(m, o, sharded=True))
    torch.save({"at_cut": at_cut, "runs": records}, os.path.join(out, f"fsdp_rank{rank}.pt"))


def _reshard(rank: int, world: int, out: str, folder: str) -> None:
    model, opt = _fsdp(11)
    _dcp_resume(model, opt, folder)
    at_load = _record(model, opt, sharded=True)
    _train(model, opt, rank, CUT, STEPS)  # trains on at the new world size
    after = _record(model, opt, sharded=True)
    torch.save({"at_load": at_load, "after": after}, os.path.join(out, f"reshard_rank{rank}.pt"))


def _guard(rank, world, port, worker, *args) -> None:
    try:
        os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
        dist.init_process_group("gloo", rank=rank, world_size=world)
        torch.set_num_threads(1)
        worker(rank, world, *args)
    except BaseException:
        traceback.print_exc()
        raise
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()


def _save_worker(rank: int, world: int, out: str) -> None:
    _plain_round_trip(rank, out)
    dist.barrier()
    _fsdp_save_and_resume(rank, world, out)


def _spawn(world: int, worker, *args) -> None:
    mp.spawn(_guard, args=(world, _free_port(), worker, *args), nprocs=world, join=True)


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    out = tmp_path_factory.mktemp("dcp_world2")
    _spawn(SAVE_WORLD, _save_worker, str(out))
    return out


def _assert_same(a: dict, b: dict, what: str) -> None:
    for key in ("training", "slots"):
        for x, y in zip(a[key], b[key]):
            for u, v in zip(x if key == "slots" else [x], y if key == "slots" else [y]):
                assert torch.equal(u, v), f"{what}: {key}"
    for j in range(1, K + 1):
        for x, y in zip(a["avg"][j], b["avg"][j]):
            assert torch.equal(x, y), f"{what}: average of the {j} latest"
    assert (a["num_steps"], a["taken"]) == (b["num_steps"], b["taken"]), what


# ----------------------------------------------------------------------------- tests
def test_plain_model_round_trips_through_the_torch_api_and_dcp(saved):
    for rank in range(SAVE_WORLD):
        straight, api, dcp_run = torch.load(saved / f"plain_rank{rank}.pt", weights_only=True)
        assert straight["num_steps"] == STEPS and straight["taken"] == STEPS // PERIOD
        _assert_same(api, straight, "set_optimizer_state_dict")
        _assert_same(dcp_run, straight, "dcp.load")


def test_fsdp2_resume_on_the_same_world_is_bit_exact(saved):
    for rank in range(SAVE_WORLD):
        res = torch.load(saved / f"fsdp_rank{rank}.pt", weights_only=True)
        straight, api, dcp_run, full = res["runs"]
        assert straight["taken"] == STEPS // PERIOD
        _assert_same(api, straight, "set_optimizer_state_dict (FSDP2)")
        _assert_same(full, straight, "full_state_dict=True (FSDP2)")
        _assert_same(dcp_run, straight, "dcp.load (FSDP2)")
        for got, want in zip(straight["avg"][K], _reference(SAVE_WORLD, STEPS)):
            torch.testing.assert_close(got.double(), want, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("world", [1, 3])
def test_fsdp2_checkpoint_reshards_to_another_world_size(saved, tmp_path, world):
    _spawn(world, _reshard, str(tmp_path), str(saved / "fsdp_ckpt"))
    at_cut = torch.load(saved / "fsdp_rank0.pt", weights_only=True)["at_cut"]
    expected = _reference(SAVE_WORLD, CUT)
    for rank in range(world):
        res = torch.load(tmp_path / f"reshard_rank{rank}.pt", weights_only=True)
        load, after = res["at_load"], res["after"]
        assert (load["num_steps"], load["taken"]) == (CUT, CUT // PERIOD)
        for got, want, saver in zip(load["avg"][K], expected, at_cut["avg"][K]):
            torch.testing.assert_close(got.double(), want, rtol=1e-5, atol=1e-6)
            torch.testing.assert_close(got, saver, rtol=1e-6, atol=1e-7)
        for x, y in zip(load["training"], at_cut["training"]):
            assert torch.equal(x, y)
        # Trains on: the snapshots keep their schedule and the average is the mean of the ring.
        assert (after["num_steps"], after["taken"]) == (STEPS, STEPS // PERIOD)
        newest = (STEPS // PERIOD - 1) % K
        for i, slots in enumerate(after["slots"]):
            assert torch.equal(slots[newest], after["training"][i])
            mean = torch.stack([s.double() for s in slots]).mean(0)
            torch.testing.assert_close(after["avg"][K][i].double(), mean, rtol=1e-6, atol=1e-7)
