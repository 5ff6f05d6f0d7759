"""Applications: where commands meet storage.

An :class:`Application` is configured from its environment, builds its persistence
infrastructure through an :class:`~eventsourcing.persistence.InfrastructureFactory`, and
offers three things to the code that uses it:

* ``save(*aggregates)`` records the pending events of aggregates, atomically, in one call
  to the event store;
* ``repository.get(aggregate_id)`` rebuilds an aggregate from its snapshot and events, or
  fast-forwards a cached copy;
* ``notification_log`` presents every recorded event in the application's total order, in
  pages, so that other applications can follow it.

The write and read paths here are on the hot path of every command, so they do as little
Python work per call and per event as the contract allows: settings are read from the
environment once, in ``__init__``; events are streamed lazily from the store into the
projector; aggregates are deep-copied only when a cache hands out a shared object.
"""

from __future__ import annotations

import logging
import os
import threading
from abc import ABC, abstractmethod
from collections import OrderedDict
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import suppress
from copy import deepcopy
from dataclasses import dataclass
from functools import cache
from itertools import chain
from typing import TYPE_CHECKING, Any, ClassVar, Generic, Protocol, TypeVar, cast
from uuid import UUID
from warnings import warn

from eventsourcing.domain import (
    Aggregate,
    CanMutateProtocol,
    DomainEventProtocol,
    EventSourcingError,
    MutableOrImmutableAggregate,
    SDomainEvent,
    SnapshotProtocol,
    TAggregateID,
    TDomainEvent,
    TMutableOrImmutableAggregate,
    datetime_now_with_tzinfo,
)
from eventsourcing.persistence import (
    ApplicationRecorder,
    DatetimeAsISO,
    DecimalAsStr,
    EventStore,
    InfrastructureFactory,
    JSONTranscoder,
    Mapper,
    Notification,
    Recording,
    Tracking,
    TrackingRecorder,
    Transcoder,
    UUIDAsHex,
)
from eventsourcing.utils import Environment, EnvType, strtobool

if TYPE_CHECKING:
    from types import TracebackType
    from typing import Self

__all__ = [
    "AggregateNotFoundError",
    "Application",
    "Cache",
    "EventSourcedLog",
    "LRUCache",
    "LocalNotificationLog",
    "MutatorFunction",
    "NotificationLog",
    "ProcessingEvent",
    "ProgrammingError",
    "ProjectorFunction",
    "PromptPublisherProtocol",
    "Repository",
    "Section",
    "TApplication",
    "project_aggregate",
    "prompt_publisher_for",
]

ProjectorFunction = Callable[
    [TMutableOrImmutableAggregate | None, Iterable[TDomainEvent]],
    TMutableOrImmutableAggregate | None,
]
"""Folds events into an aggregate: ``(aggregate or None, events) -> aggregate or None``."""

MutatorFunction = Callable[
    [TDomainEvent, TMutableOrImmutableAggregate | None],
    TMutableOrImmutableAggregate | None,
]
"""Applies one event to an aggregate: ``(event, aggregate or None) -> aggregate or None``."""

S = TypeVar("S")
T = TypeVar("T")


class ProgrammingError(Exception):
    """Raised when an application is configured in a way that cannot work.

    This is the application-level error; it is distinct from the domain and persistence
    errors of the same name.
    """


class AggregateNotFoundError(EventSourcingError):
    """Raised when a repository has no events (at the requested version) for an aggregate."""


def project_aggregate(
    aggregate: TMutableOrImmutableAggregate | None,
    domain_events: Iterable[DomainEventProtocol[Any]],
) -> TMutableOrImmutableAggregate | None:
    """Fold events into an aggregate by calling each event's ``mutate()`` in turn.

    This is the default projector of :class:`Repository`. The result is None when there
    were no events and no initial aggregate.
    """
    # One cast for the whole iterable: a per-event isinstance check against a runtime
    # protocol would cost more than the mutate call itself.
    for domain_event in cast("Iterable[CanMutateProtocol]", domain_events):
        aggregate = domain_event.mutate(aggregate)
    return aggregate


# ---------------------------------------------------------------------------
# Caches
# ---------------------------------------------------------------------------


class Cache(Generic[S, T]):
    """An unbounded cache of aggregates, keyed by aggregate id, held in the dict ``cache``."""

    def __init__(self) -> None:
        """Start with an empty cache."""
        self.cache: dict[S, Any] = {}

    def get(self, key: S, *, evict: bool = False) -> T:
        """Return the value for ``key``, removing it if ``evict``; raise KeyError on a miss."""
        if evict:
            return cast("T", self.cache.pop(key))
        return cast("T", self.cache[key])

    def put(self, key: S, value: T | None) -> object:
        """Store ``value`` under ``key``; a None value is ignored."""
        if value is not None:
            self.cache[key] = value
        return None


class LRUCache(Cache[S, T]):
    """A thread-safe cache of at most ``maxsize`` entries that drops the least recently used.

    ``cache`` is an ordered dict from key to value, oldest first.
    """

    def __init__(self, maxsize: int):
        """Start with an empty cache that holds at most ``maxsize`` entries."""
        super().__init__()
        self.maxsize = maxsize
        self.lock = threading.Lock()
        self._entries: OrderedDict[S, T] = OrderedDict()
        self.cache = self._entries

    def clear(self) -> None:
        """Remove every entry."""
        with self.lock:
            self._entries.clear()

    def get(self, key: S, *, evict: bool = False) -> T:
        """Return the value for ``key`` and mark it most recently used; KeyError on a miss.

        With ``evict``, the entry is removed instead.
        """
        with self.lock:
            if evict:
                return self._entries.pop(key)
            value = self._entries[key]
            self._entries.move_to_end(key)
            return value

    def put(self, key: S, value: T | None) -> tuple[S | None, T | None]:
        """Store ``value`` under ``key`` as the most recently used entry.

        Returns ``(evicted_key, evicted_value)`` when the cache was full and dropped its
        least recently used entry to make room, otherwise ``(None, None)``.
        """
        if value is None:
            return None, None
        with self.lock:
            entries = self._entries
            entries[key] = value
            entries.move_to_end(key)
            if len(entries) > self.maxsize:
                return entries.popitem(last=False)
        return None, None


# ---------------------------------------------------------------------------
# Repository
# ---------------------------------------------------------------------------


class Repository(Generic[TAggregateID]):
    """Rebuilds aggregates from an event store, optionally from snapshots and a cache.

    ``cache_maxsize`` None means no cache, ``<= 0`` an unbounded :class:`Cache`, and a
    positive number an :class:`LRUCache` of that size. A cached aggregate is brought up to
    date ("fast-forwarded") with newer stored events on each ``get`` when ``fastforward``
    is set; ``fastforward_skipping`` serves the cached aggregate as it is when another
    thread is already fast-forwarding it; ``deepcopy_from_cache`` hands out a copy, so a
    command that fails half-way cannot corrupt the cached aggregate.
    """

    FASTFORWARD_LOCKS_CACHE_MAXSIZE = 50

    def __init__(
        self,
        event_store: EventStore[TAggregateID],
        *,
        snapshot_store: EventStore[TAggregateID] | None = None,
        cache_maxsize: int | None = None,
        fastforward: bool = True,
        fastforward_skipping: bool = False,
        deepcopy_from_cache: bool = True,
    ):
        """Read aggregates from ``event_store`` (and ``snapshot_store``, if given)."""
        self.event_store = event_store
        self.snapshot_store = snapshot_store
        self.cache: Cache[TAggregateID, Any] | None
        if cache_maxsize is None:
            self.cache = None
        elif cache_maxsize <= 0:
            self.cache = Cache()
        else:
            self.cache = LRUCache(maxsize=cache_maxsize)
        self.fastforward = fastforward
        self.fastforward_skipping = fastforward_skipping
        self.deepcopy_from_cache = deepcopy_from_cache
        # One lock per aggregate being fast-forwarded, counted by its users; idle locks
        # are kept in a small LRU cache so busy aggregates do not churn Lock objects.
        self._fastforward_locks_lock = threading.Lock()
        self._fastforward_locks_inuse: dict[TAggregateID, tuple[threading.Lock, int]] = {}
        self._fastforward_locks_cache: LRUCache[TAggregateID, threading.Lock] = LRUCache(
            maxsize=self.FASTFORWARD_LOCKS_CACHE_MAXSIZE
        )

    def get(
        self,
        aggregate_id: TAggregateID,
        *,
        version: int | None = None,
        projector_func: ProjectorFunction[
            TMutableOrImmutableAggregate, TDomainEvent
        ] = project_aggregate,
        fastforward_skipping: bool = False,
        deepcopy_from_cache: bool = True,
    ) -> TMutableOrImmutableAggregate:
        """Return the aggregate with ``aggregate_id``, at ``version`` if given.

        Raises :class:`AggregateNotFoundError` when there is nothing to rebuild it from.
        """
        cache = self.cache
        if cache is None or version is not None:
            return self._reconstruct_aggregate(aggregate_id, version, projector_func)
        copy = deepcopy_from_cache and self.deepcopy_from_cache
        try:
            aggregate: TMutableOrImmutableAggregate = cache.get(aggregate_id)
        except KeyError:
            aggregate = self._reconstruct_aggregate(aggregate_id, None, projector_func)
            cache.put(aggregate_id, aggregate)
        else:
            if self.fastforward:
                skipping = fastforward_skipping or self.fastforward_skipping
                return self._fastforward(aggregate_id, aggregate, projector_func, skipping, copy)
        return deepcopy(aggregate) if copy else aggregate

    def __contains__(self, aggregate_id: TAggregateID) -> bool:
        """Tell whether the repository can rebuild the aggregate with this id."""
        try:
            self.get(aggregate_id)
        except AggregateNotFoundError:
            return False
        return True

    def _reconstruct_aggregate(
        self,
        aggregate_id: TAggregateID,
        version: int | None,
        projector_func: ProjectorFunction[TMutableOrImmutableAggregate, TDomainEvent],
    ) -> TMutableOrImmutableAggregate:
        history = cast("Iterable[TDomainEvent]", self._select_history(aggregate_id, version))
        aggregate = projector_func(None, history)
        if aggregate is None:
            msg = f"Aggregate {aggregate_id!r} version {version!r} not found."
            raise AggregateNotFoundError(msg)
        return aggregate

    def _select_history(
        self, aggregate_id: TAggregateID, version: int | None
    ) -> Iterable[DomainEventProtocol[TAggregateID]]:
        """The latest snapshot at or before ``version`` (if any), then the later events."""
        if self.snapshot_store is not None:
            snapshots = self.snapshot_store.get(
                originator_id=aggregate_id, desc=True, limit=1, lte=version
            )
            snapshot = next(iter(snapshots), None)
            if snapshot is not None:
                events = self.event_store.get(
                    originator_id=aggregate_id, gt=snapshot.originator_version, lte=version
                )
                return chain((snapshot,), events)
        return self.event_store.get(originator_id=aggregate_id, lte=version)

    def _fastforward(
        self,
        aggregate_id: TAggregateID,
        aggregate: TMutableOrImmutableAggregate,
        projector_func: ProjectorFunction[TMutableOrImmutableAggregate, TDomainEvent],
        skipping: bool,
        copy: bool,
    ) -> TMutableOrImmutableAggregate:
        """Apply stored events newer than the cached aggregate, under the aggregate's lock.

        The copy is taken while the lock is held, so it never sees a half-applied event.
        """
        lock = self._use_fastforward_lock(aggregate_id)
        try:
            if lock.acquire(blocking=not skipping):
                try:
                    aggregate = self._apply_newer_events(aggregate_id, aggregate, projector_func)
                    return deepcopy(aggregate) if copy else aggregate
                finally:
                    lock.release()
        finally:
            self._disuse_fastforward_lock(aggregate_id)
        # Another thread is fast-forwarding it: serve the cached state as it is.
        return deepcopy(aggregate) if copy else aggregate

    def _apply_newer_events(
        self,
        aggregate_id: TAggregateID,
        aggregate: TMutableOrImmutableAggregate,
        projector_func: ProjectorFunction[TMutableOrImmutableAggregate, TDomainEvent],
    ) -> TMutableOrImmutableAggregate:
        version = cast("MutableOrImmutableAggregate", aggregate).version
        new_events = self.event_store.get(originator_id=aggregate_id, gt=version)
        result = projector_func(aggregate, cast("Iterable[TDomainEvent]", new_events))
        if result is None:
            msg = f"Aggregate {aggregate_id!r} version None not found."
            raise AggregateNotFoundError(msg)
        if result is not aggregate and self.cache is not None:
            # Immutable aggregates come back as new objects: keep the cache current.
            self.cache.put(aggregate_id, result)
        return result

    def _use_fastforward_lock(self, aggregate_id: TAggregateID) -> threading.Lock:
        """Return the aggregate's fast-forward lock and count one more user of it."""
        with self._fastforward_locks_lock:
            lock, users = self._fastforward_locks_inuse.get(aggregate_id, (None, 0))
            if lock is None:
                try:
                    lock = self._fastforward_locks_cache.get(aggregate_id, evict=True)
                except KeyError:
                    lock = threading.Lock()
            self._fastforward_locks_inuse[aggregate_id] = (lock, users + 1)
            return lock

    def _disuse_fastforward_lock(self, aggregate_id: TAggregateID) -> None:
        """Count one user fewer; the last user moves the lock to the idle-locks cache."""
        with self._fastforward_locks_lock:
            lock, users = self._fastforward_locks_inuse[aggregate_id]
            if users > 1:
                self._fastforward_locks_inuse[aggregate_id] = (lock, users - 1)
            else:
                del self._fastforward_locks_inuse[aggregate_id]
                self._fastforward_locks_cache.put(aggregate_id, lock)


# ---------------------------------------------------------------------------
# Notification logs
# ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Section:
    """A page of a notification log.

    ``id`` is ``"first,last"`` of the notifications actually in ``items`` (None when there
    are none), and ``next_id`` names the following page when this one came back full.
    """

    id: str | None
    items: Sequence[Notification]
    next_id: str | None


class NotificationLog(ABC):
    """The total order of an application's events, read in sections or selections."""

    @abstractmethod
    def __getitem__(self, section_id: str) -> Section:
        """Return the section named ``"first,last"``."""

    @abstractmethod
    def select(
        self,
        start: int | None,
        limit: int,
        stop: int | None = None,
        topics: Sequence[str] = (),
        *,
        inclusive_of_start: bool = True,
    ) -> Sequence[Notification]:
        """Return up to ``limit`` notifications from ``start``, optionally up to ``stop``."""


class LocalNotificationLog(NotificationLog):
    """A notification log read straight from an application recorder in this process."""

    DEFAULT_SECTION_SIZE = 10

    def __init__(self, recorder: ApplicationRecorder, section_size: int = DEFAULT_SECTION_SIZE):
        """Read from ``recorder``, at most ``section_size`` notifications at a time."""
        self.recorder = recorder
        self.section_size = section_size

    def __getitem__(self, requested_section_id: str) -> Section:
        """Return the section ``"first,last"``, clipped to the log and the section size.

        The returned section is named after the notifications it actually holds, which may
        differ from the requested name near the head of the log or across gaps.
        """
        first, last = self._parse_section_id(requested_section_id)
        start = max(1, first)
        limit = min(max(0, last - start + 1), self.section_size)
        notifications = self.select(start, limit)
        if not notifications:
            return Section(id=None, items=notifications, next_id=None)
        first_id = notifications[0].id
        last_id = notifications[-1].id
        next_id = None
        if len(notifications) == limit:
            next_id = self.format_section_id(last_id + 1, last_id + limit)
        return Section(
            id=self.format_section_id(first_id, last_id), items=notifications, next_id=next_id
        )

    def select(
        self,
        start: int | None,
        limit: int,
        stop: int | None = None,
        topics: Sequence[str] = (),
        *,
        inclusive_of_start: bool = True,
    ) -> Sequence[Notification]:
        """Return up to ``limit`` notifications (no more than the section size) from ``start``.

        ``stop`` is an inclusive upper bound on the id; ``topics``, when not empty, keeps only
        notifications of those event topics.
        """
        if limit > self.section_size:
            msg = f"Requested limit {limit} greater than section size {self.section_size}"
            raise ValueError(msg)
        return self.recorder.select_notifications(
            start=start,
            limit=limit,
            stop=stop,
            topics=topics,
            inclusive_of_start=inclusive_of_start,
        )

    @staticmethod
    def format_section_id(first_id: int, last_id: int) -> str:
        """Name the section that runs from ``first_id`` to ``last_id``."""
        return f"{first_id},{last_id}"

    @staticmethod
    def _parse_section_id(section_id: str) -> tuple[int, int]:
        try:
            first, last = section_id.split(",")
            return int(first), int(last)
        except ValueError:
            msg = (
                f"Invalid section id {section_id!r}: expected two integers separated by a "
                "comma, such as '1,10'"
            )
            raise ValueError(msg) from None


# ---------------------------------------------------------------------------
# Collecting events
# ---------------------------------------------------------------------------

# Whether instances of a type are domain events (True) or aggregates (False). Deciding this
# with isinstance() against a runtime-checkable protocol is slow, and every save() asks.
_is_event_type: dict[type, bool] = {}


def _is_domain_event(obj: object) -> bool:
    cls = type(obj)
    try:
        return _is_event_type[cls]
    except KeyError:
        is_event = isinstance(obj, DomainEventProtocol)
        _is_event_type[cls] = is_event
        return is_event


class ProcessingEvent(Generic[TAggregateID]):
    """The new events of one unit of work, with the tracking record they must be stored with.

    ``tracking`` is the position in a followed log that the work processed (None for a plain
    save), ``events`` the events to record, ``aggregates`` the aggregates they came from by
    id, and ``saved_kwargs`` extra keyword arguments for the event store.
    """

    def __init__(self, tracking: Tracking | None = None):
        """Start with no events, to be recorded together with ``tracking``."""
        self.tracking = tracking
        self.events: list[DomainEventProtocol[TAggregateID]] = []
        self.aggregates: dict[TAggregateID, MutableOrImmutableAggregate] = {}
        self.saved_kwargs: dict[Any, Any] = {}

    def collect_events(
        self,
        *objs: MutableOrImmutableAggregate | DomainEventProtocol[TAggregateID] | None,
        **kwargs: Any,
    ) -> None:
        """Collect the pending events of aggregates, and bare events, for recording.

        Each item may be an aggregate (its pending events are drained), a domain event, or
        None (skipped). Keyword arguments are passed on to the event store.
        """
        events = self.events
        for obj in objs:
            if obj is None:
                continue
            if _is_domain_event(obj):
                events.append(cast("DomainEventProtocol[TAggregateID]", obj))
                continue
            aggregate = cast("MutableOrImmutableAggregate", obj)
            collect = getattr(aggregate, "collect_events", None)
            if collect is not None:
                events.extend(collect())
            self.aggregates[aggregate.id] = aggregate
        if kwargs:
            self.saved_kwargs.update(kwargs)

    def save(
        self,
        *objs: MutableOrImmutableAggregate | DomainEventProtocol[TAggregateID] | None,
        **kwargs: Any,
    ) -> None:
        """Deprecated: use :meth:`collect_events`."""
        warn(
            "'save()' is deprecated, use 'collect_events()' instead",
            DeprecationWarning,
            stacklevel=2,
        )
        self.collect_events(*objs, **kwargs)


# ---------------------------------------------------------------------------
# Application
# ---------------------------------------------------------------------------


logger = logging.getLogger(__name__)

#: The entry-point group of the module that publishes prompts for ``PROMPT_TRANSPORT``
#: (the runners package registers :mod:`runners.transports.publisher` there).
PROMPT_PUBLISHER_ENTRY_POINT_GROUP = "eventsourcing.prompt_publisher"


class PromptPublisherProtocol(Protocol):
    """What :func:`prompt_publisher_for` returns, and :meth:`Application.save` prompts
    through: it tells followers in other processes that an application has new
    notifications, without ever failing or delaying the save."""

    def publish(self, application_name: str, notification_id: int) -> None:
        """Note that ``application_name`` has notifications up to ``notification_id``."""

    def close(self) -> None:
        """Send what is pending, then release the transport."""


def prompt_publisher_for(env: Environment) -> PromptPublisherProtocol | None:
    """The one hook between the core and the prompt transports: a publisher for the
    ``PROMPT_TRANSPORT`` in ``env``, or None when it is unset (or blank).

    The value is parsed, validated and opened by the module registered in the entry-point
    group :data:`PROMPT_PUBLISHER_ENTRY_POINT_GROUP` (``runners.transports.publisher``),
    whose ``publisher_for(env)`` raises a ValueError naming the variable and the accepted
    forms for a bad value. The core never imports that module by name, and only looks it
    up when the variable is set.
    """
    if not (env.get("PROMPT_TRANSPORT") or "").strip():
        return None
    publisher: PromptPublisherProtocol | None = _prompt_publisher_module().publisher_for(env)
    return publisher


@cache
def _prompt_publisher_module() -> Any:
    from importlib.metadata import entry_points

    found = sorted(entry_points(group=PROMPT_PUBLISHER_ENTRY_POINT_GROUP), key=lambda e: e.name)
    if not found:
        msg = (
            "PROMPT_TRANSPORT is set, but no prompt publisher is installed in the entry-point "
            f"group {PROMPT_PUBLISHER_ENTRY_POINT_GROUP!r}: install eventsourcing with its "
            "runners package, or unset PROMPT_TRANSPORT"
        )
        raise ValueError(msg)
    return found[0].load()


def __getattr__(name: str) -> Any:
    """``PromptPublisher``, the runtime's publisher class, is found when first asked for
    (it lives in :mod:`runners.transports.publisher`; the core must not import it)."""
    if name == "PromptPublisher":
        return _prompt_publisher_module().PromptPublisher
    msg = f"module {__name__!r} has no attribute {name!r}"
    raise AttributeError(msg)


class Application(Generic[TAggregateID]):
    """Base class of event-sourced applications.

    Subclasses add command and query methods that use :attr:`repository` and :meth:`save`.
    Configuration comes from the environment (see :meth:`construct_env`); the class
    attributes below give defaults and switch on snapshotting.
    """

    name = "Application"
    env: ClassVar[dict[str, str]] = {}
    is_snapshotting_enabled: bool = False
    snapshotting_intervals: ClassVar[dict[type[MutableOrImmutableAggregate], int]] = {}
    snapshotting_projectors: ClassVar[
        dict[type[MutableOrImmutableAggregate], ProjectorFunction[Any, Any]]
    ] = {}
    snapshot_class: type[SnapshotProtocol] | None = None
    log_section_size = 10
    notify_topics: Sequence[str] = []

    AGGREGATE_CACHE_MAXSIZE = "AGGREGATE_CACHE_MAXSIZE"
    AGGREGATE_CACHE_FASTFORWARD = "AGGREGATE_CACHE_FASTFORWARD"
    AGGREGATE_CACHE_FASTFORWARD_SKIPPING = "AGGREGATE_CACHE_FASTFORWARD_SKIPPING"
    DEEPCOPY_FROM_AGGREGATE_CACHE = "DEEPCOPY_FROM_AGGREGATE_CACHE"

    def __init_subclass__(cls, **kwargs: Any) -> None:
        """Name each subclass after itself, unless its body sets ``name``."""
        super().__init_subclass__(**kwargs)
        if "name" not in cls.__dict__:
            cls.name = cls.__name__

    def __init__(self, env: EnvType | None = None) -> None:
        """Build the infrastructure, repository and notification log from the environment."""
        self.closing = threading.Event()
        self.env = self.construct_env(self.name, env)  # type: ignore[misc]
        self.factory = self.construct_factory(self.env)
        self.mapper: Mapper[TAggregateID] = self.construct_mapper()
        self.recorder = self.construct_recorder()
        self.events: EventStore[TAggregateID] = self.construct_event_store()
        self.snapshots: EventStore[TAggregateID] | None = None
        if self.factory.is_snapshotting_enabled():
            self.snapshots = self.construct_snapshot_store()
        self._repository = self.construct_repository()
        self._notification_log = self.construct_notification_log()
        #: Publishes prompts to other processes after each commit (None: PROMPT_TRANSPORT unset).
        self.prompt_publisher = prompt_publisher_for(self.env)

    @property
    def repository(self) -> Repository[TAggregateID]:
        """The repository that rebuilds this application's aggregates."""
        return self._repository

    @property
    def notification_log(self) -> LocalNotificationLog:
        """All of this application's events in the order they were recorded."""
        return self._notification_log

    @property
    def log(self) -> LocalNotificationLog:
        """Deprecated alias of :attr:`notification_log`."""
        warn(
            "'log' is deprecated, use 'notification_log' instead",
            DeprecationWarning,
            stacklevel=2,
        )
        return self._notification_log

    # -- construction hooks ---------------------------------------------------

    def construct_env(self, name: str, env: EnvType | None = None) -> Environment:
        """Merge the configuration: class ``env`` < ``os.environ`` < the ``env`` argument.

        Snapshotting switched on by class attributes counts as a class default. Lookups in
        the result prefer ``<NAME>_<KEY>`` over ``<KEY>``.
        """
        merged = dict(type(self).env)
        if type(self).is_snapshotting_enabled or type(self).snapshotting_intervals:
            merged["IS_SNAPSHOTTING_ENABLED"] = "y"
        merged.update(os.environ)
        if env is not None:
            merged.update(env)
        return Environment(name, merged)

    def construct_factory(self, env: Environment) -> InfrastructureFactory[TrackingRecorder]:
        """Construct the persistence module's infrastructure factory."""
        return InfrastructureFactory.construct(env)

    def construct_mapper(self) -> Mapper[TAggregateID]:
        """Construct the mapper between domain events and stored events."""
        return self.factory.mapper(transcoder=self.construct_transcoder())

    def construct_transcoder(self) -> Transcoder:
        """Construct the transcoder, registering this application's transcodings on it."""
        transcoder = self.factory.transcoder()
        if isinstance(transcoder, JSONTranscoder):
            self.register_transcodings(transcoder)
        return transcoder

    def register_transcodings(self, transcoder: JSONTranscoder) -> None:
        """Register the transcodings for UUID, Decimal and datetime values.

        Override to add transcodings for your own value types, and call super.
        """
        transcoder.register(UUIDAsHex())
        transcoder.register(DecimalAsStr())
        transcoder.register(DatetimeAsISO())

    def construct_recorder(self) -> ApplicationRecorder:
        """Construct the recorder that stores this application's events."""
        return self.factory.application_recorder()

    def construct_event_store(self) -> EventStore[TAggregateID]:
        """Construct the event store for aggregate events."""
        return self.factory.event_store(mapper=self.mapper, recorder=self.recorder)

    def construct_snapshot_store(self) -> EventStore[TAggregateID]:
        """Construct the event store for snapshots."""
        recorder = self.factory.aggregate_recorder(purpose="snapshots")
        return self.factory.event_store(mapper=self.mapper, recorder=recorder)

    def construct_repository(self) -> Repository[TAggregateID]:
        """Construct the repository, with the cache settings read from the environment."""
        return Repository(
            event_store=self.events,
            snapshot_store=self.snapshots,
            cache_maxsize=self._env_cache_maxsize(),
            fastforward=self._env_flag(self.AGGREGATE_CACHE_FASTFORWARD, "y"),
            fastforward_skipping=self._env_flag(self.AGGREGATE_CACHE_FASTFORWARD_SKIPPING, "n"),
            deepcopy_from_cache=self._env_flag(self.DEEPCOPY_FROM_AGGREGATE_CACHE, "y"),
        )

    def construct_notification_log(self) -> LocalNotificationLog:
        """Construct the notification log, with sections of ``log_section_size``."""
        return LocalNotificationLog(self.recorder, section_size=self.log_section_size)

    def _env_cache_maxsize(self) -> int | None:
        value = self.env.get(self.AGGREGATE_CACHE_MAXSIZE)
        if not value:
            return None
        try:
            return int(value)
        except ValueError:
            msg = (
                f"Invalid {self.AGGREGATE_CACHE_MAXSIZE} value {value!r}: set an integer "
                "(<= 0 for an unbounded cache), or leave it unset for no cache"
            )
            raise ValueError(msg) from None

    def _env_flag(self, key: str, default: str) -> bool:
        value = self.env.get(key, default)
        try:
            return strtobool(value)
        except ValueError:
            msg = f"Invalid {key} value {value!r}: set a truth value such as 'y' or 'n'"
            raise ValueError(msg) from None

    # -- recording ------------------------------------------------------------

    def save(
        self,
        *objs: MutableOrImmutableAggregate | DomainEventProtocol[TAggregateID] | None,
        **kwargs: Any,
    ) -> list[Recording[TAggregateID]]:
        """Record the pending events of aggregates, and bare events, atomically.

        Returns one recording per event, which carries its notification id. A version
        conflict raises ``IntegrityError`` and records nothing. Keyword arguments are passed
        on to the event store.
        """
        processing_event: ProcessingEvent[TAggregateID] = ProcessingEvent()
        processing_event.collect_events(*objs, **kwargs)
        recordings = self._record(processing_event)
        self._take_snapshots(processing_event)
        self._notify(recordings)
        self.notify(processing_event.events)  # deprecated hook, kept for subclasses
        return recordings

    def _record(
        self, processing_event: ProcessingEvent[TAggregateID]
    ) -> list[Recording[TAggregateID]]:
        """Store the collected events, with the tracking record, in one transaction."""
        recordings = self.events.put(
            processing_event.events,
            tracking=processing_event.tracking,
            **processing_event.saved_kwargs,
        )
        repository = self._repository
        cache = repository.cache
        # Without fast-forwarding, the cache is only ever refreshed by saving.
        if cache is not None and not repository.fastforward:
            for aggregate_id, aggregate in processing_event.aggregates.items():
                cache.put(aggregate_id, aggregate)
        return recordings

    def _take_snapshots(self, processing_event: ProcessingEvent[TAggregateID]) -> None:
        """Snapshot saved aggregates whose new version is a multiple of their interval."""
        intervals = self.snapshotting_intervals
        if not intervals or self.snapshots is None:
            return
        aggregates = processing_event.aggregates
        for event in processing_event.events:
            aggregate = aggregates.get(event.originator_id)
            if aggregate is None:
                continue
            interval = intervals.get(type(aggregate))
            if interval is None or event.originator_version % interval:
                continue
            self.take_snapshot(
                event.originator_id,
                version=event.originator_version,
                projector_func=self._snapshot_projector(type(aggregate), event),
            )

    def _snapshot_projector(
        self, aggregate_cls: type[Any], event: DomainEventProtocol[TAggregateID]
    ) -> ProjectorFunction[Any, Any]:
        try:
            return self.snapshotting_projectors[aggregate_cls]
        except KeyError:
            pass
        if not hasattr(event, "mutate"):
            msg = (
                f"Cannot take snapshot of {aggregate_cls} with the default projector "
                f"project_aggregate(), because its event {type(event)} has no mutate() "
                f"method. Set 'snapshotting_projectors' on {type(self)} to a dict that maps "
                f"{aggregate_cls} to a projector function for it."
            )
            raise ProgrammingError(msg)
        return project_aggregate

    def take_snapshot(
        self,
        aggregate_id: TAggregateID,
        version: int | None = None,
        projector_func: ProjectorFunction[Any, Any] = project_aggregate,
    ) -> None:
        """Snapshot the aggregate at ``version`` (default: latest) into the snapshot store."""
        if self.snapshots is None:
            msg = (
                "Can't take snapshot without snapshots store. Please "
                "set environment variable IS_SNAPSHOTTING_ENABLED to "
                "a true value (e.g. 'y'), or set 'is_snapshotting_enabled' "
                "on application class, or set 'snapshotting_intervals' on "
                "application class."
            )
            raise AssertionError(msg)
        aggregate = self.repository.get(
            aggregate_id, version=version, projector_func=projector_func
        )
        snapshot_class = getattr(type(aggregate), "Snapshot", type(self).snapshot_class)
        if snapshot_class is None:
            msg = (
                "Neither application nor aggregate have a snapshot class. Define a nested "
                f"'Snapshot' class on {type(aggregate)}, or set 'snapshot_class' on "
                f"{type(self)}."
            )
            raise AssertionError(msg)
        self.snapshots.put([snapshot_class.take(aggregate)])

    def notify(self, new_events: list[DomainEventProtocol[TAggregateID]]) -> None:
        """Deprecated hook called with the new events after each save; does nothing here."""

    def _notify(self, recordings: list[Recording[TAggregateID]]) -> None:
        """Hook called with the recordings after each commit; leaders extend it.

        Publishes a prompt to other processes when ``PROMPT_TRANSPORT`` is set.
        """
        if self.prompt_publisher is not None and recordings:
            self.prompt_publisher.publish(self.name, recordings[-1].notification.id)

    # -- lifecycle --------------------------------------------------------------

    def close(self) -> None:
        """Mark the application as closing and release its infrastructure."""
        self.closing.set()
        self.factory.close()
        publisher = getattr(self, "prompt_publisher", None)  # None if construction failed
        if publisher is not None:
            publisher.close()

    def __enter__(self) -> Self:
        """Enter the factory's context; the application closes on exit."""
        self.factory.__enter__()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc_val: BaseException | None,
        exc_tb: TracebackType | None,
    ) -> None:
        """Close the application and leave the factory's context."""
        self.close()
        self.factory.__exit__(exc_type, exc_val, exc_tb)

    def __del__(self) -> None:
        """Close on garbage collection; a half-constructed application has nothing to close."""
        with suppress(AttributeError):
            self.close()


TApplication = TypeVar("TApplication", bound=Application[Any])


# ---------------------------------------------------------------------------
# Event-sourced log
# ---------------------------------------------------------------------------


class EventSourcedLog(Generic[TDomainEvent]):
    """A sequence of events under one originator id, used without rebuilding any state.

    Useful for logs that grow without bound, for example the ids of every aggregate of a
    kind: new entries are appended by version, and read back in ranges.
    """

    def __init__(
        self,
        events: EventStore[Any],
        originator_id: UUID,
        logged_cls: type[TDomainEvent],
    ):
        """Log events of class ``logged_cls`` under ``originator_id`` in ``events``."""
        self.events = events
        self.originator_id = originator_id
        self.logged_cls = logged_cls

    def trigger_event(
        self, next_originator_version: int | None = None, **kwargs: Any
    ) -> TDomainEvent:
        """Construct (but do not save) the next logged event; pass it to ``app.save()``.

        The version defaults to the last logged version plus one, or the initial version
        when the log is empty.
        """
        return self._trigger_event(self.logged_cls, next_originator_version, **kwargs)

    def _trigger_event(
        self,
        logged_cls: type[SDomainEvent],
        next_originator_version: int | None = None,
        **kwargs: Any,
    ) -> SDomainEvent:
        if next_originator_version is None:
            last = self.get_last()
            if last is None:
                next_originator_version = Aggregate.INITIAL_VERSION
            else:
                next_originator_version = last.originator_version + 1
        return logged_cls(  # type: ignore[call-arg]
            originator_id=self.originator_id,
            originator_version=next_originator_version,
            timestamp=datetime_now_with_tzinfo(),
            **kwargs,
        )

    def get_first(self) -> TDomainEvent | None:
        """Return the first logged event, or None if the log is empty."""
        return next(self.get(limit=1), None)

    def get_last(self) -> TDomainEvent | None:
        """Return the last logged event, or None if the log is empty."""
        return next(self.get(desc=True, limit=1), None)

    def get(
        self,
        *,
        gt: int | None = None,
        lte: int | None = None,
        desc: bool = False,
        limit: int | None = None,
    ) -> Iterator[TDomainEvent]:
        """Iterate over logged events with versions in ``(gt, lte]``, in either order."""
        return cast(
            "Iterator[TDomainEvent]",
            self.events.get(
                originator_id=self.originator_id, gt=gt, lte=lte, desc=desc, limit=limit
            ),
        )
