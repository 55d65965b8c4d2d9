"""fairseq ``--user-dir`` entry point: importing it registers the task ``masked_lm_lawa``.

fairseq imports a user dir by its folder name (``lawa_fairseq``); the code lives in
:mod:`lawa_optim.integrations.fairseq.task`, imported once under its own name.
"""

import argparse

import torch

from lawa_optim.integrations.fairseq import task as _task  # noqa: F401  (registers the task)

# This module configures the fairseq process it is passed to (--user-dir): fairseq's own loads
# (--restore-file, fairseq-validate) need the Namespace every fairseq 0.12 checkpoint holds; see
# lawa_optim.integrations.fairseq.task.fairseq_checkpoints_loadable.
torch.serialization.add_safe_globals([argparse.Namespace])
