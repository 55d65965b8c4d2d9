"""LAWAWrapper with torch's LR schedulers, GradScaler and DDP (issue 2, API and point 5)."""

from __future__ import annotations

import os
import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from helpers import mlp
from torch import nn

from lawa_optim import LAWAWrapper

SCHEDULERS = {
    "cosine": lambda o: torch.optim.lr_scheduler.CosineAnnealingLR(o, T_max=20),
    "onecycle": lambda o: torch.optim.lr_scheduler.OneCycleLR(o, max_lr=0.3, total_steps=40),
    "sequential": lambda o: torch.optim.lr_scheduler.SequentialLR(
        o,
        [
            torch.optim.lr_scheduler.LinearLR(o, start_factor=0.1, total_iters=5),
            torch.optim.lr_scheduler.ExponentialLR(o, gamma=0.9),
        ],
        milestones=[5],
    ),
    "plateau": lambda o: torch.optim.lr_scheduler.ReduceLROnPlateau(o, patience=0, factor=0.5),
}


@pytest.mark.parametrize("name", sorted(SCHEDULERS))
def test_lr_schedulers_drive_the_wrapper_exactly_like_the_bare_optimizer(name, recwarn):
    runs = []
    for wrap in (False, True):
        model = mlp(4, 8, 1, act=nn.ReLU)
        opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
        if wrap:
            opt = LAWAWrapper(opt, k=3, period=4)
        sched = SCHEDULERS[name](opt)
        lrs = []
        for i in range(20):
            torch.manual_seed(i)
            opt.zero_grad()
            loss = model(torch.randn(5, 4)).pow(2).mean()
            loss.backward()
            opt.step()
            sched.step(loss.item()) if name == "plateau" else sched.step()
            lrs.append(opt.param_groups[0]["lr"])
        runs.append((lrs, [p.detach().clone() for p in model.parameters()], opt))
    assert runs[0][0] == runs[1][0]
    assert len(set(runs[0][0])) > 2  # the schedule really changed the LR
    for a, b in zip(runs[0][1], runs[1][1]):
        assert torch.equal(a, b)
    assert runs[1][2].num_snapshots == 3
    assert not [w for w in recwarn if "lr_scheduler.step()" in str(w.message)]  # no order warning


def test_gradscaler_skipped_steps_do_not_count():
    model = mlp(4, 8, 1, act=nn.ReLU)
    opt = LAWAWrapper(torch.optim.SGD(model.parameters(), lr=0.1), k=2, period=2)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**4)
    taken = 0
    for i in range(6):
        opt.zero_grad()
        loss = model(torch.randn(5, 4)).pow(2).mean()
        scaler.scale(loss).backward()
        if i in (1, 4):  # an overflow: GradScaler must skip the optimizer step
            model[0].weight.grad[0, 0] = float("inf")
        before = [p.detach().clone() for p in model.parameters()]
        scaler.unscale_(opt)
        scaler.step(opt)
        scaler.update()
        changed = any(not torch.equal(p, b) for p, b in zip(model.parameters(), before))
        taken += changed
        assert changed == (i not in (1, 4))
    assert opt.num_steps == taken == 4
    assert opt.snapshots_taken == 2


def test_zero_grad_set_to_none_forwarded():
    model = mlp(4, 8, 1, act=nn.ReLU)
    opt = LAWAWrapper(torch.optim.SGD(model.parameters(), lr=0.1))
    model(torch.randn(2, 4)).sum().backward()
    opt.zero_grad(set_to_none=False)
    assert all(p.grad is not None and not p.grad.any() for p in model.parameters())
    opt.zero_grad()
    assert all(p.grad is None for p in model.parameters())


def test_is_an_optimizer_sharing_state():
    model = mlp(4, 8, 1, act=nn.ReLU)
    base = torch.optim.Adam(model.parameters(), lr=1e-3)
    opt = LAWAWrapper(base)
    assert isinstance(opt, torch.optim.Optimizer)
    assert opt.param_groups is base.param_groups and opt.state is base.state and opt.defaults is base.defaults
    model(torch.randn(2, 4)).sum().backward()
    opt.step()
    assert len(opt.state) == len(list(model.parameters()))


# ------------------------------------------------------------------------------------------- DDP
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _ddp_worker(rank: int, world: int, port: int, out: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    torch.set_num_threads(1)
    model = mlp(4, 8, 1, act=nn.ReLU)
    ddp = nn.parallel.DistributedDataParallel(model)
    opt = LAWAWrapper(torch.optim.SGD(ddp.parameters(), lr=0.1, momentum=0.9), k=3, period=2)
    for i in range(10):
        g = torch.Generator().manual_seed(1000 * i + rank)  # each rank its own shard
        opt.zero_grad()
        ddp(torch.randn(4, 4, generator=g)).pow(2).mean().backward()
        opt.step()
    with opt.averaged():
        torch.save([p.detach().clone() for p in model.parameters()], f"{out}.{rank}")
    dist.destroy_process_group()


@pytest.mark.distributed
def test_ddp_two_ranks_hold_the_single_process_average(tmp_path):
    out = str(tmp_path / "avg")
    mp.spawn(_ddp_worker, args=(2, _free_port(), out), nprocs=2, join=True)
    ranks = [torch.load(f"{out}.{r}", weights_only=True) for r in range(2)]
    # single-process reference: the mean gradient of both shards, same steps
    model = mlp(4, 8, 1, act=nn.ReLU)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    history = []
    for i in range(10):
        opt.zero_grad()
        xs = [torch.randn(4, 4, generator=torch.Generator().manual_seed(1000 * i + r)) for r in range(2)]
        (sum(model(x).pow(2).mean() for x in xs) / 2).backward()
        opt.step()
        if (i + 1) % 2 == 0:
            history.append([p.detach().double().clone() for p in model.parameters()])
    expected = [torch.stack([h[j] for h in history[-3:]]).mean(0) for j in range(len(history[0]))]
    for a, b, e in zip(ranks[0], ranks[1], expected):
        assert torch.equal(a, b)
        torch.testing.assert_close(a.double(), e, rtol=1e-5, atol=1e-6)


def test_step_hooks_run_once_per_step():
    from torch.optim.optimizer import register_optimizer_step_post_hook

    model = mlp(4, 8, 1, act=nn.ReLU)
    opt = LAWAWrapper(torch.optim.SGD(model.parameters(), lr=0.1), k=2, period=1)
    seen: list[str] = []
    handles = [
        register_optimizer_step_post_hook(lambda o, a, k: seen.append(f"global:{type(o).__name__}")),
        opt.register_step_pre_hook(lambda o, a, k: seen.append("pre")),
        opt.register_step_post_hook(lambda o, a, k: seen.append(f"post:{o.num_steps}")),
    ]
    try:
        model(torch.randn(2, 4)).sum().backward()
        opt.step()
    finally:
        for h in handles:
            h.remove()
    assert seen == ["pre", "global:SGD", "post:1"]
