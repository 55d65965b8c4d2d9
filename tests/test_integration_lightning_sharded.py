"""LAWACallback under Lightning's ModelParallelStrategy (FSDP2 through configure_model + fully_shard).

2 CPU processes (gloo), ``ModelParallelStrategy(data_parallel_size=2, tensor_parallel_size=1)``:
each rank snapshots its own shards; the logged ``val_loss_lawa`` is the loss of the float64 mean of
the k latest end-of-epoch weights (gathered by an independent callback); the ring and the average
are saved shard by shard in the distributed checkpoint (as ``optimizer_1``); a fit resumed from a
checkpoint continues bit-exactly; ``trainer.validate(ckpt_path=...)`` evaluates the checkpoint's
average; an incomplete checkpoint folder is refused, naming the missing rank's file; FSDPStrategy
and DeepSpeed are refused naming ModelParallelStrategy.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from torch import nn

from tests.conftest import require
from tests.reference import reference_average
from tests.sharded_util import ROOT

K = 3

SCRIPT = """
import os, sys, torch, lightning.pytorch as pl
sys.path.insert(0, {root!r})
from torch import nn
from torch.utils.data import DataLoader, TensorDataset
from lightning.pytorch.strategies import ModelParallelStrategy
from lawa_optim.integrations.lightning import LAWACallback
torch.set_num_threads(1)
out, resume = sys.argv[1], (sys.argv[2] if len(sys.argv) > 2 and sys.argv[2] != "-" else None)
poison = sys.argv[3:] == ["poison"]


class Sharded(pl.LightningModule):
    def __init__(self):
        super().__init__()
        self.net = None

    def configure_model(self):  # the layers are built and sharded here, after the callback's setup
        from torch.distributed.fsdp import fully_shard

        if self.net is not None:
            return
        torch.manual_seed(0)
        self.net = nn.Sequential(nn.Linear(4, 16), nn.Tanh(), nn.Linear(16, 1))
        mesh = self.device_mesh["data_parallel"]
        for layer in self.net:
            if isinstance(layer, nn.Linear):
                fully_shard(layer, mesh=mesh)
        fully_shard(self, mesh=mesh)

    def forward(self, x):
        return self.net(x)

    def training_step(self, batch, batch_idx):
        x, y = batch
        return nn.functional.mse_loss(self(x), y)

    def validation_step(self, batch, batch_idx):
        x, y = batch
        self.log("val_loss", nn.functional.mse_loss(self(x), y), sync_dist=True)

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.05, momentum=0.9)


class History(pl.Callback):  # the full weights at the end of every epoch, gathered, in float64
    def __init__(self):
        self.weights = []

    def on_train_epoch_end(self, trainer, pl_module):
        self.weights.append([p.full_tensor().detach().double().clone() for p in pl_module.parameters()])


g = torch.Generator().manual_seed(1)
x = torch.randn(80, 4, generator=g)
y = x.sum(1, keepdim=True) + 0.1 * torch.randn(80, 1, generator=g)
train = DataLoader(TensorDataset(x[:48], y[:48]), batch_size=8)
val = DataLoader(TensorDataset(x[48:64], y[48:64]), batch_size=8)
quiet = dict(accelerator="cpu", devices=2, logger=False, enable_progress_bar=False, enable_model_summary=False,
             default_root_dir=out)


def strategy():
    return ModelParallelStrategy(data_parallel_size=2, tensor_parallel_size=1)


model, history, cb = Sharded(), History(), LAWACallback(k={k})


class KillOnSave:
    def __reduce__(self):  # runs while dcp.save writes this rank's file
        os.kill(os.getpid(), 9)


class Poison(pl.Callback):  # every rank killed while it writes the second save of epoch 2: last.ckpt
    saves = 0

    def on_save_checkpoint(self, trainer, pl_module, checkpoint):
        if trainer.current_epoch == 2:
            self.saves += 1
            if self.saves == 2:
                checkpoint["state_dict"][f"poison{{trainer.global_rank}}"] = KillOnSave()  # one per rank


ckpt = pl.callbacks.ModelCheckpoint(dirpath=os.path.join(out, "ckpt"), filename="{{epoch}}", save_top_k=-1,
                                    save_last=True)  # last.ckpt: a folder overwritten every epoch
trainer = pl.Trainer(strategy=strategy(), max_epochs=4, callbacks=[history, cb, ckpt, *([Poison()] if poison else [])],
                     **quiet)
trainer.fit(model, train, val, ckpt_path=resume)
rank = trainer.global_rank
wrapper = cb.observer.wrapper
local = [(tuple(wrapper.snapshots(i)[-1].shape), tuple(p.to_local().shape)) for i, p in enumerate(model.parameters())]
result = dict(
    final=[p.full_tensor() for p in model.parameters()],
    average={{n: t.full_tensor() for n, t in cb.observer.averaged_state(model).items()}},
    metrics={{k: v.item() for k, v in trainer.callback_metrics.items()}},
    history=history.weights, local=local, snapshots=wrapper.snapshots_taken, steps=cb.observer.num_steps,
)
if resume is None:  # a fresh process group of 2, a fresh model: the checkpoint's average validated
    again = pl.Trainer(strategy=strategy(), callbacks=[LAWACallback(k={k})], **quiet)
    result["validated"] = again.validate(Sharded(), val, ckpt_path=os.path.join(out, "ckpt", "epoch=3.ckpt"),
                                         verbose=False)[0]
torch.save(result, os.path.join(out, f"rank{{rank}}.pt"))
"""


@pytest.fixture(scope="module")
def pl():
    return require("lightning.pytorch", "the Lightning callback")


def _fit(tmp: Path, name: str, resume: Path | None = None) -> list[dict]:
    out = tmp / name
    out.mkdir()
    script = tmp / "model_parallel_run.py"
    script.write_text(textwrap.dedent(SCRIPT.format(root=ROOT, k=K)))
    cmd = [sys.executable, str(script), str(out), *([str(resume)] if resume else [])]
    env = {"OMP_NUM_THREADS": "1", "PYTHONPATH": ROOT, "PATH": "/usr/bin:/bin"}
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=env)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-6000:]
    return [torch.load(out / f"rank{r}.pt", weights_only=False) for r in (0, 1)]


@pytest.fixture(scope="module")
def runs(pl, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("model_parallel")
    full = _fit(tmp, "full")
    resumed = _fit(tmp, "resumed", resume=tmp / "full" / "ckpt" / "epoch=1.ckpt")
    return SimpleNamespace(tmp=tmp, full=full, resumed=resumed)


def _val_loss(weights: list[torch.Tensor]) -> float:
    g = torch.Generator().manual_seed(1)
    x = torch.randn(80, 4, generator=g)
    y = x.sum(1, keepdim=True) + 0.1 * torch.randn(80, 1, generator=g)
    net = nn.Sequential(nn.Linear(4, 16), nn.Tanh(), nn.Linear(16, 1))
    with torch.no_grad():
        for p, w in zip(net.parameters(), weights):
            p.copy_(w)
        return torch.stack([nn.functional.mse_loss(net(x[i : i + 8]), y[i : i + 8]) for i in (48, 56)]).mean().item()


@pytest.mark.slow
@pytest.mark.distributed
def test_snapshots_of_local_shards_and_the_logged_average(runs):
    for r in runs.full:
        assert r["snapshots"] == 4 and r["steps"] == 4 * 3  # 48 samples, 2 ranks x 8 per step
        assert all(ring == shard for ring, shard in r["local"])  # each rank keeps its own shards only
        assert r["local"][0] == ((8, 4), (8, 4))  # the first weight's 16 rows: 8 on each rank
        reference = reference_average(r["history"], K)
        for (name, avg), ref in zip(r["average"].items(), reference):
            torch.testing.assert_close(avg.double(), ref, rtol=0, atol=1e-6, msg=name)
        assert r["metrics"]["val_loss_lawa"] == pytest.approx(_val_loss(reference), abs=1e-6)
        assert r["metrics"]["val_loss"] == pytest.approx(_val_loss(r["final"]), abs=1e-6)
        assert abs(r["metrics"]["val_loss_lawa"] - r["metrics"]["val_loss"]) > 1e-3
    assert runs.full[0]["metrics"] == runs.full[1]["metrics"]


@pytest.mark.slow
@pytest.mark.distributed
def test_the_ring_and_the_average_are_in_the_distributed_checkpoint(runs):
    from lawa_optim import dcp_atomic

    folder = runs.tmp / "full" / "ckpt" / "epoch=3.ckpt"
    names = set(dcp_atomic.check(folder).state_dict_metadata)
    assert {f"optimizer_1.lawa.ring.state.net.0.weight.lawa_slot_{j}" for j in range(K)} <= names
    assert {"optimizer_1.lawa.average.net.0.weight", "optimizer_1.lawa.average.net.2.bias"} <= names
    assert {"state_dict.net.0.weight", "optimizer_0.state.net.0.weight.momentum_buffer"} <= names
    assert sorted(p.name for p in folder.iterdir()) == [".metadata", "__0_0.distcp", "__1_0.distcp", "meta.pt"]
    # last.ckpt was overwritten every epoch through a staging folder: nothing else is left behind
    assert sorted(p.name for p in folder.parent.iterdir()) == [f"epoch={e}.ckpt" for e in range(4)] + ["last.ckpt"]
    meta = torch.load(folder / "meta.pt", weights_only=False)  # rank 0's file: no tensors of the ring
    (state,) = [v for k, v in meta["callbacks"].items() if k.startswith("LAWACallback")]
    assert state["sharded"] is True and "observer" not in state and "lawa_state_dict" not in meta


@pytest.mark.slow
@pytest.mark.distributed
def test_resume_from_the_distributed_checkpoint_is_bit_exact(runs):
    for full, resumed in zip(runs.full, runs.resumed):
        assert resumed["snapshots"] == 4 and resumed["steps"] == 12  # the ring of epochs 0-1 came back
        assert all(torch.equal(a, b) for a, b in zip(full["final"], resumed["final"]))
        assert all(torch.equal(full["average"][n], resumed["average"][n]) for n in full["average"])
        assert resumed["metrics"] == full["metrics"]


@pytest.mark.slow
@pytest.mark.distributed
def test_validate_from_the_checkpoint_evaluates_its_average(runs):
    for r in runs.full:
        assert r["validated"]["val_loss_lawa"] == pytest.approx(r["metrics"]["val_loss_lawa"], abs=1e-7)
        assert r["validated"]["val_loss"] == pytest.approx(r["metrics"]["val_loss"], abs=1e-7)


@pytest.mark.slow
@pytest.mark.distributed
def test_a_checkpoint_missing_a_ranks_file_is_refused_before_lightning_loads_it(runs, tmp_path):
    import shutil

    broken = tmp_path / "epoch=1.ckpt"
    shutil.copytree(runs.tmp / "full" / "ckpt" / "epoch=1.ckpt", broken)
    (broken / "__1_0.distcp").unlink()
    script = runs.tmp / "model_parallel_run.py"
    out = tmp_path / "out"
    out.mkdir()
    env = {"OMP_NUM_THREADS": "1", "PYTHONPATH": ROOT, "PATH": "/usr/bin:/bin"}
    proc = subprocess.run([sys.executable, str(script), str(out), str(broken)], capture_output=True, text=True,
                          timeout=600, env=env)
    assert proc.returncode != 0
    assert r"__1_0.distcp (written by rank 1) is missing" in proc.stderr


@pytest.mark.parametrize("name", ["FSDPStrategy", "DeepSpeedStrategy"])
def test_fsdp1_and_deepspeed_are_refused_naming_model_parallel(pl, name):
    import lightning.pytorch.strategies as strategies

    from lawa_optim.integrations.lightning import LAWACallback

    # Lightning runs both on GPUs only, so no Trainer with them starts here: the guard is called directly
    strategy = getattr(strategies, name).__new__(getattr(strategies, name))
    module = nn.Linear(2, 1)
    trainer = SimpleNamespace(strategy=strategy, optimizers=[torch.optim.SGD(module.parameters(), lr=1)])
    with pytest.raises(ValueError, match=f"does not support {name}.*ModelParallelStrategy"):
        LAWACallback().on_fit_start(trainer, module)


@pytest.mark.slow
@pytest.mark.distributed
def test_ranks_killed_while_overwriting_last_ckpt_leave_the_previous_one_loadable(runs, tmp_path):
    """Both ranks SIGKILLed while dcp.save writes epoch 2's last.ckpt over epoch 1's: last.ckpt is still
    epoch 1's, complete, and a fit resumed from it ends exactly like the uninterrupted run."""
    from lawa_optim import dcp_atomic

    script = runs.tmp / "model_parallel_run.py"
    out = tmp_path / "killed"
    out.mkdir()
    env = {"OMP_NUM_THREADS": "1", "PYTHONPATH": ROOT, "PATH": "/usr/bin:/bin"}
    proc = subprocess.run([sys.executable, str(script), str(out), "-", "poison"], capture_output=True, text=True,
                          timeout=600, env=env)
    assert proc.returncode == -9, proc.stderr[-3000:]
    folder = out / "ckpt"
    last = folder / "last.ckpt"
    dcp_atomic.check(last)
    assert torch.load(last / "meta.pt", weights_only=False)["epoch"] == 1
    (staging,) = folder.glob("last.ckpt.tmp-*")  # the killed save's files, never published
    with pytest.raises(ValueError, match="has no .metadata"):
        dcp_atomic.check(staging)
    resumed = _fit(tmp_path, "after_kill", resume=last)
    for full, again in zip(runs.full, resumed):
        assert all(torch.equal(a, b) for a, b in zip(full["final"], again["final"]))
        assert all(torch.equal(full["average"][n], again["average"][n]) for n in full["average"])


@pytest.mark.slow
@pytest.mark.distributed
def test_lawa_average_of_the_epoch_folders_equals_the_callbacks_average(runs, tmp_path):
    """`lawa average` on the last k epoch folders (it reads state_dict, drops optimizer_0/1) gives the
    average the callback logged and saved."""
    import torch.distributed.checkpoint as dcp
    from click.testing import CliRunner

    from lawa_optim.cli import main

    folders = [str(runs.tmp / "full" / "ckpt" / f"epoch={e}.ckpt") for e in (1, 2, 3)]
    out = tmp_path / "average"
    result = CliRunner().invoke(main, ["average", *folders, "--out", str(out)])
    assert result.exit_code == 0, result.output
    expected = runs.full[0]["average"]
    state = {"state_dict": {name: torch.zeros_like(t) for name, t in expected.items()}}
    with pytest.warns(UserWarning, match="single process"):
        dcp.load(state, checkpoint_id=out)
    for name, t in expected.items():
        torch.testing.assert_close(state["state_dict"][name], t, rtol=0, atol=1e-6, msg=name)
