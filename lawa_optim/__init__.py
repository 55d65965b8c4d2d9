"""lawa-optim: LAtest Weight Averaging for PyTorch, and the comparators it is measured against."""

from .averaging import exp_coefficients
from .bn import recompute_bn
from .protocol import AveragingOptimizer
from .wrapper import LAWAWrapper

__all__ = ["AveragingOptimizer", "LAWAWrapper", "exp_coefficients", "recompute_bn"]
__version__ = "0.1.0"
