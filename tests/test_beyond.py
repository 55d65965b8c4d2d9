"""``lawa bench beyond`` (issue 15's measurement) end to end on a tiny slice of the suite's ResNet workload."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner
from conftest import require

from lawa_benchmarks.beyond import _choose, _epochs_to, analyse, beyond
from lawa_benchmarks.resnet.data import DEFAULT_FASHION_MNIST

pytestmark = [pytest.mark.cli, pytest.mark.slow, pytest.mark.usefixtures("one_thread")]

TINY = ["workloads.resnet.epochs=3", "workloads.resnet.train_images=256", "workloads.resnet.val_images=64",
        "workloads.resnet.bn_images=64", "workloads.resnet.batch_size=64", "workloads.resnet.width=4"]


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
    other = CliRunner().invoke(beyond, [*args[:-len(TINY)], *TINY[:-1], "workloads.resnet.width=8"])
    assert other.exit_code != 0 and "another configuration" in other.output
