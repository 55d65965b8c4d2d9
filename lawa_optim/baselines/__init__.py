"""The comparators LAWA is measured against, each an optimizer wrapper with LAWA's protocol.

``BareWrapper`` (the bare optimizer), ``EXPWrapper`` (Appendix C), ``EMAWrapper`` and
``SWAWrapper`` (torch's ``swa_utils``), ``LookaheadWrapper`` (torch-optimizer's Lookahead, fixed)
and ``ScheduleFreeAdapter`` (the ``schedulefree`` package), which import their package only when
constructed, and ``LAWAJumpWrapper`` (the paper's Section 4 open question: LAWA that writes its
average into the training weights). Create them by name with :func:`lawa_optim.create`.
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
