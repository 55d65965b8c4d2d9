"""lawa_benchmarks.roberta.results: fairseq JSON log -> per-epoch Adam/LAWA records, epochs saved, files."""

from __future__ import annotations

import json

import pytest

from lawa_benchmarks.roberta.results import epochs_saved, parse_log, saved_curve, write_results


def _valid(epoch, ppl, lawa=None, updates=None):
    rec = {"epoch": epoch, "valid_loss": "1.0", "valid_ppl": str(ppl), "valid_num_updates": str(updates or 10 * epoch)}
    if lawa is not None:
        rec["valid_lawa_loss"] = "0.9"
        rec["valid_lawa_ppl"] = str(lawa)
    return "2026-11-28 22:10:00 | INFO | valid | " + json.dumps(rec)


def _train(epoch, loss):
    rec = {"epoch": epoch, "train_loss": str(loss), "train_train_wall": "5", "train_wall": str(6 * epoch)}
    return "2026-11-28 22:10:00 | INFO | train | " + json.dumps(rec)


ADAM = [100, 80, 60, 50, 45, 42, 40]
LAWA = [None, 70, 52, 44, 41, 39, 38]


def _log():
    lines = ["noise | INFO | fairseq_cli.train | {not json",
             '2026 | INFO | train_inner | {"epoch": 1, "loss": "3"}']
    for e, (a, w) in enumerate(zip(ADAM, LAWA), start=1):
        lines += [_train(e, 5.0 / e), _valid(e, a, w)]
    return lines


def test_parse_log_reads_adam_and_lawa_per_epoch():
    recs = parse_log(_log())
    assert [r["epoch"] for r in recs] == list(range(1, 8))
    assert [r["adam_ppl"] for r in recs] == ADAM
    assert [r["lawa_ppl"] for r in recs] == LAWA
    assert recs[2]["train_loss"] == 5.0 / 3 and recs[2]["num_updates"] == 30
    assert recs[2]["cum_wall"] == 18 and recs[2]["wall"] == 5


def test_parse_log_last_line_of_an_epoch_wins_after_resume():
    lines = _log() + [_valid(7, 39.5, 37.0)]
    recs = parse_log(lines)
    assert len(recs) == 7 and recs[-1]["adam_ppl"] == 39.5 and recs[-1]["lawa_ppl"] == 37.0


def test_epochs_saved_is_the_gap_to_adams_best():
    s = epochs_saved(parse_log(_log()))
    # Adam's best 40 at epoch 7; LAWA first <= 40 at epoch 6 (39)
    assert (s["adam_best"], s["adam_best_epoch"], s["lawa_epoch"], s["epochs_saved"]) == (40, 7, 6, 1)
    assert (s["lawa_best"], s["lawa_best_epoch"], s["adam_final"], s["lawa_final"]) == (38, 7, 40, 38)


def test_epochs_saved_none_when_lawa_never_reaches():
    recs = parse_log([_valid(1, 10, None), _valid(2, 5, 6)])
    assert epochs_saved(recs)["epochs_saved"] is None


def test_saved_curve_per_target():
    curve = saved_curve(parse_log(_log()))
    # Adam at epoch 4 is 50: LAWA first <= 50 at epoch 4 (44)... at epoch 3 it is 52, so 0 saved
    by_epoch = {c["epoch"]: c for c in curve}
    assert by_epoch[1]["lawa_epoch"] == 2 and by_epoch[1]["epochs_saved"] == -1
    assert by_epoch[5]["lawa_epoch"] == 4 and by_epoch[5]["epochs_saved"] == 1
    assert by_epoch[7]["epochs_saved"] == 1


def test_write_results_files(tmp_path):
    from lawa_benchmarks.report import load_metrics, write_report

    summary = write_results(parse_log(_log()), tmp_path, {"name": "t", "lawa_k": 3})
    rows, meta = load_metrics(tmp_path)
    assert [r["val_ppl"] for r in rows if r["method"] == "lawa_k3"] == [v for v in LAWA if v is not None]
    assert [r["val_ppl"] for r in rows if r["method"] == "adam"] == ADAM
    assert meta["baseline"] == "adam" and meta["metric"] == "val_ppl" and meta["higher_is_better"] is False
    assert json.load(open(tmp_path / "results.json"))["ppl"]["epochs_saved"] == summary["ppl"]["epochs_saved"] == 1
    assert (tmp_path / "epochs.csv").read_text().startswith("epoch,")
    report = write_report(tmp_path, plots=False)  # the shared report reads what the runner wrote
    assert report["headline"] == "lawa_k3" and report["baseline"] == "adam"
    # LAWA's 70 (epoch 2) Adam reaches at epoch 3 (60): one epoch saved, as the shared report counts it
    assert {r["level"]: r["epochs_saved"] for r in report["time_saved"]}[70] == 1


def test_plot_results(tmp_path):
    pytest.importorskip("matplotlib")
    from lawa_benchmarks.roberta.plot import plot_results

    summary = write_results(parse_log(_log()), tmp_path, {"name": "t", "lawa_k": 3})
    path = plot_results(summary, tmp_path / "p.png")
    assert path.stat().st_size > 10_000 and path.read_bytes()[:4] == b"\x89PNG"


def test_summary_line_never_prints_none():
    from lawa_benchmarks.roberta.results import summary_line

    never = summary_line(epochs_saved(parse_log([_valid(1, 10, None), _valid(2, 5, 6)])))
    assert never == "Adam's best validation ppl 5.00 at epoch 2; LAWA never reaches it (its best: 6.00 at epoch 2); " \
                    "final Adam 5.00, LAWA 6.00"
    assert "None" not in never
    saved = summary_line(epochs_saved(parse_log(_log())))
    assert saved == "Adam's best validation ppl 40.00 at epoch 7; LAWA reaches it at epoch 6: 1 epoch(s) saved; " \
                    "final Adam 40.00, LAWA 38.00"
    no_lawa = summary_line(epochs_saved(parse_log([_valid(1, 10, None)])))
    assert no_lawa == "Adam's best validation ppl 10.00 at epoch 1; LAWA never reaches it (no LAWA validation logged)" \
                      "; final Adam 10.00"
    assert summary_line(epochs_saved([])) == "no validation perplexity was logged yet"
