"""The core behind real frameworks (issue 10, points 1-3): Lightning's optimizer proxy, checkpoints
written while the average is swapped in, and the schedule-free train()/eval() protocol under
accelerate. Every test drives the real library; nothing imitates its calls."""

from __future__ import annotations

import warnings

import pytest
import torch
from conftest import require
from ring_formats import ring_tensors
from torch import nn

from lawa_optim import LAWAWrapper, create

pytestmark = pytest.mark.slow


# ----------------------------------------------------------------------------- Lightning's proxy
def _proxy(opt):
    require("lightning", "the Lightning proxy tests")
    from lightning.pytorch.core.optimizer import LightningOptimizer
    from lightning.pytorch.strategies import SingleDeviceStrategy

    strategy = SingleDeviceStrategy(device=torch.device("cpu"))
    return LightningOptimizer._to_lightning_optimizer(opt, strategy), strategy


@pytest.mark.parametrize("name", ["lawa", "exp", "ema", "swa", "base"])
def test_swap_through_lightnings_proxy_swaps_the_one_wrapper(name):
    model = nn.Linear(3, 2)
    opt = create(name, torch.optim.SGD(model.parameters(), lr=0.1), **({} if name in ("ema",) else {"period": 1}))
    for _ in range(3):
        opt.zero_grad()
        model(torch.randn(4, 3)).sum().backward()
        opt.step()
    train = [p.detach().clone() for p in model.parameters()]
    proxy, _strategy = _proxy(opt)
    assert isinstance(proxy, type(opt)) and proxy is not opt
    proxy.swap_in()
    assert opt.swapped_in and proxy.swapped_in
    assert opt.state_dict()["lawa"]["swapped_in"] and proxy.state_dict()["lawa"]["swapped_in"]
    with pytest.raises(RuntimeError, match="swapped in"):
        opt.step()
    proxy.swap_out()
    assert not opt.swapped_in
    for p, t in zip(model.parameters(), train):
        assert torch.equal(p, t)
    with proxy.averaged():  # the context manager through the proxy too
        assert opt.swapped_in
    assert not opt.swapped_in and proxy.num_steps == opt.num_steps == 3
    assert proxy.num_snapshots == opt.num_snapshots == (0 if name == "base" else 3)


def test_state_changed_through_the_proxy_lands_on_the_wrapper():
    model = nn.Linear(3, 2)
    opt = LAWAWrapper(torch.optim.SGD(model.parameters(), lr=0.1), k=2, nonfinite="skip")
    proxy, _strategy = _proxy(opt)
    proxy.snapshot()
    with torch.no_grad():
        model.weight[0, 0] = float("nan")
    with pytest.warns(RuntimeWarning):
        proxy.snapshot()
    assert opt.skipped_snapshots == 1 and opt.snapshots_taken == 1
    proxy.observe_step()
    assert opt.num_steps == 1
    sd = proxy.state_dict()
    assert sd["lawa"]["num_steps"] == 1 and "lawa" not in {k for k in sd if k != "lawa"}
    proxy.load_state_dict(sd)  # through the proxy, the wrapper's load (not Lightning's `optimizer` property)
    proxy.add_param_group({"params": [nn.Parameter(torch.zeros(2))]})
    assert len(opt.param_groups) == 2 and len(opt._params) == 3


# ----------------------------------------------------------------------------- Lightning, mid-swap checkpoints
def _lightning_run(tmp_path, epochs, ckpt_path=None, bn=True):
    require("lightning", "the Lightning resume test")
    import lightning.pytorch as pl
    from lightning.pytorch.callbacks import ModelCheckpoint

    pl.seed_everything(0, verbose=False)
    xs = torch.randn(32, 4, generator=torch.Generator().manual_seed(1))
    ys = xs.sum(1, keepdim=True)
    train = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(xs, ys), batch_size=8, shuffle=False)
    val = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(xs[:8], ys[:8]), batch_size=8)
    bn_batches = [xs[i : i + 8] for i in range(0, 16, 8)]

    class Module(pl.LightningModule):
        def __init__(self):
            super().__init__()
            torch.manual_seed(0)
            layers = [nn.Linear(4, 8)] + ([nn.BatchNorm1d(8)] if bn else []) + [nn.ReLU(), nn.Linear(8, 1)]
            self.net = nn.Sequential(*layers)
            self.saved_mid_swap = []

        def forward(self, x):
            return self.net(x)

        def training_step(self, batch, _):
            x, y = batch
            return nn.functional.mse_loss(self(x), y)

        def validation_step(self, batch, _):
            x, y = batch
            self.log("val_loss", nn.functional.mse_loss(self(x), y))

        def configure_optimizers(self):
            base = torch.optim.SGD(self.parameters(), lr=0.05, momentum=0.9)
            return LAWAWrapper(base, k=3, period=3)  # 4 batches an epoch: snapshots at steps 3, 6, 9, 12

        def on_train_start(self):
            self.optimizers().restore_training_buffers(self)

        def on_validation_start(self):
            self.optimizers().swap_in(model=self, bn_loader=bn_batches if bn else None)

        def on_validation_end(self):
            self.optimizers().swap_out()

    module = Module()
    checkpoint = ModelCheckpoint(dirpath=tmp_path, save_on_train_epoch_end=False, save_top_k=-1, monitor=None)
    trainer = pl.Trainer(
        max_epochs=epochs, accelerator="cpu", devices=1, logger=False, enable_progress_bar=False,
        default_root_dir=tmp_path,
        enable_model_summary=False, num_sanity_val_steps=0, callbacks=[checkpoint], deterministic=True,
    )
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=UserWarning)  # Lightning's advice on workers and logging
        trainer.fit(module, train, val, ckpt_path=ckpt_path)
    opt = trainer.strategy.optimizers[0]
    return module, opt


@pytest.mark.parametrize("epoch", [1, 2], ids=["mid_period", "right_after_a_snapshot"])
def test_lightning_resume_from_a_checkpoint_written_during_validation_is_bit_exact(tmp_path, epoch):
    """ModelCheckpoint(save_on_train_epoch_end=False) saves inside on_validation_end, between the
    module's swap_in and swap_out: the checkpoint's weights are the average. fit(ckpt_path=...)
    loads the model, then the optimizer, which puts the training weights (and, through
    restore_training_buffers, the training BatchNorm statistics) back."""
    full, opt_full = _lightning_run(tmp_path / "full", epochs=4)
    ckpt = sorted((tmp_path / "full").glob(f"epoch={epoch}-*.ckpt"))[0]
    saved = torch.load(ckpt, weights_only=False)
    assert saved["optimizer_states"][0]["lawa"]["swapped_in"]
    train_w = saved["optimizer_states"][0]["lawa"]["training_weights"]
    assert not torch.equal(saved["state_dict"]["net.0.weight"], train_w[0])  # the file holds the average
    with pytest.warns(RuntimeWarning, match="restore_training_buffers"):
        resumed, opt_resumed = _lightning_run(tmp_path / "resumed", epochs=4, ckpt_path=str(ckpt))
    assert opt_resumed.num_steps == opt_full.num_steps == 16
    for (name, a), b in zip(resumed.state_dict().items(), full.state_dict().values()):
        assert torch.equal(a, b), name
    n = len(opt_full._ring.params)  # the running sums, read before state_dict() rebuilds them
    sums_a, sums_b = ([o._ring.sum_of(i).clone() for i in range(n)] for o in (opt_resumed, opt_full))
    ring_a, ring_b = ring_tensors(opt_resumed.state_dict()), ring_tensors(opt_full.state_dict())
    for a, b in zip(ring_a + sums_a, ring_b + sums_b, strict=True):
        assert torch.equal(a, b)


# ----------------------------------------------------------------------------- schedule-free under accelerate
def _accelerate_run(tmp_path, evals: bool, save_at: int | None = None, load: str | None = None):
    require("schedulefree", "the schedule-free adapter")
    accelerate = require("accelerate", "the accelerate test")
    from lawa_optim import ScheduleFreeAdapter

    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 1))
    opt = ScheduleFreeAdapter(torch.optim.AdamW(model.parameters(), lr=0.02), warmup_steps=2)
    acc = accelerate.Accelerator(cpu=True)
    model, aopt = acc.prepare(model, opt)
    start = 0
    if load is not None:
        acc.load_state(load)
        start = save_at
    evaluated = []
    for i in range(start, 12):
        x = torch.randn(8, 4, generator=torch.Generator().manual_seed(i))
        aopt.train()
        model.train()
        aopt.zero_grad()
        acc.backward(model(x).pow(2).mean())
        aopt.step()
        if evals and i % 3 == 2:  # evaluate as HF's Trainer does: optimizer.eval(), then train() at the next step
            aopt.eval()
            aopt.eval()  # idempotent
            assert opt.swapped_in
            with torch.no_grad():
                evaluated.append([p.detach().clone() for p in model.parameters()])
            if save_at == i + 1 and load is None:
                acc.save_state(str(tmp_path / "state"))  # in eval mode: a mid-swap checkpoint
    aopt.train()
    aopt.train()
    assert not opt.swapped_in
    return [p.detach().clone() for p in model.parameters()], opt, evaluated


def test_schedulefree_eval_train_under_accelerate_keeps_training_weights_exact(tmp_path):
    plain, _, _ = _accelerate_run(tmp_path, evals=False)
    cycled, opt, evaluated = _accelerate_run(tmp_path, evals=True, save_at=6)
    for a, b in zip(cycled, plain):
        assert torch.equal(a, b)  # no drift after 4 eval/train cycles
    assert len(evaluated) == 4 and all(group["train_mode"] for group in opt.optimizer.param_groups)
    # eval() evaluates x, the package's average, which differs from the training weights y
    assert not all(torch.equal(a, b) for a, b in zip(evaluated[-1], plain))
    resumed, _, _ = _accelerate_run(tmp_path, evals=True, save_at=6, load=str(tmp_path / "state"))
    for a, b in zip(resumed, plain):
        assert torch.equal(a, b)  # the checkpoint written in eval mode loads and continues exactly


def test_schedulefree_eval_is_what_averaged_swaps_in():
    require("schedulefree", "the schedule-free adapter")
    model = nn.Linear(3, 2)
    opt = create("schedulefree", torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9))
    for _ in range(3):
        opt.zero_grad()
        model(torch.randn(4, 3)).sum().backward()
        opt.step()
    with opt.averaged():
        x = [p.detach().clone() for p in model.parameters()]
    opt.eval()
    assert all(torch.equal(p, q) for p, q in zip(model.parameters(), x))
    with pytest.raises(RuntimeError, match="swapped in"):
        opt.step()
    opt.train()
    assert not opt.swapped_in
