"""The domain model: immutable events, aggregates that are rebuilt from them, and snapshots.

An aggregate's command methods trigger events; each event is applied to the aggregate at
once and kept as pending until the application saves it. Replaying the same events on a
fresh aggregate gives the same state. The ``@event`` decorator writes the event classes for
you from the signatures of the methods it decorates::

    class Dog(Aggregate):
        @event("Registered")
        def __init__(self, name: str) -> None:
            self.name = name
            self.tricks: list[str] = []

        @event("TrickAdded")
        def add_trick(self, trick: str) -> None:
            self.tricks.append(trick)

The class-creation rules (which "created" event a class uses, how nested event classes are
re-based on the aggregate's own ``Event`` class, explicit topics) are applied by
``BaseAggregate.__init_subclass__``, one named step at a time.
"""

from __future__ import annotations

import dataclasses
import inspect
import os
import sys
import warnings
from abc import ABCMeta
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import datetime, tzinfo
from operator import itemgetter
from types import FunctionType, MethodType
from typing import (
    TYPE_CHECKING,
    Any,
    ClassVar,
    Generic,
    Protocol,
    TypeVar,
    cast,
    get_args,
    get_origin,
    overload,
    runtime_checkable,
)
from uuid import UUID, uuid4

from eventsourcing.utils import get_topic, register_topic, resolve_topic

if TYPE_CHECKING:
    from typing import Self

__all__ = [
    "TZINFO",
    "AbstractDecision",
    "Aggregate",
    "AggregateCreated",
    "AggregateEvent",
    "BaseAggregate",
    "CanCreateTimestamp",
    "CanInitAggregate",
    "CanMutateAggregate",
    "CanSnapshotAggregate",
    "DomainEvent",
    "DomainEventProtocol",
    "EventSourcingError",
    "HasOriginatorIDVersion",
    "LogEvent",
    "MetaAggregate",
    "MetaDomainEvent",
    "OriginatorIDError",
    "OriginatorVersionError",
    "ProgrammingError",
    "Snapshot",
    "aggregate",
    "create_utc_datetime_now",
    "datetime_now_with_tzinfo",
    "event",
    "triggers",
]

TAggregateID = TypeVar("TAggregateID", bound="UUID | str")
TAggregateID_co = TypeVar("TAggregateID_co", bound="UUID | str", covariant=True)
TDomainEvent = TypeVar("TDomainEvent", bound="DomainEventProtocol[Any]")
SDomainEvent = TypeVar("SDomainEvent", bound="DomainEventProtocol[Any]")
TAggregate = TypeVar("TAggregate", bound="BaseAggregate[Any]")
TMutableOrImmutableAggregate = TypeVar("TMutableOrImmutableAggregate")
TDecoratableType = TypeVar("TDecoratableType", bound=Callable[..., Any] | property)
CallableType = Callable[..., Any]


# ---------------------------------------------------------------------------------------
# Errors


class EventSourcingError(Exception):
    """Base class of the library's own errors."""


class ProgrammingError(EventSourcingError):
    """Raised when the domain model is defined or used in a way it does not support."""


class OriginatorIDError(EventSourcingError):
    """Raised when an event is applied to an aggregate with a different id."""


class OriginatorVersionError(EventSourcingError):
    """Raised when an event's version does not follow the aggregate's version."""


# ---------------------------------------------------------------------------------------
# Time


def _resolve_tzinfo() -> tzinfo:
    return cast(tzinfo, resolve_topic(os.getenv("TZINFO_TOPIC", "datetime:timezone.utc")))


TZINFO: tzinfo = _resolve_tzinfo()


def datetime_now_with_tzinfo() -> datetime:
    """Return the current time, aware of the timezone ``TZINFO_TOPIC`` names (UTC)."""
    return datetime.now(tz=TZINFO)


def create_utc_datetime_now() -> datetime:
    """Deprecated: use :func:`datetime_now_with_tzinfo`."""
    warnings.warn(
        "'create_utc_datetime_now()' is deprecated, use 'datetime_now_with_tzinfo()' instead",
        DeprecationWarning,
        stacklevel=2,
    )
    return datetime_now_with_tzinfo()


class CanCreateTimestamp:
    """Gives event classes a ``create_timestamp()`` that subclasses may override."""

    @staticmethod
    def create_timestamp() -> datetime:
        """Return the timestamp for a new event: now, timezone-aware."""
        return datetime.now(tz=TZINFO)


# ---------------------------------------------------------------------------------------
# Protocols


@runtime_checkable
class DomainEventProtocol(Protocol[TAggregateID_co]):
    """Anything with an originator id and version can be stored as a domain event."""

    @property
    def originator_id(self) -> TAggregateID_co: ...

    @property
    def originator_version(self) -> int: ...


class MutableAggregateProtocol(Protocol):
    """An aggregate whose state is changed in place by its events."""

    @property
    def id(self) -> Any: ...

    @property
    def version(self) -> int: ...

    @version.setter
    def version(self, value: int) -> None: ...

    @property
    def modified_on(self) -> datetime: ...

    @modified_on.setter
    def modified_on(self, value: datetime) -> None: ...


class ImmutableAggregateProtocol(Protocol):
    """An aggregate that is replaced, not changed, by each event."""

    @property
    def id(self) -> Any: ...

    @property
    def version(self) -> int: ...


MutableOrImmutableAggregate = MutableAggregateProtocol | ImmutableAggregateProtocol


@runtime_checkable
class CollectEventsProtocol(Protocol):
    """Anything that hands over its new events: aggregates, mostly."""

    def collect_events(self) -> list[Any]: ...


@runtime_checkable
class CanMutateProtocol(Protocol):
    """An event that knows how to apply itself to an aggregate."""

    def mutate(self, aggregate: Any) -> Any: ...


@runtime_checkable
class SnapshotProtocol(Protocol):
    """A snapshot: an aggregate's state at a version, from which it can be rebuilt."""

    @property
    def state(self) -> Any: ...

    @classmethod
    def take(cls, aggregate: Any) -> Any: ...


class AbstractDecision:
    """Marker base shared by aggregate events and DCB decisions."""


# ---------------------------------------------------------------------------------------
# Event classes are frozen dataclasses


class EventsourcingType(type):
    """Root metaclass of event and aggregate classes."""


class MetaDomainEvent(EventsourcingType):
    """Metaclass that makes every event class a frozen dataclass."""

    def __new__(
        mcs, name: str, bases: tuple[type, ...], namespace: dict[str, Any], **kwargs: Any
    ) -> MetaDomainEvent:
        cls: Any = super().__new__(mcs, name, bases, namespace, **kwargs)
        dataclass(frozen=True)(cls)
        cls.__signature__ = inspect.signature(cls.__init__)
        if "__init__" not in namespace:  # an __init__ written by hand stays as it is
            _speed_up_frozen_init(cls)
        return cast(MetaDomainEvent, cls)


def _is_plain_field(f: dataclasses.Field[Any]) -> bool:
    """True for a field that ``__init__`` takes as a parameter and stores as it is."""
    kind = getattr(f, "_field_type", None)
    return f.init and f.default_factory is dataclasses.MISSING and kind is dataclasses._FIELD  # type: ignore[attr-defined]


def _speed_up_frozen_init(cls: Any) -> None:
    """Replace a frozen dataclass's ``__init__`` by one that fills ``__dict__`` directly.

    The generated ``__init__`` of a frozen dataclass goes through ``object.__setattr__``
    for every field; events are constructed for every command and every replayed event,
    so this halves the cost. Classes with fields that are not plain parameters keep the
    generated ``__init__``.
    """
    fields = dataclasses.fields(cls)
    if not all(_is_plain_field(f) for f in fields):
        return
    defaults = {
        f"__default_{f.name}": f.default for f in fields if f.default is not dataclasses.MISSING
    }
    params = ", ".join(
        f.name if f.default is dataclasses.MISSING else f"{f.name}=__default_{f.name}"
        for f in fields
    )
    body = "".join(f"    d[{f.name!r}] = {f.name}\n" for f in fields)
    if hasattr(cls, "__post_init__"):
        body += "    self.__post_init__()\n"
    source = f"def __init__(self, {params}):\n    d = self.__dict__\n{body}"
    namespace: dict[str, Any] = dict(defaults)
    exec(source, namespace)  # built from the dataclass's own field names
    init = namespace["__init__"]
    init.__qualname__ = f"{cls.__qualname__}.__init__"
    init.__module__ = cls.__module__
    cls.__init__ = init


_original_process_class = dataclasses._process_class  # type: ignore[attr-defined]


def _process_class_once(cls: type, *args: Any, **kwargs: Any) -> Any:
    # Our metaclasses already made this class a dataclass: decorating it again must not
    # redo (or undo, e.g. frozen) what was done.
    if isinstance(cls, EventsourcingType) and "__dataclass_fields__" in cls.__dict__:
        return cls
    return _original_process_class(cls, *args, **kwargs)


def patch_dataclasses_process_class() -> None:
    """Make ``@dataclass`` harmless on event and aggregate classes that already are one."""
    dataclasses._process_class = _process_class_once  # type: ignore[attr-defined]


patch_dataclasses_process_class()


class HasOriginatorIDVersion(AbstractDecision, Generic[TAggregateID]):
    """Declares ``originator_id`` and ``originator_version``, and records the id type.

    ``originator_id_type`` is taken from the generic argument of a subclass: ``X[UUID]``
    gives ``UUID`` and ``X[str]`` gives ``str``. The mapper uses it to turn stored ids back
    into the right type.
    """

    originator_id: TAggregateID
    originator_version: int
    originator_id_type: ClassVar[type[UUID] | type[str] | None] = None

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        for base in cls.__dict__.get("__orig_bases__", ()):
            origin = get_origin(base)
            if isinstance(origin, type) and issubclass(origin, HasOriginatorIDVersion):
                for arg in get_args(base):
                    if arg is UUID or arg is str:
                        cls.originator_id_type = arg
                    elif not isinstance(arg, TypeVar):
                        raise TypeError(f"Aggregate ID type arg cannot be {arg}")


class CanMutateAggregate(HasOriginatorIDVersion[TAggregateID], CanCreateTimestamp):
    """An event that changes an existing aggregate, checking its id and version first."""

    timestamp: datetime

    def mutate(self, aggregate: Any) -> Any:
        """Apply this event to ``aggregate``, then advance its version; return it."""
        if not isinstance(aggregate, BaseAggregate):
            return self._mutate_any(aggregate)
        # Hot path: read and write BaseAggregate's attributes directly, not via properties.
        state = aggregate.__dict__
        if self.originator_id != state["_id"]:
            raise OriginatorIDError(self.originator_id, state["_id"])
        next_version = state["_version"] + 1
        if self.originator_version != next_version:
            raise OriginatorVersionError(self.originator_version, next_version)
        self.apply(aggregate)
        state["_version"] = next_version
        state["_modified_on"] = self.timestamp
        return aggregate

    def _mutate_any(self, aggregate: Any) -> Any:
        if self.originator_id != aggregate.id:
            raise OriginatorIDError(self.originator_id, aggregate.id)
        next_version = aggregate.version + 1
        if self.originator_version != next_version:
            raise OriginatorVersionError(self.originator_version, next_version)
        self.apply(aggregate)
        aggregate.version = self.originator_version
        aggregate.modified_on = self.timestamp
        return aggregate

    def apply(self, aggregate: Any) -> None:
        """Change the aggregate's state; override in event classes (does nothing here)."""


_init_params_cache: dict[type, tuple[frozenset[str], bool]] = {}


def _init_params(cls: type) -> tuple[frozenset[str], bool]:
    """Return the names of ``cls.__init__``'s parameters, and whether ``id`` is one."""
    try:
        return _init_params_cache[cls]
    except KeyError:
        pass
    init = cls.__init__  # type: ignore[misc]
    names: frozenset[str] = frozenset()
    if init is not object.__init__:
        names = frozenset(list(inspect.signature(init).parameters)[1:])
    result = (names - {"id"}, "id" in names)
    _init_params_cache[cls] = result
    return result


class CanInitAggregate(CanMutateAggregate[TAggregateID]):
    """An event that creates an aggregate: the class named by ``originator_topic``."""

    originator_topic: str

    def mutate(self, aggregate: Any) -> Any:
        """Construct the aggregate without calling the class, then apply this event."""
        cls = resolve_topic(self.originator_topic)
        agg = cls.__new__(cls)
        agg.__base_init__(self.originator_id, self.originator_version, self.timestamp)
        names, takes_id = _init_params(cls)
        state = self.__dict__
        kwargs = {k: state[k] for k in names if k in state}
        if takes_id:
            kwargs["id"] = self.originator_id
        agg.__init__(**kwargs)
        self.apply(agg)
        return agg


class DomainEvent(CanCreateTimestamp, metaclass=MetaDomainEvent):
    """A frozen record of something that happened to the originator with a UUID id."""

    originator_id: UUID
    originator_version: int
    timestamp: datetime

    def __post_init__(self) -> None:
        if not isinstance(self.originator_id, UUID):
            raise TypeError(
                f"{type(self)} was initialized with a non-UUID originator_id: "
                f"{self.originator_id!r}"
            )


class AggregateEvent(CanMutateAggregate[UUID], DomainEvent):
    """An event of an aggregate with a UUID id."""


class AggregateCreated(CanInitAggregate[UUID], AggregateEvent):
    """The event that creates an aggregate with a UUID id."""

    originator_topic: str


class LogEvent(DomainEvent):
    """Deprecated base class for events kept in an ``EventSourcedLog``."""


class CanSnapshotAggregate(HasOriginatorIDVersion[TAggregateID], CanCreateTimestamp):
    """A snapshot of an aggregate's state, which can rebuild the aggregate."""

    topic: str
    state: Any
    timestamp: datetime

    @classmethod
    def take(cls, aggregate: Any) -> Self:
        """Return a snapshot of ``aggregate`` at its current version."""
        state = dict(aggregate.__dict__)
        if isinstance(aggregate, BaseAggregate):
            state.pop("_id", None)
            state.pop("_version", None)
            state.pop("_pending_events", None)
        class_version = getattr(type(aggregate), "class_version", 1)
        if class_version > 1:
            state["class_version"] = class_version
        return cls(  # type: ignore[call-arg]
            originator_id=aggregate.id,
            originator_version=aggregate.version,
            timestamp=cls.create_timestamp(),
            topic=get_topic(type(aggregate)),
            state=state,
        )

    def mutate(self, _: Any) -> Any:
        """Rebuild the aggregate from this snapshot, upcasting its state if needed."""
        cls = resolve_topic(self.topic)
        state = dict(self.state)
        version = state.pop("class_version", 1)
        target = getattr(cls, "class_version", 1)
        while version < target:
            getattr(cls, f"upcast_v{version}_v{version + 1}")(state)
            version += 1
        state["_id"] = self.originator_id
        state["_version"] = self.originator_version
        state["_pending_events"] = []
        agg = object.__new__(cls)
        agg.__dict__ = state
        return agg


class Snapshot(CanSnapshotAggregate[UUID], DomainEvent):
    """A snapshot of an aggregate with a UUID id."""

    topic: str
    state: dict[str, Any]


# ---------------------------------------------------------------------------------------
# Binding call arguments the way Python does, with Python's own error messages


def _make_binder(func: Callable[..., Any], qualname: str, leading: tuple[str, ...] = ()) -> Any:
    """Return a function with ``func``'s signature that returns its arguments as a dict.

    Calling it raises exactly the ``TypeError`` that calling ``func`` would (named with
    ``qualname``), and fills in defaults, so command methods and aggregate classes report
    argument errors as Python does. ``leading`` names extra parameters after ``self``.
    """
    params = list(inspect.signature(func).parameters.values())
    for p in params[1:]:
        if p.kind is p.VAR_POSITIONAL:
            raise TypeError(f"*{p.name} not supported by decorator on {func.__name__}()")
        if p.kind is p.VAR_KEYWORD:
            raise TypeError(f"**{p.name} not supported by decorator on {func.__name__}()")
        if p.kind is p.POSITIONAL_ONLY:
            raise TypeError(
                f"positional only args arg not supported by @event decorator on "
                f"{func.__name__}(): {p.name}"
            )
    defaults: dict[str, Any] = {}
    parts = ["__self__", *leading]
    keyword_only_started = False
    for p in params[1:]:
        if p.kind is p.KEYWORD_ONLY and not keyword_only_started:
            parts.append("*")
            keyword_only_started = True
        if p.default is p.empty:
            parts.append(p.name)
        else:
            defaults[f"__default_{p.name}"] = p.default
            parts.append(f"{p.name}=__default_{p.name}")
    name = qualname.rpartition(".")[2]
    source = f"def {name}({', '.join(parts)}):\n    del __self__\n    return locals()\n"
    namespace: dict[str, Any] = dict(defaults)
    exec(source, namespace)
    binder = namespace[name]
    binder.__qualname__ = qualname
    return binder


def _as_static(func: Callable[..., Any] | None) -> Any:
    return None if func is None else staticmethod(func)


def _positional_args_getter(
    func: Callable[..., Any],
) -> Callable[[dict[str, Any]], tuple[Any, ...]] | None:
    """Return a function that picks ``func``'s arguments (after self) from a dict, in order.

    None when a parameter is keyword-only, so it must be passed by name.
    """
    params = list(inspect.signature(func).parameters.values())[1:]
    if any(p.kind is not p.POSITIONAL_OR_KEYWORD for p in params):
        return None
    names = [p.name for p in params]
    if not names:
        return lambda _: ()
    if len(names) == 1:
        name = names[0]
        return lambda state: (state[name],)
    return cast(Callable[[dict[str, Any]], tuple[Any, ...]], itemgetter(*names))


def _field_annotations(func: Callable[..., Any], skip: Iterable[str] = ()) -> dict[str, Any]:
    """Return event field annotations for the parameters of ``func`` after ``self``."""
    annotations: dict[str, Any] = {}
    skipped = set(skip)
    for p in list(inspect.signature(func).parameters.values())[1:]:
        if p.name in skipped:
            continue
        annotations[p.name] = "typing.Any" if p.annotation is p.empty else p.annotation
    return annotations


# ---------------------------------------------------------------------------------------
# The @event decorator

all_func_decorators: list[CommandMethodDecorator] = []
decorated_funcs: dict[type, CallableType] = {}  # event class -> decorated function
decorated_func_callers: dict[CommandMethodDecorator, type] = {}  # decorator -> event class


class AbstractDecoratedFuncCaller:
    """Base of event classes that run a decorated method's body when applied."""


class DecoratedFuncCaller(CanMutateAggregate[TAggregateID], AbstractDecoratedFuncCaller):
    """Applies itself by calling the decorated method with the event's attributes."""

    _decorated_func: ClassVar[CallableType]
    _decorated_params: ClassVar[tuple[str, ...]]
    _decorated_args: ClassVar[Any]  # picks the positional arguments, or None

    def apply(self, aggregate: Any) -> None:
        """Run the decorated method's body with this event's values as its arguments."""
        state = self.__dict__
        get_args = self._decorated_args
        if get_args is not None:  # all parameters can be passed by position: cheaper
            self._decorated_func(aggregate, *get_args(state))
        else:
            self._decorated_func(aggregate, **{k: state[k] for k in self._decorated_params})


class CommandMethodDecorator:
    """What ``@event`` returns: a descriptor that turns method calls into new events."""

    def __init__(
        self,
        decorated: Callable[..., Any] | property,
        event_name: str | None = None,
        event_class: type | None = None,
        topic: str | None = None,
    ) -> None:
        self.event_name = event_name
        self.given_event_class = event_class
        self.topic = topic
        self.decorated_property: property | None = None
        if isinstance(decorated, property):
            if decorated.fset is None:
                getter = cast(Callable[..., Any], decorated.fget)
                raise TypeError(f"@event can't decorate {getter.__name__}() property getter")
            self.decorated_property = decorated
            decorated = cast(Callable[..., Any], decorated.fset)
            if isinstance(decorated, CommandMethodDecorator):
                decorated = decorated.decorated_func
        self.decorated_func: Callable[..., Any] = decorated
        self.is_name_inferred_from_method = event_name is None and event_class is None
        self.event_cls: type[DecoratedFuncCaller[Any]] | None = None
        self._trigger: Callable[..., None] | None = None
        all_func_decorators.append(self)

    def bind_event_class(self, event_cls: type[DecoratedFuncCaller[Any]]) -> None:
        """Link this decorator to the event class made for it at class creation."""
        self.event_cls = event_cls
        decorated_func_callers[self] = event_cls
        decorated_funcs[event_cls] = self.decorated_func
        if self.decorated_func.__name__ not in ("__init__", "_"):
            self._trigger = self._make_trigger(event_cls)

    def _make_trigger(self, event_cls: type[Any]) -> Callable[..., None]:
        """Return ``trigger(aggregate, *args, **kwargs)``, specialised for speed."""
        func = self.decorated_func
        binder = _make_binder(func, func.__qualname__)
        names = frozenset(f.name for f in dataclasses.fields(event_cls))
        params = frozenset(list(inspect.signature(func).parameters)[1:])
        if params <= names:

            def trigger(aggregate: Any, *args: Any, **kwargs: Any) -> None:
                aggregate.trigger_event(event_cls, **binder(None, *args, **kwargs))

        else:  # parameters that are not event fields are dropped

            def trigger(aggregate: Any, *args: Any, **kwargs: Any) -> None:
                bound = binder(None, *args, **kwargs)
                aggregate.trigger_event(
                    event_cls, **{k: v for k, v in bound.items() if k in names}
                )

        return trigger

    def trigger(self, aggregate: Any, *args: Any, **kwargs: Any) -> None:
        """Bind the arguments like Python does, then trigger the event on ``aggregate``."""
        if self._trigger is None:
            raise ProgrammingError(
                f"{self.decorated_func.__qualname__} was decorated with @event outside an "
                "aggregate class: decorate methods of Aggregate subclasses only"
            )
        self._trigger(aggregate, *args, **kwargs)

    def __call__(self, aggregate: Any, *args: Any, **kwargs: Any) -> None:
        # Called directly as a property's fset, or unbound through the class.
        self.trigger(aggregate, *args, **kwargs)

    def __get__(self, instance: Any, owner: type) -> Callable[..., Any]:
        trigger = self._trigger
        if trigger is not None and instance is not None:
            return MethodType(trigger, instance)  # a C-level bound method: cheap to call
        name = self.decorated_func.__name__
        if name == "_":
            raise ProgrammingError(
                "Underscore 'non-command' methods cannot be used to trigger events."
            )
        if name == "__init__":
            return cast(Callable[..., Any], self.decorated_func.__get__(instance, owner))
        if instance is None:
            return UnboundCommandMethodDecorator(self)
        return BoundCommandMethodDecorator(self, instance)


class UnboundCommandMethodDecorator:
    """A decorated command method accessed on the class: call it with the aggregate first."""

    __slots__ = ("__qualname__", "decorator")

    def __init__(self, decorator: CommandMethodDecorator) -> None:
        self.decorator = decorator
        self.__qualname__ = decorator.decorated_func.__qualname__

    def __call__(self, *args: Any, **kwargs: Any) -> None:
        if not args or not isinstance(args[0], BaseAggregate):
            raise TypeError("Expected aggregate as first argument")
        self.decorator.trigger(*args, **kwargs)


class BoundCommandMethodDecorator:
    """A decorated command method accessed on an aggregate: calling it triggers an event."""

    __slots__ = ("aggregate", "decorator")

    def __init__(self, decorator: CommandMethodDecorator, aggregate: Any) -> None:
        self.decorator = decorator
        self.aggregate = aggregate

    def __call__(self, *args: Any, **kwargs: Any) -> None:
        self.decorator.trigger(self.aggregate, *args, **kwargs)


def event(
    arg: str | type | Callable[..., Any] | property | None = None, *, topic: str | None = None
) -> Any:
    """Make a method of an aggregate trigger an event instead of running directly.

    ``@event("Name")`` names the event class, ``@event(SomeEvent)`` reuses a class, and a
    bare ``@event`` derives the name from the method (``add_trick`` -> ``AddTrick``). The
    method's body runs when the event is applied, now and whenever it is replayed.
    """
    if arg is None:
        return lambda f: _decorate(f, None, None, topic)
    if isinstance(arg, str):
        if arg == "":
            raise ValueError("Can't use empty string as name of event class")
        name = arg
        return lambda f: _decorate(f, name, None, topic)
    if isinstance(arg, type):
        if not issubclass(arg, CanMutateAggregate | AbstractDecision):
            raise TypeError(
                f"{arg} is not a str, function, property, or subclass of CanMutateAggregate"
            )
        given = arg
        return lambda f: _decorate(f, None, given, topic)
    if isinstance(arg, FunctionType | property | CommandMethodDecorator):
        return _decorate(arg, None, None, topic)
    raise TypeError(f"{arg} is not a str, function, property, or subclass of CanMutateAggregate")


triggers = event


def _decorate(
    obj: Any, name: str | None, given: type | None, topic: str | None
) -> CommandMethodDecorator:
    if isinstance(obj, CommandMethodDecorator):  # @event stacked on @x.setter(@event)
        obj = obj.decorated_property or obj.decorated_func
    if not isinstance(obj, FunctionType | property):
        raise TypeError(f"{obj} is not a function or property")
    if isinstance(obj, FunctionType):
        _make_binder(obj, obj.__qualname__)  # reject *args, **kwargs, positional-only early
    return CommandMethodDecorator(obj, event_name=name, event_class=given, topic=topic)


# ---------------------------------------------------------------------------------------
# Aggregates


class MetaAggregate(EventsourcingType, ABCMeta):
    """Metaclass of aggregates: calling an aggregate class triggers its "created" event."""

    def __call__(cls: Any, *args: Any, **kwargs: Any) -> Any:
        if cls is BaseAggregate:
            raise TypeError("Please define or use subclasses of BaseAggregate.")
        created = cls.__dict__.get("_created_event_class")
        if created is None:
            raise TypeError(_no_created_class_message(cls))
        binder = cls.__dict__.get("_init_binder")
        if binder is None:
            binder = _init_binder(cls)
        return cls._create(created, **binder(None, *args, **kwargs))


_create_id_params_cache: dict[type, frozenset[str]] = {}


def _create_id_params(cls: type[BaseAggregate[Any]]) -> frozenset[str]:
    """Return the names of the parameters of ``cls.create_id`` (cached: it is per create)."""
    try:
        return _create_id_params_cache[cls]
    except KeyError:
        params = frozenset(inspect.signature(cls.create_id).parameters)
        _create_id_params_cache[cls] = params
        return params


def _no_created_class_message(cls: type) -> str:
    names = cls.__dict__.get("_created_event_candidates", ())
    if len(names) > 1:
        listed = ", ".join(f"'{n}'" for n in names)
        return (
            f"{cls.__qualname__} can't decide which of many \"created\" event classes to use: "
            f"{listed}. Please use class arg 'created_event_name' or @event decorator on "
            "__init__ method."
        )
    return f"No \"created\" event classes defined on class '{cls.__qualname__}'."


def _init_binder(cls: Any) -> Any:
    init = cls.__init__
    leading = ("id",) if cls.__dict__.get("_annotations_mention_id") else ()
    if init is object.__init__:
        binder = _make_binder(lambda self: None, "object.__init__", leading)
    else:
        binder = _make_binder(init, init.__qualname__, leading)
    type.__setattr__(cls, "_init_binder", binder)
    return binder


class BaseAggregate(Generic[TAggregateID], metaclass=MetaAggregate):
    """Base class of aggregates, generic in the type of their ids (UUID or str).

    Most users subclass :class:`Aggregate`, whose ids are UUIDs.
    """

    INITIAL_VERSION: ClassVar[int] = 1
    TOPIC: ClassVar[str]
    Event: ClassVar[type[CanMutateAggregate[Any]]]
    Created: ClassVar[type[CanInitAggregate[Any]]]
    _created_event_class: ClassVar[type[CanInitAggregate[Any]] | None] = None
    _annotations_mention_id: ClassVar[bool] = False

    @staticmethod
    def create_id(*_: Any, **__: Any) -> TAggregateID:
        """Return an id for a new aggregate; override to derive ids from arguments."""
        raise NotImplementedError

    @classmethod
    def _create(
        cls, event_class: type[CanInitAggregate[Any]], *, id: Any = None, **kwargs: Any
    ) -> Self:
        """Trigger ``event_class`` to create a new aggregate of this class; return it."""
        if id is None:
            id = cls._new_id(kwargs)
        elif not isinstance(id, UUID | str):
            raise TypeError(f"Given id was not a UUID or str: {id!r}")
        _check_explicit_topic(cls, event_class)
        timestamp = kwargs.pop("timestamp", None) or event_class.create_timestamp()
        try:
            created = event_class(  # type: ignore[call-arg]
                originator_topic=get_topic(cls),
                originator_id=id,
                originator_version=cls.INITIAL_VERSION,
                timestamp=timestamp,
                **kwargs,
            )
        except TypeError as e:
            raise TypeError(f"Unable to construct '{event_class.__qualname__}' event: {e}") from e
        agg = created.mutate(None)
        agg._pending_events.append(created)
        return cast("Self", agg)

    @classmethod
    def _new_id(cls, kwargs: dict[str, Any]) -> UUID | str:
        params = _create_id_params(cls)
        try:
            new_id = cls.create_id(**{k: v for k, v in kwargs.items() if k in params})
        except NotImplementedError:
            raise NotImplementedError(
                f"Please pass an 'id' arg or define a create_id() method on {cls}"
            ) from None
        if not isinstance(new_id, UUID | str):
            create_id = cls.create_id
            raise TypeError(
                f"{create_id.__module__}.{create_id.__qualname__} did not return UUID or str, "
                f"it returned: {new_id!r}"
            )
        return new_id

    def __base_init__(
        self, originator_id: TAggregateID, originator_version: int, timestamp: datetime
    ) -> None:
        """Set the attributes every aggregate has; runs before the user's ``__init__``."""
        self._id = originator_id
        self._version = originator_version
        self._created_on = timestamp
        self._modified_on = timestamp
        self._pending_events: list[CanMutateAggregate[TAggregateID]] = []

    @property
    def id(self) -> TAggregateID:
        """The aggregate's id."""
        return self._id

    @property
    def version(self) -> int:
        """The version of the last event applied to the aggregate."""
        return self._version

    @version.setter
    def version(self, version: int) -> None:
        self._version = version

    @property
    def created_on(self) -> datetime:
        """When the aggregate was created."""
        return self._created_on

    @property
    def modified_on(self) -> datetime:
        """When the aggregate was last changed."""
        return self._modified_on

    @modified_on.setter
    def modified_on(self, modified_on: datetime) -> None:
        self._modified_on = modified_on

    @property
    def pending_events(self) -> list[CanMutateAggregate[TAggregateID]]:
        """The events triggered since the aggregate was last saved (the live list)."""
        return self._pending_events

    def trigger_event(self, event_class: type[CanMutateAggregate[Any]], **kwargs: Any) -> None:
        """Construct the next event of ``event_class``, apply it, and keep it as pending."""
        _check_explicit_topic(type(self), event_class)
        timestamp = kwargs.pop("timestamp", None) or event_class.create_timestamp()
        try:
            new_event = event_class(  # type: ignore[call-arg]
                originator_id=self._id,
                originator_version=self._version + 1,
                timestamp=timestamp,
                **kwargs,
            )
        except TypeError as e:
            raise TypeError(f"Can't construct event {event_class}: {e}") from None
        new_event.mutate(self)
        self._pending_events.append(new_event)

    def collect_events(self) -> list[CanMutateAggregate[TAggregateID]]:
        """Return the pending events, oldest first, and forget them."""
        collected, self._pending_events = self._pending_events, []
        return collected

    def __eq__(self, other: object) -> bool:
        return type(self) is type(other) and self.__dict__ == other.__dict__

    def __hash__(self) -> int:
        raise NotImplementedError("aggregates are mutable and cannot be hashed")

    def __repr__(self) -> str:
        attrs = [
            f"{name.lstrip('_')}={value!r}"
            for name, value in self.__dict__.items()
            if name != "_pending_events"
        ]
        return f"{type(self).__name__}({', '.join(attrs)})"

    def __init_subclass__(cls, /, created_event_name: str = "", **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        _define_aggregate_class(cls, created_event_name)


def _check_explicit_topic(agg_cls: type, event_class: type) -> None:
    if "TOPIC" not in vars(agg_cls):
        return
    if event_class.__name__ == "Event" and event_class is getattr(agg_cls, "Event", None):
        raise ProgrammingError("Triggering base 'Event' class is prohibited.")
    topic = getattr(event_class, "TOPIC", None)
    if topic is None or resolve_topic(topic) is not event_class:
        raise ProgrammingError(
            f"Event class {event_class} is not registered under its explicit topic {topic!r}: "
            "define it on the aggregate class with a TOPIC of its own"
        )


# ---------------------------------------------------------------------------------------
# Class creation: the steps BaseAggregate.__init_subclass__ takes, in order


def _define_aggregate_class(cls: Any, created_event_name: str) -> None:
    _check_not_redefined(cls)
    _take_id_annotation(cls)
    _apply_dataclass(cls)
    _define_base_event_class(cls)
    _rebase_nested_event_classes(cls)
    init_decorator = _unwrap_init_decorator(cls)
    _define_created_event_class(cls, created_event_name, init_decorator)
    _rebase_inherited_event_classes(cls)
    _define_decorated_event_classes(cls)
    _register_explicit_topics(cls)


def _check_not_redefined(cls: type) -> None:
    if "EVENTSOURCING_DISABLE_REDEFINITION_CHECK" in os.environ:
        return
    if "<locals>" in cls.__qualname__:
        return
    module = sys.modules.get(cls.__module__)
    existing = getattr(module, cls.__name__, None) if "." not in cls.__qualname__ else None
    if isinstance(existing, type) and existing is not cls:
        raise ProgrammingError(
            f"Name '{cls.__name__}' of {cls} already defined in '{cls.__module__}' module: "
            f"{existing}"
        )


def _take_id_annotation(cls: Any) -> None:
    if "id" in cls.__dict__:
        raise ProgrammingError(f"Setting attribute 'id' on class '{cls.__name__}' is not allowed")
    annotations = cls.__dict__.get("__annotations__", {})  # noqa: RUF063 -- own, mutable
    if "id" in annotations:
        del annotations["id"]
        cls._annotations_mention_id = True


def _apply_dataclass(cls: Any) -> None:
    has_annotations = bool(cls.__dict__.get("__annotations__"))  # noqa: RUF063
    base_is_dataclass = any(dataclasses.is_dataclass(b) for b in cls.__bases__)
    if has_annotations or cls.__dict__.get("_annotations_mention_id") or base_is_dataclass:
        dataclass(eq=False, repr=False)(cls)


def _define_base_event_class(cls: Any) -> None:
    if "Event" in cls.__dict__:
        return
    base_event = getattr(cls, "Event", None)
    if base_event is None:
        raise TypeError(f"Base event class 'Event' not defined on {cls} or ancestors")
    cls.Event = _subclass(cls, "Event", (base_event,))


def _subclass(cls: Any, name: str, bases: tuple[type, ...], **namespace: Any) -> Any:
    """Define ``cls.<name>`` as a new event class with ``bases``."""
    metaclass = type(bases[0])
    for base in bases[1:]:
        if issubclass(type(base), metaclass):
            metaclass = type(base)
    namespace.update(__module__=cls.__module__, __qualname__=f"{cls.__qualname__}.{name}")
    return metaclass(name, bases, namespace)


def _is_event_class(name: str, value: Any) -> bool:
    return (
        name[:1].isupper() and isinstance(value, type) and issubclass(value, CanMutateAggregate)
    )


def _rebase_nested_event_classes(cls: Any) -> None:
    """Make nested event classes subclasses of the aggregate's own ``Event`` class."""
    redefined: dict[type, type] = {}
    for name, value in list(cls.__dict__.items()):
        if name == "Event" or not _is_event_class(name, value) or issubclass(value, cls.Event):
            continue
        rebased = tuple(redefined[b] for b in value.__bases__ if b in redefined)
        new = _subclass(cls, name, (value, *rebased, cls.Event))
        redefined[value] = new
        setattr(cls, name, new)


def _unwrap_init_decorator(cls: Any) -> CommandMethodDecorator | None:
    """Replace a decorated ``__init__`` by its function; return the decorator, if any."""
    init = cls.__dict__.get("__init__")
    if not isinstance(init, CommandMethodDecorator):
        return None
    cls.__init__ = init.decorated_func
    return init


def _define_created_event_class(
    cls: Any, created_event_name: str, init_decorator: CommandMethodDecorator | None
) -> None:
    name = created_event_name
    given: type | None = None
    if init_decorator is not None:
        if init_decorator.is_name_inferred_from_method:
            raise TypeError("@event decorator on __init__ has neither event name nor class")
        if name and name != (init_decorator.event_name or ""):
            raise TypeError("Given 'created_event_name' conflicts with decorator on __init__")
        name = init_decorator.event_name or ""
        given = init_decorator.given_event_class
    created: type | None = None
    if given is not None:
        created = _created_from_given_class(cls, given)
    elif name:
        created = _created_by_name(cls, name)
    else:
        own = [v for k, v in cls.__dict__.items() if _is_created_class(k, v)]
        if len(own) > 1:
            cls._created_event_candidates = tuple(c.__name__ for c in own)
            cls._created_event_class = None
            return
        created = own[0] if own else _created_by_ancestor_name(cls)
    cls._created_event_class = created
    cls._created_event_candidates = ()


def _is_created_class(name: str, value: Any) -> bool:
    return _is_event_class(name, value) and issubclass(value, CanInitAggregate)


def _created_from_given_class(cls: Any, given: type) -> type:
    given = cls.__dict__.get(given.__name__, given)
    if not issubclass(given, CanInitAggregate):
        raise TypeError(f"class '{given.__name__}' not a \"created\" event class")
    if not issubclass(given, cls.Event):
        given = _subclass(cls, given.__name__, (given, cls.Event))
        setattr(cls, given.__name__, given)
    return given


def _ancestor_created_class(cls: Any) -> type | None:
    for base in cls.__mro__[1:]:
        created = base.__dict__.get("_created_event_class")
        if created is not None:
            return cast(type, created)
    return None


def _created_by_name(cls: Any, name: str) -> type:
    existing = cls.__dict__.get(name)
    if _is_created_class(name, existing):
        return cast(type, existing)
    inherited = getattr(cls, name, None)
    base = inherited if _is_created_class(name, inherited) else _ancestor_created_class(cls)
    if base is None:
        raise TypeError(f"Can't defined \"created\" event class for name '{name}'")
    return _define_created_class(cls, name, base)


def _created_by_ancestor_name(cls: Any) -> type | None:
    base = _ancestor_created_class(cls)
    if base is None:
        return None
    return _define_created_class(cls, base.__name__, base)


def _define_created_class(cls: Any, name: str, base: type) -> type:
    """Define ``cls.<name>`` with the parameters of ``cls.__init__`` as its fields."""
    init = cls.__init__
    annotations: dict[str, Any] = {}
    if init is not object.__init__:
        _make_binder(init, "__init__")  # reject *args, **kwargs and positional-only early
        inherited = {f.name for f in dataclasses.fields(base)}
        annotations = {
            k: v for k, v in _field_annotations(init, skip=("id",)).items() if k not in inherited
        }
    created = _subclass(cls, name, (base, cls.Event), __annotations__=annotations)
    setattr(cls, name, created)
    return cast(type, created)


def _rebase_inherited_event_classes(cls: Any) -> None:
    """Give the subclass its own version of each event class its bases define."""
    for base in cls.__bases__:
        for name, value in list(base.__dict__.items()):
            if name == "Event" or name in cls.__dict__ or not _is_event_class(name, value):
                continue
            setattr(cls, name, _subclass(cls, name, (cls.Event, value)))


def _define_decorated_event_classes(cls: Any) -> None:
    used: set[type] = set()
    for attr, value in list(cls.__dict__.items()):
        decorator = _command_decorator_of(cls, attr, value)
        if decorator is None or decorator.event_cls is not None:
            continue
        event_cls = _decorated_event_class(cls, decorator, used)
        decorator.bind_event_class(event_cls)


def _command_decorator_of(cls: Any, attr: str, value: Any) -> CommandMethodDecorator | None:
    """Return the decorator behind a class attribute, fixing up decorated properties."""
    if isinstance(value, CommandMethodDecorator):
        if value.decorated_func.__name__ == "__init__":
            return None
        if value.decorated_property is not None:
            _require_setter_event_name(value, attr)
            prop = value.decorated_property
            setattr(cls, attr, property(prop.fget, value, prop.fdel, prop.__doc__))
        return value
    if isinstance(value, property) and isinstance(value.fset, CommandMethodDecorator):
        _require_setter_event_name(value.fset, attr)
        return value.fset
    return None


def _require_setter_event_name(decorator: CommandMethodDecorator, attr: str) -> None:
    if decorator.is_name_inferred_from_method:
        raise TypeError(f"@event decorator under @{attr}.setter requires event name or class")


def _decorated_event_class(
    cls: Any, decorator: CommandMethodDecorator, used: set[type]
) -> type[DecoratedFuncCaller[Any]]:
    func = decorator.decorated_func
    namespace: dict[str, Any] = {
        "__annotations__": _field_annotations(func),
        "_decorated_func": staticmethod(func),
        "_decorated_params": tuple(list(inspect.signature(func).parameters)[1:]),
        "_decorated_args": _as_static(_positional_args_getter(func)),
    }
    if decorator.topic is not None:
        namespace["TOPIC"] = decorator.topic
    given = decorator.given_event_class
    if given is not None:
        if issubclass(given, CanInitAggregate):
            raise TypeError(f"{given} is subclass of CanInitAggregate")
        given = cls.__dict__.get(given.__name__, given)
        if given in used:
            raise TypeError(f"{given.__name__} event class used in more than one decorator")
        used.add(given)
        name = given.__name__
        namespace["__annotations__"] = {}  # the given class declares the fields
        return cast(type, _subclass(cls, name, (DecoratedFuncCaller, given), **namespace))
    name = decorator.event_name or "".join(p.capitalize() for p in func.__name__.split("_"))
    existing = getattr(cls, name, None)
    if name in cls.__dict__ or (existing is not None and not _is_event_class(name, existing)):
        raise TypeError(f"{name} event already defined on {cls.__name__}")
    event_cls = _subclass(cls, name, (DecoratedFuncCaller, cls.Event), **namespace)
    setattr(cls, name, event_cls)
    return cast(type[DecoratedFuncCaller[Any]], event_cls)


def _register_explicit_topics(cls: Any) -> None:
    if not hasattr(cls, "TOPIC"):
        return
    if "TOPIC" not in cls.__dict__:
        raise ProgrammingError(f"Explicit topic not defined on {cls}")
    _register_explicit_topic(cls.TOPIC, cls)
    for name, value in cls.__dict__.items():
        if name == "Event" or not _is_event_class(name, value):
            continue
        if "TOPIC" not in value.__dict__:
            raise ProgrammingError(f"Explicit topic not defined on {value}")
        _register_explicit_topic(value.TOPIC, value)


def _register_explicit_topic(topic: str, obj: type) -> None:
    try:
        register_topic(topic, obj)
    except Exception:
        existing = resolve_topic(topic)
        raise ProgrammingError(
            f"Explicit topic '{topic}' of {obj} already registered for {existing}"
        ) from None


class Aggregate(BaseAggregate[UUID]):
    """Base class of aggregates with UUID ids (new ids come from ``uuid4()``)."""

    @staticmethod
    def create_id(*_: Any, **__: Any) -> UUID:
        """Return a new random UUID."""
        return uuid4()

    class Event(AggregateEvent):
        """Base class of this aggregate's events."""

    class Created(Event, AggregateCreated):
        """The event that creates this aggregate."""

    Snapshot = Snapshot


# ---------------------------------------------------------------------------------------
# The aggregate class decorator


@overload
def aggregate(cls: type, *, created_event_name: str = "") -> type[Aggregate]: ...


@overload
def aggregate(
    cls: None = None, *, created_event_name: str = ""
) -> Callable[[type], type[Aggregate]]: ...


def aggregate(
    cls: type | None = None, *, created_event_name: str = ""
) -> type[Aggregate] | Callable[[type], type[Aggregate]]:
    """Turn a plain class into an :class:`Aggregate` subclass with the same body."""

    def decorate(original: type) -> type[Aggregate]:
        if issubclass(original, Aggregate):
            raise TypeError(f"{original.__qualname__} is already an Aggregate")
        bases = original.__bases__ if original.__bases__ != (object,) else ()
        bases = (*bases, Aggregate)
        namespace = {
            k: v for k, v in original.__dict__.items() if k not in ("__dict__", "__weakref__")
        }
        return cast(
            type[Aggregate],
            MetaAggregate(
                original.__name__, bases, namespace, created_event_name=created_event_name
            ),
        )

    return decorate if cls is None else decorate(cls)


