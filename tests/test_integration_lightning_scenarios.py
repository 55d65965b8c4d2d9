"""LAWACallback in the scenarios of Lightning's own ``WeightAveraging`` tests, with a real Trainer.

An iterable dataset (no ``len()``) with a BatchNorm model, a model whose layers are built in
``configure_model``, and choosing when to snapshot (:meth:`LAWACallback.should_snapshot`, the
counterpart of ``WeightAveraging.should_update``; ``start_step``/``start_epoch``). Every logged
average is compared with a float64 reference built from the weights an independent callback
recorded.
"""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, IterableDataset

from tests.conftest import require
from tests.reference import reference_average
from tests.test_integration_lightning import QUIET, _data, _evaluate, _history_callback, _module


@pytest.fixture(scope="module")
def pl():
    return require("lightning.pytorch", "the Lightning callback")


class _Stream(IterableDataset):
    """A fixed sequence of (x, y) pairs behind an iterable dataset without ``__len__``."""

    def __init__(self, x: torch.Tensor, y: torch.Tensor) -> None:
        self.x, self.y = x, y

    def __iter__(self):
        return iter(zip(self.x, self.y))


def _steps_callback(pl):
    class Steps(pl.Callback):
        """The weights after every optimizer step, in float64, with the epoch they ended in."""

        def __init__(self):
            self.weights, self.epochs = [], []

        def on_train_batch_end(self, trainer, pl_module, *args):
            self.weights.append([p.detach().double().clone() for p in pl_module.parameters()])
            self.epochs.append(trainer.current_epoch)

    return Steps()


def test_iterable_dataset_with_batchnorm(pl, tmp_path):
    """No len() on the training loader: BatchNorm statistics are recomputed over its first batches
    (the TypeError of `loader or ...` is gone), and the logged average equals the reference."""
    from lawa_optim.integrations.lightning import LAWACallback

    train, val, _ = _data()
    x, y = train.dataset.tensors
    stream = DataLoader(_Stream(x, y), batch_size=8)
    with pytest.raises(TypeError):
        len(stream)  # the case of the issue: a loader whose truth value asks for len()
    model, history = _module(pl, bn=True), _history_callback(pl)
    cb = LAWACallback(k=2, bn_batches=3)
    trainer = pl.Trainer(max_epochs=3, callbacks=[history, cb], logger=False, enable_checkpointing=False, **QUIET)
    torch.manual_seed(0)
    trainer.fit(model, stream, val)
    assert len(history.weights) == 3 and cb.observer.wrapper.snapshots_taken == 3
    reference = copy.deepcopy(model)
    with torch.no_grad():
        for p, w in zip(reference.parameters(), reference_average(history.weights, 2)):
            p.copy_(w)
    torch.optim.swa_utils.update_bn([b for b, _ in list(stream)[:3]], reference)
    assert trainer.callback_metrics["val_loss_lawa"].item() == pytest.approx(_evaluate(reference, val), abs=1e-6)
    assert trainer.callback_metrics["val_loss"].item() == pytest.approx(_evaluate(model, val), abs=1e-6)


def test_lightnings_own_random_iterable_dataset_and_boring_model(pl, tmp_path):
    """The scenario of Lightning's test_ema(iterable_dataset=True, batch_norm=True), unchanged data."""
    from lightning.pytorch.demos.boring_classes import BoringModel, RandomIterableDataset

    from lawa_optim.integrations.lightning import LAWACallback

    class WithBatchNorm(BoringModel):
        def __init__(self):
            super().__init__()
            self.layer = nn.Sequential(nn.Linear(32, 32), nn.BatchNorm1d(32), nn.ReLU(), nn.Linear(32, 2))

        def validation_step(self, batch, batch_idx):
            self.log("val_loss", self.step(batch))

    cb = LAWACallback(k=2, bn_batches=2)
    trainer = pl.Trainer(max_epochs=2, callbacks=[cb], logger=False, enable_checkpointing=False, **QUIET)
    loader = DataLoader(RandomIterableDataset(32, 32), batch_size=4)
    trainer.fit(WithBatchNorm(), loader, DataLoader(RandomIterableDataset(32, 8), batch_size=4))
    assert cb.observer.wrapper.snapshots_taken == 2
    assert torch.isfinite(trainer.callback_metrics["val_loss_lawa"])


def _configure_model_module(pl):
    class Built(pl.LightningModule):
        """Layers built in configure_model, as Lightning asks sharded models to do."""

        def __init__(self):
            super().__init__()
            self.net = None

        def configure_model(self):
            if self.net is None:
                torch.manual_seed(0)
                self.net = nn.Sequential(nn.Linear(4, 16), nn.Tanh(), nn.Linear(16, 1))

        def forward(self, x):
            return self.net(x)

        def training_step(self, batch, batch_idx):
            x, y = batch
            return nn.functional.mse_loss(self(x), y)

        def validation_step(self, batch, batch_idx):
            x, y = batch
            self.log("val_loss", nn.functional.mse_loss(self(x), y))

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.05, momentum=0.9)

    return Built()


def test_layers_built_in_configure_model_are_accepted(pl):
    from lawa_optim.integrations.lightning import LAWACallback

    train, val, _ = _data()
    model, history, cb = _configure_model_module(pl), _history_callback(pl), LAWACallback(k=2)
    assert not list(model.parameters())  # nothing to average until Lightning calls configure_model
    trainer = pl.Trainer(max_epochs=3, callbacks=[history, cb], logger=False, enable_checkpointing=False, **QUIET)
    trainer.fit(model, train, val)
    ref = reference_average(history.weights, 2)
    assert trainer.callback_metrics["val_loss_lawa"].item() == pytest.approx(_evaluate(model, val, ref), abs=1e-6)


def test_a_configure_model_that_builds_nothing_is_still_refused_before_training(pl):
    from lawa_optim.integrations.lightning import LAWACallback

    train, val, _ = _data()
    model = _configure_model_module(pl)
    model.configure_model = lambda: setattr(model, "net", nn.Sequential(nn.Linear(4, 1).requires_grad_(False)))
    trainer = pl.Trainer(max_epochs=1, callbacks=[LAWACallback()], logger=False, enable_checkpointing=False, **QUIET)
    with pytest.raises(ValueError, match="no trainable parameters"):
        trainer.fit(model, train, val)
    assert trainer.global_step == 0


def _run(pl, cb, epochs: int = 4):
    train, val, _ = _data()
    model, steps = _module(pl), _steps_callback(pl)
    trainer = pl.Trainer(max_epochs=epochs, callbacks=[steps, cb], logger=False, enable_checkpointing=False, **QUIET)
    trainer.fit(model, train, val)
    return model, steps, trainer, val


def _assert_average_of(model, trainer, val, snapshots, k):
    ref = reference_average(snapshots, k)
    assert trainer.callback_metrics["val_loss_lawa"].item() == pytest.approx(_evaluate(model, val, ref), abs=1e-6)


def test_should_snapshot_override_chooses_the_epochs(pl):
    from lawa_optim.integrations.lightning import LAWACallback

    calls = []

    class OddEpochs(LAWACallback):
        def should_snapshot(self, step_idx=None, epoch_idx=None):
            calls.append((step_idx, epoch_idx))
            return epoch_idx is not None and epoch_idx % 2 == 1

    cb = OddEpochs(k=3)
    model, steps, trainer, val = _run(pl, cb)
    # asked after each of the 24 optimizer steps (indices 0..23) and at each of the 4 epoch ends, once
    assert [s for s, e in calls if s is not None] == list(range(24))
    assert [e for s, e in calls if e is not None] == [0, 1, 2, 3]
    assert all((s is None) != (e is None) for s, e in calls)
    assert cb.observer.wrapper.snapshots_taken == 2
    _assert_average_of(model, trainer, val, [steps.weights[11], steps.weights[23]], 3)  # ends of epochs 1 and 3


def test_should_snapshot_override_chooses_the_steps(pl):
    from lawa_optim.integrations.lightning import LAWACallback

    class FromStep10Every5(LAWACallback):  # Lightning's docstring example, shifted to LAWA's terms
        def should_snapshot(self, step_idx=None, epoch_idx=None):
            return step_idx is not None and step_idx >= 10 and step_idx % 5 == 0

    cb = FromStep10Every5(k=2)
    model, steps, trainer, val = _run(pl, cb)
    assert cb.observer.wrapper.snapshots_taken == 3  # steps 10, 15, 20
    _assert_average_of(model, trainer, val, [steps.weights[15], steps.weights[20]], 2)


def test_a_step_and_its_epoch_end_both_chosen_give_one_snapshot(pl):
    from lawa_optim.integrations.lightning import LAWACallback

    class Both(LAWACallback):
        def should_snapshot(self, step_idx=None, epoch_idx=None):
            return True

    cb = Both(k=30)
    model, steps, trainer, val = _run(pl, cb, epochs=2)
    assert cb.observer.wrapper.snapshots_taken == 12
    _assert_average_of(model, trainer, val, steps.weights, 30)


@pytest.mark.parametrize(
    "kwargs, snapshot_steps",
    [
        ({"start_epoch": 2}, [17, 23]),  # the ends of epochs 2 and 3 (6 steps per epoch)
        ({"start_step": 7}, [11, 17, 23]),  # epoch 0 ends at step index 5 < 7
        ({"every_n_steps": 4, "start_step": 9}, [11, 15, 19, 23]),  # after steps 12, 16, 20, 24
        ({"every_n_steps": 4, "start_epoch": 3}, [19, 23]),  # steps of epoch 3 only
    ],
)
def test_start_step_and_start_epoch(pl, kwargs, snapshot_steps):
    from lawa_optim.integrations.lightning import LAWACallback

    cb = LAWACallback(k=2, **kwargs)
    model, steps, trainer, val = _run(pl, cb)
    assert cb.observer.wrapper.snapshots_taken == len(snapshot_steps)
    _assert_average_of(model, trainer, val, [steps.weights[i] for i in snapshot_steps], 2)


def test_resume_keeps_the_schedule(pl, tmp_path):
    """A run resumed from the end of epoch 1 continues the override's schedule bit-exactly."""
    from lawa_optim.integrations.lightning import LAWACallback

    class EveryThirdStep(LAWACallback):
        def should_snapshot(self, step_idx=None, epoch_idx=None):
            return step_idx is not None and step_idx % 3 == 2

    train, val, _ = _data()
    ckpt = pl.callbacks.ModelCheckpoint(dirpath=tmp_path, filename="{epoch}", save_top_k=-1)
    full = EveryThirdStep(k=3)
    trainer = pl.Trainer(max_epochs=4, callbacks=[full, ckpt], logger=False, **QUIET)
    model = _module(pl)
    trainer.fit(model, train, val)
    resumed = EveryThirdStep(k=3)
    trainer2 = pl.Trainer(max_epochs=4, callbacks=[resumed], logger=False, enable_checkpointing=False, **QUIET)
    model2 = _module(pl)
    trainer2.fit(model2, train, val, ckpt_path=tmp_path / "epoch=1.ckpt")
    assert resumed.observer.wrapper.snapshots_taken == full.observer.wrapper.snapshots_taken == 8
    a, b = full.observer.averaged_state(model), resumed.observer.averaged_state(model2)
    assert all(torch.equal(a[n], b[n]) for n in a)


@pytest.mark.parametrize("name", ["start_step", "start_epoch"])
@pytest.mark.parametrize("value", [-1, 1.5, True])
def test_bad_start_arguments_fail_at_construction(pl, name, value):
    from lawa_optim.integrations.lightning import LAWACallback

    with pytest.raises(ValueError, match=f"Invalid {name}: {value!r}"):
        LAWACallback(**{name: value})


DDP_CONFIGURE_MODEL = """
import os, sys, torch, lightning.pytorch as pl
sys.path.insert(0, {root!r})
from tests.test_integration_lightning import _data, _history_callback, QUIET
from tests.test_integration_lightning_scenarios import _configure_model_module
from lawa_optim.integrations.lightning import LAWACallback
torch.set_num_threads(1)
train, val, _ = _data()
rank = int(os.environ.get("LOCAL_RANK", 0))
sampler = torch.utils.data.distributed.DistributedSampler(train.dataset, 2, rank, shuffle=False)
train = torch.utils.data.DataLoader(train.dataset, batch_size=4, sampler=sampler)
model, history, cb = _configure_model_module(pl), _history_callback(pl), LAWACallback(k=2)
kw = dict(QUIET, devices=2, strategy="ddp", use_distributed_sampler=False)
trainer = pl.Trainer(max_epochs=3, callbacks=[history, cb], default_root_dir={out!r}, logger=False,
                     enable_checkpointing=False, **kw)
trainer.fit(model, train, val)
torch.save({{"average": cb.observer.averaged_state(model)}}, {out!r} + f"/rank{{trainer.global_rank}}.pt")
"""


@pytest.mark.slow
@pytest.mark.distributed
def test_configure_model_under_ddp(pl, tmp_path):
    """strategy="ddp", 2 CPU processes: the layers built in configure_model are accepted, and every
    rank's average equals the single-process reference (2 x 4 samples per step = one batch of 8)."""
    import os
    import subprocess
    import sys
    import textwrap
    from pathlib import Path

    root = str(Path(__file__).resolve().parents[1])
    script = tmp_path / "ddp_configure_model.py"
    script.write_text(textwrap.dedent(DDP_CONFIGURE_MODEL.format(root=root, out=str(tmp_path))))
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=root)
    proc = subprocess.run([sys.executable, str(script)], env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    r0, r1 = (torch.load(tmp_path / f"rank{r}.pt", weights_only=True)["average"] for r in (0, 1))
    train, val, _ = _data()
    single, history = _configure_model_module(pl), _history_callback(pl)
    trainer = pl.Trainer(max_epochs=3, callbacks=[history], logger=False, enable_checkpointing=False, **QUIET)
    trainer.fit(single, train, val)
    names = [n for n, _ in single.named_parameters()]
    for name, ref in zip(names, reference_average(history.weights, 2)):
        assert torch.equal(r0[name], r1[name])
        torch.testing.assert_close(r0[name].double(), ref, rtol=0, atol=1e-5)
