"""``BareWrapper``: the base optimizer alone, behind the zoo's protocol."""

from __future__ import annotations

from ..protocol import AveragingOptimizer

__all__ = ["BareWrapper"]


class BareWrapper(AveragingOptimizer):
    """The bare optimizer: :meth:`averaged` evaluates the training weights themselves.

    The reference every averaging method is measured against. Swapping in writes nothing, so
    ``with opt.averaged(): evaluate(model)`` evaluates the raw weights (with BatchNorm statistics
    recomputed if ``bn_loader`` is given, which makes the comparison fair when the averaging
    methods recompute theirs).

    Args:
        optimizer (torch.optim.Optimizer): the base optimizer.
        period (int, optional): kept for a uniform signature; snapshots record nothing (default: None).

    Example:
        >>> opt = BareWrapper(torch.optim.SGD(model.parameters(), lr=0.1))
        >>> opt.zero_grad(); loss_fn(model(x), y).backward(); opt.step()
        >>> with opt.averaged():
        ...     evaluate(model)  # the training weights
    """

    method = "base"
