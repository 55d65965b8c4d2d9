"""The ring's bytes per rank under FSDP2: measured on 1, 2 and 3 CPU processes against the formula.

benchmarks/ring_memory.py runs a small MLP (51,046 parameters, uneven shards) through fully_shard
and LAWAWrapper(k=4) under torchrun and reports, per rank, the local parameter count, the bytes of
every tensor the ring allocated, the bytes of the slots in the optimizer state dict and the size of
the rank's file in a DCP checkpoint; each must match :func:`ring_bytes` for that rank's share.
docs/sharded.md's table must be the formula's output.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from lawa_benchmarks.ring_memory import ring_bytes, table
from tests.sharded_util import ROOT


def test_the_docs_table_is_the_formula():
    assert table() in (Path(ROOT) / "docs" / "sharded.md").read_text()


def test_the_formula():
    import torch

    assert ring_bytes(1000, 6) == {"slots": 24000, "sums": 8000, "memory": 32000, "checkpoint": 24000, "swap": 4000}
    assert ring_bytes(1000, 6, torch.bfloat16)["memory"] == 6 * 2000 + 4000  # a float32 sum for bf16 slots


@pytest.mark.slow
@pytest.mark.distributed
@pytest.mark.parametrize("world", [1, 2, 3])
def test_measured_bytes_per_rank_match_the_formula(tmp_path, world):
    env = {"OMP_NUM_THREADS": "1", "PYTHONPATH": ROOT, "PATH": "/usr/bin:/bin"}
    for attempt in range(2):
        out = tmp_path / f"attempt{attempt}" / f"memory_{world}.json"
        out.parent.mkdir()
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={world}",
               str(Path(ROOT) / "benchmarks" / "ring_memory.py"), "measure", str(out)]
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env)
        # Once, on the loaded CI machine, both ranks of 2 aborted in gloo's C++ teardown ("terminate called
        # without an active exception", SIGABRT) after a clean destroy_process_group; it did not recur in
        # reruns. That abort, and only it, gets one more run; any other failure fails at once.
        if proc.returncode == 0 or "terminate called without an active exception" not in proc.stderr:
            break
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = json.loads(out.read_text())
    assert [r["rank"] for r in rows] == list(range(world))
    assert sum(r["local_params"] for r in rows) == rows[0]["total_params"] == 51046  # the shards partition P
    for r in rows:
        expected = ring_bytes(r["local_params"], r["k"])
        assert r["ring_bytes"] == expected["memory"]  # k fp32 slots + a float64 sum of the local shards
        assert r["state_dict_slot_bytes"] == expected["checkpoint"]
        assert r["scratch_bytes"] <= 8 * min(r["local_params"], 2**17)  # one float64 block at most
        assert expected["checkpoint"] <= r["dcp_file_bytes"] <= expected["checkpoint"] + 128 * 1024
