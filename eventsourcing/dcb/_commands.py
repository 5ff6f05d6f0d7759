"""How ``@event(SomeDecision)`` methods of perspectives trigger and apply decisions.

The ``event`` decorator of :mod:`eventsourcing.domain` returns a descriptor made for
aggregates. On a perspective class its methods are rebound here: a command method becomes
a :class:`DecisionCommand` (calling it triggers the decision), and the method's body is
kept in a table keyed by (perspective class, decision class) so that applying a decision
to a perspective runs the body with the decision's attributes.
"""

from __future__ import annotations

import inspect
from functools import cache
from types import MethodType
from typing import TYPE_CHECKING, Any, cast

from eventsourcing.domain import CommandMethodDecorator, all_func_decorators

if TYPE_CHECKING:
    from collections.abc import Callable


# Decorators already given to a class: a class defined again with the same qualified
# name (in a loop, say) must not take the earlier definition's methods.
_claimed: set[int] = set()


def decorators_defined_on(cls: type) -> list[CommandMethodDecorator]:
    """Return the ``@event`` decorators made in the body of ``cls``, in order of definition.

    A class body can define several methods named ``_``; only the last survives in the
    class namespace, so the decorators are found in the list of all decorators by the
    qualified names of their functions.
    """
    found = []
    for decorator in all_func_decorators:
        func = decorator.decorated_func
        if id(decorator) in _claimed:
            continue
        owner_qualname = func.__qualname__.rpartition(".")[0]
        if func.__module__ == cls.__module__ and owner_qualname == cls.__qualname__:
            found.append(decorator)
            _claimed.add(id(decorator))
    return found


@cache
def parameter_names(func: Callable[..., Any]) -> frozenset[str]:
    """Names of ``func``'s parameters (signatures are costly to compute on every call)."""
    return frozenset(inspect.signature(func).parameters)


def call_with_matching_kwargs(func: Callable[..., Any], obj: Any, values: dict[str, Any]) -> None:
    """Call ``func(obj, ...)`` with the items of ``values`` that name its parameters."""
    names = parameter_names(func)
    kwargs = {k: v for k, v in values.items() if k in names}
    try:
        func(obj, **kwargs)
    except TypeError as e:
        msg = (
            f"Failed to call {func.__qualname__} with {sorted(kwargs)} from a decision: {e} "
            "(name the method's parameters after the decision's attributes)"
        )
        raise TypeError(msg) from e


class DecisionCommand:
    """A command method of a perspective: calling it triggers ``decision_cls``.

    The arguments are bound to the decorated method's parameters (defaults included) and
    those that are constructor parameters of the decision class are passed to
    ``trigger_event``; the method's body then runs when the decision is applied.
    """

    def __init__(self, decorator: CommandMethodDecorator, decision_cls: type[Any]) -> None:
        self.decorated_func = decorator.decorated_func
        self.decision_cls = decision_cls
        self._signature = inspect.signature(self.decorated_func)
        self.__name__ = self.decorated_func.__name__
        self.__qualname__ = self.decorated_func.__qualname__
        self.__doc__ = self.decorated_func.__doc__

    def __get__(self, instance: Any, owner: type) -> Any:
        if instance is None:
            return self
        return MethodType(self, instance)

    def __call__(self, perspective: Any, /, *args: Any, **kwargs: Any) -> None:
        try:
            bound = self._signature.bind(perspective, *args, **kwargs)
        except TypeError as e:
            msg = f"{self.__qualname__}() {e}"
            raise TypeError(msg) from None
        bound.apply_defaults()
        arguments = dict(bound.arguments)
        arguments.pop(next(iter(self._signature.parameters)))  # the perspective itself
        accepted = parameter_names(cast("Callable[..., Any]", self.decision_cls))
        values = {k: v for k, v in arguments.items() if k in accepted}
        perspective.trigger_event(self.decision_cls, **values)
