"""`torchrun --nproc_per_node 2 ... lawa bench resnet` trains with DDP (gloo on CPU); rank 0 writes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import require
from tests.helpers import RESNET_TINY

for _module in ("click", "yaml", "tqdm", "torchvision"):
    require(_module)

from lawa_benchmarks.resnet.data import DEFAULT_FASHION_MNIST  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
TINY = [*RESNET_TINY, "data.eval_batch_size=64", "train.epochs=2", "methods.lawa.k=[1,2]", "methods.lawa.bncopy_k=[1]"]

pytestmark = [pytest.mark.distributed, pytest.mark.slow, pytest.mark.cli]


def test_two_process_ddp_run(tmp_path):
    if not (Path(DEFAULT_FASHION_MNIST) / "train-images-idx3-ubyte.gz").is_file():
        require("__fashion_mnist_data__", "apt-get install dataset-fashion-mnist")
    out = tmp_path / "ddp"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           "-m", "lawa_optim.cli", "bench", "resnet", "--config", str(ROOT / "configs" / "quick.yaml"),
           "--methods", "lawa", "--out", str(out), "--no-progress", "device=cpu", *TINY]
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    res = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-4000:]
    rows = json.loads((out / "metrics.json").read_text())["rows"]
    methods = {"base", "lawa_k1", "lawa_k2", "lawa_k1_bncopy"}
    assert {(r["method"], r["epoch"]) for r in rows} == {(m, e) for m in methods for e in (1, 2)}
    # each rank took (256 / 2) // 64 = 2 steps per epoch: the data was sharded over 2 processes
    assert all(r["steps"] == 2 * r["epoch"] for r in rows)
    # evaluation shards were summed over both ranks: top-1 counts over all 128 validation images
    for r in rows:
        assert abs(r["top1"] * 128 / 100 - round(r["top1"] * 128 / 100)) < 1e-6
    base = {r["epoch"]: r for r in rows if r["method"] == "base"}
    for r in rows:  # LAWA k=1 with copied BN statistics is the SGD model on every rank
        if r["method"] == "lawa_k1_bncopy":
            assert r["top1"] == pytest.approx(base[r["epoch"]]["top1"]) and r["val_loss"] == pytest.approx(
                base[r["epoch"]]["val_loss"], rel=1e-5)
    assert (out / "report" / "time_saved.csv").is_file()
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["base_seed0.pt"]
