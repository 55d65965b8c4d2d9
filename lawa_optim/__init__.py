"""lawa-optim: LAtest Weight Averaging for PyTorch, and the comparators it is measured against."""

from .averaging import exp_coefficients
from .bn import recompute_bn
from .io import CheckpointError, atomic_save, safe_load
from .protocol import AveragingOptimizer
from .wrapper import LAWAWrapper

__all__ = [
    "AveragingOptimizer",
    "CheckpointError",
    "LAWAWrapper",
    "atomic_save",
    "exp_coefficients",
    "recompute_bn",
    "safe_load",
]
__version__ = "0.1.0"
