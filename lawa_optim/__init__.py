"""lawa-optim: LAtest Weight Averaging for PyTorch, and the comparators it is measured against."""

from .averaging import exp_coefficients
from .baselines import BareWrapper, EMAWrapper, EXPWrapper, LookaheadWrapper, ScheduleFreeAdapter, SWAWrapper
from .baselines.jump import LAWAJumpWrapper
from .bn import recompute_bn
from .io import CheckpointError, atomic_save, safe_load
from .offline import AverageOptions, average_checkpoints, average_state_dicts, write_average
from .protocol import AveragingOptimizer
from .registry import MethodInfo, create, get_method_info, list_methods
from .select_k import OnlineK
from .unwrap import unwrap
from .wrapper import LAWAWrapper

__all__ = [
    "AverageOptions",
    "AveragingOptimizer",
    "BareWrapper",
    "EMAWrapper",
    "EXPWrapper",
    "LookaheadWrapper",
    "MethodInfo",
    "OnlineK",
    "SWAWrapper",
    "ScheduleFreeAdapter",
    "CheckpointError",
    "LAWAJumpWrapper",
    "LAWAWrapper",
    "atomic_save",
    "average_checkpoints",
    "average_state_dicts",
    "create",
    "exp_coefficients",
    "get_method_info",
    "list_methods",
    "recompute_bn",
    "safe_load",
    "unwrap",
    "write_average",
]
__version__ = "0.1.0"
