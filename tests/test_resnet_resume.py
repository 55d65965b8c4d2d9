"""A killed `lawa bench resnet` run, started again, ends with the numbers of an uninterrupted run.

Two kinds of kill: an exception raised from the per-epoch hook (after a checkpoint), and a
subprocess killed with SIGKILL at whatever point it has reached after its first checkpoint.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import require
from tests.helpers import RESNET_TINY

for _module in ("click", "yaml", "tqdm", "torchvision"):
    require(_module)

import lawa_optim  # noqa: E402
from lawa_benchmarks.resnet.config import load_config  # noqa: E402
from lawa_benchmarks.resnet.data import DEFAULT_FASHION_MNIST  # noqa: E402
from lawa_benchmarks.resnet.runner import ResumeError, run  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
QUICK = ROOT / "configs" / "quick.yaml"
TINY = [
    *RESNET_TINY, "methods.swa.swa_start=0", "methods.lawa.k=[2]", "methods.lawa.bncopy_k=[2]", "methods.exp.k=2",
    "methods.ema.decay=0.9",
    "train.warmup_epochs=1",  # kills on both sides of the warm-up -> cosine hand-over of torch's SequentialLR
]
FAMILIES = [m for m in lawa_optim.list_methods() if m != "base"]  # every method of the zoo
TIMES = ("train_time_s", "avg_time_s", "eval_time_s")

pytestmark = [pytest.mark.cli, pytest.mark.slow]


class Killed(Exception):
    pass


def _numbers(rows):
    return [{k: v for k, v in r.items() if k not in TIMES} for r in rows]


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    if not (Path(DEFAULT_FASHION_MNIST) / "train-images-idx3-ubyte.gz").is_file():
        require("__fashion_mnist_data__", "apt-get install dataset-fashion-mnist")
    out = tmp_path_factory.mktemp("whole")
    res = run(load_config(QUICK, TINY), out, families=FAMILIES, progress=False, report=False)
    return res["rows"]


def test_killed_by_exceptions_resumes_to_the_same_numbers(tmp_path, uninterrupted):
    cfg = load_config(QUICK, TINY)
    kills = [("base", 0, 1), ("base", 0, 2), ("lookahead", 0, 2), ("schedulefree", 0, 1)]

    def hook(run_name, seed, epoch):
        if kills and (run_name, seed, epoch) == kills[0]:
            kills.pop(0)
            raise Killed

    attempts = 0
    while True:
        attempts += 1
        try:
            res = run(cfg, tmp_path, families=FAMILIES, progress=False, report=False, on_epoch_end=hook)
            break
        except Killed:
            continue
    assert attempts == 5
    assert _numbers(res["rows"]) == _numbers(uninterrupted)
    # a finished run started again trains nothing and changes nothing
    again = run(cfg, tmp_path, families=FAMILIES, progress=False, report=False,
                on_epoch_end=lambda *a: pytest.fail("trained again"))
    assert again["rows"] == res["rows"]


def test_sigkilled_process_resumes_to_the_same_numbers(tmp_path, uninterrupted):
    """Only LAWA this time: the SGD trajectory and LAWA's numbers must not depend on the other observers."""
    cmd = [sys.executable, "-m", "lawa_optim.cli", "bench", "resnet", "--config", str(QUICK), "--out", str(tmp_path),
           "--methods", "lawa", "--no-progress", *TINY]
    ckpt = tmp_path / "checkpoints" / "base_seed0.pt"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 600
    while not ckpt.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    assert proc.poll() is None, f"the run ended before it could be killed: {proc.stderr.read().decode()[-2000:]}"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL
    # the same command again, in this process (saves an interpreter start)
    from click.testing import CliRunner

    from lawa_benchmarks.resnet.cli import resnet

    res = CliRunner().invoke(resnet, cmd[5:], catch_exceptions=False)
    assert res.exit_code == 0, res.output
    import json

    rows = json.loads((tmp_path / "metrics.json").read_text())["rows"]
    expected = [r for r in uninterrupted if r["method"] in ("base", "lawa_k2", "lawa_k2_bncopy")]
    assert len(rows) == 9 and _numbers(rows) == _numbers(expected)
    assert "Time saved" in res.output


def test_resume_refuses_another_config_and_fresh_starts_over(tmp_path, uninterrupted):
    cfg = load_config(QUICK, TINY)
    with pytest.raises(Killed):
        run(cfg, tmp_path, families=["lawa"], progress=False, report=False,
            on_epoch_end=lambda *a: (_ for _ in ()).throw(Killed()))
    other = load_config(QUICK, TINY + ["train.lr=0.05"])
    with pytest.raises(ResumeError, match="another configuration"):
        run(other, tmp_path, families=["lawa"], progress=False, report=False)
    seen = []
    with pytest.raises(Killed):
        run(other, tmp_path, families=["lawa"], progress=False, report=False, fresh=True,
            on_epoch_end=lambda *a: (seen.append(a), (_ for _ in ()).throw(Killed())))
    assert seen == [("base", 0, 1)]  # started over at epoch 1
