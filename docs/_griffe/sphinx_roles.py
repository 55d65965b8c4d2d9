"""A griffe extension for the API reference: the docstrings' Sphinx roles as Markdown code.

The library's docstrings name other objects the Sphinx way (:func:`create`,
:class:`~lawa_optim.LAWAWrapper`); mkdocstrings renders Markdown, where those would show as
raw text. Each role becomes a code span of the name (``~`` keeps the last component only).
"""

from __future__ import annotations

import re
from typing import Any

from griffe import Extension

_ROLE = re.compile(r":(?:py:)?(?:func|class|meth|mod|attr|data|exc|obj|const):`(~?)([^`]+)`")


def _code(m: re.Match) -> str:
    name = m.group(2)
    return f"`{name.rsplit('.', 1)[-1] if m.group(1) else name}`"


class SphinxRoles(Extension):
    """Rewrite ``:role:`name``` in every docstring to ```name``` before it is parsed."""

    def on_instance(self, *, obj: Any, **kwargs: Any) -> None:
        if obj.docstring is not None:
            obj.docstring.value = _ROLE.sub(_code, obj.docstring.value)
