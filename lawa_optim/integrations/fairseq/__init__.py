"""LAWA for fairseq: a ``--user-dir`` plugin, no fork of fairseq.

The plugin registers the task ``masked_lm_lawa`` (fairseq's ``masked_lm`` plus LAWA) and the
mixin :class:`~lawa_optim.integrations.fairseq.task.LAWATaskMixin` that adds LAWA to any other
fairseq task. Use it with fairseq's own trainer::

    fairseq-train DATA --user-dir "$(lawa fairseq-user-dir)" --task masked_lm_lawa \\
        <the usual RoBERTa flags> --lawa-k 10

LAWA flags: ``--lawa-k`` (snapshots averaged), ``--lawa-period-updates`` (0: one snapshot at
the end of every epoch, the paper's choice; N: one every N updates), ``--lawa-weights``
(``uniform`` or ``exp``), ``--lawa-alpha`` (EXP's decay), ``--lawa-offload`` (``none``,
``cpu``, or ``disk`` with ``--lawa-offload-dir DIR``). Every validation then logs
``lawa_loss``/``lawa_ppl`` beside fairseq's ``loss``/``ppl``, and every checkpoint save writes
``checkpoint_lawa.pt`` (and ``checkpoint_lawa_best.pt``) into ``--save-dir``: plain
``masked_lm`` checkpoints for ``fairseq-validate --task masked_lm`` and
``RobertaModel.from_pretrained``. ``--restore-file`` resumes the ring exactly (it is stored in
fairseq's checkpoints).

torch >= 2.6 loads with ``weights_only=True``, which refuses the ``argparse.Namespace`` every
fairseq 0.12 checkpoint holds, so fairseq alone can load none of them; the ``--user-dir`` entry
point allows that one class in the fairseq process it configures, so pass ``--user-dir`` to
``fairseq-validate`` too. In your own code, load inside
``with lawa_optim.integrations.fairseq.task.fairseq_checkpoints_loadable():`` (e.g. around
``from_pretrained``); importing the plugin's modules changes nothing in torch.

Importing this package does not import fairseq; :mod:`.task` does.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from pathlib import Path

__all__ = ["user_dir"]


@contextlib.contextmanager
def root_logging_kept() -> Iterator[None]:
    """Import fairseq inside this block to keep the root logger as it was.

    ``import fairseq`` imports all its models, and ``fairseq/models/wav2vec/wav2vec2_classification.py``
    calls ``logging.basicConfig(level=logging.DEBUG)`` at import: a process that had not configured
    logging yet then prints every library's debug messages on stderr (thousands of
    ``DEBUG:matplotlib.font_manager`` lines once matplotlib draws). fairseq-train configures logging
    before that import, so only processes that use fairseq as a library need this.
    """
    root = logging.getLogger()
    level, handlers = root.level, list(root.handlers)
    try:
        yield
    finally:
        root.setLevel(level)
        for handler in root.handlers[:]:
            if handler not in handlers:
                root.removeHandler(handler)


def user_dir() -> str:
    """The folder to pass to ``fairseq-train --user-dir``.

    fairseq imports a user dir under its folder name, which must be unique among top-level
    modules, so the plugin is the small package ``lawa_fairseq`` that imports :mod:`.task`.

    Example:
        >>> import subprocess
        >>> subprocess.run(["fairseq-train", "data-bin", "--user-dir", user_dir(), "--task", "masked_lm_lawa"])
    """
    return str(Path(__file__).resolve().parent / "user_dir" / "lawa_fairseq")
