"""benchmarks/gpu_fsdp2_accelerate.py (the GPU-only probe gpu_check.sh runs) in its CPU smoke mode.

On the CPU accelerate ignores the FSDP plugin, so this tests the probe itself (its observer,
reference and DCP round trip on 2 gloo processes), not FSDP2; the GPU run is gpu_check.sh's.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import require
from tests.sharded_util import ROOT

pytestmark = [pytest.mark.slow, pytest.mark.distributed]


def test_the_probe_runs_and_passes_in_smoke_mode(tmp_path):
    require("accelerate", "the accelerate probe")
    probe = Path(ROOT) / "benchmarks" / "gpu_fsdp2_accelerate.py"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", str(probe),
           str(tmp_path), "--smoke"]
    env = {"OMP_NUM_THREADS": "1", "PYTHONPATH": ROOT, "PATH": "/usr/bin:/bin"}
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads((tmp_path / "fsdp2_accelerate.json").read_text())
    assert "error" not in result, result.get("error")
    assert result["world"] == 2 and result["smoke"] is True
    assert set(result["checks"]) == {"fsdp2_dtensor_parameters", "observer_average_equals_float64_mean",
                                     "ring_dcp_round_trip_bit_exact"}
    fsdp2 = result["checks"].pop("fsdp2_dtensor_parameters")
    assert fsdp2["passed"] is None and "is_fsdp2=False" in fsdp2["detail"]  # not run: accelerate on the CPU
    assert all(check["passed"] is True for check in result["checks"].values()), result["checks"]
