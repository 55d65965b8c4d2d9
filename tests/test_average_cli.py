"""`lawa average` through click's CliRunner, and its crash safety under SIGKILL (a subprocess)."""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from lawa_optim.offline import average_checkpoints

click_testing = pytest.importorskip("click.testing")  # click is a core dependency of the CLI

pytestmark = pytest.mark.cli
REPO = Path(__file__).resolve().parents[1]


def invoke(*args: str):
    from lawa_optim.cli import main

    return click_testing.CliRunner().invoke(main, ["average", *map(str, args)])


def make_checkpoints(folder: Path, n: int, size: int = 64, wrap: bool = True) -> list[Path]:
    paths = []
    for i in range(n):
        g = torch.Generator().manual_seed(i)
        model = {"w": torch.randn(size, size, generator=g), "h": torch.randn(size, generator=g).half(),
                 "bn.num_batches_tracked": torch.tensor(10 * (i + 1))}
        obj = {"cfg": {"seed": i}, "model": model, "extra_state": {"epoch": i + 1},
               "last_optimizer_state": {"m": torch.zeros(size)}} if wrap else model
        path = folder / f"checkpoint{i + 1}.pt"
        torch.save(obj, path)
        paths.append(path)
    return paths


def test_average_writes_the_mean_and_reports(tmp_path):
    paths = make_checkpoints(tmp_path, 11)
    out = tmp_path / "lawa.pt"
    shuffled = paths[::-1]
    result = invoke("--sort", "--last", 3, *shuffled, "--out", out)
    assert result.exit_code == 0, result.output
    assert "Averaged 3 fairseq checkpoints (weights from 'model'), uniform weights" in result.output
    assert "checkpoint9.pt" in result.output and "checkpoint11.pt" in result.output
    assert "dropped last_optimizer_state" in result.output and "Wrote " in result.output
    got = torch.load(out, weights_only=True)
    want = torch.stack([torch.load(p, weights_only=True)["model"]["w"].double() for p in paths[-3:]]).mean(0)
    assert torch.equal(got["model"]["w"], want.float())
    assert got["model"]["bn.num_batches_tracked"].item() == 110
    assert got["extra_state"] == {"epoch": 11} and "last_optimizer_state" not in got

    result = invoke(*paths[-2:], "--drop", "extra_state.epoch", "--drop", "cfg", "--keep-optimizer", "--out", out,
                    "--force")
    assert result.exit_code == 0, result.output
    assert "dropped extra_state.epoch, cfg" in result.output
    slim = torch.load(out, weights_only=True)
    assert list(slim) == ["model", "extra_state", "last_optimizer_state"] and slim["extra_state"] == {}

    result = invoke(*paths[-4:], "--weights", "exp", "--alpha", "0.5", "--out", out, "-q", "--force")
    assert result.exit_code == 0 and result.output == ""
    exp = torch.load(out, weights_only=True)["model"]
    assert torch.equal(exp["w"], average_checkpoints(paths[-4:], weights="exp", alpha=0.5)["model"]["w"])


def test_help_has_an_example():
    result = invoke("--help")
    assert result.exit_code == 0
    assert "Examples:" in result.output and "lawa average runs/out --last 6 --out runs/out-lawa6" in result.output
    assert "--trust-pickle" in result.output and "state_dict_ema" in result.output


@pytest.mark.parametrize(
    "args, code, message",
    [
        (["--last", "0"], 2, "Invalid value for '--last' / '-k': 0 is not in the range x>=1"),
        (["--last", "5"], 2, "Invalid --last: 5 but only 3 checkpoints were given"),
        (["--alpha", "0", "--weights", "exp"], 2, "Invalid value for '--alpha'"),
        (["--weights", "mean"], 2, "Invalid value for '--weights'"),
        (["--nonfinite", "ignore"], 2, "Invalid value for '--nonfinite'"),
        (["--key", "state_dict"], 1, "has no entry 'state_dict'"),
        (["--drop", "extra_state.ema"], 2, "Invalid --drop: 'extra_state.ema' is not in"),
    ],
)
def test_argument_errors(tmp_path, args, code, message):
    paths = make_checkpoints(tmp_path, 3)
    out = tmp_path / "out.pt"
    result = invoke(*paths, "--out", out, *args)
    assert result.exit_code == code, result.output
    assert message in result.output
    assert not out.exists()


def test_missing_and_truncated_files(tmp_path):
    paths = make_checkpoints(tmp_path, 2)
    out = tmp_path / "out.pt"
    result = invoke(paths[0], tmp_path / "nope.pt", "--out", out)
    assert result.exit_code == 2 and "nope.pt' does not exist" in result.output
    data = paths[1].read_bytes()
    paths[1].write_bytes(data[: len(data) // 3])
    result = invoke(*paths, "--out", out)
    assert result.exit_code == 1
    assert f"Error: Checkpoint '{paths[1]}' could not be read; it is truncated" in result.output
    assert not out.exists()


def test_a_file_that_is_no_checkpoint_is_named_without_internal_errors(tmp_path):
    """Issue 11: `lawa average` on a text file showed torch's "(KeyError: 101)"."""
    paths = make_checkpoints(tmp_path, 1)
    notes = tmp_path / "notes.txt"
    notes.write_text("epoch 1: loss 2.3\n")
    out = tmp_path / "out.pt"
    result = invoke(paths[0], notes, "--out", out)
    assert result.exit_code == 1, result.output
    assert f"Error: '{notes}' is not a checkpoint: it is neither a torch.save file (zip or pickle) nor a safetensors " \
           "file" in result.output
    assert "KeyError" not in result.output and not out.exists()
    fake = tmp_path / "fake.safetensors"
    fake.write_text("not really")
    result = invoke(fake, "--out", tmp_path / "out.safetensors")
    assert result.exit_code == 1 and f"Checkpoint '{fake}' could not be read as safetensors" in result.output


def test_folders_in_natural_order_and_the_summary_names_the_entry(tmp_path):
    # the layout of Lightning's files (tests/test_offline_formats.py averages real ones)
    run = tmp_path / "ckpts"
    run.mkdir()
    states = []
    for step in (50, 100, 150, 1000):  # a plain sort puts step=1000 before step=150
        g = torch.Generator().manual_seed(step)
        raw, ema = torch.randn(3, 3, generator=g), torch.randn(3, 3, generator=g)
        torch.save({"pytorch-lightning_version": "2.6.6", "state_dict": {"w": ema}, "current_model_state": {"w": raw},
                    "optimizer_states": [{}], "epoch": step}, run / f"epoch=0-step={step}.ckpt")
        states.append(raw)
    torch.save({"state_dict": {"w": torch.zeros(3, 3)}}, run / "last.ckpt")
    out = tmp_path / "lawa.ckpt"
    result = invoke(run, "--last", 2, "--out", out)
    assert result.exit_code == 0, result.output
    assert ("Averaged 2 Lightning checkpoints (weights from 'current_model_state': the raw weights; --key state_dict "
            "for WeightAveraging's average), uniform weights") in result.output
    assert "step=150.ckpt" in result.output and "step=1000.ckpt" in result.output
    assert "step=100.ckpt" not in result.output
    assert f"left out (no step number in the name, an earlier average, or an interrupted save's staging folder): " \
        f"{run / 'last.ckpt'}" in result.output
    got = torch.load(out, weights_only=True)
    assert torch.equal(got["state_dict"]["w"], torch.stack([s.double() for s in states[-2:]]).mean(0).float())
    assert list(got) == ["pytorch-lightning_version", "state_dict", "epoch"]
    result = invoke(run, "--last", 2, "--out", out, "--as-given", "--key", "state_dict", "--force")
    assert result.exit_code == 0 and "(weights from 'state_dict': written as state_dict)" in result.output
    empty = tmp_path / "empty"
    empty.mkdir()
    result = invoke(empty, "--out", tmp_path / "x.pt")
    assert result.exit_code == 1 and f"Error: Folder '{empty}' holds no checkpoints" in result.output


def test_refuses_mismatched_shapes(tmp_path):
    small = make_checkpoints(tmp_path, 2)
    (tmp_path / "big").mkdir()
    big = make_checkpoints(tmp_path / "big", 1, size=65)
    out = tmp_path / "out.pt"
    result = invoke(*small, *big, "--out", out, "--as-given")
    assert result.exit_code == 1
    assert (f"{big[0]} does not match {small[0]}: shapes or dtypes differ for 'w': (65, 65) float32 vs (64, 64) "
            "float32; 'h': (65,) float16 vs (64,) float16") in result.output
    assert not out.exists()


def test_refuses_code_running_pickle(tmp_path):
    paths = make_checkpoints(tmp_path, 2)
    marker = tmp_path / "PWNED"

    class Evil:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    evil = tmp_path / "evil.pt"
    torch.save({"model": torch.load(paths[0], weights_only=True)["model"], "cfg": Evil()}, evil)
    out = tmp_path / "out.pt"
    result = invoke(*paths, evil, "--out", out)
    assert result.exit_code == 1
    assert "evil.pt' was refused by torch.load(weights_only=True)" in result.output
    assert "pass --trust-pickle" in result.output
    assert not marker.exists() and not out.exists()


def test_out_equal_to_an_input_needs_force(tmp_path):
    paths = make_checkpoints(tmp_path, 3, wrap=False)
    inputs = [torch.load(p, weights_only=True) for p in paths]
    before = paths[-1].read_bytes()
    result = invoke(*paths, "--out", paths[-1])
    assert result.exit_code == 2
    assert "is also an input" in result.output and "--force" in result.output
    assert paths[-1].read_bytes() == before
    result = invoke(*paths, "--out", paths[-1], "--force")
    assert result.exit_code == 0, result.output
    assert "Averaged 3 plain state dicts" in result.output
    got = torch.load(paths[-1], weights_only=True)
    assert torch.equal(got["w"], (torch.stack([a["w"].double() for a in inputs]).mean(0)).float())
    assert got["bn.num_batches_tracked"].item() == 30


# A fork server: imports torch and the CLI once, then forks one `lawa average` process per request
# (a fresh interpreter per kill would spend most of its life importing torch, not averaging).
# torch.save is slowed down to a slow disk's pace (the same bytes to the same place, 64 KiB at a
# time) so that kills land inside writes often, whatever way the command writes its output.
_FORK_SERVER = """
import io, json, os, sys, time
import torch, tqdm  # noqa: F401  (imported once, before any fork; no torch op runs in this process)
import lawa_optim.cli.average, lawa_optim.offline  # noqa: F401
from lawa_optim.cli import main

_real_save = torch.save
def _slow_save(obj, f, *args, **kwargs):
    buf = io.BytesIO()
    _real_save(obj, buf, *args, **kwargs)
    data = buf.getvalue()
    fh = open(f, "wb") if isinstance(f, (str, os.PathLike)) else f
    for i in range(0, len(data), 1 << 16):
        fh.write(data[i:i + (1 << 16)])
        fh.flush()
        time.sleep(0.002)
    if fh is not f:
        fh.close()
torch.save = _slow_save
for line in sys.stdin:
    pid = os.fork()
    if pid == 0:
        try:
            main(json.loads(line), prog_name="lawa")
        except SystemExit as stop:
            os._exit(stop.code if isinstance(stop.code, int) else 1)
        os._exit(0)
    print(pid, flush=True)
    _, status = os.waitpid(pid, 0)
    print(status, flush=True)
"""


class ForkServer:
    def __init__(self) -> None:
        env = {**os.environ, "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""),
               "OMP_NUM_THREADS": "1"}
        self.proc = subprocess.Popen([sys.executable, "-c", _FORK_SERVER], cwd=REPO, env=env, text=True,
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE)

    def start(self, args: list[str]) -> int:
        self.proc.stdin.write(json.dumps(["average", *args, "-q"]) + "\n")
        self.proc.stdin.flush()
        return int(self.proc.stdout.readline())

    def wait(self) -> int:
        return int(self.proc.stdout.readline())  # the raw wait status

    def close(self) -> None:
        self.proc.stdin.close()
        self.proc.wait(timeout=60)


@pytest.mark.slow
def test_sigkill_never_leaves_a_truncated_file(tmp_path):
    """SIGKILL `lawa average` 10 times: --out is absent, the old file or the complete new one, never truncated.

    Six kills come at random moments of a run, four while the output is being written (once a file
    appears beside --out or --out itself changes). The forked commands write through a slowed-down
    torch.save so that kills land inside writes; a plain torch.save(result, out) fails this test.
    """
    paths = make_checkpoints(tmp_path, 3, size=1024)  # 4 MiB of weights per file
    out = tmp_path / "lawa.pt"
    old = tmp_path / "old.pt"
    torch.save({"model": {"w": torch.zeros(3)}}, old)
    new = average_checkpoints(paths)
    args = [*map(str, paths), "--out", str(out), "--force"]  # --force: replaces the average of the run before

    def signature():
        st = out.stat() if out.exists() else None
        return sorted(p.name for p in tmp_path.iterdir()), st and (st.st_ino, st.st_size, st.st_mtime_ns)

    server = ForkServer()
    try:
        for _ in range(2):  # uninterrupted runs (the first waits for the server's imports), to time the kills
            start = time.monotonic()
            server.start(args)
            assert os.waitstatus_to_exitcode(server.wait()) == 0
            full = time.monotonic() - start
        assert torch.equal(torch.load(out, weights_only=True)["model"]["w"], new["model"]["w"])

        rng = random.Random(0)
        outcomes = []
        for i in range(10):
            if i % 2:
                shutil.copyfile(old, out)
            elif out.exists():
                out.unlink()
            pid = server.start(args)
            if i < 6:  # at a random moment of the run
                time.sleep(rng.uniform(0.0, 1.1) * full)
            else:  # while writing: once a file appears beside --out or --out changes (or the run has ended)
                before = signature()
                deadline = time.monotonic() + 3 * full
                while signature() == before and time.monotonic() < deadline:
                    time.sleep(0.0005)
                time.sleep(rng.uniform(0.0, 0.05))
            try:
                os.kill(pid, signal.SIGKILL)  # our own child; it may have finished already
            except ProcessLookupError:
                pass
            status = server.wait()
            killed = os.WIFSIGNALED(status)
            stray = list(tmp_path.glob(".lawa.pt.*.tmp"))  # a write cut short leaves its temporary file
            for p in stray:
                p.unlink()
            if not out.exists():
                assert i % 2 == 0, "the old file vanished"
                outcomes.append(("absent", killed, len(stray)))
                continue
            try:
                got = torch.load(out, weights_only=True)
            except Exception as err:  # noqa: BLE001
                pytest.fail(f"kill {i} ({'random' if i < 6 else 'while writing'}) left a damaged {out.name}: {err}")
            if torch.equal(got["model"]["w"], torch.zeros(3)):
                assert i % 2 == 1, "an old file appeared from nowhere"
                outcomes.append(("old", killed, len(stray)))
            else:
                for key, value in new["model"].items():
                    assert torch.equal(got["model"][key], value), key
                assert got["extra_state"] == new["extra_state"] and "last_optimizer_state" not in got
                outcomes.append(("new", killed, len(stray)))
        print(f"uninterrupted run {full:.2f}s; kill outcomes (file, killed, stray tmp files):", outcomes)
    finally:
        server.close()


def test_an_existing_out_file_needs_force_and_out_format_is_checked(tmp_path):
    paths = make_checkpoints(tmp_path, 3)
    out = tmp_path / "lawa.pt"
    out.write_bytes(b"an earlier average")
    result = invoke(*paths, "--out", out)
    assert result.exit_code == 2 and "Invalid --out: " in result.output
    assert "already exists; pick a new file, or pass --force to replace it" in result.output
    assert out.read_bytes() == b"an earlier average"
    result = invoke(*paths, "--out", out, "--force", "-q")
    assert result.exit_code == 0, result.output
    assert torch.equal(torch.load(out, weights_only=True)["model"]["w"], average_checkpoints(paths)["model"]["w"])
    result = invoke(*paths, "--out", tmp_path / "x.safetensors", "--out-format", "safetensors")
    assert result.exit_code == 2 and not (tmp_path / "x.safetensors").exists()
    assert ("Invalid --out-format: 'safetensors'; the average of pickled checkpoints is written in their own "
            "format only") in result.output
