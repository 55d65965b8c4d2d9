"""torchvision ResNets for the benchmark, with a stem and width for small images.

``resnet18/34/50`` are torchvision's own constructors (width 64, the ImageNet stem);
``resnet8`` ([1, 1, 1] basic blocks, three stages) and ``resnet10`` ([1, 1, 1, 1]) are built
from the same ``torchvision.models.resnet.ResNet`` class. :class:`ScaledResNet` subclasses it
to change what torchvision fixes: the stem (``3x3s1`` / ``3x3s2``: one 3x3 convolution and
no max-pool, for 28x28 or 32x32 images), the number of input channels and the width of the
first stage (the others double it, as in torchvision).
"""

from __future__ import annotations

from torch import nn
from torchvision.models.resnet import BasicBlock, Bottleneck, ResNet

from .config import ModelConfig

__all__ = ["ScaledResNet", "build_model"]

_LAYOUTS = {
    "resnet8": (BasicBlock, [1, 1, 1]),
    "resnet10": (BasicBlock, [1, 1, 1, 1]),
    "resnet18": (BasicBlock, [2, 2, 2, 2]),
    "resnet34": (BasicBlock, [3, 4, 6, 3]),
    "resnet50": (Bottleneck, [3, 4, 6, 3]),
}


class ScaledResNet(ResNet):
    """torchvision's ``ResNet`` with a configurable stem, input channels, width and stage count.

    Args:
        block: ``BasicBlock`` or ``Bottleneck``.
        layers (list of int): blocks per stage (3 or 4 stages).
        num_classes (int): outputs of the final linear layer.
        width (int, optional): channels of the first stage (default: 64, torchvision's).
        stem (str, optional): ``imagenet`` (7x7 stride 2 + max-pool), ``3x3s1`` or ``3x3s2``
            (default: ``imagenet``).
        in_channels (int, optional): image channels (default: 3).

    Example:
        >>> model = ScaledResNet(BasicBlock, [1, 1, 1, 1], 10, width=16, stem="3x3s2", in_channels=1)
        >>> model(torch.zeros(2, 1, 28, 28)).shape
        torch.Size([2, 10])
    """

    def __init__(self, block, layers: list[int], num_classes: int, width: int = 64, stem: str = "imagenet",
                 in_channels: int = 3) -> None:
        if len(layers) not in (3, 4):
            raise ValueError(f"Invalid layers: {layers!r}; use 3 or 4 stages")
        super().__init__(block, list(layers) + [1] * (4 - len(layers)), num_classes=num_classes)
        norm = self._norm_layer
        self.inplanes = width
        if stem == "imagenet":
            self.conv1 = nn.Conv2d(in_channels, width, kernel_size=7, stride=2, padding=3, bias=False)
        else:
            stride = 1 if stem == "3x3s1" else 2
            self.conv1 = nn.Conv2d(in_channels, width, kernel_size=3, stride=stride, padding=1, bias=False)
            self.maxpool = nn.Identity()
        self.bn1 = norm(width)
        self.layer1 = self._make_layer(block, width, layers[0])
        self.layer2 = self._make_layer(block, width * 2, layers[1], stride=2)
        self.layer3 = self._make_layer(block, width * 4, layers[2], stride=2)
        last = width * 4
        if len(layers) == 4:
            self.layer4 = self._make_layer(block, width * 8, layers[3], stride=2)
            last = width * 8
        else:
            self.layer4 = nn.Identity()
        self.fc = nn.Linear(last * block.expansion, num_classes)
        # torchvision's initialization, applied again to the rebuilt modules
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, (nn.BatchNorm2d, nn.GroupNorm)):
                nn.init.constant_(m.weight, 1)
                nn.init.constant_(m.bias, 0)


def build_model(cfg: ModelConfig, num_classes: int, in_channels: int = 3) -> nn.Module:
    """The configured ResNet; torchvision's own constructor when nothing is changed."""
    if cfg.arch in ("resnet18", "resnet34", "resnet50") and cfg.width == 64 and cfg.stem == "imagenet" \
            and in_channels == 3:
        import torchvision

        return getattr(torchvision.models, cfg.arch)(weights=None, num_classes=num_classes)
    block, layers = _LAYOUTS[cfg.arch]
    return ScaledResNet(block, layers, num_classes, width=cfg.width, stem=cfg.stem, in_channels=in_channels)
