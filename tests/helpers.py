"""What many test files share: tiny models, their data and training loops, and the benchmarks' tiny configs.

Import with ``from helpers import mlp, ...`` (pytest puts ``tests/`` on the path).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["RESNET_TINY", "SUITE_TINY", "class_batches", "mlp", "train_classifier", "train_mse"]

# ``lawa bench resnet --config configs/quick.yaml`` on a slice small enough for seconds: 256 training images,
# a ResNet-10 of width 4, 3 epochs, one seed (later overrides of the same key win).
RESNET_TINY = [
    "seeds=1",  # configs/quick.yaml (the demo) runs 2
    "threads=1", "data.train_images=256", "data.val_images=128", "data.train_eval_images=64", "data.bn_images=64",
    "data.batch_size=64", "data.eval_batch_size=128", "model.width=4", "train.epochs=3",
]

# ``lawa bench suite --config configs/suite.yaml`` with every workload tiny: 2 epochs of a few steps.
SUITE_TINY = [
    "seeds=1", "methods.lawa.k=[1,2]", "methods.lawa.bncopy_k=[2]", "methods.ema.decay=0.5",
    "methods.swa.swa_start=1", "workloads.vit.methods.swa.swa_start=1",
    "workloads.resnet.epochs=2", "workloads.resnet.train_images=128", "workloads.resnet.val_images=64",
    "workloads.resnet.bn_images=64", "workloads.resnet.batch_size=64", "workloads.resnet.width=4",
    "workloads.vit.epochs=2", "workloads.vit.train_images=128", "workloads.vit.val_images=64",
    "workloads.vit.batch_size=64", "workloads.vit.width=16", "workloads.vit.depth=1", "workloads.vit.warmup_epochs=1",
    "workloads.gpt.epochs=2", "workloads.gpt.steps_per_epoch=2", "workloads.gpt.batch_size=4",
    "workloads.gpt.context=16", "workloads.gpt.width=16", "workloads.gpt.depth=1", "workloads.gpt.val_windows=4",
]


def mlp(*widths: int, seed: int = 0, bn: bool = False, act: type[nn.Module] = nn.Tanh) -> nn.Sequential:
    """``Linear(widths[0], widths[1]), act, ..., Linear(widths[-2], widths[-1])`` with weights seeded ``seed``;
    ``bn``: a BatchNorm1d after the first layer."""
    torch.manual_seed(seed)
    layers: list[nn.Module] = []
    for i, (a, b) in enumerate(zip(widths, widths[1:])):
        if i:
            layers.append(act())
        layers.append(nn.Linear(a, b))
        if i == 0 and bn:
            layers.append(nn.BatchNorm1d(b))
    return nn.Sequential(*layers)


def class_batches(n: int = 40, seed: int = 7, batch: int = 6, features: int = 4,
                  classes: int = 3) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """``n`` batches of random inputs and class labels, from one generator seeded ``seed``."""
    g = torch.Generator().manual_seed(seed)
    return [(torch.randn(batch, features, generator=g), torch.randint(0, classes, (batch,), generator=g))
            for _ in range(n)]


def train_classifier(model: nn.Module, opt: torch.optim.Optimizer, data: Sequence[tuple[torch.Tensor, torch.Tensor]],
                     steps: int, start: int = 0, sched=None, scaler=None) -> None:
    """Steps ``start .. start + steps`` of cross-entropy on ``data`` (cycled); ``sched`` stepped after each,
    ``scaler`` a GradScaler to scale the loss and step through."""
    for i in range(start, start + steps):
        x, y = data[i % len(data)]
        opt.zero_grad()
        loss = F.cross_entropy(model(x), y)
        if scaler is None:
            loss.backward()
            opt.step()
        else:
            scaler.scale(loss).backward()
            scaler.step(opt)
            scaler.update()
        if sched is not None:
            sched.step()


def train_mse(model: nn.Module, opt: torch.optim.Optimizer, steps: int, start: int = 0, batch: int = 4,
              history: list | None = None, every: int = 1) -> None:
    """Steps ``start .. start + steps`` minimizing the mean square of the output on random inputs seeded by the
    step (so a resumed run sees the same inputs); ``history`` gets float64 copies of the weights every ``every``."""
    features = next(m for m in model.modules() if isinstance(m, nn.Linear)).in_features
    for step in range(start, start + steps):
        x = torch.randn(batch, features, generator=torch.Generator().manual_seed(step))
        opt.zero_grad()
        model(x).pow(2).mean().backward()
        opt.step()
        if history is not None and (step + 1) % every == 0:
            history.append([p.detach().double().clone() for p in model.parameters()])
