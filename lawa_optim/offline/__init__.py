"""Offline LAWA: average the checkpoints a run already saved, and write the average in their format.

The paper's own code averages offline: keep the epoch checkpoints, then average the k latest.
:func:`write_average` does that for the checkpoints people have: Hugging Face ``Trainer`` folders
(safetensors, sharded or not, or ``pytorch_model.bin``), Lightning ``.ckpt``, timm ``.pth.tar``,
bare ``.safetensors``, fairseq checkpoints, plain ``torch.save`` state dicts, and distributed
checkpoint folders (``torch.distributed.checkpoint``: FSDP2 runs, Lightning's ``ModelParallelStrategy``).

Modules, one idea each:

- :mod:`.options`: :class:`AverageOptions`, every option of an average in one dataclass;
- :mod:`.select`: which files (folders expanded, natural order, the ``last`` newest);
- :mod:`.formats`: the table of formats, one reader/writer pair (a :class:`.base.Format`) each:
  :mod:`.pickled` (``torch.save`` files, whose dict layouts are in :mod:`.layouts`), :mod:`.hf`
  (safetensors files and HF folders, through :mod:`.safetensors_io` and :mod:`.streamed`),
  :mod:`.dcp_io` (distributed checkpoint folders);
- :mod:`.accumulate`: the float64 summing maths;
- :mod:`.average`: the two public functions that put them together.
"""

from .accumulate import average_state_dicts
from .average import average_checkpoints, write_average
from .options import AverageOptions
from .select import natural_key
from .summary import AverageSummary

__all__ = ["AverageOptions", "AverageSummary", "average_checkpoints", "average_state_dicts", "natural_key",
           "write_average"]
