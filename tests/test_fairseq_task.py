"""The plugin's task hooks driven in-process with stand-ins for fairseq's trainer (fast; no fairseq-train).

The end-to-end behaviour under a real ``fairseq-train`` is in ``test_fairseq_plugin.py``; here each
hook's contract is checked directly: when snapshots are taken (epoch end, every N updates, never on
a step AMP skipped), the swap around the LAWA validation, the logged metrics, best tracking, the
checkpoint round trip, and the refusals.
"""

from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
import torch
from conftest import require

pytestmark = pytest.mark.fairseq


def make_task(**lawa):
    require("fairseq", "the fairseq plugin")
    from fairseq.data import Dictionary
    from omegaconf import OmegaConf

    from lawa_optim.integrations.fairseq.task import MaskedLMLAWAConfig, MaskedLMLAWATask

    cfg = OmegaConf.structured(MaskedLMLAWAConfig(data="unused", **lawa))
    task = MaskedLMLAWATask(cfg, Dictionary())
    model = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.Linear(3, 2))
    task._lawa_model = model
    return task, model


class Itr:
    """The train EpochBatchIterator as the hook sees it."""

    def __init__(self) -> None:
        self.epoch, self.last = 1, False

    def end_of_epoch(self) -> bool:
        return self.last


class Opt:
    """fairseq's optimizer: step() moves the weights; with a scale, an AMPOptimizer."""

    def __init__(self, model, scale=None) -> None:
        self.model, self.scale, self.skip = model, scale, False
        if scale is not None:
            self._grad_scaler = SimpleNamespace(get_scale=lambda: self.scale)

    def step(self) -> None:
        if self.skip:
            self.scale /= 2  # GradScaler backs off and the step does not happen
            return
        with torch.no_grad():
            for p in self.model.parameters():
                p.add_(torch.randn_like(p))


def train(task, model, itr, opt, epochs, updates_per_epoch, start=0):
    n = start
    for epoch in range(1, epochs + 1):
        itr.epoch = epoch
        for u in range(updates_per_epoch):
            itr.last = u == updates_per_epoch - 1
            task.optimizer_step(opt, model, n)
            n += 1
    return n


def weights(model):
    return [p.detach().clone() for p in model.parameters()]


def test_epoch_snapshots_average_the_latest_k():
    task, model = make_task(lawa_k=3)
    itr, opt = Itr(), Opt(model)
    task._lawa_train_itr = itr
    ends = []
    for epoch in range(1, 6):
        itr.epoch = epoch
        for u in range(4):
            itr.last = u == 3
            task.optimizer_step(opt, model, (epoch - 1) * 4 + u)
        ends.append(weights(model))
    assert task._lawa_labels == [3, 4, 5] and task.lawa_wrapper().snapshots_taken == 5
    training = weights(model)
    with task.lawa_wrapper().averaged():
        for p, *snaps in zip(model.parameters(), *ends[-3:]):
            ref = torch.stack([s.double() for s in snaps]).mean(0)
            torch.testing.assert_close(p.detach().double(), ref, rtol=1e-6, atol=1e-7)
    assert all(torch.equal(a, b) for a, b in zip(weights(model), training))


def test_period_updates_and_amp_skips():
    task, model = make_task(lawa_k=4, lawa_period_updates=3)
    opt = Opt(model, scale=2.0**16)
    for n in range(7):
        task.optimizer_step(opt, model, n)
    assert task._lawa_labels == [3, 6]
    opt.skip = True
    task.optimizer_step(opt, model, 7)  # AMP skipped the step: fairseq retries update 8 ...
    opt.skip = False
    task.optimizer_step(opt, model, 7)
    task.optimizer_step(opt, model, 8)  # ... update 9 completes
    assert task._lawa_labels == [3, 6, 9] and task._lawa_num_updates == 9


def test_no_train_iterator_no_epoch_snapshot():
    task, model = make_task(lawa_k=2)
    task.optimizer_step(Opt(model), model, 0)
    assert task.lawa_wrapper().num_snapshots == 0


class Criterion:
    """Loss = sum of the model's output; the logging output as fairseq's criteria report it."""

    def __call__(self, model, sample):
        loss = model(sample).sum()
        return loss, 2, {"loss": loss.detach(), "sample_size": 2, "ntokens": 5, "nsentences": 1}

    @staticmethod
    def reduce_metrics(logs) -> None:
        from fairseq import metrics

        total = sum(log["loss"] for log in logs).item()
        metrics.log_scalar("loss", total / sum(log["sample_size"] for log in logs) / math.log(2), 1)


def test_valid_step_logs_lawa_beside_raw_and_restores_weights():
    from fairseq import metrics

    task, model = make_task(lawa_k=2)
    itr, opt = Itr(), Opt(model)
    task._lawa_train_itr = itr
    sample = torch.randn(1, 4)
    _, _, log = task.valid_step(sample, model, Criterion())
    assert "lawa_loss" not in log  # no snapshot yet: nothing to average
    train(task, model, itr, opt, epochs=3, updates_per_epoch=2)
    training = weights(model)
    task.begin_valid_epoch(3, model)
    _, _, log = task.valid_step(sample, model, Criterion())
    assert all(torch.equal(a, b) for a, b in zip(weights(model), training))
    with task.lawa_wrapper().averaged():
        expected = model(sample).sum().item()
    assert math.isclose(log["lawa_loss"].item(), expected, rel_tol=1e-6) and log["lawa_sample_size"] == 2
    assert log["loss"].item() == model(sample).sum().item()
    with metrics.aggregate(new_root=True) as agg:
        task.reduce_metrics([log, log], Criterion())
    stats = agg.get_smoothed_values()
    assert math.isclose(stats["lawa_loss"], 2 * expected / 4 / math.log(2), rel_tol=1e-3, abs_tol=1e-3)
    assert math.isclose(stats["lawa_ppl"], 2 ** stats["lawa_loss"], rel_tol=1e-2, abs_tol=6e-3)  # rounded
    task.post_validate(model, stats, agg)
    assert stats["lawa_best_loss"] == round(stats["lawa_loss"], 3) and task._lawa_best_unsaved


def test_post_validate_tracks_the_best_on_the_first_subset_only():
    task, model = make_task()
    for values in ((5.0, 1.0), (4.0, 9.0), (6.0, 0.5)):
        task.begin_valid_epoch(1, model)
        for i, value in enumerate(values):
            stats = {"lawa_loss": value}
            task.post_validate(model, stats, None)
            assert ("lawa_best_loss" in stats) == (i == 0)
    assert task._lawa_best == 4.0 and task._lawa_val_loss == 6.0


def test_checkpoint_dict_round_trip_resumes_the_ring_exactly():
    task, model = make_task(lawa_k=3)
    itr, opt = Itr(), Opt(model)
    task._lawa_train_itr = itr
    n = train(task, model, itr, opt, epochs=4, updates_per_epoch=2)
    task._lawa_write_checkpoints = lambda wrapper: None  # no fairseq root config here
    state = task.get_checkpoint_dict()["MaskedLMLAWATask"]
    fresh, fresh_model = make_task(lawa_k=3)
    fresh_model.load_state_dict(model.state_dict())
    fresh.set_checkpoint_dict(state)
    assert fresh._lawa_labels == [2, 3, 4] and fresh._lawa_num_updates == n
    for i in range(len(list(model.parameters()))):
        assert all(torch.equal(a, b) for a, b in zip(task.lawa_wrapper().snapshots(i),
                                                     fresh.lawa_wrapper().snapshots(i)))
    with task.lawa_wrapper().averaged():
        avg = weights(model)
    with fresh.lawa_wrapper().averaged():
        assert all(torch.equal(a, b) for a, b in zip(weights(fresh_model), avg))


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_ring_round_trips_in_its_dtype(dtype):
    """Under --fp16/--bf16 the model's weights are half precision; the saved ring must stay so."""
    task, model = make_task(lawa_k=2)
    model.to(dtype)
    itr, opt = Itr(), Opt(model)
    task._lawa_train_itr = itr
    train(task, model, itr, opt, epochs=3, updates_per_epoch=1)
    task._lawa_write_checkpoints = lambda wrapper: None
    state = task.get_checkpoint_dict()["MaskedLMLAWATask"]
    assert {t.dtype for e in state["wrapper"]["state"].values() for n, t in e.items() if n.startswith("lawa_slot_")} \
        == {dtype}
    fresh, fresh_model = make_task(lawa_k=2)
    fresh_model.to(dtype).load_state_dict(model.state_dict())
    fresh.set_checkpoint_dict(state)
    with task.lawa_wrapper().averaged():
        avg = weights(model)
    with fresh.lawa_wrapper().averaged():
        assert all(torch.equal(a, b) for a, b in zip(weights(fresh_model), avg))


def test_resume_refuses_another_k_and_format():
    task, model = make_task(lawa_k=3)
    task.lawa_wrapper().snapshot()
    state = task.get_checkpoint_dict()["MaskedLMLAWATask"]
    other, _ = make_task(lawa_k=4)
    with pytest.raises(ValueError, match=r"--lawa-k 4.*--lawa-k 3"):
        other.set_checkpoint_dict(state)
    with pytest.raises(ValueError, match="format 99"):
        other.set_checkpoint_dict({**state, "format": 99})
    assert other._lawa_pending is None and other._lawa_labels == []


@pytest.mark.parametrize(
    "bad, match",
    [({"lawa_k": 0}, "--lawa-k 0"), ({"lawa_period_updates": -1}, "--lawa-period-updates -1"),
     ({"lawa_alpha": 0.0}, "--lawa-alpha"), ({"lawa_alpha": 1.5}, "alpha"),
     ({"lawa_offload": "disk"}, "--lawa-offload-dir.*offload_dir"),
     ({"lawa_offload": "cpu", "lawa_offload_dir": "/tmp"}, "offload_dir")],
)
def test_bad_flags_are_named(bad, match):
    with pytest.raises(ValueError, match=match):
        make_task(**bad)


def test_disk_offload_keeps_the_ring_in_files(tmp_path):
    task, model = make_task(lawa_offload="disk", lawa_offload_dir=str(tmp_path))
    itr, opt = Itr(), Opt(model)
    task._lawa_train_itr = itr
    train(task, model, itr, opt, epochs=2, updates_per_epoch=2)
    wrapper = task.lawa_wrapper()
    assert wrapper.offload == "disk" and type(wrapper._ring).__name__ == "DiskSnapshotRing"
    assert wrapper.num_snapshots == 2


def test_importing_the_plugin_leaves_torchs_safe_globals_alone():
    require("fairseq", "the fairseq plugin")
    import subprocess
    import sys

    code = (
        "import torch; before = list(torch.serialization.get_safe_globals());"
        "import lawa_optim.integrations.fairseq.task as t;"
        "assert list(torch.serialization.get_safe_globals()) == before;"
        "import argparse\n"
        "with t.fairseq_checkpoints_loadable(): assert argparse.Namespace in torch.serialization.get_safe_globals()\n"
        "assert argparse.Namespace not in torch.serialization.get_safe_globals()"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
