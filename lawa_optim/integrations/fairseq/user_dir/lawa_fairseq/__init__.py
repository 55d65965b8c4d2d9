"""fairseq ``--user-dir`` entry point: importing it registers the task ``masked_lm_lawa``.

fairseq imports a user dir by its folder name (``lawa_fairseq``); the code lives in
:mod:`lawa_optim.integrations.fairseq.task`, imported once under its own name.
"""

from lawa_optim.integrations.fairseq import task as _task  # noqa: F401  (registers the task)
