"""`lawa bench average-cost` (benchmarks/offline_cost.py) on a tiny model: it measures and writes what it says."""

from __future__ import annotations

import csv
import json

import pytest
from conftest import require


@pytest.mark.slow
@pytest.mark.cli
def test_average_cost_runs_and_reports_ratios(tmp_path):
    transformers = require("transformers", "the benchmark saves BERT checkpoints with save_pretrained")
    click_testing = require("click.testing")
    from lawa_optim.cli import main

    out = tmp_path / "cost"
    result = click_testing.CliRunner().invoke(main, ["bench", "average-cost", "--out", str(out), "--k", "3",
                                                     "--repeats", "1", "--layers", "1", "--hidden", "64",
                                                     "--vocab", "100"])
    assert result.exit_code == 0, result.output
    res = json.loads((out / "results.json").read_text())
    assert [r["task"] for r in res["rows"]] == ["read", "read+sum", "average"]
    bert = transformers.BertModel(transformers.BertConfig(vocab_size=100, hidden_size=64, num_hidden_layers=1,
                                                          num_attention_heads=1, intermediate_size=256))
    assert res["parameters"] == sum(p.numel() for p in bert.parameters())
    assert res["fp32_mib"] == pytest.approx(res["parameters"] * 4 / 2**20)
    assert res["time_ratio"] == pytest.approx(res["average_seconds"] / res["read_seconds"])
    assert res["memory_ratio_above_imports"] == pytest.approx(
        (res["average_peak_rss_mib"] - res["average_rss_after_imports_mib"]) / res["fp32_mib"])
    assert res["average_peak_rss_mib"] >= res["average_rss_after_imports_mib"] > 100  # torch is imported in both
    with open(out / "results.csv") as f:
        assert [row["task"] for row in csv.DictReader(f)] == ["read", "read+sum", "average"]
    assert not (out / "checkpoints").exists() and not (out / "lawa").exists()  # cleaned up
    assert "x the read time (target <= 1.5" in result.output
