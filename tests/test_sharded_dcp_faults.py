"""Faults in distributed checkpoints: a rank killed during ``dcp.save``, a rank's file missing.

Real ``torch.distributed.checkpoint`` saves on 2 gloo processes (a DTensor sharded over both, so
each rank writes its own ``__<rank>_0.distcp``). Rank 1 is killed with SIGKILL in the middle of
writing its file (an object in its state dict kills the process when ``dcp.save`` serializes it):
through :func:`lawa_optim.dcp_atomic.atomic_save` the previous checkpoint stays loadable; with a
plain in-place ``dcp.save`` the same kill leaves a folder that :func:`~lawa_optim.dcp_atomic.check`
refuses, naming the file.
"""

from __future__ import annotations

import signal

import pytest
import torch

from lawa_optim import dcp_atomic
from lawa_optim.io import CheckpointError
from tests.sharded_util import assert_ok, run_ranks

pytestmark = [pytest.mark.distributed]

KILL_SCRIPT = """
import datetime, signal
import torch.distributed.checkpoint as dcp
from torch.distributed.device_mesh import init_device_mesh
from torch.distributed.tensor import Shard, distribute_tensor
from lawa_optim.dcp_atomic import atomic_save

dist.init_process_group("gloo", timeout=datetime.timedelta(seconds=60))
mode, folder = sys.argv[1], sys.argv[2]
mesh = init_device_mesh("cpu", (WORLD,))

class KillOnSave:
    def __reduce__(self):  # runs while dcp.save writes this rank's file
        os.kill(os.getpid(), signal.SIGKILL)

def state(version, poison=False):
    sd = {"w": distribute_tensor(torch.arange(64.0) * version, mesh, [Shard(0)]), "version": version}
    if poison and RANK == 1:
        sd["poison"] = KillOnSave()
    return sd

save = atomic_save if mode == "atomic" else (lambda sd, f: dcp.save(sd, checkpoint_id=f))
save(state(1), folder)
dist.barrier()
if mode != "first_only":
    save(state(2, poison=True), folder)
dist.destroy_process_group()
"""


def _load(folder):
    sd = {"w": torch.zeros(64), "version": 0}
    dcp_atomic.load(sd, folder)
    return sd


@pytest.mark.parametrize("mode", ["atomic", "in_place"])
def test_a_rank_killed_during_the_save(tmp_path, mode):
    folder = tmp_path / "ckpt"
    results = run_ranks(KILL_SCRIPT, 2, tmp_path, timeout=120, args=(mode, str(folder)))
    assert results[1].returncode == -signal.SIGKILL, results[1].output[-3000:]
    assert results[0].returncode != 0  # rank 0 cannot finish a save its peer died in
    if mode == "atomic":
        sd = _load(folder)  # the previous checkpoint, whole
        assert torch.equal(sd["w"], torch.arange(64.0)) and sd["version"] == 1
        (staging,) = tmp_path.glob("ckpt.tmp-*")  # the killed save's files, never published
        assert (staging / "__1_0.distcp").exists()
        with pytest.raises(CheckpointError, match="has no .metadata: its save did not finish"):
            dcp_atomic.check(staging)
    else:
        # the old .metadata beside rank 1's file, rewritten from scratch when the kill came
        with pytest.raises(CheckpointError, match=r"__1_0\.distcp \(written by rank 1\) has \d+ bytes, the metadata"):
            _load(folder)


def test_a_checkpoint_missing_a_ranks_file_is_refused_naming_it(tmp_path):
    folder = tmp_path / "ckpt"
    assert_ok(run_ranks(KILL_SCRIPT, 2, tmp_path, timeout=120, args=("first_only", str(folder))))
    assert sorted(p.name for p in folder.iterdir()) == [".metadata", "__0_0.distcp", "__1_0.distcp"]
    assert torch.equal(_load(folder)["w"], torch.arange(64.0))
    (folder / "__1_0.distcp").unlink()
    with pytest.raises(CheckpointError, match=r"is incomplete: __1_0\.distcp \(written by rank 1\) is missing"):
        _load(folder)
    (folder / ".metadata").unlink()
    with pytest.raises(CheckpointError, match="has no .metadata"):
        dcp_atomic.check(folder)


def test_single_process_save_replaces_the_previous_checkpoint_and_leaves_nothing_else(tmp_path):
    folder = tmp_path / "ckpt"
    for version in (1, 2):
        with pytest.warns(UserWarning, match="single process"):  # dcp.save without a process group
            dcp_atomic.atomic_save({"w": torch.full((4,), float(version)), "version": version}, folder)
        assert [p.name for p in tmp_path.iterdir()] == ["ckpt"]  # no staging or old folder left
        sd = {"w": torch.zeros(4), "version": 0}
        with pytest.warns(UserWarning, match="single process"):
            dcp_atomic.load(sd, folder)
        assert torch.equal(sd["w"], torch.full((4,), float(version))) and sd["version"] == version


def test_bad_targets_are_refused_before_anything_is_written(tmp_path):
    target = tmp_path / "a_file"
    target.write_text("not a checkpoint")
    with pytest.raises(ValueError, match="is a file; give a folder path"):
        dcp_atomic.atomic_save({"w": torch.zeros(1)}, target)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a_file"]
    with pytest.raises(CheckpointError, match="does not exist"):
        dcp_atomic.check(tmp_path / "nowhere")
    with pytest.raises(CheckpointError, match="does not exist"):
        dcp_atomic.check(target)


def test_a_save_stopped_between_the_commits_two_renames_is_named_and_recovered(tmp_path, monkeypatch):
    """``commit`` renames the old checkpoint aside, then the new one in: a kill in between leaves no
    ``folder``. ``check`` names the aside copy, and the next ``atomic_save`` puts it back first."""
    import os

    folder = tmp_path / "ckpt"
    with pytest.warns(UserWarning, match="single process"):
        dcp_atomic.atomic_save({"w": torch.full((4,), 1.0)}, folder)
    real_rename = os.rename

    def killed_after_the_first_rename(src, dst):
        real_rename(src, dst)
        if ".old-" in str(dst):
            raise KeyboardInterrupt("killed between the renames")

    monkeypatch.setattr(dcp_atomic.os, "rename", killed_after_the_first_rename)
    with pytest.raises(KeyboardInterrupt), pytest.warns(UserWarning, match="single process"):
        dcp_atomic.atomic_save({"w": torch.full((4,), 2.0)}, folder)
    monkeypatch.setattr(dcp_atomic.os, "rename", real_rename)
    assert not folder.exists()
    with pytest.raises(CheckpointError, match=r"ckpt\.old-.*holds the previous one.*rename it back"):
        dcp_atomic.check(folder)
    assert dcp_atomic.recover(folder) and not dcp_atomic.recover(folder)
    sd = {"w": torch.zeros(4)}
    with pytest.warns(UserWarning, match="single process"):
        dcp_atomic.load(sd, folder)
    assert torch.equal(sd["w"], torch.full((4,), 1.0))  # the previous checkpoint, whole
    # the same kill again, then a save: it recovers the aside copy before replacing it
    monkeypatch.setattr(dcp_atomic.os, "rename", killed_after_the_first_rename)
    with pytest.raises(KeyboardInterrupt), pytest.warns(UserWarning, match="single process"):
        dcp_atomic.atomic_save({"w": torch.full((4,), 2.0)}, folder)
    monkeypatch.setattr(dcp_atomic.os, "rename", real_rename)
    with pytest.warns(UserWarning, match="single process"):
        dcp_atomic.atomic_save({"w": torch.full((4,), 3.0)}, folder)
    assert sorted(p.name for p in tmp_path.iterdir() if ".tmp-" not in p.name) == ["ckpt"]
    with pytest.warns(UserWarning, match="single process"):
        dcp_atomic.load(sd, folder)
    assert torch.equal(sd["w"], torch.full((4,), 3.0))
