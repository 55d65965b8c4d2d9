"""DCP folders read and written without ``dcp.save`` / ``dcp.load`` / importing ``torch.distributed.checkpoint``.

The output folder is checked against what DCP itself makes of it (``dcp.load``, ``dcp_to_torch_save``,
its metadata read by DCP's classes next to that of ``dcp.save`` of the same state); the averages
against the float64 reference bit for bit; the metadata's bytes against DCP's classes' pickle.
"""

from __future__ import annotations

import os
import pickle
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
import torch.multiprocessing as mp
from test_offline_dcp import _free_port, assert_equal_state, full_state, reference

from lawa_optim.offline import average_checkpoints, write_average
from lawa_optim.offline import dcp_meta as light
from lawa_optim.offline.accumulate import CHUNK
from lawa_optim.offline.dcp_io import DCPSource, _FileView, _plain_record
from lawa_optim.offline.pickled_io import file_offset

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning", "ignore::FutureWarning", "ignore::DeprecationWarning")

REPO = Path(__file__).resolve().parents[1]


def _states(n: int) -> list[dict]:
    out = []
    for i in range(n):
        torch.manual_seed(i)
        out.append({"big": torch.randn(2 * CHUNK + 5), "w": torch.randn(4, 3), "half": torch.randn(3, 5).bfloat16(),
                    "d": torch.randn(2, 2, dtype=torch.float64), "scalar": torch.randn(()), "empty": torch.zeros(0, 3),
                    "steps": torch.tensor(i), "mask": torch.tensor([True, i % 2 == 0])})
    return out


def _save(states: list[dict], root: Path, extra=None) -> list[Path]:
    folders = []
    for i, sd in enumerate(states):
        folders.append(root / f"step-{i}")
        dcp.save({"model": {**sd, **(extra or {})}, "optim": {"m": torch.zeros(3)}}, checkpoint_id=folders[-1],
                 no_dist=True)
    return folders


def _real_metadata(folder: Path):
    from torch.distributed.checkpoint import FileSystemReader

    return FileSystemReader(folder).read_metadata()


def test_output_is_the_folder_dcp_save_writes_and_loads_bit_for_bit(tmp_path):
    states = _states(3)
    want = reference(states)
    _save(states, tmp_path / "run")
    write_average([tmp_path / "run"], tmp_path / "avg")
    assert sorted(p.name for p in (tmp_path / "avg").iterdir()) == [".metadata", "__0_0.distcp", "lawa_average.json"]
    back = {k: torch.empty_like(v) for k, v in want.items()}
    dcp.load({"model": back}, checkpoint_id=tmp_path / "avg", no_dist=True)
    assert_equal_state(back, want)
    assert_equal_state(full_state(tmp_path / "avg", tmp_path)["model"], want)  # DCP's own converter
    # the metadata DCP reads: that of dcp.save of the same state (but where the bytes are, and the save's ids)
    dcp.save({"model": want}, checkpoint_id=tmp_path / "saved", no_dist=True)
    ours, theirs = _real_metadata(tmp_path / "avg"), _real_metadata(tmp_path / "saved")
    assert ours.state_dict_metadata == theirs.state_dict_metadata
    assert ours.planner_data == theirs.planner_data and ours.version == theirs.version
    assert ours.storage_data.keys() == theirs.storage_data.keys()
    assert {type(v) for v in ours.storage_data.values()} == {type(v) for v in theirs.storage_data.values()}
    assert ours.storage_meta.checkpoint_id == tmp_path / "avg" and ours.storage_meta.save_id
    # each record where its storage item says: the item is exactly the record (torch.load of the slice)
    fd = os.open(tmp_path / "avg" / "__0_0.distcp", os.O_RDONLY)
    try:
        items = sorted(ours.storage_data.values(), key=lambda i: i.offset)
        assert items[0].offset == 0 and all(a.offset + a.length == b.offset for a, b in zip(items, items[1:]))
        assert items[-1].offset + items[-1].length == os.fstat(fd).st_size
        for index, info in ours.storage_data.items():
            got = torch.load(_FileView(fd, info.offset, info.length), weights_only=True)
            assert torch.equal(got, want[index.fqn.removeprefix("model.")])
    finally:
        os.close(fd)
    # and the average of averages reads it like any DCP folder (its own output read back in pieces)
    assert_equal_state(average_checkpoints([tmp_path / "avg"]), want)


def test_weighted_average_with_a_tensor_saved_the_plain_way(tmp_path, monkeypatch):
    """Should torch write a tensor's record otherwise than around a skipped data stretch, that tensor is saved
    whole (its pieces collected): the same folder for DCP."""
    from lawa_optim.offline import dcp_write

    states = _states(3)
    _save(states, tmp_path / "run")
    real = dcp_write.record_around
    monkeypatch.setattr(dcp_write, "record_around",
                        lambda dtype, shape: None if len(shape) == 1 else real(dtype, shape))
    write_average([tmp_path / "run"], tmp_path / "avg", weights="exp", alpha=0.5)
    want = average_checkpoints([tmp_path / "run"], weights="exp", alpha=0.5)
    back = {k: torch.empty_like(v) for k, v in want.items()}
    dcp.load({"model": back}, checkpoint_id=tmp_path / "avg", no_dist=True)
    assert_equal_state(back, want)


def test_record_around_is_torch_saves_record(tmp_path):
    import io

    from lawa_optim.offline.dcp_write import record_around

    for dtype, shape in ((torch.float32, (5, 7)), (torch.bfloat16, ()), (torch.int64, (0, 3)), (torch.bool, (4,))):
        value = (torch.arange(35).reshape(5, 7) if dtype == torch.float32 else torch.ones(shape)).to(dtype)
        head, tail = record_around(dtype, shape)
        data = bytes(value.reshape(-1).view(torch.uint8).numpy())
        got = torch.load(io.BytesIO(head + data + tail), weights_only=True)
        assert got.dtype == dtype and torch.equal(got, value)


def test_metadata_pickles_to_the_bytes_of_dcps_classes(tmp_path):
    """The stand-ins pickle (protocol 2) to DCP's classes' bytes, and read DCP's own .metadata into equal fields."""
    from torch.distributed.checkpoint import metadata as real
    from torch.distributed.checkpoint.filesystem import _StorageInfo

    states = _states(1)
    folder = _save(states, tmp_path / "run", extra={"norm._extra_state": {"version": 3}})[0]
    raw = (folder / ".metadata").read_bytes()
    md_real = pickle.loads(raw)
    md_light = light.load(raw)
    assert type(md_light) is light.Metadata and md_light.planner_data == md_real.planner_data

    def rebuild(md, ns, info_cls):
        sdm = {}
        for k, v in md.state_dict_metadata.items():
            if isinstance(v, (real.BytesStorageMetadata, light.BytesStorageMetadata)):
                sdm[k] = ns.BytesStorageMetadata()
            else:
                sdm[k] = ns.TensorStorageMetadata(ns.TensorProperties(dtype=v.properties.dtype), v.size,
                                                  [ns.ChunkStorageMetadata(c.offsets, c.sizes) for c in v.chunks])
        storage = {ns.MetadataIndex(i.fqn, i.offset, i.index): info_cls(s.relative_path, s.offset, s.length)
                   for i, s in md.storage_data.items()}
        return ns.Metadata(sdm, md.planner_data, storage,
                           ns.StorageMeta(checkpoint_id=md.storage_meta.checkpoint_id, save_id="s"), md.version)

    want = rebuild(md_real, real, _StorageInfo)
    mine = rebuild(md_light, light, light._StorageInfo)
    assert light.dumps(mine) == pickle.dumps(want, protocol=2)
    assert pickle.loads(light.dumps(mine)) == want
    # a key holding the stand-ins' module name and a class name (as a GLOBAL opcode writes them): parsed, not replaced
    odd = f"c{light.__name__}\nMetadata\n"
    for md in (md_real, md_light):
        md.planner_data[odd] = ("model", odd)
        md.state_dict_metadata[odd] = next(iter(md.state_dict_metadata.values()))
    want, mine = rebuild(md_real, real, _StorageInfo), rebuild(md_light, light, light._StorageInfo)
    assert light.dumps(mine) == pickle.dumps(want, protocol=2) and odd in pickle.loads(light.dumps(mine)).planner_data
    # the stand-ins read what DCP's classes read: same fields, same storage index
    assert {(i.fqn, i.offset): (s.relative_path, s.offset, s.length) for i, s in md_light.storage_data.items()} == {
        (i.fqn, i.offset): (s.relative_path, s.offset, s.length) for i, s in md_real.storage_data.items()}
    for k, v in md_real.state_dict_metadata.items():
        assert light.is_tensor(md_light.state_dict_metadata[k]) == light.is_tensor(v)
        if light.is_tensor(v):
            mv = md_light.state_dict_metadata[k]
            assert (mv.size, mv.properties.dtype, mv.properties.memory_format) == (
                v.size, v.properties.dtype, v.properties.memory_format)
            assert [(c.offsets, c.sizes) for c in mv.chunks] == [(c.offsets, c.sizes) for c in v.chunks]
    # anything else in the pickle is not read by the stand-ins (the caller asks DCP, which refuses or allows it)
    with pytest.raises(light.NotLight, match="builtins.eval"):
        light.load(b"\x80\x02cbuiltins\neval\nX\x01\x00\x00\x001\x85R.")


def test_plain_record_offsets_agree_with_torch_load(tmp_path):
    states = _states(1)
    folder = _save(states, tmp_path / "run")[0]
    md = light.load((folder / ".metadata").read_bytes())
    fd = os.open(folder / "__0_0.distcp", os.O_RDONLY)
    try:
        for index, info in md.storage_data.items():
            if not light.is_tensor(md.state_dict_metadata[index.fqn]):
                continue
            t = torch.load(_FileView(fd, info.offset, info.length), map_location="meta", weights_only=True)
            assert _plain_record(_FileView(fd, info.offset, info.length), t.dtype, tuple(t.shape)) == file_offset(t)
            assert _plain_record(_FileView(fd, info.offset, info.length), torch.float16, tuple(t.shape)) is None
        # a transposed tensor's record is no flat stretch of it: not read in pieces
        view = torch.arange(12.0).reshape(3, 4).t()
        dcp.save({"t": view}, checkpoint_id=tmp_path / "strided", no_dist=True)
        mds = light.load((tmp_path / "strided" / ".metadata").read_bytes())
        (info,) = mds.storage_data.values()
        fd2 = os.open(tmp_path / "strided" / "__0_0.distcp", os.O_RDONLY)
        try:
            got = _plain_record(_FileView(fd2, info.offset, info.length), torch.float32, (4, 3))
            saved = torch.load(_FileView(fd2, info.offset, info.length), map_location="meta", weights_only=True)
            assert got is None or saved.is_contiguous()
        finally:
            os.close(fd2)
        assert_equal_state(average_checkpoints([tmp_path / "strided"]), {"t": view})
    finally:
        os.close(fd)


def test_no_import_of_torch_distributed_checkpoint(tmp_path):
    """Averaging folders of whole tensors (and non-tensor values) into a DCP folder never imports DCP (0.6 s)."""
    _save(_states(2), tmp_path / "run", extra={"norm._extra_state": {"version": 3}})
    code = textwrap.dedent(f"""
        import sys, torch
        from lawa_optim.offline import write_average
        write_average([{str(tmp_path / 'run')!r}], {str(tmp_path / 'avg')!r})
        print(sorted(m for m in sys.modules if m.startswith("torch.distributed.checkpoint") or m == "sympy"))
    """)
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, check=True)
    assert proc.stdout.strip().splitlines()[-1] == "[]"
    back = {k: torch.empty_like(v) for k, v in _states(1)[0].items()} | {"norm._extra_state": {"version": None}}
    dcp.load({"model": back}, checkpoint_id=tmp_path / "avg", no_dist=True)
    assert back["norm._extra_state"] == {"version": 3}
    assert_equal_state({k: v for k, v in back.items() if k != "norm._extra_state"}, reference(_states(2)))


# ----------------------------------------------------------------------------- two gloo processes, sharded tensors
def _sharded_worker(rank: int, world: int, port: int, root: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        from torch.distributed.device_mesh import init_device_mesh
        from torch.distributed.tensor import Shard, distribute_tensor

        torch.set_num_threads(1)
        mesh = init_device_mesh("cpu", (world,))
        for step in range(3):
            torch.manual_seed(step)  # the same full tensors on every rank
            full = {"rows": torch.randn(1001, 131), "odd": torch.randn(3, 2).bfloat16(), "cols": torch.randn(4, 7),
                    "rep": torch.randn(5), "n": torch.tensor(step)}
            sd = {"rows": distribute_tensor(full["rows"], mesh, [Shard(0)]),  # 501 + 500 rows, pieces cross ranks
                  "odd": distribute_tensor(full["odd"], mesh, [Shard(0)]),  # 2 + 1 rows
                  "cols": distribute_tensor(full["cols"], mesh, [Shard(1)]),  # not a stretch of the flat tensor
                  "rep": full["rep"], "n": full["n"]}
            dcp.save({"model": sd}, checkpoint_id=Path(root) / f"step-{step}")
            if rank == 0:
                torch.save(full, Path(root) / f"full-{step}.pt")
    finally:
        dist.destroy_process_group()


@pytest.mark.distributed
def test_tensors_sharded_over_two_ranks_are_read_in_pieces(tmp_path, monkeypatch):
    mp.spawn(_sharded_worker, args=(2, _free_port(), str(tmp_path / "run")), nprocs=2, join=True)
    folders = [tmp_path / "run" / f"step-{i}" for i in range(3)]
    md = _real_metadata(folders[-1])
    assert [len(md.state_dict_metadata[f"model.{k}"].chunks) for k in ("rows", "cols")] == [2, 2]
    assert all(isinstance(DCPSource(f, None, False).metadata, light.Metadata) for f in folders)  # read light
    want = reference([torch.load(tmp_path / "run" / f"full-{i}.pt", weights_only=True) for i in range(3)])
    loads: list[list[str]] = []
    real_load = DCPSource._load
    monkeypatch.setattr(DCPSource, "_load", lambda self, values: loads.append(list(values)) or real_load(self, values))
    assert_equal_state(average_checkpoints(folders), want)
    assert sorted(k for r in loads for k in r) == ["cols"] * 3  # only the tensor sharded along its columns
    loads.clear()
    write_average(folders, tmp_path / "avg")
    back = {k: torch.empty_like(v) for k, v in want.items()}
    dcp.load({"model": back}, checkpoint_id=tmp_path / "avg", no_dist=True)
    assert_equal_state(back, want)
