"""Image classification: the suite's ``resnet`` (ResNet-10, SGD) and ``vit`` (a small ViT, AdamW) on Fashion-MNIST.

The data is the ResNet benchmark's (:mod:`lawa_benchmarks.resnet.data`: the Debian package's
IDX files, a fixed subset, batch order a function of ``(seed, epoch)``). The ResNet is that
benchmark's ``resnet10`` (torchvision's ``ResNet`` class, 3x3 stride-2 stem); the ViT is
torchvision's ``VisionTransformer`` with a one-channel patch embedding (torchvision fixes three
channels), initialised as torchvision initialises its own. :class:`ImageWorkload` is also the
ResNet benchmark's workload (``lawa bench resnet``: any of its data sets and ResNets, under
``torchrun`` too), built by :mod:`lawa_benchmarks.resnet.runner` from its own config.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Annotated, Any, Literal

import torch
from pydantic import Field, model_validator
from torch import nn

from .base import NonNegFloat, PosFloat, PosInt, Workload, WorkloadSection

__all__ = ["ImageWorkload", "ResNetConfig", "ViTConfig", "WORKLOADS", "build_vit"]


class ImageConfig(WorkloadSection):
    """Fashion-MNIST classification (a fixed subset; the Debian package's files), validation top-1."""

    arch: Literal["resnet", "vit"] = "resnet"
    root: str | None = None  # None: /usr/share/datasets/fashion-mnist
    train_images: PosInt = 3000
    val_images: PosInt = 1000
    bn_images: PosInt = 256
    eval_batch_size: PosInt = 500
    width: PosInt = 16  # resnet: channels of the first stage; vit: the hidden size
    depth: PosInt = 4  # vit: transformer layers (resnet: ResNet-10, fixed)
    heads: PosInt = 4  # vit
    patch: PosInt = 7  # vit: patch size (28 must be a multiple)
    momentum: Annotated[float, Field(ge=0, lt=1)] = 0.9  # SGD (resnet)
    optimizer: Literal["sgd", "adamw"] = "sgd"


class ResNetConfig(ImageConfig):
    """The ResNet benchmark's ResNet-10 with SGD and cosine (its defaults are this workload's recipe)."""

    arch: Literal["resnet"] = "resnet"


class ViTConfig(ImageConfig):
    """torchvision's VisionTransformer with AdamW, warm-up and cosine."""

    arch: Literal["vit"] = "vit"
    optimizer: Literal["adamw"] = "adamw"
    lr: PosFloat = 2e-3
    weight_decay: NonNegFloat = 0.05
    warmup_epochs: Annotated[int, Field(ge=0)] = 2
    width: PosInt = 64

    @model_validator(mode="after")
    def _shapes(self) -> ViTConfig:
        if self.width % self.heads:
            raise ValueError(f"width={self.width} is not a multiple of heads={self.heads}")
        if 28 % self.patch:
            raise ValueError(f"patch={self.patch} does not divide the 28-pixel images; use 4, 7 or 14")
        return self


def build_vit(width: int, depth: int, heads: int, patch: int, num_classes: int = 10, image_size: int = 28,
              in_channels: int = 1) -> nn.Module:
    """torchvision's ``VisionTransformer`` (MLP 2x the width) with an ``in_channels`` patch embedding."""
    from torchvision.models.vision_transformer import VisionTransformer

    model = VisionTransformer(image_size=image_size, patch_size=patch, num_layers=depth, num_heads=heads,
                              hidden_dim=width, mlp_dim=2 * width, num_classes=num_classes)
    conv = nn.Conv2d(in_channels, width, kernel_size=patch, stride=patch)
    fan_in = conv.in_channels * conv.kernel_size[0] * conv.kernel_size[1]
    nn.init.trunc_normal_(conv.weight, std=math.sqrt(1 / fan_in))  # as VisionTransformer.__init__ does
    nn.init.zeros_(conv.bias)
    model.conv_proj = conv
    return model


class ImageWorkload(Workload):
    """Image classification; from a suite section (``cfg.arch``: ``resnet`` with SGD, ``vit`` with AdamW).

    :meth:`setup` is the whole workload; the suite's constructor and the ResNet benchmark
    (:mod:`lawa_benchmarks.resnet.runner`) each call it with what their configs say.
    """

    metric = "top1"
    higher_is_better = True

    def __init__(self, name: str, cfg: Any, data_dir: str | None = None) -> None:
        from ...resnet.config import DataConfig, ModelConfig
        from ...resnet.models import build_model

        super().__init__(name, cfg)
        data = DataConfig(dataset="fashion-mnist", root=data_dir or cfg.root, train_images=cfg.train_images,
                          val_images=cfg.val_images, train_eval_images=1, bn_images=cfg.bn_images,
                          batch_size=cfg.batch_size, eval_batch_size=cfg.eval_batch_size, augment=False)
        if cfg.arch == "vit":
            model = lambda: build_vit(cfg.width, cfg.depth, cfg.heads, cfg.patch)  # noqa: E731
            described = f"ViT ({cfg.depth} layers, width {cfg.width}, patch {cfg.patch})"
        else:
            model = lambda: build_model(ModelConfig(arch="resnet10", width=cfg.width, stem="3x3s2"), 10, 1)  # noqa: E731
            described = f"ResNet-10 (width {cfg.width})"
        options = {"lr": cfg.lr, "weight_decay": cfg.weight_decay}
        if cfg.optimizer == "sgd":
            options["momentum"] = cfg.momentum
        self.setup(data, model, cfg.optimizer, options, has_batchnorm=cfg.arch == "resnet", described=described)
        if self.steps_per_epoch < 1:
            raise ValueError(f"Invalid workloads.{name}.batch_size={cfg.batch_size}: larger than the "
                             f"{len(self.data.train)} training images; lower it")

    def setup(self, data_cfg: Any, model: Callable[[], nn.Module], optimizer: str, options: dict[str, Any], *,
              has_batchnorm: bool, described: str, train_eval: bool = False, top5: bool = False, rank: int = 0,
              world: int = 1, all_sum: Callable[[torch.Tensor], torch.Tensor] | None = None,
              data_dir: str | None = None) -> None:
        """Load the data of ``data_cfg`` (a ResNet benchmark ``DataConfig``); ``model()`` builds a fresh model.

        ``optimizer`` (``sgd``, ``adamw``) with ``options`` is the recipe's base optimizer; ``train_eval``
        adds the training loss and top-1 on ``data_cfg.train_eval_images`` to the evaluation, ``top5``
        the top-5; ``rank`` of ``world`` processes trains and evaluates its shard, ``all_sum`` sums
        evaluation counts over the processes; ``data_dir`` overrides ``data_cfg.root``.
        """
        from ...resnet.data import eval_loader, load_data, num_train_batches, shard

        self.data_cfg, self._model, self._optimizer, self._options = data_cfg, model, optimizer, options
        self.rank, self.world, self._all_sum = rank, world, all_sum
        self.data = load_data(data_cfg, data_dir)
        self.steps_per_epoch = num_train_batches(self.data, data_cfg, world)
        self._val = eval_loader(shard(self.data.val, rank, world), self.data, data_cfg)
        self._train_eval = eval_loader(shard(self.data.train_eval, rank, world), self.data, data_cfg) \
            if train_eval else None
        self._bn = eval_loader(self.data.bn, self.data, data_cfg, batch_size=data_cfg.batch_size)
        self.top5 = top5
        self.has_batchnorm = has_batchnorm
        self.base_label = "SGD" if optimizer == "sgd" else "AdamW"
        self.label = f"{described} / {'Fashion-MNIST' if data_cfg.dataset == 'fashion-mnist' else data_cfg.dataset}, " \
                     f"{self.base_label}"

    def describe(self) -> dict[str, Any]:
        return {"images": self.data.counts, "steps_per_epoch": self.steps_per_epoch}

    def build_model(self) -> nn.Module:
        return self._model()

    def optimizer(self, model: nn.Module, lr: float | None = None) -> torch.optim.Optimizer:
        options = {**self._options, **({} if lr is None else {"lr": lr})}
        if self._optimizer == "sgd":
            return torch.optim.SGD(model.parameters(), **options)
        return torch.optim.AdamW(model.parameters(), **options)

    def train_batches(self, seed: int, epoch: int) -> Any:
        from ...resnet.data import train_loader

        return train_loader(self.data, self.data_cfg, seed, epoch, self.rank, self.world)

    def loss(self, model: nn.Module, batch: Any) -> torch.Tensor:
        x, y = batch
        return nn.functional.cross_entropy(model(x), y)

    def evaluate(self, model: nn.Module) -> dict[str, float]:
        val = self._score(model, self._val)
        out = {"val_loss": val["loss"], "top1": val["top1"]}
        if self.top5:
            out["top5"] = val["top5"]
        if self._train_eval is not None:
            train = self._score(model, self._train_eval)
            out.update(train_loss=train["loss"], train_top1=train["top1"])
        return out

    def _score(self, model: nn.Module, loader: Any) -> dict[str, float]:
        """Mean loss, top-1 and top-5 (in %) over ``loader``, summed over the processes."""
        device = next(model.parameters()).device
        sums = torch.zeros(4, dtype=torch.float64)
        with torch.no_grad():
            for x, y in loader:
                x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
                out = model(x)
                sums[0] += nn.functional.cross_entropy(out, y, reduction="sum").item()
                hit = out.topk(min(5, out.shape[1]), dim=1).indices.eq(y[:, None])
                sums[1] += hit[:, :1].sum().item()
                sums[2] += hit.sum().item()
                sums[3] += len(y)
        if self._all_sum is not None:
            self._all_sum(sums)
        n = max(sums[3].item(), 1.0)
        return {"loss": sums[0].item() / n, "top1": 100 * sums[1].item() / n, "top5": 100 * sums[2].item() / n}

    def bn_batches(self) -> Any:
        return self._bn if self.has_batchnorm else None

    selection_size = 1000

    def selection_batches(self, n: int) -> list[Any]:
        """``n`` Fashion-MNIST training images after the training subset in the same fixed permutation, 500 a batch."""
        from pathlib import Path

        from ...resnet.data import DEFAULT_FASHION_MNIST, fashion_mnist

        train, _ = fashion_mnist(Path(self.data_cfg.root or DEFAULT_FASHION_MNIST))
        perm = torch.randperm(len(train), generator=torch.Generator().manual_seed(0))  # as load_data's subset
        used = self.cfg.train_images
        idx = perm[used:used + n].sort().values
        x, y = (t[idx] for t in train.tensors)
        return [(x[i:i + 500], y[i:i + 500]) for i in range(0, len(idx), 500)]

    def val_batches(self) -> Any:
        return self._val

    def score(self, model: nn.Module, batches: Any) -> dict[str, float]:
        loss, hits, n = 0.0, 0, 0
        with torch.no_grad():
            for x, y in batches:
                out = model(x)
                loss += nn.functional.cross_entropy(out, y, reduction="sum").item()
                hits += (out.argmax(1) == y).sum().item()
                n += len(y)
        return {"loss": loss / n, "top1": 100.0 * hits / n}


class ResNetWorkload(ImageWorkload):
    Config = ResNetConfig


class ViTWorkload(ImageWorkload):
    Config = ViTConfig


WORKLOADS = {"resnet": ResNetWorkload, "vit": ViTWorkload}
