"""lawa_benchmarks.report: summaries, time saved and the report files, against hand-computed references."""

from __future__ import annotations

import csv
import json
import statistics

import pytest

from tests.conftest import require

require("click")
require("matplotlib")

from lawa_benchmarks.report import (  # noqa: E402
    load_metrics,
    longest_lead,
    report,
    summarize,
    time_saved,
    write_metrics,
    write_report,
)

PNG = b"\x89PNG\r\n\x1a\n"


def _rows():
    """Two seeds, 4 epochs: base climbs 60, 70, 80, 90; LAWA is one epoch ahead until the end."""
    rows = []
    curves = {"base": [60, 70, 80, 90], "lawa_k2": [70, 80, 88, 90], "lawa_k4": [65, 78, 85, 91],
              "lawa_k2_bncopy": [50, 60, 70, 80]}
    for seed, shift in ((0, -1.0), (1, 1.0)):
        for method, curve in curves.items():
            for epoch, top1 in enumerate(curve, start=1):
                rows.append({"run": "base", "method": method, "seed": seed, "epoch": epoch, "top1": top1 + shift,
                             "top5": 99.0, "val_loss": 3 - top1 / 50, "train_loss": 2 - top1 / 50,
                             "train_time_s": 100.0 * epoch, "avg_time_s": 0.0 if method == "base" else 1.0,
                             "eval_time_s": 0.5})
    meta = {"baseline": "base", "headline": "lawa_k2", "metric": "top1", "higher_is_better": True,
            "methods": {"base": {"label": "SGD", "family": "base"},
                        "lawa_k2": {"label": "LAWA k=2", "family": "lawa", "k": 2},
                        "lawa_k4": {"label": "LAWA k=4", "family": "lawa", "k": 4},
                        "lawa_k2_bncopy": {"label": "LAWA k=2 BN copied", "family": "lawa", "k": 2}}}
    return rows, meta


def test_summarize_mean_and_std_match_statistics():
    rows, _ = _rows()
    summary = summarize(rows)
    s = next(s for s in summary if s["method"] == "lawa_k4" and s["epoch"] == 2)
    vals = [r["top1"] for r in rows if r["method"] == "lawa_k4" and r["epoch"] == 2]
    assert s["n_seeds"] == 2
    assert s["top1_mean"] == pytest.approx(statistics.mean(vals))
    assert s["top1_std"] == pytest.approx(statistics.stdev(vals))
    assert len(summary) == 4 * 4


def test_time_saved_against_hand_computed_table():
    rows = time_saved([1, 2, 3, 4], [60, 70, 80, 90], [1, 2, 3, 4], [70, 80, 88, 90],
                      base_times=[100, 200, 300, 400], method_times=[101, 202, 303, 404])
    assert [(r["level"], r["method_epoch"], r["base_epoch"], r["epochs_saved"]) for r in rows] == [
        (70, 1, 2, 1), (80, 2, 3, 1), (88, 3, 4, 1), (90, 4, 4, 0)]
    assert rows[0]["hours_saved"] == pytest.approx((200 - 101) / 3600)
    lead = longest_lead(rows)
    assert (lead["level"], lead["epochs_saved"]) == (70, 1)  # ties in epochs go to the most time saved (99 s)


def test_time_saved_never_reached_and_lower_is_better():
    rows = time_saved([1, 2, 3], [3.0, 2.0, 1.5], [1, 2, 3], [2.5, 1.2, 1.0], higher_is_better=False)
    assert [(r["level"], r["base_epoch"], r["epochs_saved"]) for r in rows] == [(2.5, 2, 1), (1.2, None, None),
                                                                               (1.0, None, None)]
    assert longest_lead(rows)["level"] == 2.5
    assert longest_lead(time_saved([1], [1.0], [1], [0.5]))["epochs_saved"] == 0  # no lead
    assert longest_lead(time_saved([1], [1.0], [1], [2.0])) is None  # the baseline never gets there
    with pytest.raises(ValueError, match="as long as"):
        time_saved([1, 2], [1.0], [1], [1.0])


def test_write_report_files_hold_the_numbers(tmp_path):
    rows, meta = _rows()
    write_metrics(tmp_path, rows, meta)
    info = write_report(tmp_path)
    out = tmp_path / "report"
    for name in ("summary.csv", "summary.json", "final.csv", "time_saved.csv", "time_saved.json", "report.md",
                 "curves.png", "k_sensitivity.png", "time_saved.png"):
        assert (out / name).is_file(), name
    for name in ("curves.png", "k_sensitivity.png", "time_saved.png"):
        assert (out / name).read_bytes()[:8] == PNG
    # the time-saved table equals time_saved() on the mean curves (seed shifts cancel)
    with open(out / "time_saved.csv") as f:
        table = list(csv.DictReader(f))
    assert [(float(r["level"]), int(r["method_epoch"]), int(r["base_epoch"]), int(r["epochs_saved"]))
            for r in table] == [(70.0, 1, 2, 1), (80.0, 2, 3, 1), (88.0, 3, 4, 1), (90.0, 4, 4, 0)]
    # the method's own averaging time is counted against it: 1 s per epoch
    assert float(table[0]["hours_saved"]) == pytest.approx((200 - 101) / 3600)
    doc = json.loads((out / "time_saved.json").read_text())
    assert doc["headline_lead"]["epochs_saved"] == 1 and doc["baseline"] == "base"
    # each seed alone: the curves shifted by -1 / +1 keep the one-epoch lead
    assert [(p["seed"], p["epochs_saved"]) for p in doc["headline_lead_per_seed"]] == [(0, 1), (1, 1)]
    final = {r["method"]: r for r in info["final"]}
    assert final["lawa_k4"]["top1_mean"] == pytest.approx(91.0)
    assert final["lawa_k4"]["top1_std"] == pytest.approx(statistics.stdev([90.0, 92.0]))
    assert "| LAWA k=2" in info["text"] and "beyond the seed spread" in info["text"]
    leads = {r["method"]: r for r in info["leads"]}
    assert leads["lawa_k2_bncopy"]["epochs_saved"] is None or leads["lawa_k2_bncopy"]["epochs_saved"] <= 0


def test_report_from_csv_only_and_loss_metric(tmp_path):
    rows, meta = _rows()
    write_metrics(tmp_path, rows, meta)
    (tmp_path / "metrics.json").unlink()
    loaded, meta2 = load_metrics(tmp_path)
    assert meta2 == {} and loaded[0]["top1"] == rows[0]["top1"] and loaded[0]["seed"] == 0
    info = write_report(tmp_path, metric="val_loss", plots=False)
    assert info["metric"] == "val_loss" and info["baseline"] == "base" and info["headline"] == "lawa_k2"
    # lower is better for a loss: LAWA's 3 - 70/50 = 1.6 is first reached by base at epoch 2
    assert info["time_saved"][0]["level"] == pytest.approx(1.6)
    assert info["time_saved"][0]["epochs_saved"] == 1


def test_report_errors_name_the_problem(tmp_path):
    with pytest.raises(FileNotFoundError, match="lawa bench resnet"):
        load_metrics(tmp_path)
    rows, meta = _rows()
    write_metrics(tmp_path, rows, meta)
    with pytest.raises(ValueError, match="Invalid metric 'ppl'"):
        write_report(tmp_path, metric="ppl")
    with pytest.raises(ValueError, match="Invalid baseline 'adam'"):
        write_report(tmp_path, baseline="adam")


def test_report_cli(tmp_path):
    from click.testing import CliRunner

    rows, meta = _rows()
    write_metrics(tmp_path, rows, meta)
    res = CliRunner().invoke(report, [str(tmp_path), "--no-plots", "--headline", "lawa_k4"])
    assert res.exit_code == 0, res.output
    assert "Time saved: LAWA k=4 against SGD" in res.output
    assert not (tmp_path / "report" / "curves.png").exists()
    res = CliRunner().invoke(report, [str(tmp_path / "nothing")])
    assert res.exit_code == 1 and "No metrics.json" in res.output
    res = CliRunner().invoke(report, ["--help"])
    assert res.exit_code == 0 and "lawa report runs/quick" in res.output


def test_durations_never_read_minus_zero():
    from lawa_benchmarks.report import format_duration

    assert [format_duration(h) for h in (None, 0.0, -1e-5, 1e-5, -0.2 / 3600)] == ["-", "0 s", "0 s", "0 s", "0 s"]
    assert [format_duration(s / 3600) for s in (45, -45, 126, 7300)] == ["45 s", "-45 s", "2.1 min", "2.0 h"]


def _never_rows(base_curve, lawa_curve, times=None):
    rows = []
    for method, curve in (("base", base_curve), ("lawa_k5", lawa_curve)):
        for epoch, top1 in enumerate(curve, start=1):
            rows.append({"method": method, "seed": 0, "epoch": epoch, "top1": top1,
                         "train_time_s": (times or [10.0] * len(curve))[epoch - 1] * epoch})
    return rows, {"baseline": "base", "headline": "lawa_k5", "metric": "top1",
                  "methods": {"base": {"label": "SGD"}, "lawa_k5": {"label": "LAWA k=5"}}}


def test_report_counts_levels_the_baseline_never_reaches(tmp_path):
    """The issue's report said "no time saved" and, on the next line, "SGD never reaches 12.50 (LAWA does at 1)"."""
    rows, meta = _never_rows([10.0, 11.0, 12.0], [12.5, 11.0, 11.5])
    write_metrics(tmp_path, rows, meta)
    text = write_report(tmp_path, plots=False)["text"]
    assert "no time saved" not in text
    assert "SGD never reaches top1 12.50 in its 3 epochs; LAWA k=5 does at epoch 1" in text
    assert "ahead there by at least 3 epoch(s)" in text and "| 12.50" in text and "never" in text
    # with no such level, "no time saved" stays true
    rows, meta = _never_rows([10.0, 11.0, 12.0], [9.0, 10.0, 12.0])
    write_metrics(tmp_path, rows, meta)
    text = write_report(tmp_path, plots=False)["text"]
    assert "no time saved" in text and "never reaches" not in text


def test_time_saved_plot_annotation_has_no_minus_zero(tmp_path, monkeypatch):
    import matplotlib.axes

    texts = []
    real = matplotlib.axes.Axes.annotate
    monkeypatch.setattr(matplotlib.axes.Axes, "annotate", lambda self, text, *a, **kw: (texts.append(text),
                                                                                         real(self, text, *a, **kw))[1])
    # a lead of 1 epoch bought for (almost) exactly its training time: 0 s saved
    rows, meta = _never_rows([50.0, 60.0, 70.0], [60.0, 70.0, 71.0], times=[10.0, 10.0, 10.0])
    for r in rows:
        if r["method"] == "lawa_k5":
            r["avg_time_s"] = 10.0 - 1e-4 if r["epoch"] == 1 else 0.0
    write_metrics(tmp_path, rows, meta)
    info = write_report(tmp_path)
    assert info["headline_lead"]["epochs_saved"] == 1 and abs(info["headline_lead"]["hours_saved"]) < 1e-6
    assert "~1 epoch\n~0 s" in texts and not any("-0" in t or "0.0 min" in t for t in texts)
    assert "0 s of wall-clock" in info["text"] and "-0 s" not in info["text"]
