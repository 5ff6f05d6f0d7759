"""The DCB domain model: decisions, tagged decisions and the perspectives they shape.

* A :class:`Decision` is a domain event; an :class:`InitialDecision` starts an
  :class:`EnduringObject` (its ``originator_topic`` names the object's class).
* :class:`Tagged` pairs a decision with the tags it is stored with.
* A :class:`Perspective` is anything built from decisions: it triggers new ones
  (``trigger_event``), keeps them until saved (``collect_events``) and names the
  decisions that would invalidate it (``consistency_boundary``, a :class:`Selector` or
  several).
* An :class:`EnduringObject` is a perspective with an id (``"<class name>-<uuid4>"``) that
  tags each of its decisions; a :class:`Group` decides across several enduring objects;
  a :class:`Slice` is a perspective of one command, built from the decisions it selects.

Methods decorated with ``@event(SomeDecision)`` (from :mod:`eventsourcing.domain`) trigger
that decision when called and run their body when it is applied, as on aggregates.
"""

from __future__ import annotations

from abc import ABC, ABCMeta, abstractmethod
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Generic, ParamSpec, cast
from uuid import uuid4

from typing_extensions import TypeVar

from eventsourcing.dcb._commands import (
    DecisionCommand,
    call_with_matching_kwargs,
    decorators_defined_on,
)
from eventsourcing.domain import AbstractDecision, CallableType, ProgrammingError
from eventsourcing.utils import get_topic, resolve_topic

if TYPE_CHECKING:
    from collections.abc import Callable, Sequence
    from typing import Self

__all__ = [
    "TID",
    "Decision",
    "EnduringObject",
    "Group",
    "InitialDecision",
    "MetaEnduringObject",
    "MetaPerspective",
    "MetaSlice",
    "MetaSupportsEventDecorator",
    "Perspective",
    "Selector",
    "Slice",
    "TDecision",
    "TGroup",
    "TPerspective",
    "TSlice",
    "Tagged",
    "decorated_funcs",
]

T = TypeVar("T")
P = ParamSpec("P")

#: The body of each decorated method, by (perspective class, decision class).
decorated_funcs: dict[tuple[MetaPerspective, type[Decision]], CallableType] = {}

# decorated_funcs resolved along each perspective class's MRO (cleared when it grows).
_resolved: dict[tuple[type, type], CallableType | None] = {}

# The initial decision class of each enduring object class.
_init_decision_classes: dict[type, type[InitialDecision]] = {}


def _find_decorated_func(perspective_cls: type, decision_cls: type) -> CallableType | None:
    """The decorated method of ``perspective_cls`` (or a base) that applies ``decision_cls``.

    9.5.6 looks at the exact class only (9.5.6 difference: DCB decorated methods inherited).
    """
    key = (perspective_cls, decision_cls)
    try:
        return _resolved[key]
    except KeyError:
        pass
    func = None
    for base in perspective_cls.__mro__:
        func = decorated_funcs.get((cast("MetaPerspective", base), decision_cls))
        if func is not None:
            break
    _resolved[key] = func
    return func


class Decision(AbstractDecision):
    """A domain event of the DCB model.

    Applying it to a perspective (:meth:`mutate`) runs the perspective's method decorated
    with this decision's class, then :meth:`apply`.
    """

    def as_dict(self) -> dict[str, Any]:
        """Return the decision's attributes (the keyword arguments of decorated methods)."""
        return self.__dict__.copy()

    def mutate(self, obj: TPerspective | None) -> TPerspective | None:
        """Apply this decision to ``obj`` and return it."""
        if obj is None:
            msg = (
                f"Can't apply {type(self).__qualname__} to nothing: an enduring object's "
                "first decision must be an InitialDecision"
            )
            raise ProgrammingError(msg)
        func = _find_decorated_func(type(obj), type(self))
        if func is not None:
            call_with_matching_kwargs(func, obj, self.as_dict())
        self.apply(obj)
        return obj

    def apply(self, obj: Any) -> None:
        """Change ``obj`` further when this decision is applied (nothing, by default)."""


class InitialDecision(Decision):
    """The decision that starts an enduring object; ``originator_topic`` names its class.

    Applied to nothing, it constructs the object (calling its ``__init__`` with the
    decision's other attributes) and gives it the id held in the attribute
    ``<class name lower-cased>_id``. Applied to a perspective with a method decorated
    with this class, it runs that method instead.
    """

    originator_topic: str

    def mutate(self, obj: TPerspective | None) -> TPerspective | None:
        """Construct the enduring object, or apply this decision to ``obj``."""
        if obj is not None:
            func = _find_decorated_func(type(obj), type(self))
            if func is not None:
                call_with_matching_kwargs(func, obj, self.as_dict())
                return obj
        return cast("TPerspective", self._construct_originator())

    def _construct_originator(self) -> EnduringObject[Any, Any]:
        kwargs = self.as_dict()
        originator_type = resolve_topic(kwargs.pop("originator_topic"))
        if not (isinstance(originator_type, type) and issubclass(originator_type, EnduringObject)):
            msg = (
                f"Originator type not subclass of EnduringObject: {originator_type} "
                f"(the originator_topic of {type(self).__qualname__})"
            )
            raise TypeError(msg)
        enduring_object_id = kwargs.pop(self.id_attr_name(originator_type))
        try:
            # type.__call__: the metaclass's __call__ would trigger a new decision.
            enduring_object = type.__call__(originator_type, **kwargs)
        except TypeError as e:
            msg = (
                f"{type(self).__qualname__} cannot __init__ {originator_type.__qualname__} "
                f"with kwargs {kwargs}: {e}"
            )
            raise TypeError(msg) from e
        enduring_object.id = enduring_object_id
        return cast("EnduringObject[Any, Any]", enduring_object)

    @classmethod
    def id_attr_name(cls, enduring_object_class: type[EnduringObject[Any, TID]]) -> TID:
        """The attribute holding the id of an ``enduring_object_class`` object."""
        return cast("TID", f"{enduring_object_class.__name__.lower()}_id")


TDecision = TypeVar("TDecision", bound=Decision)
"""Any subclass of :class:`Decision`."""


class Tagged(Generic[TDecision]):
    """A decision with the tags it is recorded with."""

    def __init__(self, tags: list[str], decision: TDecision) -> None:
        self.tags = tags
        self.decision = decision

    def __repr__(self) -> str:
        return f"Tagged(tags={self.tags!r}, decision={self.decision!r})"


class MetaPerspective(ABCMeta):
    """Metaclass of perspectives."""


class Perspective(ABC, Generic[TDecision], metaclass=MetaPerspective):
    """Anything built from decisions, that triggers new decisions.

    ``last_known_position`` is the position it was built up to (the ``after`` of the
    condition its new decisions are saved with); ``new_decisions`` are those not yet saved.
    """

    last_known_position: int | None
    new_decisions: list[Tagged[TDecision]]

    def __new__(cls, *_: Any, **__: Any) -> Self:
        self = super().__new__(cls)
        self.last_known_position = None
        self.new_decisions = []
        return self

    @abstractmethod
    def consistency_boundary(self) -> Selector | Sequence[Selector]:
        """Select the decisions that, if recorded since this was built, invalidate it."""

    def trigger_event(
        self,
        decision_cls: Callable[P, TDecision],
        tags: Sequence[str] = (),
        *args: P.args,
        **kwargs: P.kwargs,
    ) -> None:
        """Construct a decision, tag it with ``tags``, apply it here and keep it."""
        tagged = Tagged[TDecision](tags=list(tags), decision=decision_cls(*args, **kwargs))
        tagged.decision.mutate(self)
        self.new_decisions.append(tagged)

    def collect_events(self) -> Sequence[Tagged[TDecision]]:
        """Return the decisions triggered since the last call, and forget them."""
        collected, self.new_decisions = self.new_decisions, []
        return collected


TPerspective = TypeVar("TPerspective", bound=Perspective[Any])


class MetaSupportsEventDecorator(MetaPerspective):
    """Registers the ``@event(SomeDecision)`` methods of each perspective class.

    ``projected_types`` lists the decision classes the class's decorated methods apply.
    """

    projected_types: list[type[Decision]]

    def __init__(cls, name: str, bases: tuple[type, ...], namespace: dict[str, Any]) -> None:
        super().__init__(name, bases, namespace)
        cls.projected_types = []
        for decorator in decorators_defined_on(cls):
            given = decorator.given_event_class
            func = decorator.decorated_func
            if not (isinstance(given, type) and issubclass(given, Decision)):
                msg = (
                    f"{func.__qualname__} is decorated with {given!r}: on a perspective, "
                    "decorate with @event(SomeDecision), a Decision subclass"
                )
                raise ProgrammingError(msg)
            if func.__name__ == "__init__":
                if issubclass(given, InitialDecision):
                    _init_decision_classes[cls] = given
                cls.__init__ = func  # type: ignore[misc]  # the body runs as it is
            elif func.__name__ != "_":
                setattr(cls, func.__name__, DecisionCommand(decorator, given))
            decorated_funcs[(cls, given)] = func
            cls.projected_types.append(given)
        _resolved.clear()


class MetaEnduringObject(MetaSupportsEventDecorator):
    """Finds each enduring object class's initial decision; calling the class triggers it."""

    def __init__(cls, name: str, bases: tuple[type, ...], namespace: dict[str, Any]) -> None:
        super().__init__(name, bases, namespace)
        for item in namespace.values():
            if isinstance(item, type) and issubclass(item, InitialDecision):
                _init_decision_classes[cls] = item
                break

    def __call__(cls: type[T], **kwargs: Any) -> T:
        """Create a new enduring object by triggering its initial decision."""
        assert issubclass(cls, EnduringObject)
        try:
            init_class = _init_decision_classes[cls]
        except KeyError:
            msg = (
                f"Enduring object class {cls.__name__} has no InitialDecision class. "
                f"Please define a subclass of InitialDecision as a nested class on "
                f"{cls.__name__}."
            )
            raise ProgrammingError(msg) from None
        return cast("T", cls._create(decision_cls=init_class, **kwargs))


TID = TypeVar("TID", bound=str, default=str)


class EnduringObject(Perspective[TDecision], Generic[TDecision, TID], metaclass=MetaEnduringObject):
    """A perspective with an id, which tags every decision it triggers.

    Construct one with keyword arguments: its initial decision is triggered with a new id
    (``"<class name lower-cased>-<uuid4>"``) and ``originator_topic``, and applied.
    """

    id: TID

    @classmethod
    def _create(cls, decision_cls: type[InitialDecision], **kwargs: Any) -> Self:
        enduring_object_id = cls._create_id()
        id_attr_name = decision_cls.id_attr_name(cls)
        for reserved in (id_attr_name, "originator_topic", "tags"):
            if reserved in kwargs:
                msg = f"{cls.__name__}() sets {reserved!r} itself: don't pass it"
                raise TypeError(msg)
        initial_kwargs: dict[str, Any] = {
            id_attr_name: enduring_object_id,
            "originator_topic": get_topic(cls),
            **kwargs,
        }
        try:
            decision = cast("type[TDecision]", decision_cls)(**initial_kwargs)
        except TypeError as e:
            msg = (
                f"Unable to construct {decision_cls.__qualname__} event "
                f"with kwargs {initial_kwargs}: {e}"
            )
            raise TypeError(msg) from e
        tagged = Tagged[TDecision](tags=[enduring_object_id], decision=decision)
        self = cast("Self", decision.mutate(None))
        self.new_decisions.append(tagged)
        return self

    @classmethod
    def _create_id(cls) -> TID:
        return cast("TID", f"{cls.__name__.lower()}-{uuid4()}")

    def consistency_boundary(self) -> list[Selector]:
        """Every decision tagged with this object's id."""
        return [Selector(tags=[self.id])]

    def trigger_event(
        self,
        decision_cls: Callable[P, TDecision],
        tags: Sequence[str] = (),
        *args: P.args,
        **kwargs: P.kwargs,
    ) -> None:
        """Trigger a decision tagged with this object's id and ``tags``."""
        super().trigger_event(decision_cls, [self.id, *tags], *args, **kwargs)


class Group(Perspective[TDecision]):
    """Decides across the enduring objects it is constructed with.

    Its decisions are tagged with every object's id and applied to every object.
    """

    _enduring_objects: list[EnduringObject[TDecision]]

    def __new__(cls, *args: Any, **kwargs: Any) -> Self:
        self = super().__new__(cls, *args, **kwargs)
        self._enduring_objects = [a for a in args if isinstance(a, EnduringObject)]
        return self

    def consistency_boundary(self) -> list[Selector]:
        """The boundaries of all the group's objects."""
        return [
            Selector(tags=selector.tags)
            for obj in self._enduring_objects
            for selector in obj.consistency_boundary()
        ]

    def trigger_event(
        self,
        decision_cls: Callable[P, TDecision],
        tags: Sequence[str] = (),
        *args: P.args,
        **kwargs: P.kwargs,
    ) -> None:
        """Trigger a decision tagged with every object's id, applied to every object."""
        objs = self._enduring_objects
        tagged = Tagged[TDecision](
            tags=[o.id for o in objs] + list(tags),
            decision=decision_cls(*args, **kwargs),
        )
        for obj in objs:
            tagged.decision.mutate(obj)
        self.new_decisions.append(tagged)


@dataclass
class Selector:
    """Decisions of any of ``types`` (any type if none) tagged with all of ``tags``."""

    types: Sequence[type[Decision]] = ()
    tags: Sequence[str] = ()


class MetaSlice(MetaSupportsEventDecorator):
    """Notes whether a slice applies any decisions (``do_projection``)."""

    do_projection: bool

    def __init__(cls, name: str, bases: tuple[type, ...], namespace: dict[str, Any]) -> None:
        super().__init__(name, bases, namespace)
        cls.do_projection = len(cls.projected_types) != 0


class Slice(Perspective[TDecision], metaclass=MetaSlice):
    """The perspective of one command: built from the decisions it selects, then executed."""

    def execute(self) -> None:
        """Decide, triggering decisions (nothing, by default)."""


TSlice = TypeVar("TSlice", bound=Slice[Any])
TGroup = TypeVar("TGroup", bound=Group[Any])
