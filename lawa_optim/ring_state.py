"""The snapshot ring's checkpoint format: entries in each parameter's optimizer state.

torch's distributed state-dict API (``get_optimizer_state_dict`` / ``set_optimizer_state_dict``,
used by torchtitan, torchtune, Lightning's ``ModelParallelStrategy`` and accelerate's FSDP2 path)
keeps only ``state`` and ``param_groups`` of an optimizer's state dict, keyed by parameter FQN.
So the ring lives there, per parameter, beside the base optimizer's own entries:

- ``lawa_slot_0`` ... ``lawa_slot_{k-1}``: the k ring slots, each shaped like the parameter, in
  its dtype; under FSDP2 DTensors with the parameter's mesh and placements, so ``dcp.save``
  writes every rank's shards in parallel and ``dcp.load`` reshards them to another world size.
  All k are always there (slots not filled yet hold zeros): a fresh wrapper's state dict has the
  keys and shapes of a saved one, which is what ``dcp.load`` needs to fill it.
- ``lawa_count``, ``lawa_head``, ``lawa_num_steps``, ``lawa_skipped_snapshots``,
  ``lawa_swapped_in`` (and a subclass's own, e.g. ``lawa_jump_taken``): 0-dim int64 CPU tensors,
  the same in every parameter (like Adam's ``step``). The filled slots, oldest first, are
  ``[(head - size + j) % k for j in range(size)]`` with ``size = min(count, k)``.
- ``lawa_training``: only in a state dict saved while the average was swapped in and the training
  weights were not the newest snapshot (``lawa_swapped_in == 2``): the training weights.

The running sums are not saved: loading rebuilds them from the slots, oldest first, the way the
ring's periodic exact rebuild does, and saving is a rebuild point too (see
:meth:`lawa_optim.store.SnapshotRing.prepare_save`), so the run that saved and the run resumed
from its checkpoint hold the same sums bit for bit.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor

from .protocol import PARAM_STATE_PREFIX

__all__ = ["META_FIELDS", "SLOT_PREFIX", "TRAINING_KEY", "meta_key", "read_meta", "slot_key", "slot_order"]

SLOT_PREFIX = PARAM_STATE_PREFIX + "slot_"
TRAINING_KEY = PARAM_STATE_PREFIX + "training"
#: the counters every parameter's state holds (``lawa_<name>``); subclasses may add their own
META_FIELDS = ("count", "head", "num_steps", "skipped_snapshots", "swapped_in")


def slot_key(j: int) -> str:
    """``"lawa_slot_<j>"``: the state entry of ring slot ``j``."""
    return f"{SLOT_PREFIX}{j}"


def meta_key(name: str) -> str:
    """``"lawa_<name>"``: the state entry of counter ``name``."""
    return PARAM_STATE_PREFIX + name


def read_meta(entry: Mapping[str, Any]) -> dict[str, int]:
    """The counters in one parameter's state entry, as ints (``{"count": 5, "head": 2, ...}``)."""
    out = {}
    for key, value in entry.items():
        if isinstance(key, str) and key.startswith(PARAM_STATE_PREFIX) and not key.startswith(SLOT_PREFIX) \
                and key != TRAINING_KEY:
            if not isinstance(value, Tensor) or value.numel() != 1 or value.is_floating_point():
                raise ValueError(f"Invalid state dict: {key!r} is {value!r}, expected a 0-dim integer tensor")
            out[key[len(PARAM_STATE_PREFIX):]] = int(value.item())
    return out


def num_slots(entry: Mapping[str, Any]) -> int:
    """How many ``lawa_slot_<j>`` entries one parameter's state entry holds."""
    return sum(1 for key in entry if isinstance(key, str) and key.startswith(SLOT_PREFIX))


def slot_order(count: int, head: int, k: int) -> list[int]:
    """The filled slots, oldest first."""
    size = min(count, k)
    return [(head - size + j) % k for j in range(size)]


def counter(value: int) -> Tensor:
    """A counter as it is stored: a 0-dim int64 CPU tensor."""
    return torch.tensor(value, dtype=torch.int64)


def alias(t: Tensor) -> Tensor:
    """``t``'s memory as a tensor of its own (storage offset 0, a storage of ``t``'s size that keeps
    ``t``'s alive), through DLPack: a slot is a view into its group's ``[k, n]`` rows, and a DTensor
    made from a view with an offset cannot be deep-copied, nor should ``torch.save`` see the whole
    rows behind each slot. A dtype DLPack cannot carry gets a copy (loading copies from it then)."""
    if t.numel() == 0:  # nothing to alias (an empty FSDP2 shard); a view would carry its offset
        return torch.empty(t.shape, dtype=t.dtype, device=t.device)
    try:
        return torch.from_dlpack(t)
    except (RuntimeError, TypeError, BufferError):  # pragma: no cover - e.g. float8 dtypes
        return t.clone()


def like_param(t: Tensor, param: Tensor) -> Tensor:
    """``t`` (a local tensor shaped like ``param``'s local shard) as the state entry of ``param``:
    a DTensor with ``param``'s mesh and placements if ``param`` is one (FSDP2), else ``t``."""
    if not hasattr(param, "device_mesh"):
        return t
    from torch.distributed.tensor import DTensor

    return DTensor.from_local(
        t, param.device_mesh, param.placements, run_check=False, shape=param.shape, stride=param.stride()
    )


def local(t: Any) -> Any:
    """A DTensor's local shard (aliasing it); anything else as it is."""
    return t.to_local() if hasattr(t, "to_local") else t
