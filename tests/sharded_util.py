"""Start N CPU processes (gloo) running one script, the way torchrun would, for the sharded tests.

Each process gets RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR and MASTER_PORT; the script calls
``torch.distributed.init_process_group("gloo")``. :func:`run_ranks` waits for all of them (a
process still running after ``timeout`` seconds is killed) and returns each one's exit code and
output, so a test can also kill a rank on purpose and look at what the others did.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import textwrap
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = str(Path(__file__).resolve().parents[1])

# The preamble every script starts with: one thread, the repository importable, gloo initialised.
PREAMBLE = """
import os, sys
sys.path.insert(0, {root!r})
import torch
import torch.distributed as dist
torch.set_num_threads(1)
RANK, WORLD = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
"""


@dataclass
class Result:
    rank: int
    returncode: int
    output: str


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_ranks(
    script: str, world: int, tmp_path: Path, *, timeout: float = 300, args: tuple[str, ...] = (), grace: float = 5.0
):
    """Run ``script`` (the body after :data:`PREAMBLE`) on ``world`` processes; a list of :class:`Result`.

    Like torchrun, when one process fails the others are killed ``grace`` seconds later (a peer
    of a dead rank would otherwise wait in a collective until its timeout)."""
    path = tmp_path / f"script_{free_port()}.py"
    path.write_text(PREAMBLE.format(root=ROOT) + textwrap.dedent(script))
    port = str(free_port())
    procs = []
    for rank in range(world):
        env = dict(
            os.environ, RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(world), LOCAL_WORLD_SIZE=str(world),
            MASTER_ADDR="127.0.0.1", MASTER_PORT=port, OMP_NUM_THREADS="1", PYTHONPATH=ROOT,
        )
        log = open(tmp_path / f"{path.stem}_rank{rank}.log", "w+")
        procs.append((subprocess.Popen([sys.executable, str(path), *args], env=env, stdout=log,
                                       stderr=subprocess.STDOUT), log))
    start, failed_at = time.monotonic(), None
    while any(proc.poll() is None for proc, _ in procs):
        now = time.monotonic()
        if failed_at is None and any(proc.poll() not in (None, 0) for proc, _ in procs):
            failed_at = now
        if now - start > timeout or (failed_at is not None and now - failed_at > grace):
            for proc, _ in procs:
                if proc.poll() is None:
                    proc.kill()
        time.sleep(0.05)
    results = []
    for rank, (proc, log) in enumerate(procs):
        proc.wait()
        log.seek(0)
        results.append(Result(rank, proc.returncode, log.read()))
        log.close()
    return results


def assert_ok(results) -> None:
    bad = [r for r in results if r.returncode != 0]
    assert not bad, "\n".join(f"rank {r.rank} exited {r.returncode}:\n{r.output[-4000:]}" for r in bad)
