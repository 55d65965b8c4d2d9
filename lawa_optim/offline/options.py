"""The options of an offline average, as one frozen dataclass (the ``lawa average`` options, one field each).

:func:`~lawa_optim.offline.write_average` and :func:`~lawa_optim.offline.average_checkpoints`
take an :class:`AverageOptions` or its fields as keyword arguments; ``lawa average`` builds one
from its command line. A new option is one field here (with its check in ``__post_init__``) and
one click option in :mod:`lawa_optim.cli.average`; the formats read the fields they use.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from dataclasses import dataclass

__all__ = ["AverageOptions"]

_NONFINITE = ("raise", "skip")


@dataclass(frozen=True)
class AverageOptions:
    """How to choose, average and write checkpoints.

    Attributes:
        last (int, optional): average only the ``last`` newest (default: all).
        weights (str or sequence of float): ``"uniform"`` (LAWA), ``"exp"`` (the paper's EXP, newest
            weighted most), a decay shape (``"linear"``, ``"cosine"``, ``"1-sqrt"``), or one
            coefficient per averaged file, newest first (default: ``"uniform"``).
        alpha (float): EXP's decay, in (0, 1] (default: 0.9).
        sort (bool): order the checkpoints naturally (``checkpoint-500`` before ``checkpoint-1000``);
            ``False`` keeps the order given (default: ``True``).
        key (str, optional): the entry holding the weights where a checkpoint has several
            (``"state_dict"``, ``"current_model_state"``, ``"state_dict_ema"``, ``"model"``, any entry
            of a checkpoint dict or of a distributed checkpoint's state dict). Default: the format's.
        trust_pickle (bool): unpickle fully a file that ``torch.load(weights_only=True)`` refuses (and
            a distributed checkpoint's ``.metadata`` holding other classes than DCP's). Only for files
            you trust: a crafted pickle runs code (default: ``False``).
        keep_optimizer (bool): keep the newest checkpoint's optimizer and scheduler state (pickled
            formats; default: ``False``).
        keep_callbacks (bool): keep the newest Lightning checkpoint's callback states (``callbacks``:
            LAWACallback's ring, EMA/SWA states) and LAWACallback's average (``lawa_state_dict``),
            which are stale in an average (default: ``False``).
        include_copies (bool): also average the ``best*`` / ``last*`` files of a folder of checkpoints
            (Lightning's ``ModelCheckpoint`` copies of an epoch's checkpoint; default: ``False``).
        drop (sequence of str): more entries of the newest checkpoint to leave out, as dotted paths
            (``"extra_state.ema"``), checked on the first file (default: none).
        nonfinite (str): ``"raise"`` on a file holding NaN/Inf, or ``"skip"`` it with a warning and
            renormalize the others' coefficients (default: ``"raise"``).
        out_format (str, optional): the output's format where a format can write several (a
            distributed checkpoint folder: ``"dcp"``, ``"safetensors"`` or ``"huggingface"``);
            default: the inputs' format.
        force (bool): let ``out`` be an existing file or folder, or one of the inputs; it is
            replaced atomically (default: ``False``).
        progress (callable, optional): called as ``progress(i, name)`` after each file is added
            (file-by-file formats) or each tensor is averaged (tensor-by-tensor formats).
    """

    last: int | None = None
    weights: str | Sequence[float] = "uniform"
    alpha: float = 0.9
    sort: bool = True
    key: str | None = None
    trust_pickle: bool = False
    keep_optimizer: bool = False
    keep_callbacks: bool = False
    include_copies: bool = False
    drop: Sequence[str] = ()
    nonfinite: str = "raise"
    out_format: str | None = None
    force: bool = False
    progress: Callable[[int, str], None] | None = None

    def __post_init__(self) -> None:
        if self.nonfinite not in _NONFINITE:
            raise ValueError(f"Invalid nonfinite: {self.nonfinite!r}; use 'raise' (stop with an error) or 'skip' "
                             "(leave such checkpoints out with a warning)")
        drop = self.drop
        if isinstance(drop, str) or any(not isinstance(d, str) or not d for d in drop):
            raise TypeError(f"Invalid drop: {drop!r}; give a list of entry names such as ['extra_state.ema']")
        object.__setattr__(self, "drop", tuple(drop))
        if self.key is not None and (not isinstance(self.key, str) or not self.key):
            raise TypeError(f"Invalid key: {self.key!r}; give the name of the entry holding the weights, "
                            "such as 'state_dict'")
        if self.out_format is not None and not isinstance(self.out_format, str):
            raise TypeError(f"Invalid out_format: {self.out_format!r}; give a format name such as 'safetensors'")

    @classmethod
    def of(cls, options: AverageOptions | None = None, **fields) -> AverageOptions:
        """``options`` (or the defaults) with ``fields`` replaced; an unknown field name is refused, naming it."""
        if options is not None and not isinstance(options, cls):
            raise TypeError(f"Invalid options: {options!r}; give an AverageOptions (or its fields as keywords)")
        names = [f.name for f in dataclasses.fields(cls)]
        unknown = [k for k in fields if k not in names]
        if unknown:
            raise TypeError(f"Invalid argument {unknown[0]!r}; the options of an offline average are "
                            f"{', '.join(names)}")
        return dataclasses.replace(options or cls(), **fields)
