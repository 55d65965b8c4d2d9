"""`lawa bench average-cost` (benchmarks/offline_cost.py) on a tiny model: it measures and writes what it says."""

from __future__ import annotations

import csv
import json

import pytest
import torch
from conftest import require


def test_llama_state_dict_has_smollm_135m_shapes():
    from lawa_benchmarks.offline_cost import CostConfig, llama_state_dict

    sd = llama_state_dict(CostConfig(out="unused"))
    assert sum(v.numel() for v in sd.values()) == 134_515_008  # SmolLM-135M, tied embeddings
    assert sd["model.layers.0.self_attn.k_proj.weight"].shape == (192, 576)
    assert "lm_head.weight" not in sd


def test_bad_config_is_refused():
    from lawa_benchmarks.offline_cost import CostConfig

    with pytest.raises(ValueError, match="Invalid formats"):
        CostConfig(out="x", formats=("pt", "onnx"))
    with pytest.raises(ValueError, match="Invalid threads"):
        CostConfig(out="x", threads=(0,))


@pytest.mark.slow
@pytest.mark.cli
def test_average_cost_runs_every_tool_and_reports_ratios(tmp_path):
    require("safetensors", "the benchmark writes HF folders")
    require("mergekit", "the HF row compares with mergekit's linear merge")
    click_testing = require("click.testing")
    from lawa_optim.cli import main

    out = tmp_path / "cost"
    result = click_testing.CliRunner().invoke(main, ["bench", "average-cost", "--out", str(out), "--k", "2",
                                                     "--repeats", "1", "--layers", "1", "--hidden", "64",
                                                     "--vocab", "100", "--formats", "pt,hf", "--threads", "1",
                                                     "--keep-checkpoints"])
    assert result.exit_code == 0, result.output
    res = json.loads((out / "results.json").read_text())
    assert sorted((r["format"], r["tool"]) for r in res["rows"]) == sorted(
        [("pt", t) for t in ("read", "floor", "floor+write", "plain", "lawa")]
        + [("hf", t) for t in ("read", "floor", "floor+write", "mergekit", "lawa")])
    assert res["parameters"] == 100 * 64 + 4 * 64 * 64 + 3 * 170 * 64 + 3 * 64  # embed, attention, MLP, norms
    cells, ratios = res["cells"], res["ratios"]
    assert ratios["pt/1"]["lawa_vs_plain_time"] == pytest.approx(cells["pt/1/lawa"]["seconds"]
                                                                 / cells["pt/1/plain"]["seconds"])
    assert ratios["hf/1"]["lawa_vs_mergekit_memory"] == pytest.approx(cells["hf/1/lawa"]["peak_rss_mib"]
                                                                      / cells["hf/1/mergekit"]["peak_rss_mib"])
    assert ratios["hf/1"]["lawa_vs_floor_time"] == pytest.approx(cells["hf/1/lawa"]["seconds"]
                                                                 / cells["hf/1/floor"]["seconds"])
    assert ratios["pt/1"]["lawa_vs_floor+write_time"] == pytest.approx(cells["pt/1/lawa"]["seconds"]
                                                                       / cells["pt/1/floor+write"]["seconds"])
    assert set(res["met"]) == {"pt/1/lawa_vs_plain_time", "pt/1/lawa_vs_plain_memory", "pt/1/lawa_vs_floor_time",
                               "pt/1/lawa_vs_floor+write_time", "hf/1/lawa_vs_mergekit_time",
                               "hf/1/lawa_vs_mergekit_memory", "hf/1/lawa_vs_floor_time",
                               "hf/1/lawa_vs_floor+write_time"}
    assert cells["pt/1/lawa"]["peak_rss_mib"] > 100  # torch is imported in every child but the read
    with open(out / "results.csv") as f:
        assert len(list(csv.DictReader(f))) == len(res["rows"])
    assert (out / "cost.png").stat().st_size > 0
    table = (out / "table.md").read_text()
    assert "mergekit `linear`" in table and "vs plain time" in table and table in result.output
    # the benchmark's own checkpoints average to what the library computes
    from lawa_optim.offline import average_checkpoints

    pts = sorted((out / "checkpoints" / "pt").iterdir())
    want = average_checkpoints(pts)["model"]
    got = average_checkpoints(sorted((out / "checkpoints" / "hf").iterdir()))
    assert all(torch.equal(got[k], want[k]) for k in want)


def test_summary_ratios_and_table_from_rows():
    """The floors are measured at one thread only; every ratio divides the medians of the rounds."""
    from lawa_benchmarks.offline_cost import CostConfig, markdown_table, summarize

    cfg = CostConfig(out="x", formats=("pt",), threads=(1, 2), repeats=3)
    secs = {"read": 1.0, "floor": 2.0, "floor+write": 2.5, "plain": 10.0, "lawa": 4.0}
    rows = []
    for r in range(3):
        for threads in (1, 2):
            for tool, s in secs.items():
                if threads == 2 and tool in ("read", "floor", "floor+write"):
                    continue
                t = s * (1 + r) / threads  # rounds 1x, 2x, 3x: the median is round 1's
                rows.append({"round": r, "format": "pt", "tool": tool, "threads": threads, "seconds": t,
                             "cpu_seconds": t, "process_seconds": t + 2, "import_seconds": 2.0,
                             "peak_rss_mib": 1000.0 if tool == "plain" else 600.0})
    res = summarize(cfg, rows, 10**6, {"pt": 6 * 4 * 10**6}, {})
    assert res["ratios"]["pt/1"]["lawa_vs_plain_time"] == pytest.approx(0.4)
    assert res["ratios"]["pt/1"]["lawa_vs_floor_time"] == pytest.approx(2.0)
    assert res["ratios"]["pt/1"]["lawa_vs_floor+write_time"] == pytest.approx(1.6)
    assert res["ratios"]["pt/1"]["lawa_vs_plain_memory"] == pytest.approx(0.6)
    assert res["ratios"]["pt/2"]["lawa_vs_floor_time"] == pytest.approx(1.0)  # against the one-thread floor
    assert res["ratios"]["pt/speedup_2_threads"] == pytest.approx(2.0)
    assert res["ratios"]["pt/1"]["lawa_vs_floor+write_cpu"] == pytest.approx(1.6)
    assert res["met"] == {"pt/1/lawa_vs_plain_time": True, "pt/1/lawa_vs_plain_memory": True,
                          "pt/1/lawa_vs_floor_time": False, "pt/1/lawa_vs_floor+write_time": False}
    table = markdown_table(res)
    assert "| fairseq-style .pt | read + float64 sum (the floor) | 4.00 s (4.00 s) | - | 600 MiB |" in table
    assert "| fairseq-style .pt | **`lawa average`** | 8.00 s (8.00 s) | 4.00 s (4.00 s) | 600 MiB |" in table
    assert "2 threads: 2.00x faster" in table
