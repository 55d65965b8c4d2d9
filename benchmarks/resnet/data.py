"""Image data for the ResNet benchmark, read from disk only (nothing is ever downloaded).

- ``fashion-mnist``: the gzip IDX files of Debian's ``dataset-fashion-mnist``
  (``/usr/share/datasets/fashion-mnist``), or of a torchvision ``FashionMNIST/raw`` folder,
  held in memory as normalized tensors.
- ``cifar10`` / ``cifar100``: torchvision-format folders (``cifar-10-batches-py``,
  ``cifar-100-python``) read with ``download=False``; random crop and flip when ``augment``.
- ``imagefolder``: ``ROOT/train`` and ``ROOT/val`` class folders such as ImageNet, with the
  standard ``RandomResizedCrop`` + flip for training and resize + center crop for evaluation.
  The labels of both splits are the training split's ``class_to_idx`` (torchvision numbers
  each folder's classes on its own, so a ``val/`` missing a class would shift every label);
  a ``val/`` class that ``train/`` lacks is refused, and a flat ``val/`` (ImageNet's raw
  layout) gets a message saying how to sort it.

:func:`load_data` records how many images each split holds and uses (``DataBundle.counts``);
the runner logs them and writes them into the results.

Subsets (``train_images``, ``val_images``) are fixed random subsets drawn with a generator
seeded 0, the same for every training seed. The training order is drawn per epoch from a
``torch.Generator`` seeded ``seed * 1000 + epoch`` (:func:`train_loader`), so an interrupted
run resumed at epoch ``e`` sees exactly the batches an uninterrupted one does.
"""

from __future__ import annotations

import gzip
import logging
import os
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import BatchSampler, DataLoader, Dataset, RandomSampler, SequentialSampler, Subset, TensorDataset

from .config import DataConfig

__all__ = [
    "DEFAULT_FASHION_MNIST",
    "DataBundle",
    "DataLayoutError",
    "DataMissingError",
    "eval_loader",
    "fashion_mnist",
    "load_data",
    "num_train_batches",
    "shard",
    "train_loader",
]

DEFAULT_FASHION_MNIST = "/usr/share/datasets/fashion-mnist"
_FMNIST_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
_FMNIST_MEAN, _FMNIST_STD = 0.2860, 0.3530
_CIFAR_STATS = {"cifar10": ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
                "cifar100": ((0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762))}
_IMAGENET_STATS = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
_logger = logging.getLogger(__name__)


class DataMissingError(FileNotFoundError):
    """The data set is not on disk; the message says how to get it."""


class DataLayoutError(ValueError):
    """The data set is on disk but its folders cannot be used as they are; the message says the fix."""


@dataclass
class DataBundle:
    """The data sets of one benchmark.

    ``train`` is augmented (if configured); ``train_eval`` and ``bn`` are fixed subsets of the
    same training images without augmentation: every method's training loss is measured on
    ``train_eval``, BatchNorm statistics of averaged weights are recomputed on ``bn``.
    ``batched`` says the data sets are in-memory tensors that can be indexed a batch at a time.
    ``counts`` says how many images each split holds on disk (``train_found``, ``val_found``) and
    how many are used (``train``, ``val``, ``train_eval``, ``bn``), and ``classes``.
    """

    train: Dataset
    val: Dataset
    train_eval: Dataset
    bn: Dataset
    num_classes: int
    in_channels: int
    batched: bool
    counts: dict[str, int] = field(default_factory=dict)

    def describe(self) -> str:
        """One line for the log: the images of each split, found and used."""
        c = self.counts
        return (f"images: train {c.get('train')} of {c.get('train_found')}, val {c.get('val')} of "
                f"{c.get('val_found')}, {c.get('classes')} classes (train loss measured on {c.get('train_eval')}, "
                f"BatchNorm recomputed on {c.get('bn')})")


# ------------------------------------------------------------------------------ Fashion-MNIST
def read_idx(path: Path) -> torch.Tensor:
    """One IDX file (gzip or plain): byte 3 is the number of dimensions, then big-endian sizes."""
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as f:
        data = f.read()
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] != 8:
        raise ValueError(f"{str(path)!r} is not an unsigned-byte IDX file (header {data[:4]!r})")
    ndim = data[3]
    dims = struct.unpack(f">{ndim}I", data[4 : 4 + 4 * ndim])
    expected = 4 + 4 * ndim + int(torch.Size(dims).numel())
    if len(data) != expected:
        raise ValueError(f"{str(path)!r} is truncated: {len(data)} bytes, the header promises {expected}")
    return torch.frombuffer(bytearray(data[4 + 4 * ndim :]), dtype=torch.uint8).reshape(dims)


def _find_idx(root: Path, stem: str) -> Path | None:
    for folder in (root, root / "FashionMNIST" / "raw", root / "raw"):
        for name in (stem + ".gz", stem):
            if (folder / name).is_file():
                return folder / name
    return None


def fashion_mnist(root: Path) -> tuple[TensorDataset, TensorDataset]:
    """Fashion-MNIST's training and test sets from the IDX files under ``root``, normalized, in memory."""
    out = []
    for split in ("train", "test"):
        paths = [_find_idx(root, stem) for stem in _FMNIST_FILES[split]]
        if None in paths:
            missing = [s for s, p in zip(_FMNIST_FILES[split], paths) if p is None]
            raise DataMissingError(
                f"Fashion-MNIST is not in {str(root)!r} (missing {', '.join(m + '.gz' for m in missing)}). "
                "Install it with `sudo apt-get install dataset-fashion-mnist` (Debian/Ubuntu; it lands in "
                f"{DEFAULT_FASHION_MNIST}), or pass --data-dir DIR with the four IDX files, "
                "or a torchvision FashionMNIST folder. Nothing is downloaded at run time."
            )
        images, labels = (read_idx(p) for p in paths)
        x = (images.float().div_(255).sub_(_FMNIST_MEAN).div_(_FMNIST_STD)).unsqueeze(1)
        out.append(TensorDataset(x, labels.long()))
    return out[0], out[1]


# ------------------------------------------------------------------------------ torchvision
def _cifar(name: str, root: Path, augment: bool) -> tuple[Dataset, Dataset, Dataset]:
    from torchvision import datasets, transforms

    mean, std = _CIFAR_STATS[name]
    norm = [transforms.ToTensor(), transforms.Normalize(mean, std)]
    aug = [transforms.RandomCrop(32, padding=4), transforms.RandomHorizontalFlip()] if augment else []
    cls = datasets.CIFAR10 if name == "cifar10" else datasets.CIFAR100
    try:
        train = cls(str(root), train=True, download=False, transform=transforms.Compose(aug + norm))
        train_plain = cls(str(root), train=True, download=False, transform=transforms.Compose(norm))
        val = cls(str(root), train=False, download=False, transform=transforms.Compose(norm))
    except RuntimeError as err:
        raise DataMissingError(_cifar_problem(name, cls, root)) from err
    return train, train_plain, val


def _cifar_problem(name: str, cls: Any, root: Path) -> str:
    """Why torchvision refused a CIFAR folder: missing, incomplete, or files that fail its MD5 check."""
    folder = root / cls.base_folder
    expected = [f for f, _ in cls.train_list + cls.test_list] + [cls.meta["filename"]]
    missing = [f for f in expected if not (folder / f).is_file()]
    how = (f"Put the torchvision-format folder {cls.base_folder}/ there (unpack the python version of the archive "
           "from https://www.cs.toronto.edu/~kriz/cifar.html on a machine with internet), then pass --data-dir to "
           "its parent. Nothing is downloaded at run time.")
    if not missing:
        return (f"The {name.upper()} files in {str(folder)!r} exist but fail torchvision's integrity check (their "
                "MD5 sums differ from the official archive's: modified, truncated or re-pickled files). torchvision "
                f"reads only the official files; unpack the archive again. {how}")
    if len(missing) < len(expected):
        return f"{str(folder)!r} is incomplete: {', '.join(missing)} missing. {how}"
    return f"{name.upper()} is not in {str(root)!r} (no {cls.base_folder}/ with its files). {how}"


def _class_folders(folder: Path) -> list[str]:
    return sorted(e.name for e in os.scandir(folder) if e.is_dir())


def _check_imagefolder(root: Path) -> tuple[list[str], list[str]]:
    """The class folders of ``train/`` and ``val/``; a clear error for a missing split, a flat one, or extra classes."""
    for split in ("train", "val"):
        if not (root / split).is_dir():
            raise DataMissingError(
                f"No {split}/ folder in {str(root)!r}: an ImageFolder data set needs ROOT/train/<class>/*.jpg and "
                "ROOT/val/<class>/*.jpg (for ImageNet, sort the validation images into class folders first)."
            )
    classes = {}
    for split in ("train", "val"):
        classes[split] = _class_folders(root / split)
        if not classes[split]:
            files = sum(1 for e in os.scandir(root / split) if e.is_file())
            raise DataLayoutError(
                f"{str(root / split)!r} holds {files} file(s) and no class folders: an ImageFolder split needs "
                f"{split}/<class>/*.jpg, with the class folders of train/. ImageNet's validation images come flat: "
                "sort them into val/<wnid>/ folders first (e.g. with the devkit's ground-truth labels)."
            )
    extra = sorted(set(classes["val"]) - set(classes["train"]))
    if extra:
        raise DataLayoutError(
            f"Invalid ImageFolder {str(root)!r}: val/ has class folder(s) {extra} that train/ does not have; a model "
            f"trained on train/'s {len(classes['train'])} classes cannot be scored on them. Remove them from val/ or "
            "add them to train/."
        )
    return classes["train"], classes["val"]


def _imagefolder(root: Path, size: int, augment: bool) -> tuple[Dataset, Dataset, Dataset]:
    from torchvision import datasets, transforms

    train_classes, val_classes = _check_imagefolder(root)
    norm = [transforms.ToTensor(), transforms.Normalize(*_IMAGENET_STATS)]
    train_tf = [transforms.RandomResizedCrop(size), transforms.RandomHorizontalFlip()] if augment else [
        transforms.Resize(int(size * 256 / 224)), transforms.CenterCrop(size)]
    eval_tf = [transforms.Resize(int(size * 256 / 224)), transforms.CenterCrop(size)]
    try:
        train = datasets.ImageFolder(str(root / "train"), transforms.Compose(train_tf + norm))
        train_plain = datasets.ImageFolder(str(root / "train"), transforms.Compose(eval_tf + norm))
        val = datasets.ImageFolder(str(root / "val"), transforms.Compose(eval_tf + norm), allow_empty=True)
    except FileNotFoundError as err:  # a class folder without images
        raise DataLayoutError(f"Invalid ImageFolder {str(root)!r}: {err}") from err
    # torchvision numbers each folder's classes on its own: relabel val/ with train/'s numbering
    val.samples = [(path, train.class_to_idx[val.classes[t]]) for path, t in val.samples]
    val.imgs, val.targets = val.samples, [t for _, t in val.samples]
    val.classes, val.class_to_idx = list(train.classes), dict(train.class_to_idx)
    absent = sorted(set(train_classes) - set(val_classes))
    if absent:
        _logger.warning("val/ has no folder for %d of train/'s %d classes (%s); its labels follow train/'s numbering",
                        len(absent), len(train_classes), ", ".join(absent[:10]) + (", ..." if len(absent) > 10 else ""))
    return train, train_plain, val


# ------------------------------------------------------------------------------ assembly
def _fixed_subset(n_total: int, n: int | None) -> torch.Tensor:
    """The first ``n`` of a fixed permutation (generator seeded 0), sorted; all if ``n`` is None."""
    if n is None or n >= n_total:
        return torch.arange(n_total)
    perm = torch.randperm(n_total, generator=torch.Generator().manual_seed(0))
    return perm[:n].sort().values


def _subset(ds: Dataset, idx: torch.Tensor) -> Dataset:
    if isinstance(ds, TensorDataset):
        return TensorDataset(*(t[idx] for t in ds.tensors))
    return Subset(ds, idx.tolist())


def load_data(cfg: DataConfig, data_dir: str | Path | None = None) -> DataBundle:
    """Load the configured data set (``data_dir`` overrides ``cfg.root``).

    Raises:
        DataMissingError: the data is not on disk; the message says how to install it.
    """
    root = Path(data_dir or cfg.root or DEFAULT_FASHION_MNIST).expanduser()
    if cfg.dataset == "fashion-mnist":
        train, val = fashion_mnist(root)
        train_plain, num_classes, channels, batched = train, 10, 1, True
    elif cfg.dataset in ("cifar10", "cifar100"):
        train, train_plain, val = _cifar(cfg.dataset, root, cfg.augment)
        num_classes, channels, batched = (10 if cfg.dataset == "cifar10" else 100), 3, False
    else:
        train, train_plain, val = _imagefolder(root, cfg.image_size, cfg.augment)
        num_classes, channels, batched = len(train.classes), 3, False
    train_idx = _fixed_subset(len(train), cfg.train_images)
    val_idx = _fixed_subset(len(val), cfg.val_images)
    # train_eval and bn: the first images of a fixed shuffle of the training subset
    order = train_idx[torch.randperm(len(train_idx), generator=torch.Generator().manual_seed(1))]
    bundle = DataBundle(
        train=_subset(train, train_idx),
        val=_subset(val, val_idx),
        train_eval=_subset(train_plain, order[: cfg.train_eval_images].sort().values),
        bn=_subset(train_plain, order[: cfg.bn_images].sort().values),
        num_classes=num_classes,
        in_channels=channels,
        batched=batched,
    )
    bundle.counts = {"train_found": len(train), "val_found": len(val), "train": len(bundle.train),
                     "val": len(bundle.val), "train_eval": len(bundle.train_eval), "bn": len(bundle.bn),
                     "classes": num_classes}
    return bundle


def shard(ds: Dataset, rank: int, world_size: int) -> Dataset:
    """Every ``world_size``-th item from ``rank`` on (the whole data set when ``world_size`` is 1)."""
    if world_size <= 1:
        return ds
    return _subset(ds, torch.arange(rank, len(ds), world_size))


def _loader(ds: Dataset, sampler: Any, batch_size: int, batched: bool, num_workers: int, drop_last: bool,
            generator: torch.Generator | None = None) -> DataLoader:
    if batched:  # in-memory tensors: index a whole batch at once
        return DataLoader(ds, sampler=BatchSampler(sampler, batch_size, drop_last), batch_size=None,
                          num_workers=num_workers, generator=generator)
    return DataLoader(ds, sampler=sampler, batch_size=batch_size, drop_last=drop_last, num_workers=num_workers,
                      generator=generator)


def train_loader(data: DataBundle, cfg: DataConfig, seed: int, epoch: int, rank: int = 0,
                 world_size: int = 1) -> DataLoader:
    """The loader of one training epoch; its order depends only on ``(seed, epoch)``.

    With ``world_size > 1`` a ``DistributedSampler`` (seed ``seed * 1000``, ``set_epoch(epoch)``)
    gives each rank its shard.
    """
    gen = torch.Generator().manual_seed(seed * 1000 + epoch)
    if world_size > 1:
        from torch.utils.data.distributed import DistributedSampler

        sampler: Any = DistributedSampler(data.train, num_replicas=world_size, rank=rank, shuffle=True,
                                          seed=seed * 1000, drop_last=True)
        sampler.set_epoch(epoch)
    else:
        sampler = RandomSampler(data.train, generator=gen)
    return _loader(data.train, sampler, cfg.batch_size, data.batched, cfg.num_workers, drop_last=True,
                   generator=gen)


def eval_loader(ds: Dataset, data: DataBundle, cfg: DataConfig, batch_size: int | None = None) -> DataLoader:
    """A sequential loader (the same batches every time, no global RNG drawn)."""
    return _loader(ds, SequentialSampler(ds), batch_size or cfg.eval_batch_size, data.batched, cfg.num_workers,
                   drop_last=False, generator=torch.Generator().manual_seed(0))


def num_train_batches(data: DataBundle, cfg: DataConfig, world_size: int = 1) -> int:
    """Optimizer steps per epoch (every rank takes the same number)."""
    return (len(data.train) // world_size) // cfg.batch_size
