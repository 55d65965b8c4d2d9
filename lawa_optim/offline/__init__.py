"""Offline LAWA: average the checkpoints a run already saved, and write the average in their format.

The paper's own code averages offline: keep the epoch checkpoints, then average the k latest.
:func:`write_average` does that for the checkpoints people have: Hugging Face ``Trainer`` folders
(safetensors, sharded or not, or ``pytorch_model.bin``), Lightning ``.ckpt``, timm ``.pth.tar``,
bare ``.safetensors``, fairseq checkpoints and plain ``torch.save`` state dicts.

Modules, one idea each:

- :mod:`.select`: which files (folders expanded, natural order, the ``last`` newest);
- :mod:`.formats`: the pickled container formats (where the weights are, what an average keeps);
- :mod:`.safetensors_io`: safetensors files and HF folders, read and written one tensor at a time;
- :mod:`.accumulate`: the float64 summing maths;
- :mod:`.pickled` (file by file) and :mod:`.streamed` (tensor by tensor): the two ways through;
- :mod:`.average`: the two public functions that put them together.
"""

from .accumulate import average_state_dicts
from .average import average_checkpoints, write_average
from .select import natural_key
from .summary import AverageSummary

__all__ = ["AverageSummary", "average_checkpoints", "average_state_dicts", "natural_key", "write_average"]
