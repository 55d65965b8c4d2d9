"""``lawa bench overhead-per-rank``: snapshot and swap time per rank under FSDP2 (never its timings).

The benchmark launches world 1 and world 2 itself; what is checked is what it computes: each
rank's local shard (from the layers' shapes), that the snapshots were really taken on every
rank, and that every time is a positive, finite number written to the files.
"""

from __future__ import annotations

import csv
import json
import math

import pytest
from conftest import require


def _per_rank():
    require("click")
    require("matplotlib")
    require("tqdm")
    from lawa_benchmarks.overhead import per_rank

    return per_rank


def _rows_on_rank(rows: int, world: int, rank: int) -> int:
    """FSDP2 shards dim 0 like torch.chunk: ceil(rows / world) rows per rank, the last ones fewer (or none)."""
    chunk = -(-rows // world)
    return max(0, min(rows, (rank + 1) * chunk) - rank * chunk)


def test_width_and_config():
    per_rank = _per_rank()
    assert per_rank.width_for(200_000, 8) == 158  # 8 * (158 * 158 + 158) = 200,976, the closest
    assert per_rank.width_for(4_000_000, 8) == 707
    with pytest.raises(ValueError) as err:
        per_rank.PerRankConfig(out="x", worlds=(1, 0), repeats=0, k=0)
    msg = str(err.value)
    assert "worlds=(1, 0)" in msg and "repeats=0" in msg and "k=0" in msg


@pytest.mark.slow
@pytest.mark.distributed
@pytest.mark.cli
def test_per_rank_runs_world_1_and_2_and_writes_its_files(tmp_path):
    per_rank = _per_rank()
    from click.testing import CliRunner

    from lawa_optim.cli import main

    out = tmp_path / "per_rank"
    repeats, k, layers = 3, 4, 8
    res = CliRunner().invoke(main, ["bench", "overhead-per-rank", "--params", "2e5", "--worlds", "1,2",
                                    "--repeats", str(repeats), "--k", str(k), "--layers", str(layers),
                                    "--no-progress", "--out", str(out)])
    assert res.exit_code == 0, res.output
    for name in ("per_rank.json", "per_rank.csv", "per_rank.md", "per_rank.png"):
        assert (out / name).is_file() and (out / name).stat().st_size > 0, name
    results = json.loads((out / "per_rank.json").read_text())

    d = per_rank.width_for(200_000, layers)
    assert results["width"] == d and results["total_params"] == layers * (d * d + d)
    for world in (1, 2):
        rows = results["ranks"][str(world)]
        assert [r["rank"] for r in rows] == list(range(world))
        for r in rows:
            local_rows = _rows_on_rank(d, world, r["rank"])
            assert r["local_elements"] == layers * (local_rows * d + local_rows)  # weight rows + bias entries
            assert r["local_bytes"] == 4 * r["local_elements"]
            # the snapshots really happened on this rank: k by step() (period=1), then warm-up + rounds
            assert r["snapshots_by_steps"] == k and r["num_snapshots"] == k
            assert r["snapshots_taken"] == r["expected_snapshots"] == k + 1 + repeats
            for op in per_rank.OPERATIONS:
                assert len(r["rounds"]["wall"][op]) == repeats and len(r["rounds"]["cpu"][op]) == repeats
                assert all(math.isfinite(t) and t > 0 for t in r["rounds"]["wall"][op])
        assert sum(r["local_elements"] for r in rows) == results["total_params"]  # the shards partition the model
    one, two = (results["ranks"][w] for w in ("1", "2"))
    assert one[0]["local_elements"] == results["total_params"]
    assert max(r["local_elements"] for r in two) == layers * 79 * (d + 1)  # ceil(158 / 2) = 79 rows: half

    with open(out / "per_rank.csv") as f:
        table = list(csv.DictReader(f))
    assert [int(row["world"]) for row in table] == [1, 2]
    assert [int(row["local_elements"]) for row in table] == [results["total_params"], layers * 79 * (d + 1)]
    assert float(table[1]["local_vs_first"]) == pytest.approx(79 / 158)
    for row in table:
        for key in ("snapshot_wall_s", "swap_wall_s", "copy_wall_s", "snapshot_cpu_s", "swap_cpu_s", "copy_cpu_s",
                    "snapshot_over_copy_wall", "swap_over_copy_wall", "snapshot_over_copy_cpu", "swap_over_copy_cpu"):
            value = float(row[key])
            assert math.isfinite(value) and value > 0, (key, value)
    assert "| 2 | 100,488 / 100,488 |" in res.output  # the table printed, both ranks' shards


@pytest.mark.cli
def test_cli_rejects_bad_worlds(tmp_path):
    _per_rank()
    from click.testing import CliRunner

    from lawa_optim.cli import main

    res = CliRunner().invoke(main, ["bench", "overhead-per-rank", "--worlds", "1,x", "--out", str(tmp_path)])
    assert res.exit_code == 2 and "--worlds" in res.output
    res = CliRunner().invoke(main, ["bench", "overhead-per-rank", "--worlds", "1,1", "--out", str(tmp_path)])
    assert res.exit_code == 2 and "each world size once" in res.output
