"""`lawa bench resnet` end to end on a tiny slice of the real Fashion-MNIST (seconds per run)."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import pytest

from tests.conftest import require
from tests.helpers import RESNET_TINY

for _module in ("click", "yaml", "tqdm", "matplotlib", "torchvision"):
    require(_module)

from click.testing import CliRunner  # noqa: E402

from lawa_benchmarks.lead import robust_lead  # noqa: E402
from lawa_benchmarks.report import summarize  # noqa: E402
from lawa_benchmarks.resnet.cli import resnet  # noqa: E402
from lawa_benchmarks.resnet.data import DEFAULT_FASHION_MNIST  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
QUICK = str(ROOT / "configs" / "quick.yaml")
TINY = [*RESNET_TINY, "methods.swa.swa_start=1", "methods.lawa.k=[1,2]", "methods.lawa.bncopy_k=[1,2]",
        "methods.exp.k=2", "methods.ema.decay=0.9", "report.headline=lawa_k2"]
PNG = b"\x89PNG\r\n\x1a\n"

pytestmark = pytest.mark.cli


def _need_data():
    if not (Path(DEFAULT_FASHION_MNIST) / "train-images-idx3-ubyte.gz").is_file():
        require("__fashion_mnist_data__", "apt-get install dataset-fashion-mnist")


def _invoke(args):
    res = CliRunner().invoke(resnet, args, catch_exceptions=False)
    return res


@pytest.fixture(scope="module")
def full_run(tmp_path_factory):
    """Every option: all methods, 2 seeds, --out, --data-dir, overrides."""
    _need_data()
    out = tmp_path_factory.mktemp("full")
    args = ["--config", QUICK, "--methods", "lawa,exp,ema,swa,lookahead,schedulefree", "--seeds", "2",
            "--out", str(out), "--data-dir", DEFAULT_FASHION_MNIST, "--no-progress", *TINY]
    res = _invoke(args)
    assert res.exit_code == 0, res.output
    return out, res.output


def _rows(out):
    return json.loads((out / "metrics.json").read_text())["rows"]


def test_full_run_rows_cover_every_method_seed_and_epoch(full_run):
    out, _ = full_run
    rows = _rows(out)
    per = {}
    for r in rows:
        per.setdefault((r["run"], r["method"]), set()).add((r["seed"], r["epoch"]))
    every = {(s, e) for s in (0, 1) for e in (1, 2, 3)}
    for method in ("base", "lawa_k1", "lawa_k2", "lawa_k1_bncopy", "lawa_k2_bncopy", "exp_k2", "ema"):
        assert per[("base", method)] == every, method
    assert per[("base", "swa")] == {(s, e) for s in (0, 1) for e in (2, 3)}  # SWA's mean starts at epoch 2
    assert per[("lookahead", "lookahead")] == every and per[("schedulefree", "schedulefree")] == every
    for r in rows:
        assert 0 <= r["top1"] <= r["top5"] <= 100 and r["val_loss"] > 0 and r["train_loss"] > 0
        assert r["train_time_s"] > 0 and r["avg_time_s"] >= 0 and r["eval_time_s"] > 0
    assert max(r["top1"] for r in rows if r["method"] == "base") > 30  # better than chance (10%)


def test_lawa_k1_with_copied_bn_is_the_base_model(full_run):
    """The mean of the one latest snapshot, with the model's BN statistics, is the SGD model itself."""
    rows = _rows(full_run[0])
    base = {(r["seed"], r["epoch"]): r for r in rows if r["method"] == "base"}
    for r in rows:
        if r["method"] == "lawa_k1_bncopy":
            b = base[(r["seed"], r["epoch"])]
            for col in ("top1", "top5", "val_loss", "train_loss"):
                assert r[col] == pytest.approx(b[col], rel=1e-5, abs=1e-9), col
    # and with BN recomputed it is a different evaluation of the same weights
    assert any(r["val_loss"] != base[(r["seed"], r["epoch"])]["val_loss"] for r in rows if r["method"] == "lawa_k1")


def test_observing_methods_share_the_base_trajectory_and_others_do_not(full_run):
    rows = _rows(full_run[0])
    by = {(r["method"], r["seed"], r["epoch"]): r for r in rows}
    for (_method, seed, epoch), r in by.items():
        if r["run"] == "base":
            base = by[("base", seed, epoch)]
            assert r["train_time_s"] == base["train_time_s"] and r["train_loss_running"] == base["train_loss_running"]
    assert any(by[("lookahead", s, e)]["train_loss_running"] != by[("base", s, e)]["train_loss_running"]
               for s in (0, 1) for e in (1, 2, 3))
    assert by[("base", 0, 3)]["top1"] != by[("base", 1, 3)]["top1"]  # seeds differ


def test_report_files_hold_the_numbers_the_run_computed(full_run):
    out, output = full_run
    rows = _rows(out)
    with open(out / "metrics.csv") as f:
        csv_rows = list(csv.DictReader(f))
    assert len(csv_rows) == len(rows)
    assert all(math.isclose(float(c["top1"]), j["top1"], rel_tol=1e-5) and c["method"] == j["method"]  # 6 digits
               for c, j in zip(csv_rows, rows))
    rep = out / "report"
    for name in ("curves.png", "time_saved.png", "k_sensitivity.png"):
        assert (rep / name).read_bytes()[:8] == PNG, name
    summary = json.loads((rep / "summary.json").read_text())["summary"]
    assert summary == json.loads(json.dumps(summarize(rows)))
    s = next(s for s in summary if s["method"] == "exp_k2" and s["epoch"] == 3)
    vals = [r["top1"] for r in rows if r["method"] == "exp_k2" and r["epoch"] == 3]
    assert s["top1_mean"] == pytest.approx(sum(vals) / 2) and s["n_seeds"] == 2
    doc = json.loads((rep / "time_saved.json").read_text())
    assert doc["headline"] == "lawa_k2"
    expected = robust_lead(rows, doc["baselines"], "lawa_k2", "top1")  # per seed, against the better baseline
    assert [(r["level"], r["seed"], r["base_epoch"], r["epochs_saved"]) for r in doc["time_saved"]] == [
        (lv["level"], s, b, d) for lv in expected["levels"] for s, b, d in zip(lv["seeds"], lv["base_epochs"],
                                                                             lv["saved"])]
    with open(rep / "final.csv") as f:
        final = {r["method"]: r for r in csv.DictReader(f)}
    assert float(final["base"]["top1_mean"]) == pytest.approx(sum(r["top1"] for r in rows if r["method"] == "base"
                                                                  and r["epoch"] == 3) / 2, rel=1e-5)  # 6 digits
    assert "Time saved: LAWA k=2 against the better of SGD" in output and "report:" in output


def test_config_error_lists_every_problem(tmp_path):
    res = CliRunner().invoke(resnet, ["--config", QUICK, "--out", str(tmp_path), "train.epochs=0", "data.batch_size=x",
                                      "model.arch=resnet9", "bogus.key=1"])
    assert res.exit_code == 2
    for text in ("4 problem(s)", "train.epochs: 0", "data.batch_size: 'x' is invalid: input should be a valid integer",
                 "model.arch: 'resnet9'", "bogus: unknown key"):
        assert text in res.output, text
    assert not (tmp_path / "metrics.json").exists()


def test_unknown_method_and_resume_of_another_config(tmp_path):
    res = CliRunner().invoke(resnet, ["--config", QUICK, "--methods", "lawa,adam", "--out", str(tmp_path)])
    assert res.exit_code == 2 and "unknown method(s) ['adam']" in res.output and "lookahead" in res.output


def test_missing_data_says_how_to_install(tmp_path):
    res = CliRunner().invoke(resnet, ["--config", QUICK, "--out", str(tmp_path / "o"), "--data-dir",
                                      str(tmp_path), "--no-progress", *TINY])
    assert res.exit_code == 1
    assert "apt-get install dataset-fashion-mnist" in res.output and "Nothing is downloaded" in res.output
    res = CliRunner().invoke(resnet, ["--config", QUICK, "--out", str(tmp_path / "o"), "--data-dir",
                                      str(tmp_path), "data.dataset=cifar10", *TINY])
    assert res.exit_code == 1 and "cifar-10-batches-py" in res.output


def test_help_shows_examples():
    from lawa_optim.cli import main

    res = CliRunner().invoke(main, ["bench", "resnet", "--help"])
    assert res.exit_code == 0
    assert "lawa bench resnet --config configs/quick.yaml --out runs/quick" in res.output
    assert "torchrun --nproc_per_node 2" in res.output and "--methods" in res.output


def test_fresh_restarts_a_folder_of_another_config_with_progress_bars(full_run, tmp_path):
    out, _ = full_run
    target = tmp_path / "copy"
    import shutil

    shutil.copytree(out, target)
    one = [a for a in TINY if not a.startswith(("train.epochs", "methods.swa"))] + ["train.epochs=1", "train.lr=0.05"]
    res = CliRunner().invoke(resnet, ["--config", QUICK, "--methods", "lawa", "--out", str(target), *one])
    assert res.exit_code == 2 and "another configuration" in res.output and "--fresh" in res.output
    res = CliRunner().invoke(resnet, ["--config", QUICK, "--methods", "lawa", "--out", str(target), "--fresh", *one])
    assert res.exit_code == 0, res.output
    rows = _rows(target)
    assert {r["epoch"] for r in rows} == {1} and {r["seed"] for r in rows} == {0}
    assert "base seed 0" in res.output  # the tqdm bar (stderr is part of the output)
