"""lawa_benchmarks.resnet.data and .models: the IDX reader, fixed subsets, the batch order, the ResNets."""

from __future__ import annotations

import gzip
import struct
from pathlib import Path

import pytest
import torch

from tests.conftest import require

require("torchvision")
require("yaml")

from lawa_benchmarks.resnet.config import DataConfig, ModelConfig  # noqa: E402
from lawa_benchmarks.resnet.data import (  # noqa: E402
    DEFAULT_FASHION_MNIST,
    DataMissingError,
    load_data,
    num_train_batches,
    read_idx,
    shard,
    train_loader,
)
from lawa_benchmarks.resnet.models import build_model  # noqa: E402


def _write_idx(path: Path, array: list[list[int]]) -> None:
    rows, cols = len(array), len(array[0])
    body = struct.pack(">BBBB", 0, 0, 8, 2) + struct.pack(">II", rows, cols) + bytes(v for r in array for v in r)
    path.write_bytes(gzip.compress(body))


def test_read_idx_against_a_hand_built_file(tmp_path):
    data = [[0, 1, 2], [253, 254, 255]]
    _write_idx(tmp_path / "x.gz", data)
    assert read_idx(tmp_path / "x.gz").tolist() == data
    (tmp_path / "t.gz").write_bytes(gzip.compress(gzip.decompress((tmp_path / "x.gz").read_bytes())[:-1]))
    with pytest.raises(ValueError, match="truncated"):
        read_idx(tmp_path / "t.gz")
    (tmp_path / "b.gz").write_bytes(gzip.compress(b"\x00\x00\x0d\x01\x00\x00\x00\x01\x00"))
    with pytest.raises(ValueError, match="not an unsigned-byte IDX"):
        read_idx(tmp_path / "b.gz")


def _need_data():
    if not (Path(DEFAULT_FASHION_MNIST) / "train-images-idx3-ubyte.gz").is_file():
        require("__fashion_mnist_data__", "apt-get install dataset-fashion-mnist")


def test_real_fashion_mnist_and_fixed_subsets():
    _need_data()
    labels = read_idx(Path(DEFAULT_FASHION_MNIST) / "train-labels-idx1-ubyte.gz")
    assert labels.shape == (60000,) and labels[:3].tolist() == [9, 0, 0]  # ankle boot, T-shirt, T-shirt
    cfg = DataConfig(train_images=500, val_images=200, train_eval_images=50, bn_images=64)
    a, b = load_data(cfg), load_data(cfg)
    assert (len(a.train), len(a.val), len(a.train_eval), len(a.bn)) == (500, 200, 50, 64)
    assert torch.equal(a.train.tensors[1], b.train.tensors[1]) and a.num_classes == 10 and a.in_channels == 1
    x = a.train.tensors[0]
    assert x.shape[1:] == (1, 28, 28) and abs(x.mean().item()) < 0.2  # normalized
    # the BN and train-eval subsets are drawn from the training subset
    train_set = {tuple(r.flatten()[:64].tolist()) for r in a.train.tensors[0]}
    assert all(tuple(r.flatten()[:64].tolist()) in train_set for r in a.bn.tensors[0][:8])


def test_batch_order_depends_only_on_seed_and_epoch():
    _need_data()
    cfg = DataConfig(train_images=256, val_images=64, train_eval_images=32, bn_images=32, batch_size=64)
    data = load_data(cfg)
    order = lambda seed, epoch: torch.cat([y for _, y in train_loader(data, cfg, seed, epoch)])
    torch.manual_seed(123)
    first = order(0, 1)
    torch.manual_seed(456)  # the global RNG plays no part
    assert torch.equal(first, order(0, 1))
    assert not torch.equal(first, order(0, 2)) and not torch.equal(first, order(1, 1))
    assert num_train_batches(data, cfg) == 4 and len(list(train_loader(data, cfg, 0, 0))) == 4
    halves = [shard(data.val, r, 2) for r in (0, 1)]
    assert len(halves[0]) + len(halves[1]) == 64


def test_missing_data_error_says_how_to_install(tmp_path):
    with pytest.raises(DataMissingError, match="apt-get install dataset-fashion-mnist"):
        load_data(DataConfig(), tmp_path)
    with pytest.raises(DataMissingError, match="ROOT/train"):
        load_data(DataConfig(dataset="imagefolder", root=str(tmp_path)))


def test_torchvision_folder_layout_is_read(tmp_path):
    _need_data()
    raw = tmp_path / "FashionMNIST" / "raw"
    raw.mkdir(parents=True)
    for name in Path(DEFAULT_FASHION_MNIST).glob("t10k-*.gz"):
        (raw / name.name).symlink_to(name)
    for name in Path(DEFAULT_FASHION_MNIST).glob("train-*.gz"):
        (raw / name.name).symlink_to(name)
    data = load_data(DataConfig(train_images=10, val_images=10, train_eval_images=5, bn_images=5), tmp_path)
    assert len(data.train) == 10


@pytest.mark.parametrize("arch,stem", [("resnet8", "3x3s1"), ("resnet10", "3x3s2"), ("resnet18", "imagenet")])
def test_small_resnets_from_torchvision_class(arch, stem):
    from torchvision.models.resnet import ResNet

    model = build_model(ModelConfig(arch=arch, width=8, stem=stem), num_classes=10, in_channels=1)
    assert isinstance(model, ResNet)
    assert model(torch.zeros(2, 1, 28, 28)).shape == (2, 10)
    assert model.conv1.in_channels == 1 and model.conv1.out_channels == 8


def test_default_resnets_are_torchvisions_own():
    import torchvision

    for arch in ("resnet18", "resnet50"):
        ours = build_model(ModelConfig(arch=arch), num_classes=7)
        ref = getattr(torchvision.models, arch)(num_classes=7)
        assert [(n, p.shape) for n, p in ours.named_parameters()] == [(n, p.shape) for n, p in ref.named_parameters()]


def test_imagefolder_tree_with_standard_transforms(tmp_path):
    from PIL import Image

    for split in ("train", "val"):
        for cls in ("cat", "dog"):
            folder = tmp_path / split / cls
            folder.mkdir(parents=True)
            for i in range(3):
                Image.new("RGB", (40, 36), (40 * i, 100, 200 if cls == "dog" else 0)).save(folder / f"{i}.png")
    cfg = DataConfig(dataset="imagefolder", root=str(tmp_path), image_size=32, train_eval_images=2, bn_images=4,
                     batch_size=2)
    data = load_data(cfg)
    assert (data.num_classes, data.in_channels, len(data.train), len(data.val)) == (2, 3, 6, 6)
    x, y = next(iter(train_loader(data, cfg, 0, 0)))
    assert x.shape == (2, 3, 32, 32) and y.dtype == torch.long
    assert data.val[0][0].shape == (3, 32, 32) and len(data.bn) == 4


# ------------------------------------------------------------------------------ real image files on disk
_COLORS = {"ant": (250, 0, 0), "bee": (0, 250, 0), "cat": (0, 0, 250)}


def _image_tree(root: Path, layout: dict[str, list[str]], per_class: int = 2) -> None:
    """PNG files in ``root/<split>/<class>/``, each class its own colour."""
    from PIL import Image

    for split, classes in layout.items():
        for cls in classes:
            (root / split / cls).mkdir(parents=True)
            for i in range(per_class):
                Image.new("RGB", (20 + i, 18), _COLORS[cls]).save(root / split / cls / f"{cls}{i}.png")


def _folder_cfg(root: Path) -> DataConfig:
    return DataConfig(dataset="imagefolder", root=str(root), image_size=16, train_eval_images=2, bn_images=2,
                      batch_size=2, augment=False)


def test_val_missing_a_class_keeps_the_training_labels(tmp_path, caplog):
    """torchvision numbers val/ = {ant, cat} as 0, 1; the model's cat is 2: every cat label must stay 2."""
    _image_tree(tmp_path, {"train": ["ant", "bee", "cat"], "val": ["ant", "cat"]})
    with caplog.at_level("WARNING"):
        data = load_data(_folder_cfg(tmp_path))
    assert "no folder for 1 of train/'s 3 classes (bee)" in caplog.text
    blue = torch.tensor(_COLORS["cat"], dtype=torch.float).argmax()
    for x, y in (data.val[i] for i in range(len(data.val))):
        assert y == (2 if x.mean((1, 2)).argmax() == blue else 0)  # the colour says the class
    assert sorted(data.val[i][1] for i in range(len(data.val))) == [0, 0, 2, 2]
    assert data.num_classes == 3
    assert data.counts == {"train_found": 6, "val_found": 4, "train": 6, "val": 4, "train_eval": 2, "bn": 2,
                           "classes": 3}
    assert data.describe().startswith("images: train 6 of 6, val 4 of 4, 3 classes")


def test_val_class_unknown_to_train_is_refused(tmp_path):
    from lawa_benchmarks.resnet.data import DataLayoutError

    _image_tree(tmp_path, {"train": ["ant", "bee"], "val": ["ant", "bee", "cat"]})
    with pytest.raises(DataLayoutError, match=r"val/ has class folder\(s\) \['cat'\] that train/ does not have"):
        load_data(_folder_cfg(tmp_path))


def test_flat_val_folder_gets_the_runners_message(tmp_path):
    """ImageNet's raw validation layout: files directly in val/. The CLI says what to do, no traceback."""
    from click.testing import CliRunner
    from PIL import Image

    from lawa_benchmarks.resnet.cli import resnet

    _image_tree(tmp_path, {"train": ["ant", "bee"]})
    (tmp_path / "val").mkdir()
    for i in range(3):
        Image.new("RGB", (16, 16), (i, i, i)).save(tmp_path / "val" / f"ILSVRC2012_val_{i:08d}.JPEG")
    res = CliRunner().invoke(resnet, ["--out", str(tmp_path / "run"), "data.dataset=imagefolder",
                                      f"data.root={tmp_path}"])
    assert res.exit_code == 1, res.output
    assert "holds 3 file(s) and no class folders" in res.output and "sort them into val/<wnid>/" in res.output
    assert "Traceback" not in res.output and "Couldn't find any class folder" not in res.output


def _cifar_folder(root: Path, n_train: int = 4, n_test: int = 3) -> Path:
    """A cifar-10-batches-py folder in the official pickle format, holding real (PIL-drawn) images."""
    import pickle

    import numpy as np
    from PIL import Image

    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)

    def batch(n: int, offset: int) -> dict:
        imgs = [np.asarray(Image.new("RGB", (32, 32), (20 * i, 255 - 20 * i, 7 * i)))
                for i in range(offset, offset + n)]
        data = np.stack([a.transpose(2, 0, 1).reshape(-1) for a in imgs]).astype(np.uint8)  # CHW rows, as CIFAR
        return {"data": data, "labels": [i % 10 for i in range(offset, offset + n)]}

    for i in range(1, 6):
        (folder / f"data_batch_{i}").write_bytes(pickle.dumps(batch(n_train, 10 * i)))
    (folder / "test_batch").write_bytes(pickle.dumps(batch(n_test, 0)))
    (folder / "batches.meta").write_bytes(pickle.dumps({"label_names": [f"c{i}" for i in range(10)]}))
    return folder


def test_cifar_files_failing_the_integrity_check_are_named_as_such(tmp_path, monkeypatch):
    import torchvision.datasets.cifar

    folder = _cifar_folder(tmp_path)
    cfg = DataConfig(dataset="cifar10", root=str(tmp_path), train_eval_images=4, bn_images=4, batch_size=4)
    with pytest.raises(DataMissingError, match="exist but fail torchvision's integrity check") as err:
        load_data(cfg)
    assert "is not in" not in str(err.value)
    (folder / "data_batch_3").unlink()
    with pytest.raises(DataMissingError, match="incomplete: data_batch_3 missing"):
        load_data(cfg)
    with pytest.raises(DataMissingError, match="CIFAR10 is not in"):
        load_data(cfg, tmp_path / "elsewhere")
    # the same files pass once the MD5 check is waived: the layout is right, only the sums differ
    _cifar_folder(tmp_path / "ok")
    monkeypatch.setattr(torchvision.datasets.cifar, "check_integrity", lambda *args, **kwargs: True)
    data = load_data(cfg, tmp_path / "ok")
    assert data.counts["train_found"] == 20 and data.counts["val_found"] == 3 and data.num_classes == 10
    x, y = data.val[1]
    assert x.shape == (3, 32, 32) and y == 1


def test_images_per_split_and_world_size_reach_the_results(tmp_path):
    """A one-epoch run on real image files: the log and metrics.json say how many images were used."""
    import json

    from click.testing import CliRunner

    from lawa_benchmarks.resnet.cli import resnet

    _image_tree(tmp_path / "data", {"train": ["ant", "bee", "cat"], "val": ["ant", "bee", "cat"]}, per_class=3)
    args = ["--out", str(tmp_path / "run"), "--no-progress", "threads=1",
            "data.dataset=imagefolder", f"data.root={tmp_path / 'data'}", "data.image_size=16", "data.val_images=6",
            "data.train_eval_images=3", "data.bn_images=3", "data.batch_size=4", "data.augment=false",
            "model.arch=resnet8", "model.width=4", "model.stem=3x3s1", "train.epochs=1", "methods.lawa.k=[1]",
            "methods.lawa.bncopy_k=[]", "report.headline=lawa_k1"]
    res = CliRunner().invoke(resnet, ["--methods", "lawa", *args], catch_exceptions=False)
    assert res.exit_code == 0, res.output
    # the same folder with other --methods is refused (as another config is), not resumed
    again = CliRunner().invoke(resnet, ["--methods", "lawa,ema", *args], catch_exceptions=False)
    assert again.exit_code == 2 and "another configuration or --methods" in again.output
    assert "images: train 9 of 9, val 6 of 9, 3 classes" in res.output
    assert "1 process(es) x batch 4 = global batch 4, 2 steps per epoch" in res.output
    meta = json.loads((tmp_path / "run" / "metrics.json").read_text())["meta"]
    assert meta["world_size"] == 1 and meta["global_batch_size"] == 4
    assert meta["images"] == {"train_found": 9, "val_found": 9, "train": 9, "val": 6, "train_eval": 3, "bn": 3,
                              "classes": 3}
