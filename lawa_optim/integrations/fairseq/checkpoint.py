"""``checkpoint_lawa.pt``: the averaged model as a plain fairseq checkpoint.

The file has the layout of the checkpoints fairseq's ``Trainer`` writes (``cfg``, ``model``,
``optimizer_history``, ``task_state``, ``extra_state``) without the optimizer state, and its
``cfg`` names the base task (``masked_lm``, not ``masked_lm_lawa``) with the LAWA options and
``--user-dir`` removed, so ``fairseq-validate``, ``checkpoint_utils.load_model_ensemble_and_task``
and ``RobertaModel.from_pretrained`` load it without this plugin. Files are written atomically
(:func:`lawa_optim.io.atomic_save`): a crash leaves the previous file or the new one.
"""

from __future__ import annotations

import os
import shutil
from typing import Any

from torch import Tensor

from ...io import atomic_write_bytes

__all__ = ["LAWA_BEST_NAME", "LAWA_NAME", "copy_atomic", "lawa_checkpoint", "root_config"]

LAWA_NAME = "checkpoint_lawa.pt"
LAWA_BEST_NAME = "checkpoint_lawa_best.pt"
_LAWA_PREFIX = "lawa_"


def root_config(task_cfg: Any) -> dict | None:
    """The whole run's config as a plain dict, found from a task's config, or ``None``.

    fairseq builds a task from ``cfg.task`` and keeps the node's parent (``merge_with_parent``),
    so the root config (``common``, ``model``, ``checkpoint``, ...) is reachable from it. A task
    built from a legacy ``argparse.Namespace`` has no root: ``None``.
    """
    from omegaconf import OmegaConf

    if not OmegaConf.is_config(task_cfg):
        return None
    root = task_cfg._get_root()
    if root is task_cfg or "model" not in root or "task" not in root:
        return None
    return OmegaConf.to_container(root, resolve=True, enum_to_str=True)


def lawa_checkpoint(
    cfg: dict,
    base_task: str,
    model_state: dict[str, Tensor],
    task_state: dict,
    num_updates: int,
    lawa_meta: dict,
) -> dict:
    """The fairseq checkpoint dict holding the averaged weights.

    Args:
        cfg (dict): the run's root config (from :func:`root_config`); it is not modified.
        base_task (str): registered name of the task to record (e.g. ``"masked_lm"``).
        model_state (dict): the model's state dict with the averaged weights (CPU tensors).
        task_state (dict): the task's ``state_dict()`` (fairseq stores it as ``task_state``).
        num_updates (int): the update count the average was taken at.
        lawa_meta (dict): what was averaged (stored under ``extra_state["lawa"]``).
    """
    cfg = {key: (dict(value) if isinstance(value, dict) else value) for key, value in cfg.items()}
    cfg["task"] = {key: value for key, value in cfg["task"].items() if not key.startswith(_LAWA_PREFIX)}
    cfg["task"]["_name"] = base_task
    if isinstance(cfg.get("common"), dict):
        cfg["common"]["user_dir"] = None  # the averaged model needs no plugin
    names = {part: (cfg.get(part) or {}).get("_name") for part in ("criterion", "optimizer")}
    return {
        "args": None,
        "cfg": cfg,
        "model": model_state,
        "criterion": None,
        "optimizer_history": [
            {
                "criterion_name": names["criterion"],
                "optimizer_name": names["optimizer"],
                "lr_scheduler_state": {"best": lawa_meta.get("val_loss")},
                "num_updates": int(num_updates),
            }
        ],
        "task_state": task_state,
        "extra_state": {"lawa": lawa_meta, "val_loss": lawa_meta.get("val_loss")},
    }


def copy_atomic(src: str | os.PathLike, dst: str | os.PathLike) -> None:
    """Copy ``src`` over ``dst`` so that ``dst`` is never half-written."""
    with open(src, "rb") as fin:
        atomic_write_bytes(dst, lambda fout: shutil.copyfileobj(fin, fout, 1 << 22))
