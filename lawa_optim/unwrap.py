"""``unwrap(optimizer)``: the zoo's wrapper from behind a framework's optimizer proxy.

Frameworks hand the training code their own object in place of the optimizer it created:
Lightning's ``LightningOptimizer`` (``self.optimizers()`` in a ``LightningModule``, which keeps the
optimizer in ``_optimizer`` and whose class is derived from the optimizer's own class, so it even
passes ``isinstance(opt, LAWAWrapper)``), and accelerate's ``AcceleratedOptimizer`` (after
``accelerator.prepare``; the HF ``Trainer``'s callbacks receive it; the optimizer is in
``optimizer``). Both are recognized by these attributes (duck typing), so nothing here imports a
framework.
"""

from __future__ import annotations

from typing import Any

from torch.optim import Optimizer

from .protocol import AveragingOptimizer

__all__ = ["strip_proxies", "unwrap"]

_MAX_DEPTH = 8  # proxies of proxies; a longer chain is a cycle


def _inner(obj: Any) -> Any | None:
    """The optimizer a framework proxy holds, or None if ``obj`` is not a known proxy."""
    state = getattr(obj, "__dict__", {})
    inner = state.get("_optimizer")  # Lightning's LightningOptimizer
    if isinstance(inner, Optimizer) and inner is not obj:
        return inner
    if isinstance(obj, AveragingOptimizer):  # ours: its `optimizer` is the base, not a proxy target
        return None
    inner = state.get("optimizer")  # accelerate's AcceleratedOptimizer (and look-alikes)
    if isinstance(inner, Optimizer) and inner is not obj:
        return inner
    return None


def strip_proxies(optimizer: Any) -> Any:
    """The innermost optimizer behind framework proxies (ours or a plain torch optimizer).

    Stops at the first object that is a zoo wrapper or holds no proxied optimizer; a plain
    ``torch.optim.SGD`` comes back as it is.
    """
    obj = optimizer
    for _ in range(_MAX_DEPTH):
        inner = _inner(obj)
        if inner is None:
            return obj
        obj = inner
    raise TypeError(
        f"Invalid optimizer: {type(optimizer).__name__} wraps more than {_MAX_DEPTH} levels of proxies "
        "(a cycle?); pass the optimizer itself"
    )


def unwrap(optimizer: Any) -> AveragingOptimizer:
    """Our wrapper, from behind Lightning's or accelerate's optimizer proxy, or itself.

    Args:
        optimizer: a zoo wrapper (e.g. :class:`~lawa_optim.LAWAWrapper`), or a framework's proxy
            of one: ``self.optimizers()`` in a ``LightningModule``, an ``AcceleratedOptimizer``
            from ``accelerator.prepare``, the ``optimizer`` an HF ``TrainerCallback`` receives.

    Raises ``TypeError`` naming the type found if there is no zoo wrapper behind ``optimizer``.

    Example:
        >>> opt = lawa_optim.unwrap(self.optimizers())   # inside a LightningModule
        >>> with opt.averaged():
        ...     evaluate(self)
    """
    inner = strip_proxies(optimizer)
    if isinstance(inner, AveragingOptimizer):
        return inner
    found = (
        type(optimizer).__name__ if inner is optimizer else f"{type(optimizer).__name__} around {type(inner).__name__}"
    )
    raise TypeError(
        f"Invalid optimizer: {found} is not a lawa_optim wrapper nor a framework proxy of one; wrap the "
        "optimizer first (lawa_optim.LAWAWrapper(opt, k=6, period=...) or lawa_optim.create('lawa', opt)), "
        "or use a callback (lawa_optim.integrations.lightning.LAWACallback) that observes a plain optimizer"
    )
