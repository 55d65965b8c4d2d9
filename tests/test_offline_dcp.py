"""`lawa average` on real torch.distributed.checkpoint (DCP) folders.

The folders are written by ``dcp.save`` itself (one process; two gloo processes with an FSDP2
model, so every tensor is saved in two shards in two rank files) and by Lightning's
``ModelParallelStrategy`` (FSDP2, two gloo CPU processes). The reference is the float64 mean of
the full tensors as DCP's own converter (``format_utils.dcp_to_torch_save``) reads them; the
average must equal it bit for bit, and ``dcp.load`` must read the written folder into the model.
"""

from __future__ import annotations

import os
import pickle
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
import torch.multiprocessing as mp
from conftest import require
from torch import nn

from lawa_optim.io import CheckpointError, UnsafeCheckpointError
from lawa_optim.offline import average_checkpoints, write_average

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning", "ignore::FutureWarning", "ignore::DeprecationWarning")


def _model(bf16: bool = False) -> nn.Module:
    model = nn.Sequential(nn.Linear(6, 8), nn.BatchNorm1d(8), nn.ReLU(), nn.Linear(8, 3))
    if bf16:
        model[3].to(torch.bfloat16)  # one bf16 layer: averaged in float64, cast back to bf16
    return model


def full_state(folder: Path, tmp: Path) -> dict:
    """The whole state dict of a DCP folder, as DCP's own converter writes it (the reference's reader)."""
    from torch.distributed.checkpoint.format_utils import dcp_to_torch_save

    dcp_to_torch_save(folder, tmp / f"{folder.name}.pt")
    return torch.load(tmp / f"{folder.name}.pt", weights_only=True)


def reference(states: list[dict], coefficients=None) -> dict:
    """Float64 mean (or weighted sum) of the floating tensors; the rest from the newest."""
    out = {}
    for k, v in states[-1].items():
        if v.is_floating_point():
            stack = torch.stack([s[k].double() for s in states])
            out[k] = (stack.mean(0) if coefficients is None else
                      sum(c * x for c, x in zip(coefficients, stack))).to(v.dtype)
        else:
            out[k] = v
    return out


def assert_equal_state(got, want) -> None:
    assert sorted(got) == sorted(want)
    for key, value in want.items():
        assert got[key].dtype == value.dtype and torch.equal(got[key], value), key


def loaded_into_model(out: Path, entry: str, model: nn.Module) -> dict:
    """``dcp.load`` of the average into ``model``'s state dict under ``entry``, as a user resumes from it."""
    state = {entry: model.state_dict()}
    dcp.load(state, checkpoint_id=out, no_dist=True)
    model.load_state_dict(state[entry])
    return model.state_dict()


def top_entries(folder: Path) -> set[str]:
    from torch.distributed.checkpoint import FileSystemReader

    md = FileSystemReader(folder).read_metadata()
    return {md.planner_data.get(k, (k,))[0] for k in md.state_dict_metadata}


def save_single(folder: Path, n: int, extra_entries: bool = True) -> list[dict]:
    """``dcp.save`` from one process of ``n`` trained states: {"model", "optim" (Adam), "epoch"}."""
    states = []
    torch.manual_seed(0)
    model = _model(bf16=True)
    opt = torch.optim.Adam(model.parameters(), lr=0.05)
    for i in range(n):
        for _ in range(2):
            opt.zero_grad()
            x = torch.randn(16, 6)
            model[3](model[2](model[1](model[0](x))).bfloat16()).float().pow(2).mean().backward()
            opt.step()
        sd = model.state_dict()
        states.append({k: v.clone() for k, v in sd.items()})
        state = {"model": sd, "optim": opt.state_dict(), "epoch": i} if extra_entries else sd
        dcp.save(state, checkpoint_id=folder / f"step-{i + 1}", no_dist=True)
    return states


# ----------------------------------------------------------------------------- one process
def test_single_process_folders_average_to_dcp_safetensors_and_hf(tmp_path):
    states = save_single(tmp_path / "run", 5)
    want = reference(states[-3:])
    summary = write_average([tmp_path / "run"], tmp_path / "avg", last=3)
    assert summary.format == "dcp" and summary.key == "model"
    assert summary.files == tuple(str(tmp_path / "run" / f"step-{i}") for i in (3, 4, 5))
    assert set(summary.dropped) == {"optim", "epoch"} and summary.copied == ("1.num_batches_tracked",)
    assert top_entries(tmp_path / "avg") == {"model"}  # no optimizer state
    assert_equal_state(loaded_into_model(tmp_path / "avg", "model", _model(bf16=True)), want)
    assert_equal_state(average_checkpoints([tmp_path / "run"], last=3), want)
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # no staging folder left
    # what an interrupted dcp_atomic.atomic_save leaves beside the checkpoints is no checkpoint of the run
    import shutil

    shutil.copytree(tmp_path / "run" / "step-5", tmp_path / "run" / "step-6.tmp-0123456789ab")
    shutil.copytree(tmp_path / "run" / "step-4", tmp_path / "run" / "step-4.old-0123456789ab")
    again = write_average([tmp_path / "run"], tmp_path / "avg", last=3, force=True)
    assert again.files == summary.files
    assert {Path(p).name for p in again.ignored} == {"step-6.tmp-0123456789ab", "step-4.old-0123456789ab"}

    from safetensors.torch import load_file

    write_average([tmp_path / "run"], tmp_path / "avg.safetensors", last=3, out_format="safetensors")
    assert_equal_state(load_file(tmp_path / "avg.safetensors"), want)
    write_average([tmp_path / "run"], tmp_path / "hf", last=3, out_format="huggingface")
    assert_equal_state(load_file(tmp_path / "hf" / "model.safetensors"), want)

    # EXP weights: the same numbers as for the same states saved with torch.save
    for i, state in enumerate(states[-3:]):
        torch.save(state, tmp_path / f"state{i}.pt")
    pickled = average_checkpoints([tmp_path / f"state{i}.pt" for i in range(3)], weights="exp", alpha=0.5)
    assert_equal_state(average_checkpoints([tmp_path / "run"], last=3, weights="exp", alpha=0.5), pickled)
    assert not torch.equal(pickled["0.weight"], want["0.weight"])


def test_entry_choice_key_and_top_level_state_dict(tmp_path):
    states = save_single(tmp_path / "flat", 2, extra_entries=False)  # dcp.save(model.state_dict())
    assert_equal_state(average_checkpoints([tmp_path / "flat"]), reference(states))
    torch.manual_seed(1)
    a, b = _model().state_dict(), _model().state_dict()
    for i, sd in enumerate((a, b)):
        dcp.save({"ema": sd, "student": {k: v + 1 for k, v in sd.items()}}, checkpoint_id=tmp_path / f"two-{i}",
                 no_dist=True)
    two = [tmp_path / "two-0", tmp_path / "two-1"]
    with pytest.raises(CheckpointError, match=r"no entry 'model' or 'state_dict'.*'ema', 'student'.*key="):
        average_checkpoints(two)
    assert_equal_state(average_checkpoints(two, key="ema"), reference([a, b]))
    with pytest.raises(CheckpointError, match=r"no entry 'teacher'.*'ema', 'student'"):
        average_checkpoints(two, key="teacher")


def test_missing_rank_file_nonfinite_and_unsafe_metadata_are_refused(tmp_path):
    save_single(tmp_path / "run", 3)
    broken = tmp_path / "run" / "step-2" / "__0_0.distcp"
    broken.rename(tmp_path / "aside.distcp")
    with pytest.raises(CheckpointError, match=r"step-2' is incomplete: __0_0\.distcp \(written by rank 0\) is missing"):
        write_average([tmp_path / "run"], tmp_path / "avg")
    assert not (tmp_path / "avg").exists()
    (tmp_path / "aside.distcp").rename(broken)

    # a NaN in one checkpoint: named, nothing written; skipped on request
    nan = tmp_path / "nan"
    sd = _model().state_dict()
    sd["0.weight"][0, 0] = float("nan")
    dcp.save({"model": sd}, checkpoint_id=nan / "step-9", no_dist=True)
    good = []
    for i in range(2):
        good.append(_model().state_dict())
        dcp.save({"model": good[-1]}, checkpoint_id=nan / f"step-{i + 1}", no_dist=True)
    with pytest.raises(CheckpointError, match=r"step-9 holds NaN or Inf in '0\.weight'"):
        write_average([nan], tmp_path / "avg")
    assert not (tmp_path / "avg").exists() and [p for p in tmp_path.iterdir() if p.name.startswith(".")] == []
    with pytest.warns(RuntimeWarning, match="Skipping .*step-9"):
        summary = write_average([nan], tmp_path / "avg", nonfinite="skip")
    assert summary.skipped == (str(nan / "step-9"),)
    assert_equal_state(loaded_into_model(tmp_path / "avg", "model", _model()), reference(good))
    with pytest.raises(ValueError, match="already exists; pick a new folder, or pass force=True"):
        write_average([nan], tmp_path / "avg", nonfinite="skip")

    # a .metadata whose pickle would run code is refused before anything runs
    marker = tmp_path / "PWNED"

    class Evil:
        def __reduce__(self):
            return os.system, (f"touch {marker}",)

    (tmp_path / "run" / "step-3" / ".metadata").write_bytes(pickle.dumps(Evil()))
    with pytest.raises(UnsafeCheckpointError, match=r"asks for posix\.system.*trust_pickle=True"):
        average_checkpoints([tmp_path / "run"])
    assert not marker.exists()


def test_cli_on_dcp_folders(tmp_path):
    from click.testing import CliRunner

    from lawa_optim.cli import main

    states = save_single(tmp_path / "run", 3)
    result = CliRunner().invoke(main, ["average", str(tmp_path / "run"), "--out", str(tmp_path / "avg")])
    assert result.exit_code == 0, result.output
    assert "Averaged 3 distributed checkpoints (weights from 'model')" in result.output
    assert "dropped optim, epoch" in result.output
    assert_equal_state(loaded_into_model(tmp_path / "avg", "model", _model(bf16=True)), reference(states))
    result = CliRunner().invoke(main, ["average", str(tmp_path / "run"), "--out", str(tmp_path / "a.safetensors"),
                                       "--out-format", "safetensors"])
    assert result.exit_code == 0, result.output
    (tmp_path / "run" / "step-1" / "__0_0.distcp").unlink()
    result = CliRunner().invoke(main, ["average", str(tmp_path / "run"), "--out", str(tmp_path / "avg2")])
    assert result.exit_code == 1 and "__0_0.distcp (written by rank 0) is missing" in result.output


# ----------------------------------------------------------------------------- two gloo processes, FSDP2
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _fsdp_worker(rank: int, world: int, port: int, root: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        from torch.distributed.checkpoint.state_dict import get_model_state_dict, get_optimizer_state_dict
        from torch.distributed.device_mesh import init_device_mesh
        from torch.distributed.fsdp import fully_shard

        torch.set_num_threads(1)
        torch.manual_seed(0)
        model = nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 3))
        mesh = init_device_mesh("cpu", (world,))
        for layer in (model[0], model[2]):
            fully_shard(layer, mesh=mesh)
        fully_shard(model, mesh=mesh)
        from lawa_optim import LAWAWrapper

        opt = LAWAWrapper(torch.optim.AdamW(model.parameters(), lr=0.05), k=2, period=1)  # its ring in "optim"
        for step in range(3):
            torch.manual_seed(100 * step + rank)
            opt.zero_grad()
            model(torch.randn(8, 6)).pow(2).mean().backward()
            opt.step()
            state = {"model": get_model_state_dict(model), "optim": get_optimizer_state_dict(model, opt)}
            dcp.save(state, checkpoint_id=Path(root) / f"step-{step + 1}")
    finally:
        dist.destroy_process_group()


@pytest.mark.distributed
def test_two_rank_fsdp2_folders_average_and_load(tmp_path):
    world = 2
    mp.spawn(_fsdp_worker, args=(world, _free_port(), str(tmp_path / "run")), nprocs=world, join=True)
    folders = [tmp_path / "run" / f"step-{i}" for i in (1, 2, 3)]
    assert all((f / "__0_0.distcp").is_file() and (f / "__1_0.distcp").is_file() for f in folders)
    from torch.distributed.checkpoint import FileSystemReader

    md = FileSystemReader(folders[-1]).read_metadata()
    assert len(md.state_dict_metadata["model.0.weight"].chunks) == world  # saved in shards, one per rank
    assert any("lawa_slot" in k for k in md.state_dict_metadata)  # LAWA's ring, in the optimizer's entry
    states = [full_state(f, tmp_path)["model"] for f in folders]
    want = reference(states)
    summary = write_average([tmp_path / "run"], tmp_path / "avg")
    assert top_entries(tmp_path / "avg") == {"model"} and summary.dropped == ("optim",)  # no optimizer state, no ring
    model = nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 3))
    assert_equal_state(loaded_into_model(tmp_path / "avg", "model", model), want)
    assert_equal_state(average_checkpoints(folders), want)
    (folders[1] / "__1_0.distcp").unlink()
    with pytest.raises(CheckpointError, match=r"step-2' is incomplete: __1_0\.distcp \(written by rank 1\) is missing"):
        write_average(folders, tmp_path / "avg2")


# ----------------------------------------------------------------------------- Lightning ModelParallelStrategy
_LIGHTNING_RUN = """
import sys, torch, lightning as L
from torch import nn
from torch.distributed.fsdp import fully_shard
from lightning.pytorch.strategies import ModelParallelStrategy
from lawa_optim.integrations.lightning import LAWACallback


class Net(L.LightningModule):
    def __init__(self):
        super().__init__()
        self.model = None

    def configure_model(self):  # the way Lightning asks for sharded models
        if self.model is not None:
            return
        self.model = nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 1))
        mesh = self.device_mesh["data_parallel"]
        for layer in (self.model[0], self.model[2]):
            fully_shard(layer, mesh=mesh)
        fully_shard(self.model, mesh=mesh)

    def training_step(self, batch, _):
        x, y = batch
        return nn.functional.mse_loss(self.model(x), y)

    def validation_step(self, batch, _):
        x, y = batch
        self.log("val_loss", nn.functional.mse_loss(self.model(x), y), sync_dist=True)

    def configure_optimizers(self):
        return torch.optim.AdamW(self.parameters(), lr=0.05)


if __name__ == "__main__":
    torch.set_num_threads(1)
    torch.manual_seed(0)
    x = torch.randn(32, 6)
    data = torch.utils.data.TensorDataset(x, x.sum(1, keepdim=True))
    ckpt = L.pytorch.callbacks.ModelCheckpoint(dirpath=sys.argv[1], save_top_k=-1, every_n_epochs=1)
    # LAWACallback saves its ring and average in the distributed checkpoint (as optimizer_1)
    trainer = L.Trainer(accelerator="cpu", devices=2, max_epochs=3, callbacks=[LAWACallback(k=2), ckpt],
                        strategy=ModelParallelStrategy(data_parallel_size=2, tensor_parallel_size=1), logger=False,
                        enable_progress_bar=False, enable_model_summary=False, default_root_dir=sys.argv[1])
    loader = torch.utils.data.DataLoader(data, batch_size=8)
    trainer.fit(Net(), loader, loader)
"""


@pytest.mark.distributed
@pytest.mark.slow
def test_lightning_model_parallel_strategy_folders(tmp_path):
    require("lightning", "to write real Lightning ModelParallelStrategy checkpoints")
    script = tmp_path / "run.py"
    script.write_text(textwrap.dedent(_LIGHTNING_RUN))
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
    done = subprocess.run([sys.executable, str(script), str(tmp_path / "ckpts")], env=env, capture_output=True,
                          text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    folders = sorted((tmp_path / "ckpts").glob("epoch=*.ckpt"), key=lambda p: int(p.name.split("=")[1].split("-")[0]))
    assert len(folders) == 3 and all(f.is_dir() and (f / "__1_0.distcp").is_file() for f in folders)
    states = [full_state(f, tmp_path)["state_dict"] for f in folders]
    want = reference(states[-2:])

    from click.testing import CliRunner

    from lawa_optim.cli import main

    result = CliRunner().invoke(main, ["average", str(tmp_path / "ckpts"), "--last", "2", "--out",
                                       str(tmp_path / "avg")])
    assert result.exit_code == 0, result.output
    assert "Averaged 2 distributed checkpoints (weights from 'state_dict')" in result.output
    assert "optimizer_0" in top_entries(folders[-1]) and "optimizer_1" in top_entries(folders[-1])  # LAWA's ring
    assert "dropped optimizer_0, optimizer_1" in result.output
    assert top_entries(tmp_path / "avg") == {"state_dict"}
    assert not (tmp_path / "avg" / "meta.pt").exists()  # Lightning's training progress and callback states
    model = nn.Module()
    model.model = nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 1))
    assert_equal_state(loaded_into_model(tmp_path / "avg", "state_dict", model), want)


def test_reads_pieces_at_their_offsets_without_dcp_load(tmp_path, monkeypatch):
    """A single-process save: every tensor read in pieces at its offset in the .distcp file, no dcp.load call (one
    per tensor per checkpoint before), nothing held whole; the average equals the float64 reference bit for bit."""
    import torch.distributed.checkpoint as dcp_module

    from lawa_optim.offline.accumulate import CHUNK

    states = []
    for i in range(3):
        torch.manual_seed(i)
        sd = {f"layer{j}.w": torch.randn(3, j + 1) for j in range(40)}
        sd |= {"big": torch.randn(2 * CHUNK + 5), "half": torch.randn(7).to(torch.bfloat16), "steps": torch.tensor(i)}
        states.append(sd)
        dcp.save({"model": sd, "optim": {"m": torch.zeros(3)}}, checkpoint_id=tmp_path / "run" / f"step-{i}",
                 no_dist=True)
    calls: list[object] = []
    real_load = dcp_module.load
    monkeypatch.setattr(dcp_module, "load", lambda *a, **kw: calls.append(a) or real_load(*a, **kw))
    got = average_checkpoints([tmp_path / "run"])
    assert calls == []  # fewer load calls than tensors: none
    assert_equal_state(got, reference(states))
    monkeypatch.setattr(dcp_module, "load", real_load)
    write_average([tmp_path / "run"], tmp_path / "avg")
    back = {k: torch.empty_like(v) for k, v in states[-1].items()}
    dcp.load({"model": back}, checkpoint_id=tmp_path / "avg", no_dist=True)
    assert_equal_state(back, reference(states))


def test_reads_one_tensor_at_a_time(tmp_path, monkeypatch):
    """Where DCP loads the tensors (shards, compressed items: forced here), never the whole model: every read DCP
    is asked for is one tensor, read once per checkpoint (also when it is averaged in several pieces), and the
    checkpoints hold copies of one tensor at a time."""
    from lawa_optim.offline.accumulate import CHUNK
    from lawa_optim.offline.dcp_io import DCPSource

    monkeypatch.setattr(DCPSource, "_locate", lambda self, key: None)

    states = []
    for i in range(3):
        torch.manual_seed(i)
        states.append({"big": torch.randn(2 * CHUNK + 5), "w": torch.randn(4, 3), "steps": torch.tensor(i)})
        dcp.save({"model": states[-1], "optim": {"m": torch.zeros(3)}}, checkpoint_id=tmp_path / "run" / f"step-{i}",
                 no_dist=True)
    sources: list = []
    requests: list[list[str]] = []
    real_init, real_load = DCPSource.__init__, DCPSource._load

    def init(self, *args, **kwargs):
        real_init(self, *args, **kwargs)
        sources.append(self)

    def load(self, values):
        requests.append(list(values))
        held = [s._cache[0] for s in sources if s._cache is not None]
        assert all(k in values for k in held), held  # the previous tensor freed everywhere first
        return real_load(self, values)

    monkeypatch.setattr(DCPSource, "__init__", init)
    monkeypatch.setattr(DCPSource, "_load", load)
    write_average([tmp_path / "run"], tmp_path / "avg")
    assert sorted(k for r in requests for k in r) == ["big"] * 3 + ["steps"] + ["w"] * 3  # the int: the newest's
    got = {"big": torch.empty(2 * CHUNK + 5), "w": torch.empty(4, 3), "steps": torch.tensor(0)}
    dcp.load({"model": got}, checkpoint_id=tmp_path / "avg", no_dist=True)
    assert_equal_state(got, reference(states))


def test_non_tensor_values_of_the_weights_entry(tmp_path):
    """A value of the weights entry that is no tensor (a module's extra state): the newest's, in the DCP output;
    left out of a safetensors output (named); unpickled with weights_only unless trust_pickle."""
    states = []
    for i in range(2):
        torch.manual_seed(i)
        states.append({"w": torch.randn(3, 4), "norm._extra_state": {"version": i, "scale": 0.5 * i}})
        dcp.save({"model": states[-1]}, checkpoint_id=tmp_path / "run" / f"step-{i}", no_dist=True)
    got = average_checkpoints([tmp_path / "run"])
    assert torch.equal(got["w"], reference([{"w": s["w"]} for s in states])["w"])
    assert got["norm._extra_state"] == {"version": 1, "scale": 0.5}
    summary = write_average([tmp_path / "run"], tmp_path / "avg")
    assert set(summary.copied) == {"norm._extra_state.version", "norm._extra_state.scale"}  # DCP's flat names
    back = {"w": torch.empty(3, 4), "norm._extra_state": {"version": None, "scale": None}}
    dcp.load({"model": back}, checkpoint_id=tmp_path / "avg", no_dist=True)
    assert torch.equal(back["w"], got["w"]) and back["norm._extra_state"] == {"version": 1, "scale": 0.5}
    summary = write_average([tmp_path / "run"], tmp_path / "avg.safetensors", out_format="safetensors")
    assert set(summary.dropped) == {f"norm._extra_state.{k} (not a tensor)" for k in ("version", "scale")}

    for i in range(2):
        dcp.save({"model": {"w": torch.randn(3, 4), "norm._extra_state": _Opaque()}},
                 checkpoint_id=tmp_path / "opaque" / f"step-{i}", no_dist=True)
    with pytest.raises(UnsafeCheckpointError, match="weights_only.*trust_pickle=True"):
        average_checkpoints([tmp_path / "opaque"])
    assert isinstance(average_checkpoints([tmp_path / "opaque"], trust_pickle=True)["norm._extra_state"], _Opaque)


class _Opaque:
    """A class torch.load(weights_only=True) refuses to build."""
