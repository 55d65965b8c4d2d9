"""Many processes (issue 7): DDP with 2 and 3 ranks, FSDP2 (``fully_shard``) with 2 and 3 ranks.

All runs use gloo on the CPU, spawned by the test (``torch.multiprocessing.spawn``). Each rank
trains on its own shard of the data (seeded by step and rank) with all-reduced gradients.

- DDP: LAWA, EXP, EMA and SWA observe one base optimizer. Every rank ends with bit-identical
  averages, LAWA's equal the single-process reference (the mean gradient of the ranks' batches,
  float64 mean of the last k snapshots), and a run resumed half-way from a checkpoint written by
  rank 0 (``atomic_save``) and loaded by every rank (``safe_load``) ends bit-identical to the
  uninterrupted run.
- FSDP2: each rank keeps the ring of its own shards (the average is sharded like the weights,
  also where a rank's shard is empty). The gathered average equals the single-process reference,
  the forward pass inside ``averaged(model=model)`` uses it and the one after it the training
  weights again (FSDP2 keeps the root's unsharded weights after a no-grad forward; the swap
  reshards; without ``model=`` it refuses), the swap restores the training shards bit-exactly,
  and a per-rank state dict round trip into a fresh sharded model resumes bit-exactly.

FSDP2 runs on the CPU with gloo in torch 2.14, so nothing here is skipped.
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

from lawa_optim import LAWAWrapper, atomic_save, create, safe_load

pytestmark = pytest.mark.distributed

STEPS, CUT, K, PERIOD = 12, 6, 3, 2


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _batch(step: int, rank: int) -> torch.Tensor:
    return torch.randn(4, 4, generator=torch.Generator().manual_seed(1000 * step + rank))


def _reference(world: int) -> list[list[torch.Tensor]]:
    """Single process: the mean of the ranks' losses (= the all-reduced mean gradient)."""
    model = mlp(4, 8, 2)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    history = []
    for step in range(STEPS):
        opt.zero_grad()
        (sum(model(_batch(step, r)).pow(2).mean() for r in range(world)) / world).backward()
        opt.step()
        if (step + 1) % PERIOD == 0:
            history.append([p.detach().double().clone() for p in model.parameters()])
    n = len(history[0])
    return [[torch.stack([h[i] for h in history[-j:]]).mean(0) for i in range(n)] for j in range(1, K + 1)]


def _init(rank: int, world: int, port: int) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    torch.set_num_threads(1)


def _run(worker, world: int, *args) -> None:
    mp.spawn(_guard, args=(worker, world, _free_port(), *args), nprocs=world, join=True)


def _guard(rank, worker, world, port, *args) -> None:
    try:
        _init(rank, world, port)
        worker(rank, world, *args)
    except BaseException:
        traceback.print_exc()
        raise
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()


# ----------------------------------------------------------------------------- DDP
def _exact_allreduce(_state, bucket):
    """DDP's gradient all-reduce with the sum in float64: the sum of a few float32 values is then
    exact, so it does not depend on the order gloo adds the ranks in (which, with 3 ranks, differs
    between buckets of a fresh and of a running DDP and broke bit-identical resumes)."""
    total = bucket.buffer().double()

    def mean(fut):
        buffer = bucket.buffer()
        buffer.copy_(fut.value()[0].div_(dist.get_world_size()))
        return buffer

    return dist.all_reduce(total, async_op=True).get_future().then(mean)


def _ddp_build(seed: int):
    model = mlp(4, 8, 2, seed=seed)
    ddp = nn.parallel.DistributedDataParallel(model)
    ddp.register_comm_hook(None, _exact_allreduce)
    base = torch.optim.SGD(ddp.parameters(), lr=0.1, momentum=0.9)
    wrappers = {
        "lawa": LAWAWrapper(base, k=K, period=PERIOD),
        "exp": create("exp", base, k=K, period=PERIOD, alpha=0.5),
        "ema": create("ema", base, decay=0.9),
        "swa": create("swa", base, period=PERIOD, swa_start=1),
    }
    return model, ddp, wrappers


def _ddp_train(ddp, wrappers, rank: int, start: int, stop: int) -> None:
    lawa = wrappers["lawa"]
    for step in range(start, stop):
        lawa.zero_grad()
        ddp(_batch(step, rank)).pow(2).mean().backward()
        lawa.step()  # steps the base optimizer once; the others observe that step
        for name, w in wrappers.items():
            if name != "lawa":
                w.observe_step()


def _ddp_record(model, wrappers) -> dict:
    out = {"training": [p.detach().clone() for p in model.parameters()]}
    for name, w in wrappers.items():
        windows = range(1, K + 1) if name == "lawa" else [None]
        for j in windows:
            with w.averaged(k=j) if j is not None else w.averaged():
                out[f"{name}/{j}"] = [p.detach().clone() for p in model.parameters()]
    return out


def _ddp_worker(rank: int, world: int, out: str) -> None:
    model, ddp, wrappers = _ddp_build(seed=0)
    _ddp_train(ddp, wrappers, rank, 0, CUT)
    ckpt = os.path.join(out, "ckpt.pt")
    if rank == 0:
        atomic_save({"model": model.state_dict(), "opt": {n: w.state_dict() for n, w in wrappers.items()}}, ckpt)
    dist.barrier()
    _ddp_train(ddp, wrappers, rank, CUT, STEPS)
    straight = _ddp_record(model, wrappers)
    # A fresh process state (other initial weights) resumed from rank 0's file on every rank.
    model, ddp, wrappers = _ddp_build(seed=99)
    state = safe_load(ckpt)
    model.load_state_dict(state["model"])
    for name, w in wrappers.items():
        w.load_state_dict(state["opt"][name])
    _ddp_train(ddp, wrappers, rank, CUT, STEPS)
    resumed = _ddp_record(model, wrappers)
    torch.save({"straight": straight, "resumed": resumed}, os.path.join(out, f"ddp_rank{rank}.pt"))


@pytest.mark.slow
@pytest.mark.parametrize("world", [2, 3])
def test_ddp_every_rank_holds_the_reference_average_and_resumes_from_rank0(runs, world):
    out = runs(world)
    results = [torch.load(out / f"ddp_rank{r}.pt", weights_only=True) for r in range(world)]
    first = results[0]["straight"]
    for res in results:
        for run in ("straight", "resumed"):
            assert res[run].keys() == first.keys()
            for key in first:  # every rank, and the resumed run, bit-identical to rank 0's straight run
                for a, b in zip(res[run][key], first[key]):
                    assert torch.equal(a, b), f"{run} {key}"
    for j, expected in enumerate(_reference(world), start=1):
        for got, want in zip(first[f"lawa/{j}"], expected):
            torch.testing.assert_close(got.double(), want, rtol=1e-5, atol=1e-6)
    assert not all(torch.equal(a, b) for a, b in zip(first["lawa/3"], first["training"]))


# ----------------------------------------------------------------------------- FSDP2
def _fsdp_build(seed: int):
    from torch.distributed.fsdp import fully_shard

    model = mlp(4, 8, 2, seed=seed)
    fully_shard(model[0])
    fully_shard(model)
    opt = LAWAWrapper(torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9), k=K, period=PERIOD)
    return model, opt


def _fsdp_train(model, opt, rank: int, start: int, stop: int) -> None:
    for step in range(start, stop):
        opt.zero_grad()
        model(_batch(step, rank)).pow(2).mean().backward()
        opt.step()


def _full(opt) -> list[torch.Tensor]:
    return [p.full_tensor().detach().clone() for g in opt.param_groups for p in g["params"]]


def _fsdp_worker(rank: int, world: int, out: str) -> None:
    model, opt = _fsdp_build(seed=0)
    _fsdp_train(model, opt, rank, 0, CUT)
    saved = copy.deepcopy(opt.state_dict())
    saved_model = copy.deepcopy(model.state_dict())
    _fsdp_train(model, opt, rank, CUT, STEPS)
    probe = torch.ones(3, 4)
    with torch.no_grad():
        raw_out = model(probe)  # an evaluation pass first: FSDP2 may keep the root unsharded after it
    training = _full(opt)
    result = {"training": training, "raw_out": raw_out, "local_empty": [], "avg": {}, "out": {}}
    try:
        opt.averaged()
    except ValueError as err:  # without model= the unsharded copies could be stale: refused
        assert "FSDP2" in str(err) and not opt.swapped_in
    else:
        raise AssertionError("averaged() without model= under FSDP2 did not raise")
    for j in range(1, K + 1):
        with opt.averaged(k=j, model=model):
            result["avg"][j] = _full(opt)
            with torch.no_grad():
                result["out"][j] = model(probe)  # leaves the root unsharded, holding the average
        for a, b in zip(_full(opt), training):
            assert torch.equal(a, b), "swap out did not restore the training shards"
        with torch.no_grad():
            assert torch.equal(model(probe), raw_out), "a forward after swap_out used the average"
    result["local_empty"] = [p.to_local().numel() == 0 for g in opt.param_groups for p in g["params"]]
    # Resume: this rank's state dicts into a fresh sharded model and wrapper.
    model2, opt2 = _fsdp_build(seed=99)
    model2.load_state_dict(saved_model)
    opt2.load_state_dict(saved)
    _fsdp_train(model2, opt2, rank, CUT, STEPS)
    result["resumed_training"] = _full(opt2)
    with opt2.averaged(model=model2):
        result["resumed_avg"] = _full(opt2)
    torch.save(result, os.path.join(out, f"fsdp_rank{rank}.pt"))


def _worker(rank: int, world: int, out: str) -> None:
    """One spawn per world size runs both (starting processes is most of the cost here)."""
    _ddp_worker(rank, world, out)
    dist.barrier()
    _fsdp_worker(rank, world, out)


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """world size -> the folder the ranks wrote their results into (spawned once per size)."""
    done: dict[int, str] = {}

    def get(world: int):
        if world not in done:
            out = tmp_path_factory.mktemp(f"world{world}")
            _run(_worker, world, str(out))
            done[world] = out
        return done[world]

    return get


@pytest.mark.slow
@pytest.mark.parametrize("world", [2, 3])
def test_fsdp2_sharded_average_equals_the_reference(runs, world):
    out = runs(world)
    results = [torch.load(out / f"fsdp_rank{r}.pt", weights_only=True) for r in range(world)]
    if world == 3:
        assert any(any(r["local_empty"]) for r in results), "no rank held an empty shard"
    expected = _reference(world)
    reference_model = mlp(4, 8, 2)
    for res in results:
        for j in range(1, K + 1):
            for got, want in zip(res["avg"][j], expected[j - 1]):
                torch.testing.assert_close(got.double(), want, rtol=1e-5, atol=1e-6)
            with torch.no_grad():  # the forward pass inside averaged() used the average
                for p, a in zip(reference_model.parameters(), res["avg"][j]):
                    p.copy_(a)
                torch.testing.assert_close(res["out"][j], reference_model(torch.ones(3, 4)), rtol=1e-5, atol=1e-6)
        assert not torch.allclose(res["out"][K], res["raw_out"])
        for a, b in zip(res["resumed_training"], res["training"]):
            assert torch.equal(a, b)
        for a, b in zip(res["resumed_avg"], res["avg"][K]):
            assert torch.equal(a, b)
