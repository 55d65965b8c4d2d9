"""benchmarks/lead.py: the spread-aware lead, against leads computed by hand on small curves."""

from __future__ import annotations

import math

import pytest

from lawa_benchmarks.lead import lead_sentence, robust_lead


def _rows(method, curves, times=None):
    rows = []
    for seed, values in enumerate(curves):
        for e, v in enumerate(values, start=1):
            r = {"method": method, "seed": seed, "epoch": e, "top1": v}
            if times is not None:
                r["train_time_s"], r["avg_time_s"] = 10.0 * e, times
            rows.append(r)
    return rows


def test_lead_paired_per_seed_with_spread_by_hand():
    base = [[50, 60, 70, 80], [52, 61, 69, 80], [51, 59, 71, 80]]
    lawa = [[60, 70, 80, 81], [61, 70, 80, 81], [60, 71, 79, 81]]  # one epoch ahead in every seed
    lead = robust_lead(_rows("base", base) + _rows("lawa", lawa), "base", "lawa", "top1")
    assert lead["n_seeds"] == 3
    # levels: the mean curve's new bests 60.33, 70.33, 79.67, 81
    assert [round(lv["level"], 2) for lv in lead["levels"]] == [60.33, 70.33, 79.67, 81.0]
    first = lead["levels"][0]  # 60.33
    # seed 0: lawa 60 < 60.33 -> epoch 2; base reaches 60.33 at epoch 3 -> saved 1
    # seed 1: lawa 61 at epoch 1; base 61 < 60.33? 61 >= 60.33 at epoch 2 -> saved 1
    # seed 2: lawa 60 < 60.33 -> epoch 2 (71); base 59 -> epoch 3 (71) -> saved 1
    assert first["saved"] == [1, 1, 1] and first["std"] == 0 and first["significant"]
    last = lead["levels"][-1]  # 81: base never reaches it -> censored, counted as epochs left (5 - 4 = 1)
    assert last["censored"] and last["saved"] == [1, 1, 1]
    assert lead["median_saved"] == 1.0
    text = lead_sentence(lead, "LAWA", "SGD")
    assert text.startswith("LAWA is ahead of SGD beyond the seed spread (3 seeds) at 4 of 4 top1 levels")


def test_no_lead_beyond_spread_when_seeds_disagree():
    base = [[50, 60, 70], [50, 60, 70]]
    lawa = [[60, 70, 70], [40, 55, 70]]  # ahead in seed 0, behind in seed 1
    lead = robust_lead(_rows("base", base) + _rows("lawa", lawa), "base", "lawa", "top1")
    assert lead["significant"] == []
    assert lead_sentence(lead, "LAWA", "SGD").startswith("No lead beyond the seed spread")


def test_better_of_two_baselines_per_seed_and_epoch():
    base = [[50, 60, 70], [50, 60, 70]]
    base_bn = [[60, 70, 70], [60, 70, 70]]  # recomputing BN alone gives the lead
    lawa = [[60, 70, 70], [60, 70, 70]]
    rows = _rows("base", base) + _rows("base_bn", base_bn) + _rows("lawa", lawa)
    assert robust_lead(rows, "base", "lawa", "top1")["median_saved"] == 1.0
    lead = robust_lead(rows, ["base", "base_bn"], "lawa", "top1")
    assert lead["significant"] == [] and all(lv["mean"] == 0 for lv in lead["levels"])


def test_lower_is_better_and_seconds_with_own_cost():
    base = [[3.0, 2.5, 2.0], [3.0, 2.5, 2.0]]
    lawa = [[2.5, 2.0, 1.9], [2.5, 2.0, 1.9]]
    rows = _rows("base", base, times=0.0) + _rows("lawa", lawa, times=1.0)
    rows = [{**r, "val_loss": r.pop("top1")} for r in rows]
    lead = robust_lead(rows, "base", "lawa", "val_loss", higher_is_better=False, steps_per_epoch=10)
    lv = lead["levels"][0]  # 2.5: lawa epoch 1 (10 s + 1 s own cost), base epoch 2 (20 s)
    assert lv["saved"] == [1, 1] and lv["seconds_saved"] == pytest.approx(9.0)
    assert "10 steps" in lead_sentence(lead, "LAWA", "AdamW")


def test_one_seed_says_there_is_no_spread():
    lead = robust_lead(_rows("base", [[50, 60]]) + _rows("lawa", [[60, 61]]), "base", "lawa", "top1")
    assert lead["significant"] == [] and lead["n_seeds"] == 1
    assert lead_sentence(lead, "LAWA", "SGD").startswith("One seed only")
    assert not math.isnan(lead["largest"]["mean"])


def test_report_opens_with_the_spread_aware_sentence_against_the_better_baseline(tmp_path):
    """`lawa report`: report.md opens with the sentence and the plot; lawa_k1 with BN recomputed is a baseline."""
    from lawa_benchmarks.report import write_metrics, write_report

    base = [[50, 60, 70, 80], [52, 61, 69, 80], [51, 59, 71, 80]]
    k1 = [[55, 65, 75, 80], [56, 66, 74, 80], [55, 64, 76, 80]]  # the raw weights, BN recomputed: ahead of base
    lawa = [[60, 70, 80, 81], [61, 70, 80, 81], [60, 71, 79, 81]]
    rows = _rows("base", base) + _rows("lawa_k1", k1) + _rows("lawa_k6", lawa)
    meta = {"baseline": "base", "headline": "lawa_k6", "metric": "top1", "higher_is_better": True,
            "methods": {"base": {"label": "SGD"}, "lawa_k1": {"label": "LAWA k=1", "bn": "recompute", "k": 1},
                        "lawa_k6": {"label": "LAWA k=6", "bn": "recompute", "k": 6}}}
    write_metrics(tmp_path, rows, meta)
    info = write_report(tmp_path)
    assert info["baselines"] == ["base", "lawa_k1"]
    text = (tmp_path / "report" / "report.md").read_text().splitlines()
    assert text[2].startswith("LAWA k=6 is ahead of the better of SGD / SGD with BN recomputed (LAWA k=1) "
                              "beyond the seed spread (3 seeds)")
    assert text[3].startswith("At the last epoch (4, mean ± std over 3 seeds) LAWA k=6 ends at top1 81 ± 0:")
    assert "![time saved](time_saved.png)" in text
    # against the better baseline the lead is smaller than against SGD alone
    alone = robust_lead(rows, "base", "lawa_k6", "top1")
    assert info["robust_lead"]["median_saved"] < alone["median_saved"]
    assert (tmp_path / "report" / "time_saved.png").read_bytes()[:4] == b"\x89PNG"
