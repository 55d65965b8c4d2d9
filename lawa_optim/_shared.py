"""State that a wrapper shares with the framework proxies built around it.

Lightning's ``LightningOptimizer`` is an object of a class derived from the wrapper's class: in
Lightning 2.6 it forwards attribute reads to the wrapper (``__getattr__``), older versions held a
shallow copy of the wrapper's ``__dict__``, and its ``optimizer`` property is the wrapper itself.
A method called through it would write its state onto the proxy. So every wrapper attribute that
changes after ``__init__`` is declared with :class:`shared` and lives in one dict that the proxy
reaches too, and the public methods are decorated with :func:`on_owner` to run on the wrapper.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, TypeVar

__all__ = ["on_owner", "owner_of", "shared"]

F = TypeVar("F", bound=Callable[..., Any])


def _shared_of(obj: Any) -> dict[str, Any] | None:
    """The dict of shared state ``obj`` holds or reaches: its own, or through a proxy's forwarding
    ``__getattr__`` (Lightning 2.6's ``LightningOptimizer`` forwards to ``._optimizer``)."""
    mine = obj.__dict__.get("_shared")
    if mine is None:
        mine = getattr(obj, "_shared", None)  # not a class attribute: only a forwarding __getattr__ finds it
    return mine


def owner_of(obj: Any) -> Any:
    """The wrapper itself, whether ``obj`` is the wrapper or a framework's proxy of it."""
    mine = _shared_of(obj)
    return obj if mine is None else mine.get("owner", obj)


def on_owner(method: F) -> F:
    """Run ``method`` on the wrapper itself, also when it is called through a framework proxy.

    The decorated method receives the wrapper as ``self`` (see :func:`owner_of`), so what it
    writes lands on the wrapper and not on the proxy; its name, docstring and signature stay.
    """

    @functools.wraps(method)
    def run_on_owner(self: Any, *args: Any, **kwargs: Any) -> Any:
        return method(owner_of(self), *args, **kwargs)

    return run_on_owner  # type: ignore[return-value]


class shared:  # noqa: N801 - used like a field declaration
    """A wrapper attribute stored in the one dict the wrapper and its proxies reach.

    A data descriptor: reads and writes go to the wrapper's ``_shared`` dict, made first thing in
    ``__init__``. A framework proxy of the wrapper (an object of a class derived from the
    wrapper's, like Lightning's ``LightningOptimizer``) reaches the same dict, whether it holds a
    shallow copy of the wrapper's ``__dict__`` or forwards attribute reads to it, so its reads see
    the wrapper's current state and its writes change the wrapper.
    """

    def __set_name__(self, owner: type, name: str) -> None:
        self.name = name

    def __get__(self, obj: Any, owner: type | None = None) -> Any:
        if obj is None:
            return self
        mine = _shared_of(obj)
        if mine is None or self.name not in mine:
            raise AttributeError(f"{type(obj).__name__!r} object has no attribute {self.name!r}")
        return mine[self.name]

    def __set__(self, obj: Any, value: Any) -> None:
        mine = _shared_of(obj)
        if mine is None:  # before __init__ made it (a subclass setting attributes early)
            mine = obj.__dict__["_shared"] = {"owner": obj}
        mine[self.name] = value
