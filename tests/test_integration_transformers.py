"""LAWATrainerCallback driving a real transformers Trainer (issue 10).

A 1-layer BERT with a tiny hidden size, built from a config (nothing downloaded), learns whether
the first token of a random sequence is in the lower half of the vocabulary. Every test runs the
real ``Trainer`` (accelerate underneath) on the CPU for a handful of optimizer steps.
"""

from __future__ import annotations

import logging
import os
import shutil

import pytest
import torch
from conftest import require
from reference import reference_average

transformers = require("transformers", "the Hugging Face Trainer callback")
from lawa_optim.integrations.transformers import AVERAGE_DIR, STATE_NAME, LAWATrainerCallback  # noqa: E402

VOCAB, SEQ, N_TRAIN, N_EVAL, BATCH = 40, 8, 32, 16, 8  # 4 optimizer steps per epoch, 2 eval batches


class _Tokens(torch.utils.data.Dataset):
    def __init__(self, n: int, seed: int) -> None:
        g = torch.Generator().manual_seed(seed)
        self.ids = torch.randint(1, VOCAB, (n, SEQ), generator=g)
        self.labels = (self.ids[:, 0] < VOCAB // 2).long()

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {"input_ids": self.ids[i], "labels": self.labels[i]}


TRAIN, EVAL = _Tokens(N_TRAIN, 1), _Tokens(N_EVAL, 2)


def _model():
    torch.manual_seed(0)
    config = transformers.BertConfig(
        vocab_size=VOCAB, hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32,
        max_position_embeddings=SEQ, num_labels=2,
    )
    return transformers.BertForSequenceClassification(config)


def _args(out, **kw):
    base = dict(
        output_dir=str(out), per_device_train_batch_size=BATCH, per_device_eval_batch_size=BATCH,
        learning_rate=3e-3, num_train_epochs=4, eval_strategy="epoch", save_strategy="epoch", logging_steps=1,
        report_to=[], use_cpu=True, disable_tqdm=True, seed=0, dataloader_num_workers=0,
    )
    base.update(kw)
    return transformers.TrainingArguments(**base)


class _Recorder(transformers.TrainerCallback):
    """Copies the trainable weights at the test's own idea of a snapshot point, for the reference."""

    def __init__(self, model, every_steps=None):
        self.model, self.every, self.snaps = model, every_steps, []

    def _take(self, state):
        params = [p.detach().clone() for p in self.model.parameters() if p.requires_grad]
        self.snaps.append((state.global_step, params))

    def on_epoch_end(self, args, state, control, **kw):
        if self.every is None:
            self._take(state)

    def on_step_end(self, args, state, control, **kw):
        if self.every is not None and state.global_step % self.every == 0:
            self._take(state)


def _trainer(out, callback_kw=None, recorder_every="epoch", **args_kw):
    model = _model()
    trainer = transformers.Trainer(model=model, args=_args(out, **args_kw), train_dataset=TRAIN, eval_dataset=EVAL)
    callback = None
    if callback_kw is not None:
        callback = LAWATrainerCallback(trainer, **callback_kw)
        trainer.add_callback(callback)
    recorder = _Recorder(model, None if recorder_every == "epoch" else recorder_every)
    trainer.add_callback(recorder)
    return trainer, callback, recorder


@torch.no_grad()
def _reference_eval_loss(params_list):
    """The eval loss of the given weights, computed by hand on a fresh model (no Trainer)."""
    model = _model()
    for p, value in zip([p for p in model.parameters() if p.requires_grad], params_list):
        p.copy_(value.to(p.dtype))
    model.eval()
    losses = []
    for start in range(0, N_EVAL, BATCH):
        batch = [EVAL[i] for i in range(start, start + BATCH)]
        ids = torch.stack([b["input_ids"] for b in batch])
        labels = torch.stack([b["labels"] for b in batch])
        losses.append(model(input_ids=ids, labels=labels).loss.double())
    return torch.stack(losses).mean().item()


def _evals(trainer, key):
    return {h["step"]: h[key] for h in trainer.state.log_history if key in h}


def _reference_at(snaps, step, k):
    history = [params for s, params in snaps if s <= step]
    return reference_average(history, min(k, len(history)))


# ------------------------------------------------------------------------------ the average is right
def test_eval_lawa_loss_is_the_float64_reference_average_with_gradient_accumulation(tmp_path, one_thread):
    """period counts optimizer steps (2 batches each); eval_lawa_loss = the loss of the float64 mean of
    the k latest recorded snapshots, at every evaluation; metric_for_best_model can pick the average."""
    k, period = 3, 2
    trainer, callback, recorder = _trainer(
        tmp_path, {"k": k, "period": period}, recorder_every=period, gradient_accumulation_steps=2,
        num_train_epochs=3, eval_strategy="steps", eval_steps=2, save_strategy="no",
        metric_for_best_model="eval_lawa_loss",
    )
    trainer.train()
    steps_per_epoch = N_TRAIN // BATCH // 2
    assert trainer.state.global_step == 3 * steps_per_epoch == callback.observer.num_steps
    assert callback.snapshot_steps == [2, 4, 6] == [s for s, _ in recorder.snaps]
    lawa, raw = _evals(trainer, "eval_lawa_loss"), _evals(trainer, "eval_loss")
    assert sorted(lawa) == sorted(raw) == [2, 4, 6]
    for step, value in lawa.items():
        expected = _reference_eval_loss(_reference_at(recorder.snaps, step, k))
        assert value == pytest.approx(expected, rel=1e-5, abs=1e-6), step
    assert lawa[6] != raw[6]  # three snapshots: the average is not the raw weights
    assert trainer.state.best_metric == min(lawa.values())
    # trainer.evaluate() after training reports the average too, without changing the weights
    before = [p.detach().clone() for p in trainer.model.parameters()]
    metrics = trainer.evaluate()
    assert metrics["eval_lawa_loss"] == pytest.approx(lawa[6], rel=1e-6)
    assert all(torch.equal(a, b) for a, b in zip(before, trainer.model.parameters()))


def _accuracy(pred):
    return {"accuracy": float((pred.predictions.argmax(-1) == pred.label_ids).mean())}


def test_compute_metrics_of_the_average_and_a_greater_is_better_metric(tmp_path, one_thread):
    """Every eval_<metric> gets its eval_lawa_<metric>, from the same compute_metrics on the average's
    predictions; metric_for_best_model="lawa_accuracy" selects by the average, and time saved uses max."""
    model = _model()
    args = _args(tmp_path, num_train_epochs=2, metric_for_best_model="lawa_accuracy")
    trainer = transformers.Trainer(
        model=model, args=args, train_dataset=TRAIN, eval_dataset=EVAL, compute_metrics=_accuracy
    )
    callback = LAWATrainerCallback(trainer, k=2)
    trainer.add_callback(callback)
    trainer.train()
    acc = _evals(trainer, "eval_lawa_accuracy")
    assert sorted(acc) == [4, 8] and sorted(_evals(trainer, "eval_lawa_loss")) == [4, 8]
    assert trainer.state.best_metric == max(acc.values())
    assert callback.time_saved.metric == "eval_accuracy" and callback.time_saved.mode == "max"
    # the average saved in checkpoint-8/lawa predicts exactly what was scored
    average = transformers.BertForSequenceClassification.from_pretrained(str(tmp_path / "checkpoint-8" / AVERAGE_DIR))
    average.eval()
    with torch.no_grad():
        logits = average(input_ids=EVAL.ids).logits
    assert float((logits.argmax(-1) == EVAL.labels).double().mean()) == acc[8]


def test_early_stopping_added_first_monitors_the_average(tmp_path, one_thread):
    """EarlyStoppingCallback given to the Trainer before the LAWA callback still sees eval_lawa_loss:
    with patience 1 and a threshold no change can beat, it stops after the second evaluation."""
    stop = transformers.EarlyStoppingCallback(early_stopping_patience=1, early_stopping_threshold=10.0)
    args = _args(tmp_path, metric_for_best_model="eval_lawa_loss", save_strategy="no")
    trainer = transformers.Trainer(
        model=_model(), args=args, train_dataset=TRAIN, eval_dataset=EVAL, callbacks=[stop]
    )
    trainer.add_callback(LAWATrainerCallback(trainer, k=2))
    trainer.train()
    assert trainer.state.global_step == 8  # of 16: stopped by the average's metric
    assert stop.early_stopping_patience_counter == 1


class _BNNet(torch.nn.Module):
    """A plain nn.Module with BatchNorm (the Trainer accepts any module returning a loss)."""

    def __init__(self):
        super().__init__()
        self.net = torch.nn.Sequential(torch.nn.Linear(6, 12), torch.nn.BatchNorm1d(12), torch.nn.ReLU(),
                                       torch.nn.Linear(12, 2))

    def forward(self, x, labels=None):
        logits = self.net(x)
        loss = None if labels is None else torch.nn.functional.cross_entropy(logits, labels)
        return {"loss": loss, "logits": logits}


class _Points(torch.utils.data.Dataset):
    def __init__(self, n, seed):
        g = torch.Generator().manual_seed(seed)
        self.x = torch.randn(n, 6, generator=g) * 3 + 1
        self.labels = (self.x[:, 0] > 1).long()

    def __len__(self):
        return len(self.x)

    def __getitem__(self, i):
        return {"x": self.x[i], "labels": self.labels[i]}


def test_batchnorm_recomputed_for_the_average_on_a_plain_module(tmp_path, one_thread):
    """bn_loader: BatchNorm statistics recomputed for the average (torch's update_bn as the reference);
    a plain nn.Module's average is saved as model.safetensors; without bn_loader, a warning."""
    from safetensors.torch import load_file

    train, val = _Points(64, 1), _Points(16, 2)
    bn_batches = [{"x": train.x[i : i + 16]} for i in range(0, 64, 16)]
    torch.manual_seed(0)
    model = _BNNet()
    args = _args(tmp_path, num_train_epochs=3, learning_rate=0.05, save_strategy="epoch")
    trainer = transformers.Trainer(model=model, args=args, train_dataset=train, eval_dataset=val)
    callback = LAWATrainerCallback(trainer, k=2, bn_loader=bn_batches)
    trainer.add_callback(callback)
    recorder = _Recorder(model)
    trainer.add_callback(recorder)
    trainer.train()

    reference = _BNNet()
    with torch.no_grad():
        for p, value in zip(reference.parameters(), _reference_at(recorder.snaps, 24, 2)):
            p.copy_(value.float())
    torch.optim.swa_utils.update_bn([b["x"] for b in bn_batches], reference)
    reference.eval()
    with torch.no_grad():
        losses = [reference(val.x[i : i + BATCH], val.labels[i : i + BATCH])["loss"] for i in range(0, 16, BATCH)]
    assert _evals(trainer, "eval_lawa_loss")[24] == pytest.approx(torch.stack(losses).mean().item(), rel=1e-5)
    saved = load_file(str(tmp_path / "checkpoint-24" / AVERAGE_DIR / "model.safetensors"))
    torch.testing.assert_close(saved["net.1.running_mean"], reference.net[1].running_mean, rtol=1e-5, atol=1e-6)
    assert not torch.equal(saved["net.1.running_mean"], model.net[1].running_mean)  # the training statistics
    # the same run without bn_loader warns, and ends with the same weights and running statistics:
    # the training buffers came back bit-exactly after every recompute
    torch.manual_seed(0)
    trainer2 = transformers.Trainer(model=_BNNet(), args=args, train_dataset=train, eval_dataset=val)
    trainer2.add_callback(LAWATrainerCallback(trainer2, k=2))
    with pytest.warns(UserWarning, match="BatchNorm"):
        trainer2.train()
    for a, b in zip(model.state_dict().values(), trainer2.model.state_dict().values()):
        assert torch.equal(a, b)


@pytest.mark.parametrize(("method", "kw"), [("exp", {"k": 3}), ("ema", {"decay": 0.5}), ("swa", {})])
def test_other_methods_of_the_zoo_evaluate_and_save_the_same_average(tmp_path, method, kw, one_thread):
    trainer, callback, _ = _trainer(tmp_path, {"method": method, **kw}, num_train_epochs=2, save_strategy="no")
    trainer.train()
    lawa, raw = _evals(trainer, "eval_lawa_loss"), _evals(trainer, "eval_loss")
    assert sorted(lawa) == [4, 8] and lawa[8] != raw[8]
    saved = transformers.BertForSequenceClassification.from_pretrained(str(tmp_path / AVERAGE_DIR))
    expected = _reference_eval_loss([p.detach() for p in saved.parameters() if p.requires_grad])
    assert lawa[8] == pytest.approx(expected, rel=1e-6)


# ------------------------------------------------------------------------------ checkpoints and resume
@pytest.fixture(scope="module")
def full_run(tmp_path_factory):
    """4 epochs, one snapshot per epoch, k=2, a checkpoint and an evaluation every epoch."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    out = tmp_path_factory.mktemp("full")
    trainer, callback, recorder = _trainer(out, {"k": 2})
    root = logging.getLogger("lawa_optim")
    records: list[logging.LogRecord] = []
    handler = logging.Handler()
    handler.emit = records.append
    root.addHandler(handler)
    old_level = root.level
    root.setLevel(logging.INFO)
    try:
        trainer.train()
    finally:
        root.removeHandler(handler)
        root.setLevel(old_level)
        torch.set_num_threads(threads)
    return out, trainer, callback, recorder, [r.getMessage() for r in records]


def _resume_copy(full_out, tmp_path, step=8):
    """A fresh output_dir holding only checkpoint-<step> of the full run."""
    shutil.copytree(os.path.join(full_out, f"checkpoint-{step}"), tmp_path / f"checkpoint-{step}")
    return tmp_path


def test_each_checkpoint_holds_the_average_loadable_with_from_pretrained(full_run):
    out, trainer, callback, recorder, _ = full_run
    for step in (4, 8, 12, 16):
        folder = os.path.join(out, f"checkpoint-{step}", AVERAGE_DIR)
        assert os.path.isfile(os.path.join(folder, "config.json"))
        assert os.path.isfile(os.path.join(folder, "model.safetensors"))
        loaded = transformers.BertForSequenceClassification.from_pretrained(folder)
        expected = _reference_at(recorder.snaps, step, 2)
        got = [p for p in loaded.parameters() if p.requires_grad]
        assert len(got) == len(expected)
        for g, e in zip(got, expected):
            torch.testing.assert_close(g.double(), e, rtol=1e-6, atol=1e-7)
        assert os.path.isfile(os.path.join(out, f"checkpoint-{step}", STATE_NAME))
    final = transformers.BertForSequenceClassification.from_pretrained(os.path.join(out, AVERAGE_DIR))
    for g, e in zip([p for p in final.parameters() if p.requires_grad], _reference_at(recorder.snaps, 16, 2)):
        torch.testing.assert_close(g.double(), e, rtol=1e-6, atol=1e-7)
    # the raw checkpoint is the training weights, not the average
    raw = transformers.BertForSequenceClassification.from_pretrained(os.path.join(out, "checkpoint-16"))
    assert all(torch.equal(a, b) for a, b in zip(raw.parameters(), trainer.model.parameters()))


def test_time_saved_is_logged_once_at_the_end(full_run):
    _, trainer, callback, _, messages = full_run
    lines = [m for m in messages if m.startswith("LAWA time saved:")]
    assert len(lines) == 1
    raw, lawa = _evals(trainer, "eval_loss"), _evals(trainer, "eval_lawa_loss")
    assert [r[2] for r in callback.time_saved.records] == [raw[s] for s in sorted(raw)]
    assert [r[3] for r in callback.time_saved.records] == [lawa[s] for s in sorted(lawa)]
    best = min(raw.values())
    reached = [s for s in sorted(lawa) if lawa[s] <= best]
    if reached:
        first = min(s for s in raw if raw[s] == best)
        assert f"at step {reached[0]} " in lines[0] and f"{first - reached[0]} steps" in lines[0]
    else:
        assert "never reached" in lines[0]


def test_resume_from_a_checkpoint_continues_bit_exactly(full_run, tmp_path, one_thread):
    full_out, full, _, _, _ = full_run
    out = _resume_copy(full_out, tmp_path)
    trainer, callback, _ = _trainer(out, {"k": 2})
    trainer.train(resume_from_checkpoint=str(out / "checkpoint-8"))
    for a, b in zip(trainer.model.parameters(), full.model.parameters()):
        assert torch.equal(a, b)
    after = {s: v for s, v in _evals(full, "eval_lawa_loss").items() if s > 8}
    resumed = {s: v for s, v in _evals(trainer, "eval_lawa_loss").items() if s > 8}  # the history is resumed too
    assert resumed == after and len(after) == 2
    assert callback.snapshot_steps == [4, 8, 12, 16]
    final = transformers.BertForSequenceClassification.from_pretrained(os.path.join(out, AVERAGE_DIR))
    expected = transformers.BertForSequenceClassification.from_pretrained(os.path.join(full_out, AVERAGE_DIR))
    assert all(torch.equal(a, b) for a, b in zip(final.parameters(), expected.parameters()))
    assert [r for r in callback.time_saved.records] == [r for r in full_run[2].time_saved.records]


def test_resume_from_outside_output_dir_named_in_the_arguments(full_run, tmp_path, one_thread):
    full_out, full, _, _, _ = full_run
    elsewhere = _resume_copy(full_out, tmp_path / "elsewhere") / "checkpoint-8"
    trainer, callback, _ = _trainer(tmp_path / "out", {"k": 2}, resume_from_checkpoint=str(elsewhere))
    trainer.train(resume_from_checkpoint=str(elsewhere))
    assert callback.snapshot_steps == [4, 8, 12, 16]
    after = {s: v for s, v in _evals(full, "eval_lawa_loss").items() if s > 8}
    assert {s: v for s, v in _evals(trainer, "eval_lawa_loss").items() if s > 8} == after


def test_checkpoint_without_callback_state_resumes_with_a_fresh_ring_and_a_warning(full_run, tmp_path, one_thread):
    full_out, full, _, _, _ = full_run
    out = _resume_copy(full_out, tmp_path)
    os.remove(out / "checkpoint-8" / STATE_NAME)
    trainer, callback, _ = _trainer(out, {"k": 2})
    with pytest.warns(UserWarning, match="starting a fresh average"):
        trainer.train(resume_from_checkpoint=str(out / "checkpoint-8"))
    assert callback.snapshot_steps == [12, 16]  # a fresh ring: only the snapshots after resuming
    for a, b in zip(trainer.model.parameters(), full.model.parameters()):
        assert torch.equal(a, b)  # training itself is untouched


def test_checkpoint_with_callback_state_resumes_without_the_callback(full_run, tmp_path, one_thread):
    full_out, full, _, _, _ = full_run
    out = _resume_copy(full_out, tmp_path)
    trainer, _, _ = _trainer(out, None)
    trainer.train(resume_from_checkpoint=str(out / "checkpoint-8"))
    for a, b in zip(trainer.model.parameters(), full.model.parameters()):
        assert torch.equal(a, b)
    assert "eval_lawa_loss" not in str(trainer.state.log_history[-3:])
    assert not os.path.exists(os.path.join(out, AVERAGE_DIR))


def test_other_settings_on_resume_are_refused(full_run, tmp_path, one_thread):
    full_out, _, _, _, _ = full_run
    out = _resume_copy(full_out, tmp_path)
    trainer, _, _ = _trainer(out, {"k": 3})
    with pytest.raises(ValueError, match=r"method_kwargs=\{'k': 3\}.*'k': 2"):
        trainer.train(resume_from_checkpoint=str(out / "checkpoint-8"))


# ------------------------------------------------------------------------------ bad input
@pytest.mark.parametrize(
    ("kw", "error", "match"),
    [
        ({"method": "nope"}, ValueError, "Unknown method: 'nope'"),
        ({"method": "schedulefree"}, ValueError, "changes the training trajectory"),
        ({"k": 0}, ValueError, "k"),
        ({"period": 0}, ValueError, "Invalid period: 0"),
        ({"bn_batches": 2}, ValueError, "bn_loader"),
    ],
)
def test_bad_arguments_fail_when_the_callback_is_created(tmp_path, kw, error, match):
    trainer = transformers.Trainer(model=_model(), args=_args(tmp_path), train_dataset=TRAIN, eval_dataset=EVAL)
    with pytest.raises(error, match=match):
        LAWATrainerCallback(trainer, **kw)


def test_not_a_trainer_is_refused():
    with pytest.raises(TypeError, match="Invalid trainer: str"):
        LAWATrainerCallback("trainer")


def test_model_without_trainable_parameters_is_refused(tmp_path):
    model = _model()
    model.requires_grad_(False)
    trainer = transformers.Trainer(model=model, args=_args(tmp_path), train_dataset=TRAIN, eval_dataset=EVAL)
    with pytest.raises(ValueError, match="no trainable parameters"):
        LAWATrainerCallback(trainer)


def test_an_optimizer_that_is_already_a_wrapper_is_refused_before_the_first_step(tmp_path, one_thread):
    from lawa_optim import LAWAWrapper

    model = _model()
    opt = LAWAWrapper(torch.optim.AdamW(model.parameters(), lr=1e-3), k=2)
    trainer = transformers.Trainer(
        model=model, args=_args(tmp_path, eval_strategy="no"), train_dataset=TRAIN, optimizers=(opt, None)
    )
    trainer.add_callback(LAWATrainerCallback(trainer))
    before = [p.detach().clone() for p in model.parameters()]
    with pytest.raises(TypeError, match="already a lawa_optim wrapper"):
        trainer.train()
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters()))


# ------------------------------------------------------------------------------ Trainer(callbacks=[...])
@pytest.mark.parametrize("form", ["instance", "class"])
def test_the_callbacks_argument_takes_an_instance_or_the_class(tmp_path, form, one_thread):
    """Trainer(callbacks=[LAWATrainerCallback(k=2)]) and callbacks=[LAWATrainerCallback] (the defaults,
    k=6): the callback attaches to that Trainer and logs the reference average at every evaluation."""
    k = 2 if form == "instance" else 6
    model = _model()
    given = LAWATrainerCallback(k=2) if form == "instance" else LAWATrainerCallback
    trainer = transformers.Trainer(
        model=model, args=_args(tmp_path, num_train_epochs=3, save_strategy="no"), train_dataset=TRAIN,
        eval_dataset=EVAL, callbacks=[given],
    )
    (callback,) = [c for c in trainer.callback_handler.callbacks if isinstance(c, LAWATrainerCallback)]
    assert callback.trainer is trainer
    recorder = _Recorder(model)
    trainer.add_callback(recorder)
    trainer.train()
    lawa = _evals(trainer, "eval_lawa_loss")
    assert sorted(lawa) == [4, 8, 12] and callback.snapshot_steps == [4, 8, 12]
    for step, value in lawa.items():
        expected = _reference_eval_loss(_reference_at(recorder.snaps, step, k))
        assert value == pytest.approx(expected, rel=1e-5, abs=1e-6), step


def test_without_a_trainer_the_error_names_the_supported_forms(tmp_path):
    callback = LAWATrainerCallback(k=2)  # fine: the Trainer it is given to attaches it
    args = _args(tmp_path)
    state, control = transformers.TrainerState(), transformers.TrainerControl()
    with pytest.raises(TypeError, match=r"callbacks=\[LAWATrainerCallback\(k=6\)\].*add_callback"):
        callback.on_train_begin(args, state, control, model=_model())


@pytest.mark.parametrize("flag", ["is_fsdp_enabled", "is_deepspeed_enabled"])
def test_fsdp_and_deepspeed_are_refused_naming_the_supported_paths(tmp_path, flag):
    """accelerate runs FSDP/DeepSpeed on GPUs only: the Trainer's flag is set by hand and the event called."""
    model = _model()
    trainer = transformers.Trainer(model=model, args=_args(tmp_path, eval_strategy="no"), train_dataset=TRAIN)
    callback = LAWATrainerCallback(trainer, k=2)
    setattr(trainer, flag, True)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    with pytest.raises(RuntimeError, match="accelerate runs them on GPUs only.*ModelParallelStrategy.*docs/sharded.md"):
        callback.on_train_begin(trainer.args, trainer.state, trainer.control, model=model, optimizer=optimizer)
    assert callback.observer is None
