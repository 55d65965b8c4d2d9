"""lawa_optim.io: atomic writes and safe loads, with errors naming the file."""

from __future__ import annotations

import os
import stat

import pytest
import torch

from lawa_optim.io import CheckpointError, UnsafeCheckpointError, atomic_save, atomic_write_bytes, safe_load


def test_round_trip_and_mmap(tmp_path):
    obj = {"w": torch.randn(4, 3), "n": torch.tensor(7), "meta": {"epoch": 3, "name": "x"}}
    atomic_save(obj, tmp_path / "sub" / "a.pt")  # creates the folder
    for mmap in (False, True):
        got = safe_load(tmp_path / "sub" / "a.pt", mmap=mmap)
        assert torch.equal(got["w"], obj["w"]) and got["n"].item() == 7 and got["meta"] == obj["meta"]
    legacy = tmp_path / "legacy.pt"  # the pre-1.6 format cannot be memory-mapped: read normally
    torch.save(obj, legacy, _use_new_zipfile_serialization=False)
    assert torch.equal(safe_load(legacy, mmap=True)["w"], obj["w"])
    assert list(tmp_path.rglob("*.tmp")) == []


def test_failed_write_keeps_the_old_file(tmp_path):
    target = tmp_path / "a.pt"
    atomic_save({"w": torch.ones(2)}, target)
    before = target.read_bytes()

    def half_then_fail(f):
        f.write(b"garbage")
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError, match="disk full"):
        atomic_write_bytes(target, half_then_fail)
    assert target.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.pt"]  # no temporary file left behind


def test_directory_target_is_refused(tmp_path):
    (tmp_path / "d").mkdir()
    with pytest.raises(IsADirectoryError, match="is a directory"):
        atomic_save({"w": torch.ones(1)}, tmp_path / "d")
    assert list((tmp_path / "d").iterdir()) == []


def test_file_mode_follows_umask_or_the_replaced_file(tmp_path):
    old_umask = os.umask(0o027)
    try:
        atomic_save({"w": torch.ones(1)}, tmp_path / "new.pt")
        assert stat.S_IMODE((tmp_path / "new.pt").stat().st_mode) == 0o640  # not mkstemp's 0o600
        (tmp_path / "new.pt").chmod(0o604)
        atomic_save({"w": torch.zeros(1)}, tmp_path / "new.pt")
        assert stat.S_IMODE((tmp_path / "new.pt").stat().st_mode) == 0o604
    finally:
        os.umask(old_umask)


def test_code_running_pickle_is_refused(tmp_path):
    marker = tmp_path / "PWNED"

    class Evil:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    torch.save({"w": torch.ones(1), "x": Evil()}, tmp_path / "evil.pt")
    refused = r"evil\.pt' was refused .*\(Trying to load unsupported GLOBAL posix\.system whose module posix is blocked"
    for mmap in (False, True):
        with pytest.raises(UnsafeCheckpointError, match=refused + r"\.\); nothing from it was executed") as info:
            safe_load(tmp_path / "evil.pt", mmap=mmap)
        assert isinstance(info.value, CheckpointError) and isinstance(info.value, ValueError)
    assert not marker.exists()


def test_bad_files_are_named(tmp_path):
    with pytest.raises(CheckpointError, match=r"'.*missing\.pt' does not exist"):
        safe_load(tmp_path / "missing.pt")
    (tmp_path / "empty.pt").write_bytes(b"")
    with pytest.raises(CheckpointError, match=r"empty\.pt' is empty"):
        safe_load(tmp_path / "empty.pt")
    torch.save({"w": torch.randn(100)}, tmp_path / "good.pt")
    data = (tmp_path / "good.pt").read_bytes()
    for cut in (10, len(data) // 2, len(data) - 1):
        (tmp_path / "cut.pt").write_bytes(data[:cut])
        for mmap in (False, True):
            with pytest.raises(CheckpointError, match=r"cut\.pt' could not be read; it is truncated"):
                safe_load(tmp_path / "cut.pt", mmap=mmap)
    (tmp_path / "text.pt").write_text("not a checkpoint")
    with pytest.raises(CheckpointError, match=r"text\.pt' could not be read"):
        safe_load(tmp_path / "text.pt")
