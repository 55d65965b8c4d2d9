"""Pickled checkpoint layouts: where a ``torch.save`` checkpoint keeps its weights, and what an average keeps.

One small class per layout (the formats themselves, files and folders, are the table of
:mod:`.formats`). A pickled checkpoint (``torch.save``) is loaded with
``torch.load(weights_only=True)`` (memory-mapped, so the optimizer state it also holds is never
read from disk); its format is recognized from its entries:

- ``lightning`` (it has ``pytorch-lightning_version``): averages ``current_model_state`` when
  present (the raw weights, under Lightning's ``WeightAveraging`` callback, whose ``state_dict``
  is the callback's own EMA/SWA average), else ``state_dict``; leaves out ``optimizer_states``,
  ``lr_schedulers``, ``averaging_state``, the weights entry not averaged, and (unless
  ``keep_callbacks``) the callbacks' states (``callbacks``: LAWACallback's ring) and
  LAWACallback's average (``lawa_state_dict``, or ``<suffix>_state_dict``), stale in an average;
- ``timm`` (a ``state_dict`` mapping, as timm's ``CheckpointSaver`` writes): averages
  ``state_dict`` (or ``state_dict_ema``); leaves out ``optimizer``, ``amp_scaler`` and the
  weights entry not averaged;
- ``fairseq`` (a ``model`` mapping): averages ``model``; leaves out ``last_optimizer_state``;
- ``plain``: anything else is a state dict itself.

The average is written under the entry the format's own loader reads (``state_dict`` for
Lightning's ``load_from_checkpoint`` and timm's ``load_checkpoint``), whichever entry was
averaged; the other entries are the newest checkpoint's. safetensors files and Hugging Face
folders are read tensor by tensor instead (:mod:`.safetensors_io`).
"""

from __future__ import annotations

import argparse
import zipfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any, BinaryIO

import torch

from ..io import CheckpointError, UnsafeCheckpointError, safe_load
from .accumulate import listing

__all__ = ["LAYOUTS", "PickledFormat", "detect_pickled", "load_pickled", "unpickle_trusted"]

# Classes accepted when loading besides tensors and plain containers: fairseq-train and timm's
# CheckpointSaver store their config as an argparse.Namespace; unpickling one only sets attributes.
SAFE_CLASSES = (argparse.Namespace,)


def load_pickled(path: Path, trust_pickle: bool) -> Any:
    """``torch.load(weights_only=True, mmap=True)``; a file that is no torch checkpoint at all is named as such."""
    if path.is_file() and path.stat().st_size > 0:
        with open(path, "rb") as f:
            head = f.read(4)
        if not (zipfile.is_zipfile(path) or head[:1] == b"\x80" or head[:2] == b"PK"):
            raise CheckpointError(
                f"{str(path)!r} is not a checkpoint: it is neither a torch.save file (zip or pickle) nor a "
                "safetensors file (name it .safetensors); give checkpoint files or folders"
            )
    try:
        return safe_load(path, mmap=True, allow=SAFE_CLASSES)
    except UnsafeCheckpointError as err:
        if not trust_pickle:
            raise UnsafeCheckpointError(
                f"{err}. If you made this file yourself or trust its source, pass trust_pickle=True "
                "(--trust-pickle on the command line) to unpickle it fully, which can run code"
            ) from err
    return unpickle_trusted(path, str(path))


def unpickle_trusted(source: Path | BinaryIO, name: str) -> Any:
    """Full unpickling (``torch.load(weights_only=False)``), which can run code: the one place it is done.

    Only for what ``weights_only=True`` refused and the user vouched for (``trust_pickle``), as
    torch.load did before torch 2.6; ``name`` names ``source`` in the error.
    """
    try:
        return torch.load(source, map_location="cpu", weights_only=False)
    except Exception as err:
        raise CheckpointError(f"Checkpoint {name!r} could not be unpickled ({type(err).__name__}: {err})") from err


class PickledFormat:
    """A ``torch.save`` checkpoint dict holding its weights under one of ``entries``.

    Attributes:
        name: the format's name, as the summary prints it.
        entries: entries that may hold the weights; ``None`` for a file that is the state dict itself.
        out_entry: where the average is written (the entry the format's loader reads).
        training_state: entries left out of the output (optimizer and scheduler state).
        callback_state: entries left out unless ``keep_callbacks`` (callbacks' states).
        label: how the summary names checkpoints of this layout.
    """

    name = "generic"
    entries: tuple[str, ...] = ()
    out_entry: str | None = None
    training_state: tuple[str, ...] = ()
    callback_state: tuple[str, ...] = ()
    label = ""
    notes: dict[str, str] = {}

    @staticmethod
    def matches(obj: Mapping) -> bool:
        return False

    def is_callback_state(self, name: str) -> bool:
        return name in self.callback_state

    def describe(self, entry: str | None) -> str:
        """``Lightning checkpoints (weights from 'current_model_state': the raw weights; ...)``."""
        if entry is None:
            return "plain state dicts"
        note = self.notes.get(entry)
        label = f"{self.label} " if self.label else ""
        return f"{label}checkpoints (weights from {entry!r}{': ' + note if note else ''})"

    def default_entry(self, obj: Mapping) -> str | None:
        return self.entries[0] if self.entries else None

    def output(self, newest: Mapping, entry: str | None, average: Any, keep_optimizer: bool,
               keep_callbacks: bool = False) -> tuple[Any, tuple]:
        """The averaged checkpoint: ``newest`` with the average under :attr:`out_entry`; and what was left out."""
        if entry is None:
            return average, ()
        drop = set() if keep_optimizer else set(self.training_state)
        if not keep_callbacks:
            drop |= {k for k in newest if isinstance(k, str) and self.is_callback_state(k)}
        drop |= {e for e in self.entries if e != (self.out_entry or entry)}
        result = {k: v for k, v in newest.items() if k not in drop}
        result[self.out_entry or entry] = average
        return result, tuple(k for k in newest if k not in result)


class PlainFormat(PickledFormat):
    name = "plain"


class GenericFormat(PickledFormat):
    """A checkpoint dict whose weights entry the user named with ``key=`` (``--key``)."""

    name = "checkpoint"

    def __init__(self, entry: str) -> None:
        self.entries = (entry,)


class FairseqFormat(PickledFormat):
    name = "fairseq"
    label = "fairseq"
    entries = ("model",)
    training_state = ("last_optimizer_state",)

    @staticmethod
    def matches(obj: Mapping) -> bool:
        return isinstance(obj.get("model"), Mapping)


class LightningFormat(PickledFormat):
    name = "lightning"
    entries = ("state_dict", "current_model_state")
    out_entry = "state_dict"
    training_state = ("optimizer_states", "lr_schedulers", "averaging_state")
    callback_state = ("callbacks",)
    label = "Lightning"
    notes = {"current_model_state": "the raw weights; --key state_dict for WeightAveraging's average",
             "state_dict": "written as state_dict"}

    @staticmethod
    def matches(obj: Mapping) -> bool:
        return "pytorch-lightning_version" in obj and "state_dict" in obj

    def default_entry(self, obj: Mapping) -> str:
        # With Lightning's WeightAveraging callback, state_dict holds the callback's EMA/SWA average
        # and current_model_state the raw training weights, whose trajectory LAWA averages.
        return "current_model_state" if "current_model_state" in obj else "state_dict"

    def is_callback_state(self, name: str) -> bool:
        # LAWACallback's average: "lawa_state_dict" ("<suffix>_state_dict" with another suffix); Lightning
        # itself writes no "*_state_dict" entry
        return name == "callbacks" or name.endswith("_state_dict")


class TimmFormat(PickledFormat):
    name = "timm"
    entries = ("state_dict", "state_dict_ema")
    out_entry = "state_dict"
    training_state = ("optimizer", "amp_scaler")
    label = "timm"
    notes = {"state_dict": "the raw weights; --key state_dict_ema for the EMA",
             "state_dict_ema": "written as state_dict"}

    @staticmethod
    def matches(obj: Mapping) -> bool:
        return isinstance(obj.get("state_dict"), Mapping)


# Detection order: the first layout whose matches() accepts the checkpoint.
LAYOUTS: tuple[type[PickledFormat], ...] = (LightningFormat, TimmFormat, FairseqFormat)


def detect_pickled(obj: Any, name: str, key: str | None) -> tuple[PickledFormat, str | None]:
    """The format of a loaded checkpoint and the entry to average (``key`` if given, else its default)."""
    if not isinstance(obj, Mapping):
        raise CheckpointError(f"{name} holds a {type(obj).__name__}, not a state dict or a checkpoint dict")
    fmt: PickledFormat = next((f() for f in LAYOUTS if f.matches(obj)), PlainFormat())
    if key is None:
        return fmt, fmt.default_entry(obj)
    if key not in obj:
        raise CheckpointError(f"{name} has no entry {key!r}; its top-level keys are {listing(map(str, obj))}")
    if key not in fmt.entries:
        fmt = GenericFormat(key)
    return fmt, key
