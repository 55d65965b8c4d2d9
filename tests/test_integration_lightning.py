"""LAWACallback with a real ``lightning.pytorch.Trainer`` on a tiny model (97 parameters).

Every logged average is compared with evaluating a float64 reference average (the mean of the
k latest end-of-epoch weights, recorded by an independent callback); resume is compared
bit-exactly with the uninterrupted run; the training run itself is bit-identical with and
without the callback (also with shuffling, dropout and BatchNorm recomputation).
"""

from __future__ import annotations

import copy
import csv
import importlib
import logging
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from tests.conftest import require
from tests.reference import reference_average

K, EPOCHS = 3, 5
QUIET = {"enable_progress_bar": False, "enable_model_summary": False, "accelerator": "cpu", "devices": 1}


@pytest.fixture(scope="module")
def pl():
    return require("lightning.pytorch", "the Lightning callback")


def _data(shuffle: bool = False):
    g = torch.Generator().manual_seed(1)
    x = torch.randn(80, 4, generator=g)
    y = x.sum(1, keepdim=True) + 0.1 * torch.randn(80, 1, generator=g)
    train = DataLoader(TensorDataset(x[:48], y[:48]), batch_size=8, shuffle=shuffle)  # 6 steps per epoch
    val = DataLoader(TensorDataset(x[48:64], y[48:64]), batch_size=8)
    test = DataLoader(TensorDataset(x[64:], y[64:]), batch_size=8)
    return train, val, test


def _module(pl, bn: bool = False, dropout: bool = False):
    class Tiny(pl.LightningModule):
        def __init__(self):
            super().__init__()
            torch.manual_seed(0)
            layers = [nn.Linear(4, 16)] + ([nn.BatchNorm1d(16)] if bn else []) + [nn.Tanh()]
            self.net = nn.Sequential(*layers, *([nn.Dropout(0.2)] if dropout else []), nn.Linear(16, 1))

        def forward(self, x):
            return self.net(x)

        def training_step(self, batch, batch_idx):
            x, y = batch
            return nn.functional.mse_loss(self(x), y)

        def validation_step(self, batch, batch_idx):
            x, y = batch
            self.log("val_loss", nn.functional.mse_loss(self(x), y))

        def test_step(self, batch, batch_idx):
            x, y = batch
            self.log("test_loss", nn.functional.mse_loss(self(x), y))

        def configure_optimizers(self):
            opt = torch.optim.SGD(self.parameters(), lr=0.05, momentum=0.9)
            return {"optimizer": opt, "lr_scheduler": torch.optim.lr_scheduler.StepLR(opt, 2, gamma=0.5)}

    return Tiny()


def _history_callback(pl):
    class History(pl.Callback):
        """The weights at the end of every training epoch (the LAWA snapshots), in float64."""

        def __init__(self):
            self.weights = []

        def on_train_epoch_end(self, trainer, pl_module):
            self.weights.append([p.detach().double().clone() for p in pl_module.parameters()])

    return History()


def _evaluate(model: nn.Module, loader, weights=None) -> float:
    """Lightning's epoch value of val_loss/test_loss: the mean of the (equal-size) batch losses."""
    model = copy.deepcopy(model).eval()
    if weights is not None:
        with torch.no_grad():
            for p, w in zip(model.parameters(), weights):
                p.copy_(w)
    with torch.no_grad():
        return torch.stack([nn.functional.mse_loss(model(x), y) for x, y in loader]).mean().item()


def _params(model: nn.Module) -> list[torch.Tensor]:
    return [p.detach().clone() for p in model.parameters()]


@pytest.fixture(scope="module")
def run(pl, tmp_path_factory):
    """One 5-epoch run with checkpoints written during validation, then trainer.test."""
    from lawa_optim.integrations.lightning import LAWACallback

    root = tmp_path_factory.mktemp("lightning")
    train, val, test = _data()
    model, history, cb = _module(pl), _history_callback(pl), LAWACallback(k=K)
    ckpt = pl.callbacks.ModelCheckpoint(
        dirpath=root / "ckpt", filename="{epoch}", save_top_k=-1, save_last=True, save_on_train_epoch_end=False
    )
    best = pl.callbacks.ModelCheckpoint(dirpath=root / "best", monitor="val_loss_lawa", filename="best")
    stop = pl.callbacks.EarlyStopping(monitor="val_loss_lawa", patience=EPOCHS)
    callbacks = [history, cb, ckpt, best, stop]
    trainer = pl.Trainer(max_epochs=EPOCHS, callbacks=callbacks, logger=pl.loggers.CSVLogger(root), **QUIET)
    torch.manual_seed(0)
    trainer.fit(model, train, val)
    final = _params(model)
    metrics = {k: v.item() for k, v in trainer.callback_metrics.items()}
    tested = trainer.test(model, test, verbose=False)[0]
    with open(Path(trainer.logger.log_dir) / "metrics.csv") as f:
        rows = [r for r in csv.DictReader(f) if r.get("val_loss")]
    return dict(
        root=root,
        model=model,
        final=final,
        history=history.weights,
        cb=cb,
        metrics=metrics,
        tested=tested,
        rows=rows,
        best=best,
        stop=stop,
    )


def test_average_is_logged_beside_raw_and_matches_float64_reference(run):
    train, val, _ = _data()
    reference = reference_average(run["history"], K)
    assert run["metrics"]["val_loss_lawa"] == pytest.approx(_evaluate(run["model"], val, reference), abs=1e-6)
    assert run["metrics"]["val_loss"] == pytest.approx(_evaluate(run["model"], val), abs=1e-6)
    assert abs(run["metrics"]["val_loss_lawa"] - run["metrics"]["val_loss"]) > 1e-3  # really another model
    # every validation of the run logged both, side by side, each the reference of its epoch
    assert [int(r["epoch"]) for r in run["rows"]] == list(range(EPOCHS))
    for epoch, row in enumerate(run["rows"]):
        ref = reference_average(run["history"][: epoch + 1], K)
        assert float(row["val_loss_lawa"]) == pytest.approx(_evaluate(run["model"], val, ref), abs=1e-6)
    # the model ends training holding its training weights, not the average
    assert all(torch.equal(p, w.float()) for p, w in zip(run["final"], run["history"][-1]))


def test_checkpoints_hold_training_weights_and_a_loadable_average(pl, run):
    ckpt = torch.load(run["root"] / "ckpt" / "last.ckpt", weights_only=True)
    names = [n for n, _ in run["model"].named_parameters()]
    assert all(torch.equal(ckpt["state_dict"][n], p) for n, p in zip(names, run["final"]))
    fresh = _module(pl)  # no callback, no lawa_optim: a plain state dict
    fresh.load_state_dict(ckpt["lawa_state_dict"])
    for p, ref in zip(fresh.parameters(), reference_average(run["history"], K)):
        torch.testing.assert_close(p.double(), ref, rtol=0, atol=1e-6)
    # a checkpoint written during epoch 1's validation: the training weights of that moment
    mid = torch.load(run["root"] / "ckpt" / "epoch=1.ckpt", weights_only=True)
    assert all(torch.equal(mid["state_dict"][n], w.float()) for n, w in zip(names, run["history"][1]))
    for n, ref in zip(names, reference_average(run["history"][:2], K)):
        torch.testing.assert_close(mid["lawa_state_dict"][n].double(), ref, rtol=0, atol=1e-6)


def test_model_checkpoint_and_early_stopping_monitor_the_average(run):
    lawa = [float(r["val_loss_lawa"]) for r in run["rows"]]
    assert run["best"].best_model_score.item() == pytest.approx(min(lawa), abs=1e-7)
    best_epoch = lawa.index(min(lawa))
    ckpt = torch.load(run["best"].best_model_path, weights_only=True)
    assert ckpt["epoch"] == best_epoch and "lawa_state_dict" in ckpt
    assert run["stop"].best_score.item() == pytest.approx(min(lawa), abs=1e-7)


def test_resume_from_a_checkpoint_written_during_validation_is_bit_exact(pl, run):
    from lawa_optim.integrations.lightning import LAWACallback

    train, val, _ = _data()
    model, cb = _module(pl), LAWACallback(k=K)
    trainer = pl.Trainer(max_epochs=EPOCHS, callbacks=[cb], logger=False, enable_checkpointing=False, **QUIET)
    torch.manual_seed(0)
    trainer.fit(model, train, val, ckpt_path=run["root"] / "ckpt" / "epoch=1.ckpt")
    assert all(torch.equal(a, b) for a, b in zip(_params(model), run["final"]))
    assert trainer.callback_metrics["val_loss_lawa"].item() == run["metrics"]["val_loss_lawa"]
    resumed, original = cb.observer.wrapper, run["cb"].observer.wrapper
    assert resumed.num_steps == original.num_steps == EPOCHS * 6
    for i in range(len(resumed.param_groups[0]["params"])):  # every slot of the ring, oldest first
        assert all(torch.equal(a, b) for a, b in zip(resumed.snapshots(i), original.snapshots(i)))
    assert cb.time_saved_summary == run["cb"].time_saved_summary  # the records of epochs 0-1 came along


def test_a_save_from_inside_the_averages_pass_still_holds_the_training_weights(pl, tmp_path):
    from lawa_optim.integrations.lightning import LAWACallback

    train, val, _ = _data()
    model, history = _module(pl), _history_callback(pl)
    saved = []

    def validation_step(batch, batch_idx):
        x, y = batch
        model.log("val_loss", nn.functional.mse_loss(model(x), y))
        if model.current_epoch == 1 and batch_idx == 0:  # the raw pass, then the average's pass
            saved.append(tmp_path / f"inside{len(saved)}.ckpt")
            model.trainer.save_checkpoint(saved[-1])

    model.validation_step = validation_step
    trainer = pl.Trainer(max_epochs=2, callbacks=[history, LAWACallback(k=2)], logger=False,
                         default_root_dir=tmp_path, **QUIET)
    trainer.fit(model, train, val)
    assert len(saved) == 2
    raw, inside = (torch.load(path, weights_only=True) for path in saved)
    names = [n for n, _ in model.named_parameters()]
    for name, w, ref in zip(names, history.weights[1], reference_average(history.weights, 2)):
        assert torch.equal(inside["state_dict"][name], w.float()) and torch.equal(raw["state_dict"][name], w.float())
        torch.testing.assert_close(inside["lawa_state_dict"][name].double(), ref, rtol=0, atol=1e-6)


def test_trainer_test_evaluates_the_average_also_from_a_checkpoint(pl, run):
    from lawa_optim.integrations.lightning import LAWACallback

    _, _, test = _data()
    reference = reference_average(run["history"], K)
    assert run["tested"]["test_loss_lawa"] == pytest.approx(_evaluate(run["model"], test, reference), abs=1e-6)
    assert run["tested"]["test_loss"] == pytest.approx(_evaluate(run["model"], test), abs=1e-6)
    # a fresh trainer, no fit: the checkpoint's lawa_state_dict is the average tested
    trainer = pl.Trainer(callbacks=[LAWACallback(k=K)], logger=False, enable_checkpointing=False, **QUIET)
    again = trainer.test(_module(pl), test, ckpt_path=run["root"] / "ckpt" / "last.ckpt", verbose=False)[0]
    assert again == pytest.approx(run["tested"], abs=1e-7)
    # trainer.validate from an earlier checkpoint: that checkpoint's average, not the fit's last one
    _, val, _ = _data()
    trainer = pl.Trainer(callbacks=[LAWACallback(k=K)], logger=False, enable_checkpointing=False, **QUIET)
    mid = trainer.validate(_module(pl), val, ckpt_path=run["root"] / "ckpt" / "epoch=1.ckpt", verbose=False)[0]
    assert mid["val_loss_lawa"] == pytest.approx(float(run["rows"][1]["val_loss_lawa"]), abs=1e-7)
    assert mid["val_loss"] == pytest.approx(float(run["rows"][1]["val_loss"]), abs=1e-7)


def test_time_saved_line_matches_the_logged_metrics(run):
    from lawa_optim.integrations.observer import TimeSaved

    expected = TimeSaved("val_loss")
    for row in run["rows"]:
        epoch = int(row["epoch"])  # validated after the epoch's 6 optimizer steps
        expected.record(6 * (epoch + 1), epoch, float(row["val_loss"]), float(row["val_loss_lawa"]))
    assert run["cb"].time_saved_summary == "LAWACallback (lawa): " + expected.summary()
    assert "the average first reached the raw weights' best val_loss" in run["cb"].time_saved_summary


def test_training_is_identical_with_and_without_the_callback(pl, caplog):
    """Shuffled data, dropout and BatchNorm recomputed over training batches: the callback draws
    no random numbers from the run and restores every parameter and buffer bit-exactly."""
    from lawa_optim.integrations.lightning import LAWACallback

    finals = []
    for callbacks in ([], [LAWACallback(k=2, bn_batches=2)]):
        train, val, _ = _data(shuffle=True)
        model = _module(pl, bn=True, dropout=True)
        trainer = pl.Trainer(max_epochs=3, callbacks=callbacks, logger=False, enable_checkpointing=False, **QUIET)
        torch.manual_seed(0)
        with caplog.at_level(logging.INFO):
            trainer.fit(model, train, val)
        finals.append({k: v.clone() for k, v in model.state_dict().items()})
        if callbacks:
            assert "val_loss_lawa" in trainer.callback_metrics
    assert finals[0].keys() == finals[1].keys()
    assert all(torch.equal(finals[0][k], finals[1][k]) for k in finals[0])
    assert sum("LAWACallback (lawa)" in r.getMessage() for r in caplog.records) == 1  # logged once, at the end


def test_batchnorm_is_recomputed_for_the_average(pl, tmp_path):
    from lawa_optim.integrations.lightning import LAWACallback

    train, val, _ = _data()
    model, history = _module(pl, bn=True), _history_callback(pl)
    cb = LAWACallback(k=2, bn_batches=3)
    trainer = pl.Trainer(max_epochs=3, callbacks=[history, cb], default_root_dir=tmp_path, logger=False, **QUIET)
    torch.manual_seed(0)
    trainer.fit(model, train, val)
    ckpt = torch.load(next((tmp_path / "checkpoints").glob("*.ckpt")), weights_only=True)
    reference = copy.deepcopy(model)
    with torch.no_grad():
        for p, w in zip(reference.parameters(), reference_average(history.weights, 2)):
            p.copy_(w)
    torch.optim.swa_utils.update_bn([x for x, _ in list(train)[:3]], reference)
    for name, buf in reference.named_buffers():
        torch.testing.assert_close(ckpt["lawa_state_dict"][name].double(), buf.double(), rtol=0, atol=1e-5)
    assert not torch.equal(ckpt["lawa_state_dict"]["net.1.running_mean"], ckpt["state_dict"]["net.1.running_mean"])
    assert trainer.callback_metrics["val_loss_lawa"].item() == pytest.approx(_evaluate(reference, val), abs=1e-6)


def test_every_n_steps_and_other_methods(pl):
    from lawa_optim.integrations.lightning import LAWACallback

    class Steps(pl.Callback):
        def __init__(self):
            self.weights = []

        def on_train_batch_end(self, trainer, pl_module, *args):
            self.weights.append([p.detach().double().clone() for p in pl_module.parameters()])

    train, val, _ = _data()
    model, steps = _module(pl), Steps()
    lawa, ema = LAWACallback(k=2, every_n_steps=4), LAWACallback("ema", decay=0.5)
    trainer = pl.Trainer(max_epochs=2, callbacks=[steps, lawa, ema], logger=False, enable_checkpointing=False, **QUIET)
    trainer.fit(model, train, val)
    ref = reference_average(steps.weights[3::4], 2)  # snapshots after steps 4, 8, 12
    assert trainer.callback_metrics["val_loss_lawa"].item() == pytest.approx(_evaluate(model, val, ref), abs=1e-6)
    avg = [w.clone() for w in steps.weights[0]]
    for w in steps.weights[1:]:
        avg = [a + 0.5 * (b - a) for a, b in zip(avg, w)]  # AveragedModel's EMA, decay 0.5
    assert trainer.callback_metrics["val_loss_ema"].item() == pytest.approx(_evaluate(model, val, avg), abs=1e-6)


def test_gradient_accumulation_counts_optimizer_steps(pl):
    from lawa_optim.integrations.lightning import LAWACallback

    class Steps(pl.Callback):
        def __init__(self):
            self.weights, self.seen = [], 0

        def on_train_batch_end(self, trainer, pl_module, *args):
            if trainer.global_step != self.seen:  # an optimizer step happened on this batch
                self.seen = trainer.global_step
                self.weights.append([p.detach().double().clone() for p in pl_module.parameters()])

    train, val, _ = _data()
    model, steps, cb = _module(pl), Steps(), LAWACallback(k=2, every_n_steps=2)
    trainer = pl.Trainer(
        max_epochs=2,
        accumulate_grad_batches=2,
        callbacks=[steps, cb],
        logger=False,
        enable_checkpointing=False,
        **QUIET,
    )
    trainer.fit(model, train, val)
    assert cb.observer.num_steps == trainer.global_step == len(steps.weights) == 6  # 12 batches, 6 steps
    assert cb.observer.wrapper.snapshots_taken == 3
    ref = reference_average(steps.weights[1::2], 2)  # snapshots after optimizer steps 2, 4, 6
    assert trainer.callback_metrics["val_loss_lawa"].item() == pytest.approx(_evaluate(model, val, ref), abs=1e-6)


@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        ({"method": "nope"}, ValueError, "Unknown method"),
        ({"method": "lookahead"}, ValueError, "changes the training trajectory"),
        ({"k": 0}, ValueError, "Invalid k"),
        ({"k": 2.5}, TypeError, "Invalid k"),
        ({"every_n_steps": 0}, ValueError, "Invalid every_n_steps"),
        ({"period": 5}, TypeError, "every_n_steps"),
        ({"mode": "lowest"}, ValueError, "Invalid mode"),
        ({"bn": "yes"}, ValueError, "Invalid bn"),
        ({"bn_batches": 0}, ValueError, "Invalid bn_batches"),
        ({"suffix": ""}, ValueError, "Invalid suffix"),
    ],
)
def test_bad_arguments_fail_at_construction(pl, kwargs, error, match):
    from lawa_optim.integrations.lightning import LAWACallback

    with pytest.raises(error, match=match):
        LAWACallback(**kwargs)


@pytest.mark.parametrize("case", ["wrapped", "frozen", "two_optimizers"])
def test_bad_setups_fail_before_the_first_step(pl, case):
    from lawa_optim import LAWAWrapper
    from lawa_optim.integrations.lightning import LAWACallback

    train, val, _ = _data()
    model = _module(pl)
    configure = type(model).configure_optimizers
    if case == "wrapped":
        model.configure_optimizers = lambda: LAWAWrapper(torch.optim.SGD(model.parameters(), lr=0.1))
        error, match = TypeError, "already a lawa_optim wrapper"
    elif case == "frozen":
        model.requires_grad_(False)
        error, match = ValueError, "no trainable parameters"
    else:
        model.automatic_optimization = False
        model.configure_optimizers = lambda: [configure(model)["optimizer"], torch.optim.SGD(model.parameters(), lr=1)]
        error, match = ValueError, "observes one optimizer, configure_optimizers returned 2"
    before = _params(model)
    trainer = pl.Trainer(max_epochs=1, callbacks=[LAWACallback()], logger=False, enable_checkpointing=False, **QUIET)
    with pytest.raises(error, match=match):
        trainer.fit(model, train, val)
    assert all(torch.equal(a, b) for a, b in zip(before, _params(model)))


def test_several_validation_loaders_each_get_their_average(pl, tmp_path):
    from lawa_optim.integrations.lightning import LAWACallback

    train, val, test = _data()
    model, history = _module(pl), _history_callback(pl)

    def validation_step(batch, batch_idx, dataloader_idx=0):
        x, y = batch
        model.log("val_loss", nn.functional.mse_loss(model(x), y))

    model.validation_step = validation_step
    trainer = pl.Trainer(max_epochs=2, callbacks=[history, LAWACallback(k=2)], logger=False,
                         default_root_dir=tmp_path, **QUIET)
    with pytest.warns(UserWarning, match="'val_loss' is not logged"):  # it is val_loss/dataloader_idx_0 here
        trainer.fit(model, train, [val, test])
    ref = reference_average(history.weights, 2)
    for i, loader in enumerate([val, test]):
        logged = trainer.callback_metrics[f"val_loss_lawa/dataloader_idx_{i}"].item()
        assert logged == pytest.approx(_evaluate(model, loader, ref), abs=1e-6)


def test_torchmetrics_objects_are_refused_with_the_fix(pl):
    torchmetrics = require("torchmetrics", "Lightning's metrics")
    from lawa_optim.integrations.lightning import LAWACallback

    train, val, _ = _data()
    model = _module(pl)
    model.mse = torchmetrics.MeanSquaredError()

    def validation_step(batch, batch_idx):
        x, y = batch
        model.mse(model(x), y)
        model.log("val_mse", model.mse)

    model.validation_step = validation_step
    trainer = pl.Trainer(max_epochs=1, callbacks=[LAWACallback()], logger=False, enable_checkpointing=False, **QUIET)
    with pytest.raises(TypeError, match="'val_mse' as a torchmetrics object.*log its value instead"):
        trainer.fit(model, train, val)


def test_missing_lightning_names_the_extra(pl, monkeypatch):
    monkeypatch.setitem(sys.modules, "lightning", None)  # `import lightning` now raises ImportError
    monkeypatch.setitem(sys.modules, "lightning.pytorch", None)
    monkeypatch.delitem(sys.modules, "lawa_optim.integrations.lightning", raising=False)
    with pytest.raises(ImportError, match=r"pip install lawa-optim\[lightning\]"):
        importlib.import_module("lawa_optim.integrations.lightning")


def test_the_lightning_extra_is_declared_and_installed(pl):
    from packaging.requirements import Requirement

    tomllib = require("tomllib", "Python >= 3.11 reads pyproject.toml")
    project = tomllib.loads((Path(__file__).resolve().parents[1] / "pyproject.toml").read_text())["project"]
    extras = project["optional-dependencies"]
    (req,) = [Requirement(r) for r in extras["lightning"]]
    assert req.name == "lightning" and pl.__version__ in req.specifier
    assert any("lightning" in r for r in extras["dev"] if r.startswith("lawa-optim["))  # make test installs it


def test_a_second_fit_continues_the_ring(pl):
    from lawa_optim.integrations.lightning import LAWACallback

    train, val, _ = _data()
    model, history, cb = _module(pl), _history_callback(pl), LAWACallback(k=K)
    for epochs in (1, 3):  # a new Trainer counts its epochs from 0 again
        trainer = pl.Trainer(
            max_epochs=epochs, callbacks=[history, cb], logger=False, enable_checkpointing=False, **QUIET
        )
        trainer.fit(model, train, val)
    assert cb.observer.wrapper.snapshots_taken == len(history.weights) == 4
    ref = reference_average(history.weights, K)
    assert trainer.callback_metrics["val_loss_lawa"].item() == pytest.approx(_evaluate(model, val, ref), abs=1e-6)


def test_checkpoint_without_the_callback_resumes_with_a_fresh_ring(pl, tmp_path):
    from lawa_optim.integrations.lightning import LAWACallback

    train, val, _ = _data()
    trainer = pl.Trainer(max_epochs=2, default_root_dir=tmp_path, logger=False, **QUIET)
    trainer.fit(_module(pl), train, val)
    path = next((tmp_path / "checkpoints").glob("*.ckpt"))
    cb = LAWACallback(k=K)
    trainer = pl.Trainer(max_epochs=3, callbacks=[cb], logger=False, enable_checkpointing=False, **QUIET)
    with pytest.warns(UserWarning, match="the average starts afresh"):
        trainer.fit(_module(pl), train, val, ckpt_path=path)
    assert cb.observer.wrapper.snapshots_taken == 1  # epoch 2 only: nothing of the earlier run mixed in


def test_checkpoint_with_the_callback_resumes_without_it(pl, run):
    train, val, _ = _data()
    model = _module(pl)
    trainer = pl.Trainer(max_epochs=EPOCHS, logger=False, enable_checkpointing=False, **QUIET)
    with pytest.warns(UserWarning, match="Please add the following callbacks"):  # Lightning's own warning
        trainer.fit(model, train, val, ckpt_path=run["root"] / "ckpt" / "epoch=1.ckpt")
    assert all(torch.equal(a, b) for a, b in zip(_params(model), run["final"]))  # the state was only ignored


DDP_SCRIPT = """
import os, sys, torch, lightning.pytorch as pl
sys.path.insert(0, {root!r})
from tests.test_integration_lightning import _data, _module, _history_callback, QUIET
from lawa_optim.integrations.lightning import LAWACallback
torch.set_num_threads(1)
train, val, _ = _data()
rank = int(os.environ.get("LOCAL_RANK", 0))  # set by Lightning's launcher for the process it starts
# in order (Lightning's own DistributedSampler would shuffle): 2 ranks x 4 = the single process's batch of 8
sampler = torch.utils.data.distributed.DistributedSampler(train.dataset, 2, rank, shuffle=False)
train = torch.utils.data.DataLoader(train.dataset, batch_size=4, sampler=sampler)
model, history, cb = _module(pl), _history_callback(pl), LAWACallback(k=2)
kw = dict(QUIET, devices=2, strategy="ddp", use_distributed_sampler=False)
trainer = pl.Trainer(max_epochs=3, callbacks=[history, cb], default_root_dir={out!r}, logger=False, **kw)
trainer.fit(model, train, val)
torch.save({{"average": cb.observer.averaged_state(model), "history": history.weights,
            }}, {out!r} + f"/rank{{trainer.global_rank}}.pt")
"""


@pytest.mark.slow
@pytest.mark.distributed
def test_ddp_two_processes(pl, tmp_path):
    """strategy="ddp", 2 CPU processes (gloo): every rank holds the same average, equal to the
    single-process reference (the two ranks' 4-sample batches are one 8-sample batch), and the
    checkpoint rank 0 writes holds it."""
    root = str(Path(__file__).resolve().parents[1])
    script = tmp_path / "ddp_run.py"
    script.write_text(textwrap.dedent(DDP_SCRIPT.format(root=root, out=str(tmp_path))))
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=root)
    proc = subprocess.run([sys.executable, str(script)], env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    r0, r1 = (torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in (0, 1))
    assert all(torch.equal(r0["average"][k], r1["average"][k]) for k in r0["average"])
    train, val, _ = _data()
    single, history = _module(pl), _history_callback(pl)
    trainer = pl.Trainer(max_epochs=3, callbacks=[history], logger=False, enable_checkpointing=False, **QUIET)
    trainer.fit(single, train, val)
    names = [n for n, _ in single.named_parameters()]
    for name, ref in zip(names, reference_average(history.weights, 2)):
        torch.testing.assert_close(r0["average"][name].double(), ref, rtol=0, atol=1e-5)
    ckpt = torch.load(next((tmp_path / "checkpoints").glob("*.ckpt")), weights_only=True)
    assert all(torch.equal(ckpt["lawa_state_dict"][k], r0["average"][k]) for k in r0["average"])
