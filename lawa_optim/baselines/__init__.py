"""The comparators LAWA is measured against, each an optimizer wrapper with LAWA's protocol.

``BareWrapper`` (the bare optimizer), ``EXPWrapper`` (Appendix C), ``EMAWrapper`` and
``SWAWrapper`` (torch's ``swa_utils``), ``LookaheadWrapper`` (torch-optimizer's Lookahead, fixed)
and ``ScheduleFreeAdapter`` (the ``schedulefree`` package). The last two import their package
only when constructed. Create them by name with :func:`lawa_optim.create`.
"""

from .bare import BareWrapper
from .ema import EMAWrapper
from .exp import EXPWrapper
from .jump import LAWAJumpWrapper
from .lookahead import LookaheadWrapper
from .schedule_free import ScheduleFreeAdapter
from .swa import SWAWrapper

__all__ = [
    "BareWrapper",
    "EMAWrapper",
    "EXPWrapper",
    "LAWAJumpWrapper",
    "LookaheadWrapper",
    "ScheduleFreeAdapter",
    "SWAWrapper",
]
