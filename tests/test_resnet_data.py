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
