"""lawa_benchmarks.report: the report's numbers, words and plots, against values worked out by hand.

The data of most tests (:func:`_run`): two seeds, four epochs; SGD (``base``), LAWA k=1 (SGD's
weights with BN recomputed, the second baseline), LAWA k=3 (the headline), its BN-copied variant
and EMA. Per seed and epoch the baseline is the better of SGD and LAWA k=1:

    seed 0: SGD 60 70 80 85, LAWA k=1 61 71 79 84 -> baseline 61 71 80 85; LAWA k=3 71 80 87 84
    seed 1: SGD 62 72 79 88, LAWA k=1 61 73 80 85 -> baseline 62 73 80 88; LAWA k=3 72 79 87 85

LAWA k=3's mean curve 71.5 79.5 87 84.5 gives the levels 71.5, 79.5 and 87. First epochs there:

    71.5: LAWA 2 / 1, baseline 3 / 2      -> saved 1 / 1, 1.0 ± 0.0, beyond the spread
    79.5: LAWA 2 / 3, baseline 3 / 3      -> saved 1 / 0, 0.5 ± 0.71, not beyond
    87:   LAWA 3 / 3, baseline never / 4  -> saved >=2 / 1 (seed 0 counted at epoch 5), 1.5 ± 0.71, beyond
"""

from __future__ import annotations

import csv
import json
import re
import statistics

import pytest

from tests.conftest import require

require("click")
require("matplotlib")

from lawa_benchmarks.metrics import csv_text, level_text  # noqa: E402
from lawa_benchmarks.report import load_metrics, report, summarize, write_metrics, write_report  # noqa: E402
from lawa_benchmarks.report_setup import settings  # noqa: E402

PNG = b"\x89PNG\r\n\x1a\n"
CURVES = {
    "base": {0: [60, 70, 80, 85], 1: [62, 72, 79, 88]},
    "lawa_k1": {0: [61, 71, 79, 84], 1: [61, 73, 80, 85]},
    "lawa_k3": {0: [71, 80, 87, 84], 1: [72, 79, 87, 85]},
    "lawa_k3_bncopy": {0: [65, 75, 82, 83], 1: [66, 74, 83, 84]},
    "ema": {0: [64, 74, 84, 85], 1: [65, 76, 83, 86]},
}
META = {"baseline": "base", "headline": "lawa_k3", "metric": "top1", "higher_is_better": True,
        "methods": {"base": {"label": "SGD", "family": "base"},
                    "lawa_k1": {"label": "LAWA k=1", "family": "lawa", "k": 1, "bn": "recompute"},
                    "lawa_k3": {"label": "LAWA k=3", "family": "lawa", "k": 3, "bn": "recompute"},
                    "lawa_k3_bncopy": {"label": "LAWA k=3, BN copied", "family": "lawa", "k": 3, "bn": "copy"},
                    "ema": {"label": "EMA", "family": "ema"}}}


def _rows(curves=CURVES):
    rows = []
    for method, seeds in curves.items():
        for seed, curve in seeds.items():
            for epoch, top1 in enumerate(curve, start=1):
                rows.append({"run": "base", "method": method, "seed": seed, "epoch": epoch, "top1": float(top1),
                             "top5": min(99.9, 95.0 + epoch + seed * 0.05), "val_loss": 1.0 - top1 / 200,
                             "train_loss": 2.0 * 10 ** (-epoch / 2), "train_time_s": 10.0 * epoch,
                             "avg_time_s": 0.0 if method == "base" else 1.0})
    return rows


@pytest.fixture
def run(tmp_path):
    write_metrics(tmp_path, _rows(), META)
    return tmp_path


# ------------------------------------------------------------------------------ numbers
def test_summarize_mean_and_std_match_statistics():
    rows = _rows()
    s = next(s for s in summarize(rows) if s["method"] == "ema" and s["epoch"] == 2)
    assert s["n_seeds"] == 2
    assert s["top1_mean"] == pytest.approx(statistics.mean([74, 76]))
    assert s["top1_std"] == pytest.approx(statistics.stdev([74, 76]))
    assert len(summarize(rows)) == 5 * 4


def test_the_lead_per_level_and_seed_matches_the_hand_computed_table(run):
    info = write_report(run, plots=False)
    assert info["baselines"] == ["base", "lawa_k1"]
    got = [(r["level"], r["seed"], r["method_epoch"], r["base_epoch"], r["epochs_saved"], r["lower_bound"])
           for r in info["time_saved"]]
    assert got == [(71.5, 0, 2, 3, 1, False), (71.5, 1, 1, 2, 1, False),
                   (79.5, 0, 2, 3, 1, False), (79.5, 1, 3, 3, 0, False),
                   (87.0, 0, 3, None, 2, True), (87.0, 1, 3, 4, 1, False)]
    levels = info["robust_lead"]["levels"]
    assert [lv["significant"] for lv in levels] == [True, False, True]
    assert levels[2]["mean"] == 1.5 and levels[2]["std"] == pytest.approx(statistics.stdev([2, 1]))
    # the CSV holds the same rows, rounded
    with open(run / "report" / "time_saved.csv") as f:
        table = list(csv.DictReader(f))
    assert [(r["level"], r["seed"], r["base_epoch"], r["epochs_saved"]) for r in table][4:] == [
        ("87", "0", "", "2"), ("87", "1", "4", "1")]
    assert table[2]["std_saved"] == "0.707107"


def test_the_sentence_and_the_table_tell_one_story(run):
    """The issue's report called a level a lower bound in its sentence while its table had SGD reach it."""
    text = write_report(run, plots=False)["text"]
    lines = text.splitlines()
    assert lines[2] == (
        "LAWA k=3 is ahead of the better of SGD / SGD with BN recomputed (LAWA k=1) beyond the seed spread "
        "(2 seeds) at 2 of 3 top1 levels (71.5 and 87): a median 1.2 epochs earlier, at most 1.5 ± 0.7 epochs at "
        "top1 87 (a lower bound: in seed 0 the baseline never gets there in 4 epochs, counted as reaching it at "
        "epoch 5), of a 4-epoch run.")  # the levels listed, not a range "71.5 to 87" that 79.5 is inside
    row = next(r for r in lines if r.startswith("| 87 "))
    cells = [c.strip() for c in row.strip("|").split("|")]
    assert cells[:6] == ["87", "3 / 3", "never / 4", "≥2 / 1", "≥1.5 ± 0.7", "yes"]
    # said once, at the top: per seed
    assert text.count("How to read it: every lead below is per seed") == 1
    assert "mean curves" not in text


def test_the_last_values_side_by_side_with_the_sign_in_words(run):
    info = write_report(run, plots=False)
    # LAWA k=3 ends at (84 + 85) / 2 = 84.5; SGD at (85 + 88) / 2 = 86.5; LAWA k=1 at (84 + 85) / 2 = 84.5
    assert info["final_sentence"] == (
        "At the last epoch (4, mean ± std over 2 seeds) LAWA k=3 ends at top1 84.5 ± 0.71: 2 points below SGD "
        "(86.5 ± 2.1) and level with LAWA k=1 (84.5 ± 0.71).")
    assert info["text"].splitlines()[3] == info["final_sentence"]
    final = {f["method"]: f for f in info["final"]}
    assert final["ema"]["top1_minus_baseline"] == pytest.approx(85.5 - 86.5)
    assert re.search(r"\| EMA +\| 4 +\| 85\.5 ± 0\.71 +\| 1 point below +\|", info["text"])


def test_every_row_names_one_baseline(run):
    text = write_report(run, plots=False)["text"]
    base = "the better of SGD / SGD with BN recomputed (LAWA k=1)"
    assert f"## Lead over {base} beyond the seed spread" in text
    assert f"## Time saved: LAWA k=3 against {base} (per seed)" in text
    assert "against SGD at the last epoch" in text  # the one column compared with SGD alone says so
    lead_rows = text.split("## Lead over")[1].split("## Time saved")[0]
    assert "SGD" not in lead_rows.split("\n", 3)[3]  # no row names another baseline
    assert "| LAWA k=1 " not in lead_rows  # the second baseline is a baseline, not a row


def test_csv_values_are_rounded(run):
    assert csv_text([{"level": 82.44999999999999, "n": 3, "x": None, "flag": True}]) == \
        "level,n,x,flag\n82.45,3,,True\n"
    write_report(run, plots=False)
    for name in ("summary.csv", "final.csv", "time_saved.csv"):
        text = (run / "report" / name).read_text()
        assert not re.search(r"\.\d{9,}", text), name  # no float noise such as 82.44999999999999
    assert level_text(82.44999999999999) == "82.45" and level_text(1.83612) == "1.836"


def test_report_from_csv_only_and_loss_metric(tmp_path):
    write_metrics(tmp_path, _rows(), META)
    (tmp_path / "metrics.json").unlink()
    loaded, meta2 = load_metrics(tmp_path)
    assert meta2 == {} and loaded[0]["top1"] == 60.0 and loaded[0]["seed"] == 0
    info = write_report(tmp_path, metric="val_loss", plots=False)
    assert info["metric"] == "val_loss" and info["baseline"] == "base" and info["headline"] == "lawa_k1"
    # without meta there is no second baseline; lower is better: LAWA k=1's first level is its mean at epoch 1
    assert info["baselines"] == ["base"]
    assert info["time_saved"][0]["level"] == pytest.approx(1 - 61 / 200)
    assert info["time_saved"][0]["epochs_saved"] == 1  # seed 0: SGD's 60 is worse than 61 at epoch 1


def test_report_errors_name_the_problem(tmp_path):
    with pytest.raises(FileNotFoundError, match="lawa bench resnet"):
        load_metrics(tmp_path)
    write_metrics(tmp_path, _rows(), META)
    with pytest.raises(ValueError, match="Invalid metric 'ppl'"):
        write_report(tmp_path, metric="ppl")
    with pytest.raises(ValueError, match="Invalid baseline 'adam'"):
        write_report(tmp_path, baseline="adam")


def test_report_cli(run):
    from click.testing import CliRunner

    res = CliRunner().invoke(report, [str(run), "--no-plots", "--headline", "ema"])
    assert res.exit_code == 0, res.output
    assert "Time saved: EMA against the better of SGD" in res.output
    assert not (run / "report" / "curves.png").exists()
    res = CliRunner().invoke(report, [str(run / "nothing")])
    assert res.exit_code == 1 and "No metrics.json" in res.output
    res = CliRunner().invoke(report, ["--help"])
    assert res.exit_code == 0 and "lawa report runs/quick" in res.output


def test_durations_never_read_minus_zero():
    from lawa_benchmarks.report import format_duration

    assert [format_duration(h) for h in (None, 0.0, -1e-5, 1e-5, -0.2 / 3600)] == ["-", "0 s", "0 s", "0 s", "0 s"]
    assert [format_duration(s / 3600) for s in (45, -45, 126, 7300)] == ["45 s", "-45 s", "2.1 min", "2.0 h"]


# ------------------------------------------------------------------------------ plots
def test_write_report_writes_every_file(run):
    info = write_report(run)
    for name in ("summary.csv", "summary.json", "final.csv", "time_saved.csv", "time_saved.json", "report.md",
                 "curves.png", "k_sensitivity.png", "time_saved.png"):
        assert (run / "report" / name).is_file(), name
        assert name in info["files"]
    for name in ("curves.png", "k_sensitivity.png", "time_saved.png"):
        assert (run / "report" / name).read_bytes()[:8] == PNG
    doc = json.loads((run / "report" / "time_saved.json").read_text())
    assert doc["baselines"] == ["base", "lawa_k1"] and doc["leads"]["ema"]["levels"] >= 1
    assert "![time saved](time_saved.png)" in info["text"]


def _figures(run_dir, rows=None):
    from lawa_benchmarks.lead import robust_lead
    from lawa_benchmarks.report_plots import curves_figure, k_sensitivity_figure, method_styles, time_saved_figure

    rows = rows or _rows()
    setup = settings(run_dir, rows, META)
    styles = method_styles(setup)
    summary = summarize(rows)
    lead = robust_lead(rows, setup.baselines, setup.headline, "top1")
    return setup, styles, lead, {"curves": curves_figure(summary, setup, styles),
                                 "k": k_sensitivity_figure(summary, setup, styles),
                                 "time_saved": time_saved_figure(rows, summary, setup, styles, lead)}


def _close(figs):
    import matplotlib.pyplot as plt

    for f in figs.values():
        plt.close(f)


def test_one_colour_per_method_in_every_plot_owned_by_the_registry(tmp_path):
    from matplotlib.colors import to_rgba

    import lawa_optim

    setup, styles, _, figs = _figures(tmp_path)
    seen: dict[str, set] = {}
    for fig in figs.values():
        for ax in fig.axes:
            for line in ax.get_lines():
                if not line.get_label().startswith("_") and not line.get_label().startswith("epoch"):
                    seen.setdefault(line.get_label(), set()).add((to_rgba(line.get_color()), line.get_linestyle()))
    _close(figs)
    assert all(len(v) == 1 for v in seen.values()), seen  # the same colour and line style in every plot
    assert len({next(iter(v)) for v in seen.values()}) == len(seen)  # and no two methods share them
    # curves.png draws the second baseline and the BN-copied variant, each distinct from the headline
    assert {"SGD", "LAWA k=1", "LAWA k=3", "LAWA k=3, BN copied", "EMA"} <= set(seen)
    assert to_rgba(styles["lawa_k3"]["color"]) == to_rgba(lawa_optim.get_method_info("lawa").color)
    assert to_rgba(styles["ema"]["color"]) == to_rgba(lawa_optim.get_method_info("ema").color)
    assert to_rgba(styles["base"]["color"]) == to_rgba(lawa_optim.get_method_info("base").color)
    assert styles["lawa_k1"]["ls"] == "--" and styles["lawa_k3_bncopy"]["color"] != styles["lawa_k3"]["color"]


def test_the_arrow_is_drawn_where_the_curves_reach_the_level(tmp_path):
    from matplotlib.text import Annotation

    setup, _, lead, figs = _figures(tmp_path)
    fig = figs["time_saved"]
    panels = fig.axes[:2]  # seed 0, seed 1
    assert lead["max_saved"]["level"] == 87.0
    for ax, (me, end, be) in zip(panels, [(3, 5, None), (3, 4, 4)]):
        arrows = [t for t in ax.texts if isinstance(t, Annotation) and t.arrow_patch is not None]
        assert len(arrows) == 1
        (x1, y1), (x0, y0) = arrows[0].xy, arrows[0].xyann
        assert (x0, x1, y0, y1) == (me, end, 87.0, 87.0)
        lines = {line.get_label(): dict(zip(line.get_xdata(), line.get_ydata())) for line in ax.get_lines()}
        head = lines["LAWA k=3"]
        assert head[me] >= 87.0 > head[me - 1]  # the headline's curve reaches the level at the arrow's start
        better = {e: max(lines["SGD"][e], lines["LAWA k=1"][e]) for e in head}
        if be is None:  # never: the arrow runs past the last epoch, and says so
            assert max(better.values()) < 87.0 and end == max(head) + 1
            assert any("never gets there" in t.get_text() for t in ax.texts)
        else:
            assert better[be] >= 87.0 > better[be - 1]  # and the baseline's at its end
            assert any(t.get_text() == "1 epoch" for t in ax.texts)
    _close(figs)


def test_bar_labels_are_rounded_like_the_text_and_a_zero_bar_shows(tmp_path):
    setup, _, lead, figs = _figures(tmp_path)
    bars = figs["time_saved"].axes[-1]
    assert [t.get_text() for t in bars.get_xticklabels()] == ["71.5", "79.5", "87"]
    assert [t.get_text() for t in bars.texts] == ["1.0", "0.5", "≥1.5"]
    _close(figs)
    # LAWA k=3 identical to SGD (and LAWA k=1 no better): every bar is zero, each drawn as a thick line at 0
    same = {**CURVES, "lawa_k3": CURVES["base"], "lawa_k1": {s: [v - 5 for v in c] for s, c in CURVES["base"].items()}}
    _, _, lead, figs = _figures(tmp_path, _rows(same))
    bars = figs["time_saved"].axes[-1]
    assert all(lv["mean"] == 0 for lv in lead["levels"])
    assert [t.get_text() for t in bars.texts] == ["0.0"] * len(lead["levels"])
    zero_lines = [ln for ln in bars.get_lines() if list(ln.get_ydata()) == [0, 0] and ln.get_linewidth() >= 2]
    assert len(zero_lines) == len(lead["levels"])
    _close(figs)


def test_axes_are_readable(tmp_path):
    _, _, _, figs = _figures(tmp_path)
    axes = {ax.get_title(): ax for ax in figs["curves"].axes if ax.get_title()}
    assert axes["validation top-5 (%)"].get_ylim()[1] <= 100.0  # never beyond 100 %
    assert axes["validation loss"].get_yscale() == "linear"  # 0.56 to 0.7: within a decade
    assert axes["training loss"].get_yscale() == "log"  # 2 to 0.02: two decades
    _close(figs)
