"""``lawa bench overhead``: the benchmark computes the right things (never its timings)."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import require


def _bench():
    require("click")
    require("matplotlib")
    require("tqdm")
    from lawa_benchmarks.overhead import figures, measure, run

    return figures, measure, run


class FakeClock:
    """Each call 'takes' what the function returns, so ratios are known in advance."""

    name = "fake"

    def time(self, fn, inner=1):
        return sum(fn() for _ in range(inner)) / inner


def test_pairs_are_matched_and_ratio_is_median_of_pair_ratios():
    _, measure, _ = _bench()
    calls = []
    fig_times = iter([2.0, 4.0, 9.0, 3.0, 5.0, 6.0])
    ref_times = iter([1.0, 2.0, 3.0, 1.0, 1.0, 2.0])

    def figure():
        calls.append("f")
        return next(fig_times)

    def reference():
        calls.append("r")
        return next(ref_times)

    pair = measure.time_pair(figure, reference, FakeClock(), repeats=5, warmup=1)
    # warm-up once each, then the order alternates: r f, f r, r f, f r, r f
    assert calls == ["r", "f", "r", "f", "f", "r", "r", "f", "f", "r", "r", "f"]
    assert pair.figure_s == [4.0, 9.0, 3.0, 5.0, 6.0]
    assert pair.reference_s == [2.0, 3.0, 1.0, 1.0, 2.0]
    assert pair.ratios == [2.0, 3.0, 3.0, 5.0, 3.0]
    s = pair.summary()
    assert s["ratio"] == 3.0 and s["figure_s"] == 5.0 and s["reference_s"] == 2.0 and s["repeats"] == 5


def test_floors_count_bytes():
    figures, _, _ = _bench()
    f32 = figures.floors(torch.float32, 6)
    # copy moves 8 B per float32; snapshot 4*4 + 2*8 = 32 B; swap in+out from the ring 3*4 + 8 = 20 B,
    # with a backup 5*4 + 8 = 28 B
    assert f32["snapshot"] == 4.0 and f32["averaged"] == 2.5 and f32["averaged_after_step"] == 3.5
    # LAWA update 32 + 12 = 44 B; Algorithm 1: 8 + 48 + 28 + 8 = 92 B
    assert f32["lawa_vs_alg1"] == pytest.approx(44 / 92)
    bf16 = figures.floors(torch.bfloat16, 6)  # float32 sums for half precision
    assert bf16["snapshot"] == (4 * 2 + 2 * 4) / 4


def test_algorithm1_and_lawa_update_give_the_same_average():
    figures, _, _ = _bench()
    params = figures.make_params(3000, torch.device("cpu"))
    assert sum(p.numel() for p in params) == 3000
    k = 4
    opt = figures._filled(params, k)  # k snapshots of the initial weights
    alg = figures.PaperAlgorithm1(params, k)
    for _ in range(k - 1):
        alg.update(params)
    out = [torch.empty_like(p) for p in params]
    history = [[p.detach().clone() for p in params]] * k
    for step in range(5):
        with torch.no_grad():
            for p in params:
                p.add_(torch.randn_like(p) * (step + 1))
        history.append([p.detach().clone() for p in params])
        figures.lawa_update(opt, out)
        alg.update(params)
        for o, a, *snaps in zip(out, alg.lawa, *history[-k:]):
            ref = torch.stack([s.double() for s in snaps]).mean(0)
            torch.testing.assert_close(o.double(), ref, rtol=1e-6, atol=1e-7)
            torch.testing.assert_close(a, o, rtol=1e-5, atol=1e-6)  # Algorithm 1 averages in float32


def test_temporary_bytes_algorithm1_vs_lawa():
    figures, measure, _ = _bench()
    params = [torch.nn.Parameter(torch.randn(1000)) for _ in range(3)]
    k = 6
    alg = figures.PaperAlgorithm1(params, k)
    for _ in range(k - 1):
        alg.update(params)
    cpu = torch.device("cpu")
    # one clone kept (3 x 4000 B), then per tensor a k-stack (24000 B) and its mean (4000 B)
    assert measure.peak_temporary_bytes(lambda: alg.update(params), cpu) == 3 * 4000 + 24000 + 4000
    # in total it allocates (k + 2) P: the clone, the k-stacks and the means of all tensors
    assert measure.temporary_bytes(lambda: alg.update(params), cpu) == (3 * 4000 + 24000 + 4000, (k + 2) * 12000)
    opt = figures._filled(params, k)
    out = [torch.empty_like(p) for p in params]
    figures.lawa_update(opt, out)  # the scratch block is made once, here
    assert measure.peak_temporary_bytes(lambda: figures.lawa_update(opt, out), cpu) < 200  # a few scalars


def test_run_writes_json_table_and_plot(tmp_path):
    _, _, run = _bench()
    cfg = run.OverheadConfig(out=tmp_path, sizes=(2000, 4000), ks=(2, 3, 5), repeats=2, models=False)
    results = run.run(cfg, progress=False)
    data = json.loads((tmp_path / "overhead.json").read_text())
    assert set(data) == {"config", "clock", "machine", "complete", "figures"} and data["complete"] is True
    assert data["clock"] == "thread_time" and data["config"]["sizes"] == [2000, 4000]
    names = [(f["figure"], f["size"]) for f in data["figures"]]
    for size in (2000, 4000):
        for name in ("snapshot", "averaged", "averaged_after_step", "snapshot_k5_vs_k2", "lawa_update_k3",
                     "ema_update", "disk_snapshot"):
            assert (name, size) in names
    for f in data["figures"]:
        assert {"ratio", "ratio_q1", "ratio_q3", "figure_s", "reference_s", "floor", "target", "met"} <= set(f)
        assert f["ratio"] > 0 and f["repeats"] == 2
        assert f["met"] == (None if f["target"] is None else f["ratio"] <= f["target"])
    snap = next(f for f in data["figures"] if f["figure"] == "snapshot")
    assert snap["reference"] == "foreach_copy" and snap["floor"] == 4.0
    upd = next(f for f in data["figures"] if f["figure"] == "lawa_update_k3")
    # LAWA: a few scalars per tensor (the non-finite check), nothing of the parameters' size
    assert upd["temp_bytes"] <= 16 * 96 and upd["reference_temp_bytes"] > 4 * upd["size"]
    assert upd["allocated_in_P"] < 0.2 and upd["reference_allocated_in_P"] == pytest.approx(3 + 2)  # k=3
    assert (tmp_path / "overhead.png").stat().st_size > 1000
    table = (tmp_path / "overhead.md").read_text()
    assert table.startswith("| figure |") and "snapshot_k5_vs_k2" in table and table == results["table"] + "\n"


def test_memory_budget_skips_figures(tmp_path):
    _, _, run = _bench()
    cfg = run.OverheadConfig(out=tmp_path, sizes=(2000,), repeats=1, models=False, disk=False, max_gib=1e-6)
    figs = run.run(cfg, progress=False)["figures"]
    assert figs and all("skipped" in f for f in figs)
    assert "skipped" in run.markdown_table({"figures": figs, "machine": {}})


def test_step_figure_compares_the_wrapper_with_the_bare_optimizer():
    figures, measure, _ = _bench()
    clock = measure.Clock.for_device(torch.device("cpu"))
    row = figures.step_figure("step_tiny_mlp", figures.tiny_mlp(), clock, repeats=2, inner=3, target=1.02)
    assert row["reference"] == "bare_optimizer_step" and row["size"] == 16 * 32 + 32 + 32 + 1 and row["inner"] == 3


def test_config_reports_every_error_at_once():
    _, _, run = _bench()
    with pytest.raises(ValueError) as err:
        run.OverheadConfig(out="x", sizes=(10,), ks=(3,), repeats=0, device="tpu")
    msg = str(err.value)
    assert "sizes=(10,)" in msg and "ks=(3,)" in msg and "repeats=0" in msg and "device='tpu'" in msg


@pytest.mark.cli
def test_cli_runs_and_rejects_bad_sizes(tmp_path):
    require("click")
    from click.testing import CliRunner

    from lawa_optim.cli import main

    runner = CliRunner()
    res = runner.invoke(main, ["bench", "overhead", "--sizes", "2e3", "--repeats", "1", "--no-models", "--no-disk",
                               "--no-progress", "--out", str(tmp_path)])
    assert res.exit_code == 0, res.output
    assert "| snapshot | 2e3 | foreach_copy |" in res.output and (tmp_path / "overhead.json").exists()
    res = runner.invoke(main, ["bench", "overhead", "--sizes", "abc", "--out", str(tmp_path)])
    assert res.exit_code == 2 and "--sizes" in res.output


@pytest.mark.slow
def test_gpu_check_script_smoke_on_cpu(tmp_path):
    """benchmarks/gpu_check.sh --smoke runs the same script on the CPU with tiny sizes."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    _bench()
    script = Path(__file__).resolve().parents[1] / "benchmarks" / "gpu_check.sh"
    res = subprocess.run(
        ["bash", str(script), str(tmp_path), "--smoke"], capture_output=True, text=True, timeout=600,
        env={**os.environ, "PYTHON": sys.executable},
    )
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-2000:]
    data = json.loads((tmp_path / "overhead" / "overhead.json").read_text())
    assert data["complete"] and data["config"]["device"] == "cpu"
    assert {f["figure"] for f in data["figures"]} >= {"snapshot", "averaged", "epoch_resnet18", "step_resnet18"}
    assert (tmp_path / "overhead" / "overhead.png").exists() and "finished in" in res.stdout


def test_dtype_measures_the_per_size_figures_in_that_dtype(tmp_path, monkeypatch):
    """``dtype="bfloat16"``: the per-size figures are measured on bf16 parameters, and the files say so."""
    _, _, run = _bench()
    made = []
    real = run.make_params

    def spy(numel, device, dtype=torch.float32, seed=0):
        made.append(dtype)
        return real(numel, device, dtype, seed)

    monkeypatch.setattr(run, "make_params", spy)
    cfg = run.OverheadConfig(out=tmp_path, sizes=(2000,), repeats=1, models=False, disk=False, dtype="bfloat16")
    results = run.run(cfg, progress=False)
    assert made == [torch.bfloat16]
    assert json.loads((tmp_path / "overhead.json").read_text())["config"]["dtype"] == "bfloat16"
    assert any(f["figure"] == "snapshot" and "ratio" in f for f in results["figures"])
    assert "bfloat16 in the per-size figures" in (tmp_path / "overhead.md").read_text()
    with pytest.raises(ValueError, match="dtype='int8'"):
        run.OverheadConfig(out=tmp_path, dtype="int8")
