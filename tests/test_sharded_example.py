"""docs/sharded.md's plain-PyTorch FSDP2 example, run as written with torchrun on CPU processes (gloo).

An uninterrupted 6-epoch run on 2 processes against: the same run stopped after 3 epochs and
resumed on 2 processes (everything in the final checkpoint bit-identical, every logged line
identical), and the 3-epoch checkpoint resumed on 1 and on 3 processes (the average resharded:
the same validation loss to float rounding).
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tests.sharded_util import ROOT

pytestmark = [pytest.mark.slow, pytest.mark.distributed]

DOC = Path(ROOT) / "docs" / "sharded.md"
TORCHRUN = Path(sys.executable).parent / "torchrun"


def example_source() -> str:
    blocks = re.findall(r"```python\n(.*?)```", DOC.read_text(), flags=re.S)
    (block,) = [b for b in blocks if b.startswith("# fsdp2_lawa.py")]
    return block


def _torchrun(script: Path, world: int, folder: Path, epochs: int) -> list[str]:
    cmd = [str(TORCHRUN), "--standalone", f"--nproc_per_node={world}", str(script), str(folder), str(epochs)]
    env = {"OMP_NUM_THREADS": "1", "PYTHONPATH": ROOT, "PATH": str(TORCHRUN.parent) + ":/usr/bin:/bin"}
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=env, cwd=script.parent)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    return [line for line in proc.stdout.splitlines() if "val_loss" in line]


def _lawa(line: str) -> float:
    return float(line.rsplit("val_loss_lawa ", 1)[1])


def _flat(folder: Path, tmp: Path) -> dict:
    from torch.distributed.checkpoint.format_utils import dcp_to_torch_save

    out = tmp / f"{folder.name}.pt"
    dcp_to_torch_save(folder, out)
    flat = {}

    def walk(prefix, value):
        if isinstance(value, dict):
            for key, item in value.items():
                walk(f"{prefix}.{key}", item)
        else:
            flat[prefix] = value

    walk("", torch.load(out, weights_only=False))
    return flat


def test_the_docs_example_resumes_exactly_and_reshards(tmp_path):
    script = tmp_path / "fsdp2_lawa.py"
    script.write_text(example_source())
    full = _torchrun(script, 2, tmp_path / "full", 6)
    assert [line.split(":")[0] for line in full] == [f"epoch {e}" for e in range(1, 7)]
    assert _lawa(full[-1]) != float(full[-1].split("val_loss ")[1].split(",")[0])  # the average is another model

    half = _torchrun(script, 2, tmp_path / "half", 3)
    assert half == full[:3]
    for world in (1, 3):  # the 3-epoch checkpoint on another number of ranks: no training, one evaluation
        copy = tmp_path / f"half_on_{world}"
        shutil.copytree(tmp_path / "half", copy)
        (line,) = _torchrun(script, world, copy, 3)
        assert line.startswith(f"resumed at epoch 3 on {world} ranks")
        assert _lawa(line) == pytest.approx(_lawa(full[2]), abs=2e-6)

    resumed = _torchrun(script, 2, tmp_path / "half", 6)
    assert resumed[0] == full[2].replace("epoch 3", "resumed at epoch 3 on 2 ranks")
    assert resumed[1:] == full[3:]
    a, b = _flat(tmp_path / "full", tmp_path), _flat(tmp_path / "half", tmp_path)
    assert a.keys() == b.keys()
    assert any("lawa_slot_3" in key for key in a)  # the ring is in the checkpoint
    for key in a:
        if isinstance(a[key], torch.Tensor):
            assert torch.equal(a[key], b[key]), key
        else:
            assert a[key] == b[key], key
    assert sorted(p.name for p in tmp_path.iterdir() if ".tmp-" in p.name or ".old-" in p.name) == []
