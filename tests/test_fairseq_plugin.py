"""The fairseq plugin under a real ``fairseq-train`` (tiny RoBERTa, CPU): metrics, checkpoint_lawa.pt, resume.

One uninterrupted 4-epoch run (k=3, every epoch checkpoint kept) is shared by the tests; a second
run stops after 2 epochs and resumes to 4; a third trains with 2 processes. Each fairseq process
takes ~20-60 s on a loaded 2-core machine, mostly importing fairseq.
"""

from __future__ import annotations

import json
import math
import os
import random
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import require
from ring_formats import ring_tensors

pytestmark = [pytest.mark.fairseq, pytest.mark.slow]

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
K = 3
EPOCHS = 4

# a tiny RoBERTa that trains an epoch in ~2 s on one CPU thread
TINY = ["--arch", "roberta_base", "--encoder-layers", "1", "--encoder-embed-dim", "32", "--encoder-ffn-embed-dim",
        "64", "--encoder-attention-heads", "2", "--max-positions", "32"]
DATA_ARGS = ["--tokens-per-sample", "32", "--sample-break-mode", "complete", "--batch-size", "16",
             "--required-batch-size-multiple", "1", "--cpu", "--num-workers", "0"]


def _env() -> dict[str, str]:
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH")) if p)
    return env


def _run(cmd: list[str]) -> str:
    proc = subprocess.run(cmd, capture_output=True, text=True, env=_env(), timeout=600)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-4000:]
    return out


def _user_dir() -> str:
    from lawa_optim.integrations.fairseq import user_dir

    return user_dir()


def train(data_bin: Path, save_dir: Path, max_epoch: int, *extra: str) -> str:
    return _run([str(BIN / "fairseq-train"), str(data_bin), "--user-dir", _user_dir(), "--task", "masked_lm_lawa",
                 "--criterion", "masked_lm", *TINY, *DATA_ARGS, "--optimizer", "adam", "--adam-betas", "(0.9,0.98)",
                 "--lr", "1e-3", "--lr-scheduler", "polynomial_decay", "--warmup-updates", "5",
                 "--total-num-update", "200", "--max-epoch", str(max_epoch), "--seed", "1",
                 "--save-dir", str(save_dir), "--save-interval", "1", "--log-format", "json", "--log-interval", "10",
                 "--lawa-k", str(K), *extra])


def valid_records(log: str) -> dict[int, dict]:
    out = {}
    for line in log.splitlines():
        if "| valid |" in line and "{" in line:
            rec = json.loads(line[line.index("{"):])
            out[int(rec["epoch"])] = rec
    return out


def load(path: Path) -> dict:
    return torch.load(path, map_location="cpu", weights_only=False)  # fairseq's own format; our test files


@pytest.fixture(scope="module")
def data_bin(tmp_path_factory) -> Path:
    require("fairseq", "the fairseq plugin")
    root = tmp_path_factory.mktemp("fairseq_data")
    rng = random.Random(0)
    nouns, verbs = "cat dog bird fish horse cow sheep goat lion bear".split(), "sees eats likes chases finds".split()
    adjs = "big small red blue old young fast slow".split()

    def sentence() -> str:
        subject, obj = f"{rng.choice(adjs)} {rng.choice(nouns)}", f"{rng.choice(adjs)} {rng.choice(nouns)}"
        return f"the {subject} {rng.choice(verbs)} the {obj} ."

    for split, n in (("train", 600), ("valid", 80)):
        (root / f"{split}.txt").write_text("".join(" ".join(sentence() for _ in range(rng.randint(1, 3))) + "\n"
                                                   for _ in range(n)))
    _run([str(BIN / "fairseq-preprocess"), "--only-source", "--trainpref", str(root / "train.txt"), "--validpref",
          str(root / "valid.txt"), "--destdir", str(root / "bin"), "--workers", "1"])
    return root / "bin"


@pytest.fixture(scope="module")
def full_run(data_bin, tmp_path_factory) -> tuple[Path, str]:
    save = tmp_path_factory.mktemp("full") / "ckpt"
    return save, train(data_bin, save, EPOCHS)


def test_lawa_metrics_in_fairseqs_log(full_run):
    _, log = full_run
    recs = valid_records(log)
    assert sorted(recs) == list(range(1, EPOCHS + 1))
    for rec in recs.values():
        for key in ("valid_loss", "valid_ppl", "valid_lawa_loss", "valid_lawa_ppl", "valid_lawa_best_loss"):
            assert key in rec
        assert math.isclose(float(rec["valid_lawa_ppl"]), 2 ** float(rec["valid_lawa_loss"]), rel_tol=2e-3)
    # one snapshot after epoch 1: the average is the raw model
    assert recs[1]["valid_lawa_loss"] == recs[1]["valid_loss"]
    assert recs[EPOCHS]["valid_lawa_loss"] != recs[EPOCHS]["valid_loss"]
    best = min(float(r["valid_lawa_loss"]) for r in recs.values())
    assert float(recs[EPOCHS]["valid_lawa_best_loss"]) == best


def assert_mean_of_epochs(save: Path, last: int) -> dict:
    """checkpoint_lawa.pt holds the float64 mean of the K latest epoch checkpoints fairseq saved."""
    lawa = load(save / "checkpoint_lawa.pt")
    epochs = [load(save / f"checkpoint{e}.pt") for e in range(last - K + 1, last + 1)]
    assert lawa["extra_state"]["lawa"]["snapshots"] == list(range(last - K + 1, last + 1))
    assert set(lawa["model"]) == set(epochs[-1]["model"])
    n_float = 0
    for name, value in lawa["model"].items():
        if value.is_floating_point():
            ref = torch.stack([c["model"][name].double() for c in epochs]).mean(0)
            torch.testing.assert_close(value.double(), ref, rtol=1e-6, atol=1e-7, msg=name)
            n_float += 1
        else:
            assert torch.equal(value, epochs[-1]["model"][name]), name
    assert n_float > 10
    return lawa


def test_checkpoint_lawa_is_the_mean_of_the_epoch_checkpoints(full_run):
    save, _ = full_run
    lawa = assert_mean_of_epochs(save, EPOCHS)
    # a plain masked_lm checkpoint: no plugin task, no user dir, no optimizer state
    assert lawa["cfg"]["task"]["_name"] == "masked_lm"
    assert not any(key.startswith("lawa_") for key in lawa["cfg"]["task"])
    assert lawa["cfg"]["common"]["user_dir"] is None and "last_optimizer_state" not in lawa
    assert (save / "checkpoint_lawa_best.pt").is_file()


def test_the_ring_is_in_fairseqs_checkpoints(full_run):
    save, _ = full_run
    state = load(save / "checkpoint_last.pt")["extra_state"]["MaskedLMLAWATask"]
    assert state["labels"] == list(range(EPOCHS - K + 1, EPOCHS + 1)) and state["unit"] == "epoch"
    assert state["wrapper"]["lawa"]["count"] == EPOCHS


def test_resume_equals_uninterrupted(full_run, data_bin, tmp_path):
    save_a, log_a = full_run
    save_b = tmp_path / "ckpt"
    train(data_bin, save_b, 2)
    log_b = train(data_bin, save_b, EPOCHS)  # resumes from checkpoint_last.pt
    assert "Loaded checkpoint" in log_b
    rec_a, rec_b = valid_records(log_a), valid_records(log_b)
    for epoch in (3, 4):
        assert rec_b[epoch]["valid_lawa_loss"] == rec_a[epoch]["valid_lawa_loss"]
    for name in ("checkpoint_lawa.pt", f"checkpoint{EPOCHS}.pt", "checkpoint_lawa_best.pt"):
        a, b = load(save_a / name)["model"], load(save_b / name)["model"]
        assert all(torch.equal(a[key], b[key]) for key in a), name
    ring_a = ring_tensors(load(save_a / "checkpoint_last.pt")["extra_state"]["MaskedLMLAWATask"]["wrapper"])
    ring_b = ring_tensors(load(save_b / "checkpoint_last.pt")["extra_state"]["MaskedLMLAWATask"]["wrapper"])
    assert all(torch.equal(x, y) for x, y in zip(ring_a, ring_b, strict=True))


def fairseq_validate(data_bin: Path, path: Path) -> float:
    out = _run([str(BIN / "fairseq-validate"), str(data_bin), "--user-dir", _user_dir(), "--path", str(path),
                "--task", "masked_lm", "--criterion", "masked_lm", *DATA_ARGS])
    line = next(x for x in out.splitlines() if "valid on 'valid' subset" in x and "| loss " in x)
    return float(line.split("| loss ")[1].split()[0])


def test_fairseq_validate_accepts_checkpoint_lawa(full_run, data_bin):
    save, log = full_run
    # the same masked validation set: fairseq-validate of the file == the LAWA loss logged in training
    loss = fairseq_validate(data_bin, save / "checkpoint_lawa.pt")
    assert loss == float(valid_records(log)[EPOCHS]["valid_lawa_loss"])


@pytest.mark.distributed
def test_two_process_distributed_training(data_bin, tmp_path):
    """fairseq's own data-parallel training, 2 processes, gloo on CPU (``legacy_ddp``: fairseq's
    ``pytorch_ddp`` passes CUDA device ids and needs GPUs)."""
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    save, epochs = tmp_path / "ckpt", 3
    cmd = [str(BIN / "fairseq-train"), str(data_bin), "--user-dir", _user_dir(), "--task", "masked_lm_lawa",
           "--criterion", "masked_lm", *TINY, *DATA_ARGS, "--optimizer", "adam", "--lr", "1e-3", "--max-epoch",
           str(epochs), "--seed", "1", "--save-dir", str(save), "--log-format", "json", "--lawa-k", str(K),
           "--distributed-world-size", "2", "--distributed-init-method", f"tcp://127.0.0.1:{port}",
           "--distributed-no-spawn", "--distributed-backend", "gloo", "--ddp-backend", "legacy_ddp"]
    procs = [subprocess.Popen(cmd + ["--distributed-rank", str(rank)], stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True, env=_env()) for rank in (0, 1)]
    logs = [p.communicate(timeout=600)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], logs[0][-3000:] + logs[1][-3000:]
    assert "distributed init (rank 1)" in logs[1]
    assert_mean_of_epochs(save, epochs)
    # each rank validated half the set with its own ring; the sum over both ranks equals a
    # single-process validation of checkpoint_lawa.pt only if both rings hold the same average
    logged = float(valid_records(logs[0])[epochs]["valid_lawa_loss"])
    assert logged != float(valid_records(logs[0])[epochs]["valid_loss"])
    assert fairseq_validate(data_bin, save / "checkpoint_lawa.pt") == logged


def test_from_pretrained_loads_checkpoint_lawa(full_run, data_bin):
    require("fairseq")
    from fairseq.models.roberta import RobertaModel

    from lawa_optim.integrations.fairseq.task import fairseq_checkpoints_loadable

    save, _ = full_run
    with fairseq_checkpoints_loadable():  # fairseq's Namespace under torch >= 2.6
        hub = RobertaModel.from_pretrained(str(save), checkpoint_file="checkpoint_lawa.pt",
                                           data_name_or_path=str(data_bin), bpe=None)
    lawa = load(save / "checkpoint_lawa.pt")["model"]
    state = hub.model.state_dict()
    assert all(torch.equal(state[key], lawa[key]) for key in lawa)
    tokens = hub.task.source_dictionary.encode_line("the big cat sees the small dog .", append_eos=True).long()
    assert hub.model(tokens[None])[0].shape[-1] == len(hub.task.source_dictionary)


def test_updates_per_epoch_matches_fairseq(full_run, data_bin):
    from lawa_optim.integrations.fairseq.data import masked_lm_updates_per_epoch

    _, log = full_run
    recs = valid_records(log)
    per_epoch = int(recs[1]["valid_num_updates"])
    assert int(recs[EPOCHS]["valid_num_updates"]) == EPOCHS * per_epoch
    assert masked_lm_updates_per_epoch(data_bin, tokens_per_sample=32, batch_size=16) == per_epoch
    assert masked_lm_updates_per_epoch(data_bin, tokens_per_sample=32, batch_size=16, update_freq=2,
                                       world_size=2) == math.ceil(math.ceil(per_epoch / 2) / 2)
