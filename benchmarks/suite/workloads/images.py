"""Fashion-MNIST workloads: the ResNet benchmark's ResNet-10 with SGD, and a small ViT with AdamW.

The data is the ResNet benchmark's (:mod:`lawa_benchmarks.resnet.data`: the Debian package's
IDX files, a fixed subset, batch order a function of ``(seed, epoch)``). The ResNet is that
benchmark's ``resnet10`` (torchvision's ``ResNet`` class, 3x3 stride-2 stem); the ViT is
torchvision's ``VisionTransformer`` with a one-channel patch embedding (torchvision fixes three
channels), initialised as torchvision initialises its own.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

from .base import Workload

__all__ = ["ImageWorkload", "build_vit"]


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
    """Fashion-MNIST classification; ``cfg.arch`` is ``resnet`` (SGD) or ``vit`` (AdamW)."""

    metric = "top1"
    higher_is_better = True

    def __init__(self, name: str, cfg: Any, data_dir: str | None = None) -> None:
        from ...resnet.config import DataConfig
        from ...resnet.data import eval_loader, load_data, num_train_batches

        super().__init__(name, cfg)
        self.data_cfg = DataConfig(dataset="fashion-mnist", root=data_dir or cfg.root, train_images=cfg.train_images,
                                   val_images=cfg.val_images, train_eval_images=1, bn_images=cfg.bn_images,
                                   batch_size=cfg.batch_size, eval_batch_size=cfg.eval_batch_size, augment=False)
        self.data = load_data(self.data_cfg)
        self.steps_per_epoch = num_train_batches(self.data, self.data_cfg)
        if self.steps_per_epoch < 1:
            raise ValueError(f"Invalid workloads.{name}.batch_size={cfg.batch_size}: larger than the "
                             f"{len(self.data.train)} training images; lower it")
        self._val = eval_loader(self.data.val, self.data, self.data_cfg)
        self._bn = eval_loader(self.data.bn, self.data, self.data_cfg, batch_size=cfg.batch_size)
        self.has_batchnorm = cfg.arch == "resnet"
        self.base_label = "SGD" if cfg.optimizer == "sgd" else "AdamW"
        model = f"ResNet-10 (width {cfg.width})" if cfg.arch == "resnet" else \
            f"ViT ({cfg.depth} layers, width {cfg.width}, patch {cfg.patch})"
        self.label = f"{model} / Fashion-MNIST, {self.base_label}"

    def describe(self) -> dict[str, Any]:
        return {"images": self.data.counts, "steps_per_epoch": self.steps_per_epoch}

    def build_model(self) -> nn.Module:
        c = self.cfg
        if c.arch == "vit":
            return build_vit(c.width, c.depth, c.heads, c.patch)
        from ...resnet.config import ModelConfig
        from ...resnet.models import build_model

        return build_model(ModelConfig(arch="resnet10", width=c.width, stem="3x3s2"), 10, 1)

    def optimizer(self, model: nn.Module, lr: float | None = None) -> torch.optim.Optimizer:
        c = self.cfg
        lr = c.lr if lr is None else lr
        if c.optimizer == "sgd":
            return torch.optim.SGD(model.parameters(), lr=lr, momentum=c.momentum, weight_decay=c.weight_decay)
        return torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=c.weight_decay)

    def train_batches(self, seed: int, epoch: int) -> Any:
        from ...resnet.data import train_loader

        return train_loader(self.data, self.data_cfg, seed, epoch)

    def loss(self, model: nn.Module, batch: Any) -> torch.Tensor:
        x, y = batch
        return nn.functional.cross_entropy(model(x), y)

    def evaluate(self, model: nn.Module) -> dict[str, float]:
        loss, hits, n = 0.0, 0, 0
        with torch.no_grad():
            for x, y in self._val:
                out = model(x)
                loss += nn.functional.cross_entropy(out, y, reduction="sum").item()
                hits += (out.argmax(1) == y).sum().item()
                n += len(y)
        return {"top1": 100.0 * hits / n, "val_loss": loss / n}

    def bn_batches(self) -> Any:
        return self._bn if self.has_batchnorm else None
