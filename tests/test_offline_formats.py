"""Offline LAWA over real Lightning, timm and safetensors checkpoints, loaded back by the library that wrote them.

Each run is a real one of the library (Lightning's Trainer with ModelCheckpoint, with and without
its WeightAveraging callback; timm's CheckpointSaver; safetensors' save_file); the average is
compared with a float64 reference computed here from the files.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from conftest import require
from torch import nn

from lawa_optim.io import CheckpointError
from lawa_optim.offline import average_checkpoints, write_average

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning", "ignore::FutureWarning", "ignore::DeprecationWarning")


def reference(states: list[dict]) -> dict:
    """Float64 mean of the floating tensors; the rest from the newest."""
    return {k: (torch.stack([s[k].double() for s in states]).mean(0).to(v.dtype) if v.is_floating_point() else v)
            for k, v in states[-1].items()}


def assert_equal_state(got, want) -> None:
    assert sorted(got) == sorted(want)
    for key, value in want.items():
        assert got[key].dtype == value.dtype and torch.equal(got[key], value), key


# ----------------------------------------------------------------------------- Lightning
def _lightning_run(tmp_path: Path, averaging: bool) -> tuple[type, list[Path]]:
    L = require("lightning", "to write real Lightning checkpoints")

    class Net(L.LightningModule):
        def __init__(self, width: int = 8) -> None:
            super().__init__()
            self.save_hyperparameters()
            self.net = nn.Sequential(nn.Linear(4, width), nn.BatchNorm1d(width), nn.ReLU(), nn.Linear(width, 2))

        def training_step(self, batch, _):
            x, y = batch
            return nn.functional.cross_entropy(self.net(x), y)

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.1, momentum=0.9)

    torch.manual_seed(0)
    data = torch.utils.data.TensorDataset(torch.randn(32, 4), torch.randint(0, 2, (32,)))
    callbacks = [L.pytorch.callbacks.ModelCheckpoint(dirpath=tmp_path, save_top_k=-1, every_n_epochs=1,
                                                     save_last=True)]
    if averaging:
        from torch.optim.swa_utils import get_ema_multi_avg_fn

        callbacks.append(L.pytorch.callbacks.WeightAveraging(multi_avg_fn=get_ema_multi_avg_fn(0.9)))
    trainer = L.Trainer(max_epochs=5, callbacks=callbacks, logger=False, enable_progress_bar=False,
                        enable_model_summary=False, accelerator="cpu", devices=1)
    trainer.fit(Net(), torch.utils.data.DataLoader(data, batch_size=8))
    return Net, sorted(tmp_path.glob("epoch=*.ckpt"), key=lambda p: int(p.name.split("=")[1].split("-")[0]))


@pytest.mark.parametrize("averaging", [False, True], ids=["plain", "weight_averaging"])
def test_lightning_ckpt_averages_and_loads_from_checkpoint(tmp_path, averaging):
    net_class, paths = _lightning_run(tmp_path / "ckpts", averaging)
    assert len(paths) == 5 and (tmp_path / "ckpts" / "last.ckpt").exists()
    loaded = [torch.load(p, weights_only=True) for p in paths]
    entry = "current_model_state" if averaging else "state_dict"  # the raw weights under WeightAveraging
    assert (entry in loaded[-1]) and ("current_model_state" in loaded[-1]) == averaging
    out = tmp_path / "lawa.ckpt"
    summary = write_average([tmp_path / "ckpts"], out, last=3)
    assert summary.format == "lightning" and summary.key == entry
    assert summary.files == tuple(map(str, paths[-3:])) and str(tmp_path / "ckpts" / "last.ckpt") in summary.ignored
    want = reference([c[entry] for c in loaded[-3:]])
    written = torch.load(out, weights_only=True)
    assert "optimizer_states" not in written and "current_model_state" not in written
    assert written["pytorch-lightning_version"] == loaded[-1]["pytorch-lightning_version"]
    assert written["state_dict"]["net.1.num_batches_tracked"] == loaded[-1][entry]["net.1.num_batches_tracked"]
    model = net_class.load_from_checkpoint(out)
    assert_equal_state(model.state_dict(), want)
    if averaging:  # the callback's own EMA weights on request
        ema = average_checkpoints(paths[-3:], key="state_dict")
        assert_equal_state(ema["state_dict"], reference([c["state_dict"] for c in loaded[-3:]]))
        assert not torch.equal(ema["state_dict"]["net.0.weight"], want["net.0.weight"])


# ----------------------------------------------------------------------------- timm
def test_timm_checkpoint_saver_files_average_and_load(tmp_path):
    timm = require("timm", "to write real timm checkpoints")
    from timm.utils import CheckpointSaver, ModelEmaV3

    torch.manual_seed(0)
    model = timm.create_model("test_resnet", num_classes=3)
    ema = ModelEmaV3(model, decay=0.5)
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    saver = CheckpointSaver(model, opt, model_ema=ema, checkpoint_dir=str(tmp_path), max_history=10)
    x, y = torch.randn(4, 3, 32, 32), torch.tensor([0, 1, 2, 0])
    for epoch in range(5):
        opt.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
        ema.update(model)
        saver.save_checkpoint(epoch, metric=float(epoch))
    paths = [tmp_path / f"checkpoint-{e}.pth.tar" for e in range(5)]
    assert all(p.exists() for p in paths) and (tmp_path / "last.pth.tar").exists()
    loaded = [torch.load(p, weights_only=True) for p in paths]
    out = tmp_path / "lawa.pth.tar"
    summary = write_average([tmp_path], out, last=4)
    assert summary.format == "timm" and summary.key == "state_dict" and summary.files == tuple(map(str, paths[1:]))
    assert {str(tmp_path / "last.pth.tar"), str(tmp_path / "model_best.pth.tar")} <= set(summary.ignored)
    written = torch.load(out, weights_only=True)
    assert "optimizer" not in written and "state_dict_ema" not in written and written["epoch"] == 4
    want = reference([c["state_dict"] for c in loaded[1:]])
    fresh = timm.create_model("test_resnet", num_classes=3)
    timm.models.load_checkpoint(fresh, str(out))
    assert_equal_state(fresh.state_dict(), want)
    # the EMA weights on request, written where timm's loader reads them by default
    write_average(paths[1:], out, key="state_dict_ema", force=True)
    timm.models.load_checkpoint(fresh, str(out))
    assert_equal_state(fresh.state_dict(), reference([c["state_dict_ema"] for c in loaded[1:]]))


# ----------------------------------------------------------------------------- bare safetensors
def test_safetensors_files_average_to_safetensors_with_metadata(tmp_path):
    st = require("safetensors.torch")
    states = []
    for i in range(4):
        g = torch.Generator().manual_seed(i)
        sd = {"w": torch.randn(6, 5, generator=g), "h": torch.randn(7, generator=g).half(),
              "b": torch.randn(3, generator=g).bfloat16(), "steps": torch.tensor([i, 10 * i])}
        st.save_file(sd, tmp_path / f"step{(i + 1) * 500}.safetensors", metadata={"format": "pt", "step": str(i)})
        states.append(sd)
    out = tmp_path / "avg" / "lawa.safetensors"
    summary = write_average([tmp_path], out, last=3, weights="exp", alpha=0.5)
    coeffs = [0.5 * 0.5**a for a in range(3)][::-1]
    coeffs = [c / sum(coeffs) for c in coeffs]
    assert summary.format == "safetensors" and summary.coefficients == pytest.approx(coeffs)
    got = st.load_file(out)
    from safetensors import safe_open

    with safe_open(str(out), "pt") as f:
        assert f.metadata() == {"format": "pt", "step": "3"}  # the newest file's metadata
    for key in ("w", "h", "b"):
        stack = torch.stack([s[key].double() for s in states[1:]])
        want = (stack * torch.tensor(coeffs, dtype=torch.float64).view(-1, *[1] * (stack.dim() - 1))).sum(0)
        rtol = 2e-7 if got[key].dtype == torch.float32 else 0.008  # one rounding of the result
        torch.testing.assert_close(got[key], want.to(got[key].dtype), rtol=rtol, atol=1e-12)
    assert torch.equal(got["steps"], states[-1]["steps"])
    # uniform: bit-exact against the float64 mean, the same whether read as a folder or as files
    write_average(sorted(tmp_path.glob("*.safetensors"))[::-1], out, force=True)
    assert_equal_state(st.load_file(out), reference(states))


def test_mixed_formats_are_refused(tmp_path):
    st = require("safetensors.torch")
    st.save_file({"w": torch.zeros(2)}, tmp_path / "a1.safetensors")
    torch.save({"w": torch.zeros(2)}, tmp_path / "a2.pt")
    with pytest.raises(CheckpointError, match=r"a2\.pt is a pickled checkpoint but .*a1\.safetensors is a "
                                              r"safetensors one; give checkpoints of one format"):
        average_checkpoints([tmp_path])


def test_nonfinite_safetensors_raise_or_skip(tmp_path):
    st = require("safetensors.torch")
    states = []
    for i in range(4):
        sd = {"a": torch.full((3,), float(i)), "w": torch.randn(4, 4, generator=torch.Generator().manual_seed(i))}
        if i == 2:
            sd["w"][1, 2] = float("nan")
        st.save_file(sd, tmp_path / f"c{i}.safetensors")
        states.append(sd)
    out = tmp_path / "out.safetensors"
    with pytest.raises(CheckpointError, match=r"c2\.safetensors holds NaN or Inf in 'w'"):
        write_average([tmp_path], out)
    assert not out.exists()
    with pytest.warns(RuntimeWarning, match=r"Skipping .*c2\.safetensors"):
        summary = write_average([tmp_path], out, nonfinite="skip")
    assert summary.skipped == (str(tmp_path / "c2.safetensors"),) and len(summary.files) == 3
    assert_equal_state(st.load_file(out), reference([states[i] for i in (0, 1, 3)]))


def test_streamed_and_pickled_paths_give_the_same_bits_across_pieces(tmp_path):
    """Tensors longer than one piece (accumulate.CHUNK) are summed piece by piece, a second thread reading ahead:
    the result equals, bit for bit, the file-by-file path over the same weights saved with torch.save."""
    st = require("safetensors.torch")
    from lawa_optim.offline.accumulate import CHUNK

    states = []
    for i in range(5):
        g = torch.Generator().manual_seed(i)
        sd = {"big": torch.randn(2 * CHUNK + 123, generator=g) * (i + 1), "half": torch.randn(CHUNK + 7, generator=g)
              .half(), "bf": torch.randn(3, CHUNK // 2 + 1, generator=g).bfloat16(), "empty": torch.zeros(0, 4)}
        st.save_file(sd, tmp_path / f"s{i}.safetensors")
        torch.save(sd, tmp_path / f"p{i}.pt")
        states.append(sd)
    streamed = sorted(tmp_path.glob("s*.safetensors"))
    pickled = sorted(tmp_path.glob("p*.pt"))
    assert_equal_state(average_checkpoints(streamed), reference(states))
    for weights in ("exp", [0.1, 0.2, 0.3, 0.15, 0.25]):
        assert_equal_state(average_checkpoints(streamed, weights=weights),
                           average_checkpoints(pickled, weights=weights))
    bad = dict(states[2], big=states[2]["big"].clone())
    bad["big"][-5] = float("inf")  # in the last piece
    st.save_file(bad, tmp_path / "s2.safetensors")
    with pytest.raises(CheckpointError, match=r"s2\.safetensors holds NaN or Inf in 'big'"):
        average_checkpoints(streamed)
    with pytest.warns(RuntimeWarning, match=r"Skipping .*s2\.safetensors"):
        got = average_checkpoints(streamed, nonfinite="skip", weights="exp")
    torch.save(bad, tmp_path / "p2.pt")
    with pytest.warns(RuntimeWarning, match=r"Skipping .*p2\.pt"):
        assert_equal_state(got, average_checkpoints(pickled, nonfinite="skip", weights="exp"))


def test_lightning_folder_with_lawa_callback_averages_epoch_checkpoints_only(tmp_path):
    """The README's Lightning setup plus epoch checkpoints: LAWACallback, a ModelCheckpoint of every epoch with
    last.ckpt, and the README's ModelCheckpoint of the best average (best-lawa-epoch=N.ckpt) in the same folder."""
    L = require("lightning", "to write real Lightning checkpoints")
    from click.testing import CliRunner

    from lawa_optim.cli import main
    from lawa_optim.integrations.lightning import LAWACallback

    class Regressor(L.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            self.net = nn.Sequential(nn.Linear(4, 8), nn.BatchNorm1d(8), nn.ReLU(), nn.Linear(8, 1))

        def forward(self, x):
            return self.net(x)

        def training_step(self, batch, _):
            x, y = batch
            return nn.functional.mse_loss(self(x), y)

        def validation_step(self, batch, _):
            x, y = batch
            self.log("val_loss", nn.functional.mse_loss(self(x), y))

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.05, momentum=0.9)

    torch.manual_seed(0)
    x = torch.randn(48, 4)
    y = x.sum(1, keepdim=True) + 0.1 * torch.randn(48, 1)
    train = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x[:32], y[:32]), batch_size=8, shuffle=True)
    val = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x[32:], y[32:]), batch_size=16)
    ckpts = tmp_path / "ckpts"
    epochs = L.pytorch.callbacks.ModelCheckpoint(dirpath=ckpts, save_top_k=-1, every_n_epochs=1, save_last=True)
    best = L.pytorch.callbacks.ModelCheckpoint(dirpath=ckpts, monitor="val_loss_lawa", filename="best-lawa-{epoch}")
    trainer = L.Trainer(max_epochs=5, callbacks=[LAWACallback(k=2), epochs, best], logger=False,
                        enable_progress_bar=False, enable_model_summary=False, accelerator="cpu", devices=1)
    trainer.fit(Regressor(), train, val)

    paths = sorted(ckpts.glob("epoch=*.ckpt"), key=lambda p: int(p.name.split("=")[1].split("-")[0]))
    copies = sorted(ckpts.glob("best-*.ckpt"))
    assert len(paths) == 5 and len(copies) == 1 and (ckpts / "last.ckpt").exists()
    loaded = [torch.load(p, weights_only=True) for p in paths]
    newest = loaded[-1]
    assert "lawa_state_dict" in newest and any(k.startswith("LAWACallback") for k in newest["callbacks"])
    want = reference([c["state_dict"] for c in loaded[-3:]])

    out = tmp_path / "lawa.ckpt"
    summary = write_average([ckpts], out, last=3)
    assert summary.files == tuple(map(str, paths[-3:])) and summary.copies == (str(copies[0]),)
    assert str(ckpts / "last.ckpt") in summary.ignored
    written = torch.load(out, weights_only=True)
    assert not {"callbacks", "lawa_state_dict", "optimizer_states", "lr_schedulers"} & set(written)
    assert {"callbacks", "lawa_state_dict"} <= set(summary.dropped)
    assert written["epoch"] == newest["epoch"]
    assert_equal_state(written["state_dict"], want)
    assert_equal_state(Regressor.load_from_checkpoint(out).state_dict(), want)

    # on request: the callback's state kept, the best copy averaged too
    kept = write_average([ckpts], out, last=3, keep_callbacks=True, force=True)
    written = torch.load(out, weights_only=True)
    assert written["callbacks"].keys() == newest["callbacks"].keys() and "lawa_state_dict" in written
    assert "callbacks" not in kept.dropped
    both = write_average([ckpts], tmp_path / "with_copies.ckpt", include_copies=True)
    assert str(copies[0]) in both.files and both.copies == ()

    # the command line: the copy is listed as left out; an existing --out needs --force
    result = CliRunner().invoke(main, ["average", str(ckpts), "--last", "3", "--out", str(out)])
    assert result.exit_code == 2 and "already exists; pick a new file, or pass --force" in result.output
    result = CliRunner().invoke(main, ["average", str(ckpts), "--last", "3", "--out", str(out), "--force"])
    assert result.exit_code == 0, result.output
    assert f"left out (a best/last copy of an epoch checkpoint; --include-copies averages it): {copies[0]}" \
        in result.output
    assert "dropped" in result.output and "callbacks" in result.output and "lawa_state_dict" in result.output
    assert_equal_state(torch.load(out, weights_only=True)["state_dict"], want)


def test_a_format_is_one_class_found_by_its_order(tmp_path, monkeypatch):
    """Adding a format is one file: a Format subclass with a name registers itself, and detection
    tries it at its order (here before every built-in one); helper classes without a name are not formats."""
    from lawa_optim.offline import formats as formats_module
    from lawa_optim.offline.base import Format

    monkeypatch.setattr(Format, "registered", list(Format.registered))
    monkeypatch.setattr(formats_module, "_instances", dict(formats_module._instances))
    assert [f.name for f in formats_module.formats()] == ["dcp", "huggingface", "huggingface-bin", "safetensors",
                                                          "pickled"]

    class _Helper(Format):  # no name: a base for other formats, not one itself
        pass

    class Npz(_Helper):
        name, suffixes, order = "npz", (".npz",), 5

        def matches(self, path):
            return path.suffix == ".npz"

    names = [f.name for f in formats_module.formats()]
    assert names[0] == "npz" and "" not in names and len(names) == 6
    (tmp_path / "a.npz").write_bytes(b"")
    assert formats_module.format_of(tmp_path / "a.npz").name == "npz"
    (tmp_path / "b.pt").write_bytes(b"")
    assert formats_module.format_of(tmp_path / "b.pt").name == "pickled"
