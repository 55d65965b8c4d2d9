"""LAWACallback under Lightning's ``ModelParallelStrategy`` (FSDP2): the ring in the distributed checkpoint.

``ModelParallelStrategy`` saves a checkpoint as a folder: ``checkpoint["state_dict"]`` and each
entry of ``checkpoint["optimizer_states"]`` go through ``torch.distributed.checkpoint`` (every rank
writes its own shards), everything else goes into ``meta.pt``, written by rank 0 alone. The ring
and the average are sharded like the parameters, so they must go the first way: the callback adds
one entry after the optimizer's, saved as ``optimizer_<n>`` (``optimizer_1`` beside Lightning's
``optimizer_0``) and holding ``{"lawa": {"ring": ..., "average": ...}}``:

- ``ring``: ``get_optimizer_state_dict(model, observer.wrapper)``: the ring in the wrapper's
  per-parameter state, DTensors keyed by parameter name (see docs/sharded.md);
- ``average``: the average as the model's ``state_dict()`` (sharded DTensors), absent before the
  first snapshot.

Lightning loads only its own optimizers' entries; :func:`load_ring` and :func:`load_average`
read the callback's entry from the same folder. :class:`AtomicCheckpoints` makes the strategy's
folder saves atomic (a staging folder renamed once every rank has written, see
:mod:`lawa_optim.dcp_atomic`) and checks a folder before Lightning loads it.
"""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any

from torch import nn

from .. import dcp_atomic

__all__ = ["ENTRY", "AtomicCheckpoints", "entry_key", "is_sharded", "load_average", "load_ring", "save_entry"]

ENTRY = "lawa"


def is_sharded(module: nn.Module) -> bool:
    """Whether any parameter of ``module`` is a DTensor (FSDP2 / tensor parallel)."""
    return any(hasattr(p, "to_local") for p in module.parameters())


def save_entry(module: nn.Module, wrapper: Any, average: dict[str, Any] | None) -> dict[str, Any]:
    """What the callback appends to ``checkpoint["optimizer_states"]``."""
    from torch.distributed.checkpoint.state_dict import get_optimizer_state_dict

    entry: dict[str, Any] = {"ring": get_optimizer_state_dict(module, wrapper)}
    if average is not None:
        entry["average"] = average
    return {ENTRY: entry}


def entry_key(folder: str | Path) -> tuple[str | None, set[str]]:
    """The checkpoint key (``optimizer_<n>``) of the callback's entry in ``folder`` (None if there
    is none) and every name the folder holds; an incomplete folder is refused
    (:func:`lawa_optim.dcp_atomic.check`)."""
    names = set(dcp_atomic.check(folder).state_dict_metadata)
    for name in names:
        head, _, rest = name.partition(".")
        if head.startswith("optimizer_") and rest.startswith(ENTRY + ".ring."):
            return head, names
    return None, names


def load_ring(folder: str | Path, module: nn.Module, wrapper: Any) -> bool:
    """Load the ring saved in ``folder`` into ``wrapper`` (resharded to this run's ranks);
    False if the folder holds no ring of the callback."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_optimizer_state_dict, set_optimizer_state_dict

    key, _ = entry_key(folder)
    if key is None:
        return False
    state = {key: {ENTRY: {"ring": get_optimizer_state_dict(module, wrapper)}}}
    dcp.load(state, checkpoint_id=Path(folder))
    set_optimizer_state_dict(module, wrapper, state[key][ENTRY]["ring"])
    return True


def load_average(folder: str | Path, module: nn.Module) -> dict[str, Any] | None:
    """The average saved in ``folder``, sharded like ``module.state_dict()``; None if there is none."""
    import torch.distributed.checkpoint as dcp

    key, names = entry_key(folder)
    if key is None:
        return None
    prefix = f"{key}.{ENTRY}.average."
    saved = {name[len(prefix):] for name in names if name.startswith(prefix)}
    if not saved:
        return None
    average = {name: t.detach().clone() for name, t in module.state_dict().items() if name in saved}
    state = {key: {ENTRY: {"average": average}}}
    dcp.load(state, checkpoint_id=Path(folder))
    return state[key][ENTRY]["average"]


class AtomicCheckpoints:
    """Make a strategy's folder checkpoints atomic, and check a folder before the strategy loads it.

    ``save_checkpoint(checkpoint, path)`` writes into ``<path>.tmp-<id>`` (the strategy's own save,
    unchanged), then rank 0 renames it to ``path`` once every rank has finished
    (:func:`lawa_optim.dcp_atomic.commit`); ``load_checkpoint(path)`` refuses an incomplete folder
    (:func:`lawa_optim.dcp_atomic.check`, naming a missing rank's file) before the strategy reads it.
    :meth:`close` puts the strategy's own methods back.
    """

    def __init__(self, strategy: Any) -> None:
        self.strategy = strategy
        self._save = strategy.save_checkpoint
        self._load = strategy.load_checkpoint
        strategy.save_checkpoint = self.save_checkpoint
        strategy.load_checkpoint = self.load_checkpoint

    def save_checkpoint(self, checkpoint: dict[str, Any], filepath: Any, storage_options: Any = None) -> None:
        strategy = self.strategy
        path = Path(strategy.broadcast(str(filepath)))
        staging = dcp_atomic.staging_path(path, strategy.broadcast(uuid.uuid4().hex[:12]))
        self._save(checkpoint, staging, storage_options)
        strategy.barrier("lawa_atomic_save")
        if strategy.is_global_zero:
            dcp_atomic.commit(staging, path)
        strategy.barrier("lawa_atomic_commit")

    def load_checkpoint(self, checkpoint_path: Any, *args: Any, **kwargs: Any) -> Any:
        path = Path(self.strategy.broadcast(str(checkpoint_path)))
        if path.is_dir():
            dcp_atomic.check(path)
        return self._load(checkpoint_path, *args, **kwargs)

    def close(self) -> None:
        for name in ("save_checkpoint", "load_checkpoint"):
            self.strategy.__dict__.pop(name, None)
