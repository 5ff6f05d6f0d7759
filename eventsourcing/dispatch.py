"""A ``singledispatchmethod`` that can register handlers for classes defined later.

Policies are written as one default method plus one handler per event type. With
``from __future__ import annotations``, or when a handler names an event class defined further
down the module, the annotation cannot be evaluated when ``register`` runs; such handlers are
kept aside and registered the first time the method is looked up on an object.
"""

from __future__ import annotations

import functools
import threading
import types
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Generic, TypeVar, overload

__all__ = ["singledispatchmethod"]

T = TypeVar("T")


if TYPE_CHECKING:
    _Base = functools.singledispatchmethod[Any]
else:
    _Base = functools.singledispatchmethod


class singledispatchmethod(_Base, Generic[T]):
    """Dispatch a method on the type of its first argument after ``self``."""

    def __init__(self, func: Callable[..., T]) -> None:
        super().__init__(func)
        self._deferred: list[Callable[..., Any]] = []
        self._deferred_lock = threading.Lock()

    @overload
    def register(
        self, cls: type[Any] | types.UnionType, method: None = None
    ) -> Callable[[Callable[..., T]], Callable[..., T]]: ...

    @overload
    def register(self, cls: Callable[..., T], method: None = None) -> Callable[..., T]: ...

    @overload
    def register(
        self, cls: type[Any] | types.UnionType, method: Callable[..., T]
    ) -> Callable[..., T]: ...

    def register(self, cls: Any, method: Callable[..., Any] | None = None) -> Any:
        """Register ``method`` (or the decorated function) for ``cls`` or its annotation."""
        if method is not None or isinstance(cls, type):
            return super().register(cls, method=method)
        try:
            return super().register(cls)
        except (NameError, TypeError):
            if not callable(cls):
                raise
            # The annotation names a class that does not exist yet: try again on first use.
            self._deferred.append(cls)
            return cls

    def __get__(self, obj: Any, cls: type[Any] | None = None) -> Callable[..., T]:
        if self._deferred:
            with self._deferred_lock:
                while self._deferred:
                    # Remove only once registered: a handler whose annotation still
                    # cannot be evaluated raises again on the next lookup.
                    super().register(self._deferred[0])
                    del self._deferred[0]
        return super().__get__(obj, cls)
