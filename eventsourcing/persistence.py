"""Persistence: how domain events become stored records, and the seams every backend fills.

The write path is :class:`Mapper` (transcode to bytes, compress, encrypt) followed by a
recorder's ``insert_events``; the read path runs the same steps backwards. Recorders are
declared here as small ABCs (:class:`AggregateRecorder`, :class:`ApplicationRecorder`,
:class:`TrackingRecorder`, :class:`ProcessRecorder`) and implemented by ``popo``, ``sqlite``
and ``postgres``. :class:`InfrastructureFactory` picks a backend from the environment.

Errors follow PEP 249 names so that each backend can translate its driver's errors at the
seam::

    EventSourcingError (eventsourcing.domain)
     +- RecordConflictError                   legacy name, kept for old ``except`` clauses
     +- PersistenceError
     |   +- InterfaceError
     |   +- DatabaseError
     |   |   +- DataError
     |   |   +- OperationalError
     |   |   |   +- ConnectionUnavailableError   (also TimeoutError)
     |   |   +- IntegrityError                   (also RecordConflictError): version conflicts
     |   |   +- InternalError
     |   |   +- ProgrammingError                 not the domain's or application's one
     |   |   +- NotSupportedError
     |   +- WaitInterruptedError
     +- TranscodingNotRegisteredError          (also TypeError)
     +- MapperDeserialisationError             (also ValueError)
     +- InfrastructureFactoryError
     +- ConnectionPoolClosedError
     +- ConnectionNotFromPoolError
"""

from __future__ import annotations

import json
import json.decoder
import json.encoder
import json.scanner
import queue
import sys
import typing
from abc import ABC, abstractmethod
from collections import deque
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from decimal import Decimal
from json.encoder import encode_basestring
from threading import Condition, Event, Lock, Semaphore, Thread, Timer
from time import monotonic, sleep
from types import GenericAlias, ModuleType, TracebackType
from typing import Any, Generic, Self, TypeVar
from uuid import UUID

from typing_extensions import TypeVar as TypeVarWithDefault

from eventsourcing.domain import EventSourcingError, HasOriginatorIDVersion
from eventsourcing.utils import (
    Environment,
    EnvType,
    TopicError,
    get_topic,
    resolve_topic,
    strtobool,
)

__all__ = [
    "AggregateRecorder",
    "ApplicationRecorder",
    "BaseInfrastructureFactory",
    "BatchTracking",
    "Cipher",
    "Compressor",
    "Connection",
    "ConnectionNotFromPoolError",
    "ConnectionPool",
    "ConnectionPoolClosedError",
    "ConnectionUnavailableError",
    "Cursor",
    "DataError",
    "DatabaseError",
    "DatetimeAsISO",
    "DecimalAsStr",
    "EventStore",
    "InfrastructureFactory",
    "InfrastructureFactoryError",
    "IntegrityError",
    "InterfaceError",
    "InternalError",
    "JSONTranscoder",
    "ListenNotifySubscription",
    "Mapper",
    "MapperDeserialisationError",
    "NotSupportedError",
    "Notification",
    "OperationalError",
    "PersistenceError",
    "ProcessRecorder",
    "ProgrammingError",
    "Queue",
    "RecordConflictError",
    "Recorder",
    "Recording",
    "ShutDown",
    "StoredEvent",
    "Subscription",
    "Tracking",
    "TrackingRecorder",
    "Transcoder",
    "Transcoding",
    "TranscodingNotRegisteredError",
    "UUIDAsHex",
    "WaitInterruptedError",
    "find_id_convertor",
    "pass_through_convertor",
    "str_to_uuid_convertor",
]

_T = TypeVar("_T")
TAggregateID = TypeVar("TAggregateID", bound=UUID | str)
TAggregateIDType = TypeVar("TAggregateIDType", type[UUID], type[str])
# Domain events are duck-typed here: anything with originator_id, originator_version and a
# __dict__ of its other attributes (eventsourcing.domain defines the protocols).
DomainEventType = Any


# ---------------------------------------------------------------------------------------------
# Exceptions


class RecordConflictError(EventSourcingError):
    """Legacy base of :class:`IntegrityError`: a record conflicts with one already stored."""


class PersistenceError(EventSourcingError):
    """Base of the errors a recorder raises (PEP 249's ``Error``)."""


class InterfaceError(PersistenceError):
    """The database interface, not the database, failed (e.g. could not connect)."""


class DatabaseError(PersistenceError):
    """The database reported an error."""


class DataError(DatabaseError):
    """The data could not be processed (e.g. a value out of range)."""


class OperationalError(DatabaseError):
    """The database's operation failed (e.g. a missing table, a lock timeout)."""


class IntegrityError(DatabaseError, RecordConflictError):
    """A record conflicts with the stored ones, e.g. an event version that already exists."""


class InternalError(DatabaseError):
    """The database is in an inconsistent internal state."""


class ProgrammingError(DatabaseError):
    """The database was used wrongly (bad SQL, an identifier too long, a misused object)."""


class NotSupportedError(DatabaseError):
    """The database does not support the requested operation."""


class WaitInterruptedError(PersistenceError):
    """:meth:`TrackingRecorder.wait` was interrupted by its ``interrupt`` event."""


class TranscodingNotRegisteredError(EventSourcingError, TypeError):
    """No transcoding is registered for a type being encoded or a name being decoded."""


class MapperDeserialisationError(EventSourcingError, ValueError):
    """A stored event's state could not be decrypted, decompressed or decoded."""


class InfrastructureFactoryError(EventSourcingError):
    """The persistence module or factory named in the environment cannot be used."""


class ConnectionPoolClosedError(EventSourcingError):
    """A connection pool was used after it was closed."""


class ConnectionNotFromPoolError(EventSourcingError):
    """A connection was returned to a pool that did not issue it."""


class ConnectionUnavailableError(OperationalError, TimeoutError):
    """No connection could be had from a pool within the timeout."""


# ---------------------------------------------------------------------------------------------
# Queue with shutdown (Python 3.13's queue.Queue.shutdown, for 3.11 and 3.12)

if sys.version_info >= (3, 13):  # pragma: no cover
    ShutDown = queue.ShutDown
    Queue = queue.Queue
else:

    class ShutDown(Exception):
        """Raised by :meth:`Queue.put` and :meth:`Queue.get` once the queue is shut down."""

    class Queue(queue.Queue[_T]):
        """A :class:`queue.Queue` that can be shut down, as in Python 3.13."""

        def __init__(self, maxsize: int = 0) -> None:
            super().__init__(maxsize)
            self.is_shutdown = False

        def put(self, item: _T, block: bool = True, timeout: float | None = None) -> None:
            """Put ``item``, waiting for space as :meth:`queue.Queue.put`; raise ShutDown."""
            with self.not_full:
                if self.is_shutdown:
                    raise ShutDown
                if self.maxsize > 0:
                    self._wait(self.not_full, self._is_full, block, timeout, queue.Full)
                self._put(item)
                self.unfinished_tasks += 1
                self.not_empty.notify()

        def get(self, block: bool = True, timeout: float | None = None) -> _T:
            """Remove and return an item; once shut down and empty, raise ShutDown."""
            with self.not_empty:
                if self.is_shutdown and not self._qsize():
                    raise ShutDown
                self._wait(self.not_empty, self._is_empty, block, timeout, queue.Empty)
                item = self._get()
                self.not_full.notify()
                return item

        def shutdown(self, immediate: bool = False) -> None:
            """Make later puts raise ShutDown, and gets once empty (at once if immediate)."""
            with self.mutex:
                self.is_shutdown = True
                if immediate:
                    while self._qsize():
                        self._get()
                        if self.unfinished_tasks > 0:
                            self.unfinished_tasks -= 1
                    self.all_tasks_done.notify_all()
                self.not_empty.notify_all()
                self.not_full.notify_all()

        def _is_full(self) -> bool:
            return self._qsize() >= self.maxsize

        def _is_empty(self) -> bool:
            return not self._qsize()

        def _wait(
            self,
            condition: Condition,
            blocked: Callable[[], bool],
            block: bool,
            timeout: float | None,
            exc: type[Exception],
        ) -> None:
            # Wait (holding the queue's mutex) until 'blocked' is false; a shutdown wakes
            # every waiter, which then raises ShutDown instead of proceeding.
            if not block:
                if blocked():
                    raise exc
                return
            if timeout is not None and timeout < 0:
                raise ValueError(f"'timeout' must be a non-negative number, got {timeout!r}")
            deadline = None if timeout is None else monotonic() + timeout
            while blocked():
                if self.is_shutdown:
                    raise ShutDown
                remaining = None if deadline is None else deadline - monotonic()
                if remaining is not None and remaining <= 0:
                    raise exc
                condition.wait(remaining)
            if self.is_shutdown and exc is queue.Full:
                raise ShutDown


# ---------------------------------------------------------------------------------------------
# Transcoding


class Transcoding(ABC):
    """How one Python type is written as JSON-able data (``type``) under a ``name``."""

    type: type
    name: str

    @abstractmethod
    def encode(self, obj: Any) -> Any:
        """Return JSON-able data (possibly containing other registered types) for ``obj``."""

    @abstractmethod
    def decode(self, data: Any) -> Any:
        """Return the object that :meth:`encode` turned into ``data``."""


class Transcoder(ABC):
    """Turns event state into bytes and back."""

    @abstractmethod
    def encode(self, obj: Any) -> bytes:
        """Return ``obj`` as bytes."""

    @abstractmethod
    def decode(self, data: bytes) -> Any:
        """Return the object that :meth:`encode` turned into ``data``."""


_TYPE = "_type_"
_DATA = "_data_"


class JSONTranscoder(Transcoder):
    """Compact UTF-8 JSON, with ``{"_type_": name, "_data_": ...}`` for registered types.

    The stdlib's C encoder and scanner are called directly, once per value, so that no
    per-call encoder objects are built: this is on the hot path of every save and load.
    """

    def __init__(self) -> None:
        self.types: dict[type, Transcoding] = {}
        self.names: dict[str, Transcoding] = {}
        # Bound methods, looked up once: the hooks below run for every custom value.
        self._encoders: dict[type, tuple[str, Callable[[Any], Any]]] = {}
        self._decoders: dict[str, Callable[[Any], Any]] = {}
        self.encoder = json.JSONEncoder(
            default=self._encode_obj, separators=(",", ":"), ensure_ascii=False
        )
        self.decoder = json.JSONDecoder(object_hook=self._decode_obj)
        self._encode_chunks = _make_c_encoder(self._encode_obj)
        self._scan_once = _make_c_scanner(self.decoder)
        # An event's state is a dict: its fields are written one by one, the values of the
        # types below (by exact type) here, any other by the C encoder. Registered types
        # with a built-in transcoding are added: the C encoder would call back to Python
        # for each and encode the dict it returns, which costs more than writing it here.
        self._writers: dict[type, Callable[[Any], str]] = {
            str: encode_basestring,
            int: int.__repr__,
            bool: _write_bool,
            type(None): _write_null,
        }
        self._field_prefixes: dict[str, str] = {}

    def register(self, transcoding: Transcoding) -> None:
        """Use ``transcoding`` for values of exactly its ``type`` and data under its ``name``."""
        self.types[transcoding.type] = transcoding
        self.names[transcoding.name] = transcoding
        # The built-in transcodings' methods only call a C function: call it directly.
        encode, decode = _BUILTIN_CODECS.get(
            type(transcoding), (transcoding.encode, transcoding.decode)
        )
        self._encoders[transcoding.type] = (transcoding.name, encode)
        self._decoders[transcoding.name] = decode
        if transcoding.type not in _JSON_TYPES:  # JSON's own types never reach a transcoding
            self._writers.pop(transcoding.type, None)
            if type(transcoding) in _BUILTIN_CODECS:  # their data is always a str
                self._writers[transcoding.type] = _tagged_str_writer(transcoding.name, encode)

    def encode(self, obj: Any) -> bytes:
        """Return ``obj`` as compact UTF-8 JSON (non-ASCII characters are written raw)."""
        if self._encode_chunks is None:  # pragma: no cover (no C accelerator)
            return self.encoder.encode(obj).encode("utf8")
        if type(obj) is dict:
            return self._encode_fields(obj)
        return "".join(self._encode_chunks(obj, 0)).encode("utf8")

    def _encode_fields(self, obj: dict[Any, Any]) -> bytes:
        """``obj`` written field by field: the same bytes as the C encoder writes."""
        assert self._encode_chunks is not None
        chunks, writers, prefixes = self._encode_chunks, self._writers, self._field_prefixes
        members = []
        for key, value in obj.items():
            prefix = prefixes.get(key)
            if prefix is None:
                if type(key) is not str:  # the C encoder converts or refuses other keys
                    return "".join(chunks(obj, 0)).encode("utf8")
                prefix = encode_basestring(key) + ":"
                if len(prefixes) < _MAX_FIELD_PREFIXES:
                    prefixes[key] = prefix
            write = writers.get(type(value))
            members.append(prefix + (write(value) if write else "".join(chunks(value, 0))))
        return ("{" + ",".join(members) + "}").encode("utf8")

    def decode(self, data: bytes) -> Any:
        """Return the object encoded in ``data``, rebuilding registered types."""
        text = data.decode("utf8")
        if self._scan_once is not None:
            try:
                obj, end = self._scan_once(text, 0)
            except StopIteration:
                pass  # not JSON at index 0: let the full decoder say why
            else:
                if end == len(text):
                    return obj
        return self.decoder.decode(text)

    def _encode_obj(self, obj: Any) -> dict[str, Any]:
        try:
            name, encode = self._encoders[type(obj)]
        except KeyError:
            raise TranscodingNotRegisteredError(
                f"Object of type {type(obj)} is not serializable. Please define and "
                "register a custom transcoding for this type."
            ) from None
        return {_TYPE: name, _DATA: encode(obj)}

    def _decode_obj(self, d: dict[str, Any]) -> Any:
        if len(d) != 2 or _TYPE not in d or _DATA not in d:
            return d
        try:
            decode = self._decoders[d[_TYPE]]
        except (KeyError, TypeError):
            raise TranscodingNotRegisteredError(
                f"Data serialized with name '{d[_TYPE]}' is not deserializable. Please "
                "register a custom transcoding for this type."
            ) from None
        return decode(d[_DATA])


_JSON_TYPES = frozenset({str, int, float, bool, type(None), dict, list, tuple})
# Field names are few (an application's event attributes); any beyond this aren't kept.
_MAX_FIELD_PREFIXES = 10_000


def _write_bool(value: bool) -> str:
    return "true" if value else "false"


def _write_null(value: None) -> str:
    return "null"


def _tagged_str_writer(name: str, encode: Callable[[Any], str]) -> Callable[[Any], str]:
    """A writer of ``{"_type_": name, "_data_": encode(value)}``, as the C encoder writes it."""
    head = "{" + encode_basestring(_TYPE) + ":" + encode_basestring(name)
    head += "," + encode_basestring(_DATA) + ":"

    def write(value: Any) -> str:
        return head + encode_basestring(encode(value)) + "}"

    return write


def _make_c_encoder(default: Callable[[Any], Any]) -> Callable[[Any, int], Any] | None:
    """Return the C JSON encoder configured like ours, or None if it is unavailable."""
    make = getattr(json.encoder, "c_make_encoder", None)
    if make is None:  # pragma: no cover
        return None
    # markers=None skips the circular-reference check: event state is never circular, and
    # a shared markers dict would not be thread-safe.
    encoder: Callable[[Any, int], Any] = make(
        None, default, json.encoder.encode_basestring, None, ":", ",", False, False, True
    )
    return encoder


def _make_c_scanner(decoder: json.JSONDecoder) -> Callable[[str, int], Any] | None:
    """Return the C JSON scanner for ``decoder``, or None if it is unavailable."""
    make = getattr(json.scanner, "c_make_scanner", None)
    if make is None:  # pragma: no cover
        return None
    scanner: Callable[[str, int], Any] = make(decoder)
    return scanner


class UUIDAsHex(Transcoding):
    """Writes a :class:`~uuid.UUID` as its 32-character hex string."""

    type = UUID
    name = "uuid_hex"

    def encode(self, obj: UUID) -> str:
        """Return the UUID's hex string (no dashes)."""
        return obj.hex

    def decode(self, data: str) -> UUID:
        """Return the UUID of a hex string."""
        return UUID(data)


class DecimalAsStr(Transcoding):
    """Writes a :class:`~decimal.Decimal` as its exact string form."""

    type = Decimal
    name = "decimal_str"

    def encode(self, obj: Decimal) -> str:
        """Return ``str(obj)``, which keeps trailing zeros."""
        return str(obj)

    def decode(self, data: str) -> Decimal:
        """Return the Decimal of a string."""
        return Decimal(data)


class DatetimeAsISO(Transcoding):
    """Writes a :class:`~datetime.datetime` in ISO 8601 format, keeping its timezone."""

    type = datetime
    name = "datetime_iso"

    def encode(self, obj: datetime) -> str:
        """Return ``obj.isoformat()``."""
        return obj.isoformat()

    def decode(self, data: str) -> datetime:
        """Return the datetime of an ISO 8601 string."""
        return datetime.fromisoformat(data)


_THREE_DIGITS = [f"{i:03d}" for i in range(1000)]
# The last second formatted: (date and time to the second; tzinfo; the text before
# and after the microseconds).
_iso_second: tuple[Any, Any, str, str] = (b"", None, "", "")


def _isoformat(dt: datetime) -> str:
    """Return ``dt.isoformat()``, formatting each second's date, time and offset once.

    ``isoformat()`` costs about twice this: events are stamped microseconds apart, so
    consecutive ones share all but the microseconds, which are looked up, not formatted.
    """
    global _iso_second  # one tuple, replaced whole: safe between threads
    args = dt.__reduce__()[1]  # (10 bytes: year to second, then microseconds[, tzinfo])
    second = args[0][:7]
    tzinfo = args[1] if len(args) > 1 else None
    cached = _iso_second
    if second == cached[0] and tzinfo is cached[1]:
        us = dt.microsecond
        if us:
            return f"{cached[2]}{_THREE_DIGITS[us // 1000]}{_THREE_DIGITS[us % 1000]}{cached[3]}"
        return f"{cached[2][:-1]}{cached[3]}"
    text = dt.isoformat()
    # Only fixed offsets are cached: another tzinfo's offset may depend on anything.
    if dt.microsecond and (tzinfo is None or type(tzinfo) is timezone):
        _iso_second = (second, tzinfo, text[:20], text[26:])
    return text


_BUILTIN_CODECS: dict[type[Transcoding], tuple[Callable[[Any], Any], Callable[[Any], Any]]] = {
    DatetimeAsISO: (_isoformat, datetime.fromisoformat),
    DecimalAsStr: (str, Decimal),
    UUIDAsHex: (UUIDAsHex().encode, UUID),
}


# ---------------------------------------------------------------------------------------------
# Value objects
#
# Slotted, so each is one object for the garbage collector to track rather than two (object
# and __dict__): a save of a thousand events otherwise sets off full collections that cost
# more than the save. The hand-written __init__ methods skip the generated ones' checks, and
# set the frozen fields through the slots' own setters (object.__setattr__ would look each
# name up in the class first, at a cost like the rest of the __init__ together).


def _slot_setter(cls: type, name: str) -> Callable[[Any, Any], None]:
    """The setter of ``cls``'s slot ``name`` (it sets a frozen dataclass's field)."""
    setter: Callable[[Any, Any], None] = cls.__dict__[name].__set__
    return setter


@dataclass(frozen=True, slots=True, init=False)
class StoredEvent:
    """A domain event as a recorder stores it: id, version, topic and encoded state."""

    originator_id: UUID | str
    originator_version: int
    topic: str
    state: bytes

    def __init__(
        self, originator_id: UUID | str, originator_version: int, topic: str, state: bytes
    ) -> None:
        _set_originator_id(self, originator_id)
        _set_originator_version(self, originator_version)
        _set_topic(self, topic)
        _set_state(self, state)


_new = object.__new__
_set_originator_id = _slot_setter(StoredEvent, "originator_id")
_set_originator_version = _slot_setter(StoredEvent, "originator_version")
_set_topic = _slot_setter(StoredEvent, "topic")
_set_state = _slot_setter(StoredEvent, "state")


@dataclass(frozen=True, slots=True, init=False)
class Notification(StoredEvent):
    """A stored event in an application's total order; ``id`` is its position (from 1)."""

    id: int

    def __init__(
        self,
        originator_id: UUID | str,
        originator_version: int,
        topic: str,
        state: bytes,
        id: int,
    ) -> None:
        _set_originator_id(self, originator_id)
        _set_originator_version(self, originator_version)
        _set_topic(self, topic)
        _set_state(self, state)
        _set_id(self, id)


_set_id = _slot_setter(Notification, "id")


@dataclass(frozen=True, slots=True, init=False)
class Tracking:
    """The position (notification id) up to which an upstream application was processed.

    Recording it is a compare-and-set: it is refused (:class:`IntegrityError`) unless the
    recorded position is still before :meth:`first_notification_id`. For one notification
    that is the rule of ``eventsourcing`` 9.x, "only forwards".
    """

    application_name: str
    notification_id: int

    def __init__(self, application_name: str, notification_id: int) -> None:
        _set_application_name(self, application_name)
        _set_notification_id(self, notification_id)

    def first_notification_id(self) -> int:
        """The first notification this record covers; none of them may be recorded yet."""
        return self.notification_id

    def notification_ids(self) -> tuple[int, ...]:
        """The notifications this record covers: one row each in a multi-row table."""
        return (self.notification_id,)


_set_application_name = _slot_setter(Tracking, "application_name")
_set_notification_id = _slot_setter(Tracking, "notification_id")


@dataclass(frozen=True, slots=True)
class BatchTracking(Tracking):
    """The position after a batch of notifications processed in one transaction.

    ``processed_ids`` are the ids of the batch's notifications, in order (``notification_id``
    may lie beyond the last, past notifications of other topics). The record is refused if
    any position from the batch's first notification on is recorded already: so when two
    processes work on one follower, a batch overlapping one the other recorded is refused
    as a whole, and nothing is processed twice (9.5.6 difference: tracking compare-and-set).
    """

    processed_ids: tuple[int, ...] = ()

    def first_notification_id(self) -> int:
        """The batch's first notification (the position itself, for an empty batch)."""
        return self.processed_ids[0] if self.processed_ids else self.notification_id

    def notification_ids(self) -> tuple[int, ...]:
        """The batch's notifications, and the position itself if it lies beyond them."""
        ids = self.processed_ids
        if not ids or ids[-1] != self.notification_id:
            ids = (*ids, self.notification_id)
        return ids


@dataclass(frozen=True, slots=True, init=False)
class Recording(Generic[TAggregateID]):
    """A saved domain event together with the notification it became."""

    domain_event: DomainEventType
    notification: Notification

    def __init__(self, domain_event: DomainEventType, notification: Notification) -> None:
        _set_domain_event(self, domain_event)
        _set_notification(self, notification)


_set_domain_event = _slot_setter(Recording, "domain_event")
_set_notification = _slot_setter(Recording, "notification")


class _SavedRecording(Recording[TAggregateID]):
    """A recording that makes its notification when first asked: ``save()`` returns one per
    event, and most callers never look at the notification."""

    __slots__ = ("_notification", "_stored_event")
    _notification: int | Notification  # its id until it is made
    _stored_event: StoredEvent

    def __init__(
        self, domain_event: DomainEventType, stored_event: StoredEvent, notification_id: int
    ) -> None:
        _set_domain_event(self, domain_event)
        _set_saved_event(self, stored_event)
        _set_saved_notification(self, notification_id)

    @property
    def notification(self) -> Notification:
        """The notification the event became (made on first use)."""
        # Not kept in the inherited slot: finding that empty raises an AttributeError,
        # whose message alone costs more than the rest of this.
        notification = self._notification
        if isinstance(notification, Notification):
            return notification
        s = self._stored_event
        made = Notification(s.originator_id, s.originator_version, s.topic, s.state, notification)
        _set_saved_notification(self, made)
        return made

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Recording):
            return NotImplemented
        return (self.domain_event, self.notification) == (other.domain_event, other.notification)

    __hash__ = Recording.__hash__

    def __repr__(self) -> str:
        return f"Recording(domain_event={self.domain_event!r}, notification={self.notification!r})"

    def __reduce__(self) -> tuple[Any, ...]:
        # Copied or pickled, it is a plain Recording.
        return Recording, (self.domain_event, self.notification)


_set_saved_event = _slot_setter(_SavedRecording, "_stored_event")
_set_saved_notification = _slot_setter(_SavedRecording, "_notification")


# ---------------------------------------------------------------------------------------------
# Compression and encryption


class Compressor(ABC):
    """Compresses stored state; any object with these two methods will do (even ``zlib``)."""

    @abstractmethod
    def compress(self, data: bytes) -> bytes:
        """Return ``data`` compressed."""

    @abstractmethod
    def decompress(self, data: bytes) -> bytes:
        """Return the bytes that :meth:`compress` turned into ``data``."""


class Cipher(ABC):
    """Encrypts stored state with a key read from the application's environment."""

    @abstractmethod
    def __init__(self, environment: Environment):
        """Read the key (and any other settings) from ``environment``."""

    @abstractmethod
    def encrypt(self, plaintext: bytes) -> bytes:
        """Return ``plaintext`` encrypted."""

    @abstractmethod
    def decrypt(self, ciphertext: bytes) -> bytes:
        """Return the plaintext of ``ciphertext``; raise ValueError if it is damaged."""


# ---------------------------------------------------------------------------------------------
# Mapper


class Mapper(Generic[TAggregateID]):
    """Converts domain events to :class:`StoredEvent` objects and back.

    Writing: transcode the event's state, then compress, then encrypt. Reading does the
    reverse, converts the originator id to the event class's id type, upcasts old versions
    of the state, and rebuilds the event without calling ``__init__``.
    """

    def __init__(
        self,
        transcoder: Transcoder,
        compressor: Compressor | None = None,
        cipher: Cipher | None = None,
    ):
        self.transcoder = transcoder
        self.compressor = compressor
        self.cipher = cipher
        # Per event class: its topic and class version (a missing class_version attribute
        # costs an AttributeError to find out, on every event otherwise).
        self._classes: dict[type, tuple[str, int]] = {}

    def to_stored_event(self, domain_event: DomainEventType) -> StoredEvent:
        """Return ``domain_event`` as a stored event."""
        return self._encode_events((domain_event,))[0]

    def _to_stored_events(self, domain_events: Sequence[DomainEventType]) -> list[StoredEvent]:
        """Return ``domain_events`` as stored events, in order (as :meth:`to_stored_event`)."""
        if type(self).to_stored_event is not Mapper.to_stored_event:
            return [self.to_stored_event(e) for e in domain_events]  # a subclass's own way
        return self._encode_events(domain_events)

    def _encode_events(self, domain_events: Sequence[DomainEventType]) -> list[StoredEvent]:
        # One loop for the batch: a save of many events pays no call per event for this.
        classes = self._classes
        encode = self.transcoder.encode
        compressor, cipher = self.compressor, self.cipher
        stored_events = []
        for domain_event in domain_events:
            cls = type(domain_event)
            try:
                topic, class_version = classes[cls]
            except KeyError:
                topic, class_version = classes[cls] = self._class_info(cls)
            state = domain_event.__dict__.copy()
            originator_id = state.pop("originator_id")
            originator_version = state.pop("originator_version")
            if class_version > 1:
                state["class_version"] = class_version
            data = encode(state)
            if compressor is not None:
                data = compressor.compress(data)
            if cipher is not None:
                data = cipher.encrypt(data)
            # Built as StoredEvent.__init__ does, without the call to it.
            stored_event = _new(StoredEvent)
            _set_originator_id(stored_event, originator_id)
            _set_originator_version(stored_event, originator_version)
            _set_topic(stored_event, topic)
            _set_state(stored_event, data)
            stored_events.append(stored_event)
        return stored_events

    @staticmethod
    def _class_info(cls: type) -> tuple[str, int]:
        return get_topic(cls), getattr(cls, "class_version", 1)

    def to_domain_event(self, stored_event: StoredEvent) -> DomainEventType:
        """Return the domain event that ``stored_event`` records."""
        # Resolved on every call (a dict lookup): tests and deployments re-register topics
        # to new classes while an application is running.
        cls = resolve_topic(stored_event.topic)
        data = stored_event.state
        try:
            if self.cipher is not None:
                data = self.cipher.decrypt(data)
            if self.compressor is not None:
                data = self.compressor.decompress(data)
            state: dict[str, Any] = self.transcoder.decode(data)
        except Exception as e:
            raise _deserialisation_error(stored_event, e) from e
        originator_id = stored_event.originator_id
        key = (cls, type(originator_id))
        convertor = _id_convertors.get(key) or find_id_convertor(*key)
        if convertor is not pass_through_convertor:
            originator_id = convertor(originator_id)
        state["originator_id"] = originator_id
        state["originator_version"] = stored_event.originator_version
        info = self._classes.get(cls) or self._classes.setdefault(cls, self._class_info(cls))
        if "class_version" in state or info[1] > 1:
            _upcast(cls, state)
        domain_event = object.__new__(cls)
        object.__setattr__(domain_event, "__dict__", state)
        return domain_event


def _deserialisation_error(stored_event: StoredEvent, error: Exception) -> Exception:
    return MapperDeserialisationError(
        f"Failed to deserialise state of stored event with topic '{stored_event.topic}', "
        f"originator_id '{stored_event.originator_id}' and originator_version "
        f"{stored_event.originator_version}: {error} (check that the cipher key and "
        "compressor match those used to write it)"
    )


def _upcast(cls: type[Any], state: dict[str, Any]) -> None:
    """Bring ``state`` from its stored class version to ``cls.class_version`` (in place)."""
    class_version = getattr(cls, "class_version", 1)
    from_version = state.pop("class_version", 1)
    while from_version < class_version:
        getattr(cls, f"upcast_v{from_version}_v{from_version + 1}")(state)
        from_version += 1


IDConvertor = Callable[[UUID | str], UUID | str]

_ID_ANNOTATIONS: dict[Any, type[UUID] | type[str]] = {
    UUID: UUID,
    str: str,
    "UUID": UUID,
    "uuid.UUID": UUID,
    "str": str,
}


_id_convertors: dict[tuple[type[Any], type[Any]], IDConvertor] = {}


def find_id_convertor(domain_event_cls: type[Any], originator_id_cls: type[Any]) -> IDConvertor:
    """Return the function that turns a stored originator id into the event class's id type.

    Only a ``str`` stored for a class whose ids are UUIDs needs converting. Results are
    cached per pair of classes.
    """
    key = (domain_event_cls, originator_id_cls)
    try:
        return _id_convertors[key]
    except KeyError:
        pass
    id_type = _find_originator_id_type(domain_event_cls)  # raises if the class is unusable
    if originator_id_cls is str and id_type is UUID:
        convertor = str_to_uuid_convertor
    else:
        convertor = pass_through_convertor
    _id_convertors[key] = convertor
    return convertor


def _find_originator_id_type(cls: type[Any]) -> type[UUID] | type[str]:
    if issubclass(cls, HasOriginatorIDVersion):
        id_type = cls.originator_id_type
        if id_type is None:
            raise TypeError(
                f"originator_id_type cannot be None (on {cls}): parametrise its base with "
                "the id type, e.g. CanMutateAggregate[UUID] or CanMutateAggregate[str]"
            )
        return id_type
    for base in cls.__mro__:
        annotation = vars(base).get("__annotations__", {}).get("originator_id")
        if annotation is None:
            continue
        try:
            return _ID_ANNOTATIONS[annotation]
        except (KeyError, TypeError):
            raise TypeError(
                f"originator_id annotation on {base} is not either UUID or str: "
                f"{annotation!r} (annotate it as UUID or str)"
            ) from None
    raise TypeError(
        f"Neither event class {cls} nor its bases have an originator_id annotation: "
        "annotate originator_id as UUID or str"
    )


def str_to_uuid_convertor(originator_id: UUID | str) -> UUID | str:
    """Return the UUID of a stored string id."""
    assert isinstance(originator_id, str)
    return UUID(originator_id)


def pass_through_convertor(originator_id: UUID | str) -> UUID | str:
    """Return the stored id unchanged."""
    return originator_id


# ---------------------------------------------------------------------------------------------
# Recorders


class Recorder:
    """Base of every recorder."""


class AggregateRecorder(Recorder, ABC):
    """Stores the events of aggregates, each in its own sequence of versions."""

    @abstractmethod
    def insert_events(
        self, stored_events: Sequence[StoredEvent], **kwargs: Any
    ) -> Sequence[int] | None:
        """Store all of ``stored_events`` or none of them.

        Raise :class:`IntegrityError` if any (originator_id, originator_version) is taken.
        Application recorders return the new notification ids; this one returns None.
        """

    @abstractmethod
    def select_events(
        self,
        originator_id: UUID | str,
        *,
        gt: int | None = None,
        lte: int | None = None,
        desc: bool = False,
        limit: int | None = None,
    ) -> Sequence[StoredEvent]:
        """Return one aggregate's events with ``gt < version <= lte``, ordered by version.

        ``desc`` reverses the order before ``limit`` applies, so ``desc=True, limit=1``
        gives the latest event.
        """


class ApplicationRecorder(AggregateRecorder):
    """Also keeps all events of an application in one total order of notification ids."""

    @abstractmethod
    def select_notifications(
        self,
        start: int | None,
        limit: int,
        stop: int | None = None,
        topics: Sequence[str] = (),
        *,
        inclusive_of_start: bool = True,
    ) -> Sequence[Notification]:
        """Return up to ``limit`` notifications from ``start`` to ``stop`` (inclusive).

        ``start=None`` means from the beginning; ``inclusive_of_start=False`` excludes the
        ``start`` id; non-empty ``topics`` keeps only those topics (before ``limit``).
        """

    @abstractmethod
    def max_notification_id(self) -> int | None:
        """Return the highest notification id, or None if nothing has been stored."""

    @abstractmethod
    def subscribe(
        self, gt: int | None = None, topics: Sequence[str] = ()
    ) -> Subscription[ApplicationRecorder]:
        """Return a blocking iterator of notifications with ids greater than ``gt``."""


class TrackingRecorder(Recorder, ABC):
    """Records how far a follower has processed each upstream application."""

    @abstractmethod
    def insert_tracking(self, tracking: Tracking) -> None:
        """Record ``tracking``; raise :class:`IntegrityError` unless it moves forwards."""

    @abstractmethod
    def max_tracking_id(self, application_name: str) -> int | None:
        """Return the highest notification id recorded for ``application_name``, or None."""

    def has_tracking_id(self, application_name: str, notification_id: int | None) -> bool:
        """Return True if ``notification_id`` is None or has been reached."""
        if notification_id is None:
            return True
        max_id = self.max_tracking_id(application_name)
        return max_id is not None and max_id >= notification_id

    def wait(
        self,
        application_name: str,
        notification_id: int | None,
        timeout: float = 1.0,
        interrupt: Event | None = None,
    ) -> None:
        """Block until ``notification_id`` of ``application_name`` has been processed.

        Polls with exponential back-off (0.1 s doubling to 0.8 s). Raises TimeoutError
        after ``timeout`` seconds and :class:`WaitInterruptedError` if ``interrupt`` is set.
        """
        deadline = monotonic() + timeout
        interval = 0.1
        while not self.has_tracking_id(application_name, notification_id):
            if interrupt is None:
                sleep(interval)
            elif interrupt.wait(timeout=interval):
                raise WaitInterruptedError(
                    f"Interrupted waiting for notification {notification_id} from "
                    f"application '{application_name}' to be processed"
                )
            remaining = deadline - monotonic()
            if remaining < 0:
                raise TimeoutError(
                    f"Timed out waiting for notification {notification_id} from "
                    f"application '{application_name}' to be processed "
                    f"(timeout={timeout}s; pass a longer timeout to wait longer)"
                )
            interval = min(interval * 2, remaining, 0.8)


class ProcessRecorder(TrackingRecorder, ApplicationRecorder, ABC):
    """Records new events and a tracking position in one transaction.

    ``insert_events(stored_events, tracking=Tracking(...))`` writes both or neither.
    """


# ---------------------------------------------------------------------------------------------
# Event store


class EventStore(Generic[TAggregateID]):
    """Stores and retrieves domain events, through a mapper and a recorder."""

    def __init__(self, mapper: Mapper[TAggregateID], recorder: AggregateRecorder):
        self.mapper = mapper
        self.recorder = recorder

    def put(
        self, domain_events: Sequence[DomainEventType], **kwargs: Any
    ) -> list[Recording[TAggregateID]]:
        """Store ``domain_events`` atomically; return their recordings (if ids were issued).

        Keyword arguments such as ``tracking=`` are passed on to the recorder.
        """
        mapper = self.mapper
        if isinstance(mapper, Mapper):
            stored_events = mapper._to_stored_events(domain_events)
        else:  # any object with the mapper's methods will do
            stored_events = [mapper.to_stored_event(e) for e in domain_events]
        ids = self.recorder.insert_events(stored_events, **kwargs)
        if ids is None:
            return []
        return list(map(_SavedRecording, domain_events, stored_events, ids))

    def get(
        self,
        originator_id: TAggregateID,
        *,
        gt: int | None = None,
        lte: int | None = None,
        desc: bool = False,
        limit: int | None = None,
    ) -> Iterator[DomainEventType]:
        """Return the events of ``originator_id`` (see :meth:`AggregateRecorder.select_events`)."""
        stored_events = self.recorder.select_events(
            originator_id, gt=gt, lte=lte, desc=desc, limit=limit
        )
        return map(self.mapper.to_domain_event, stored_events)


# ---------------------------------------------------------------------------------------------
# Infrastructure factories

TTrackingRecorder = TypeVarWithDefault(
    "TTrackingRecorder", bound=TrackingRecorder, default=TrackingRecorder
)

_R = TypeVar("_R", bound=Recorder)

_DEFAULT_PERSISTENCE_MODULE = "eventsourcing.popo"
_DEFAULT_CIPHER_TOPIC = "eventsourcing.cipher:AESCipher"


class BaseInfrastructureFactory(ABC, Generic[TTrackingRecorder]):
    """Builds the persistence objects an application needs, configured by its environment.

    The environment is kept by reference and read when each object is built, so changing
    ``factory.env`` after construction changes what later calls build.
    """

    PERSISTENCE_MODULE = "PERSISTENCE_MODULE"
    TRANSCODER_TOPIC = "TRANSCODER_TOPIC"
    CIPHER_TOPIC = "CIPHER_TOPIC"
    COMPRESSOR_TOPIC = "COMPRESSOR_TOPIC"

    def __init__(self, env: Environment | EnvType | None):
        self.env = env if isinstance(env, Environment) else Environment(env=env)

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc_val: BaseException | None,
        exc_tb: TracebackType | None,
    ) -> None:
        self.close()

    def close(self) -> None:
        """Release connections and other resources (nothing to do here)."""

    @classmethod
    def construct(cls, env: Environment | EnvType | None = None) -> Self:
        """Return the factory named by ``PERSISTENCE_MODULE`` (default: POPO), built with env.

        The topic may name a module holding exactly one factory class, or a factory class.
        """
        if not isinstance(env, Environment):
            env = Environment(env=env)
        topic = (
            env.get(cls.PERSISTENCE_MODULE, "")
            or env.get("INFRASTRUCTURE_FACTORY", "")  # legacy name
            or env.get("FACTORY_TOPIC", "")  # legacy name
            or _DEFAULT_PERSISTENCE_MODULE
        )
        try:
            obj = resolve_topic(topic)
        except TopicError as e:
            raise InfrastructureFactoryError(
                f"Failed to resolve persistence module topic: '{topic}' from environment "
                f"variable '{cls.PERSISTENCE_MODULE}'"
            ) from e
        if isinstance(obj, ModuleType):
            factory_cls = cls._find_factory_class(obj, topic)
        elif isinstance(obj, type) and issubclass(obj, cls):
            factory_cls = obj
        else:
            raise InfrastructureFactoryError(
                f"Topic '{topic}' didn't resolve to a persistence module or infrastructure "
                f"factory class: {obj}"
            )
        return factory_cls(env=env)

    @classmethod
    def _find_factory_class(cls, module: ModuleType, topic: str) -> type[Self]:
        found = {
            member
            for member in vars(module).values()
            if isinstance(member, type)
            and not isinstance(member, GenericAlias)
            and issubclass(member, cls)
            and not getattr(member, "__parameters__", None)
        }
        if len(found) != 1:
            raise InfrastructureFactoryError(
                f"Found {len(found)} infrastructure factory classes in '{topic}', expected 1."
            )
        return found.pop()

    def transcoder(self) -> Transcoder:
        """Return a new transcoder: ``TRANSCODER_TOPIC``'s class, else a JSONTranscoder."""
        topic = self.env.get(self.TRANSCODER_TOPIC)
        transcoder_cls: type[Transcoder] = resolve_topic(topic) if topic else JSONTranscoder
        return transcoder_cls()

    def cipher(self) -> Cipher | None:
        """Return a cipher if ``CIPHER_TOPIC`` or ``CIPHER_KEY`` is set, else None."""
        topic = self.env.get(self.CIPHER_TOPIC)
        if not topic and self.env.get("CIPHER_KEY"):
            topic = _DEFAULT_CIPHER_TOPIC
        if not topic:
            return None
        cipher_cls: type[Cipher] = resolve_topic(topic)
        return cipher_cls(self.env)

    def compressor(self) -> Compressor | None:
        """Return the compressor named by ``COMPRESSOR_TOPIC`` (a class or e.g. ``zlib``)."""
        topic = self.env.get(self.COMPRESSOR_TOPIC)
        if not topic:
            return None
        obj = resolve_topic(topic)
        compressor: Compressor = obj() if isinstance(obj, type) else obj
        return compressor


class InfrastructureFactory(BaseInfrastructureFactory[TTrackingRecorder]):
    """A factory of mappers, event stores and the four kinds of recorder."""

    MAPPER_TOPIC = "MAPPER_TOPIC"
    IS_SNAPSHOTTING_ENABLED = "IS_SNAPSHOTTING_ENABLED"
    APPLICATION_RECORDER_TOPIC = "APPLICATION_RECORDER_TOPIC"
    TRACKING_RECORDER_TOPIC = "TRACKING_RECORDER_TOPIC"
    PROCESS_RECORDER_TOPIC = "PROCESS_RECORDER_TOPIC"

    def mapper(
        self,
        transcoder: Transcoder | None = None,
        mapper_class: type[Mapper[Any]] | None = None,
    ) -> Mapper[Any]:
        """Return a mapper (class from the argument, ``MAPPER_TOPIC``, or Mapper).

        Its cipher and compressor come from the environment as it is now.
        """
        if mapper_class is None:
            topic = self.env.get(self.MAPPER_TOPIC)
            mapper_class = resolve_topic(topic) if topic else Mapper
        origin = typing.get_origin(mapper_class) or mapper_class
        if not (isinstance(origin, type) and issubclass(origin, Mapper)):
            raise InfrastructureFactoryError(
                f"Mapper class {mapper_class!r} (from argument or environment variable "
                f"'{self.MAPPER_TOPIC}') is not a subclass of {Mapper}"
            )
        assert mapper_class is not None
        return mapper_class(
            transcoder=transcoder or self.transcoder(),
            cipher=self.cipher(),
            compressor=self.compressor(),
        )

    def event_store(
        self,
        mapper: Mapper[Any] | None = None,
        recorder: AggregateRecorder | None = None,
    ) -> EventStore[Any]:
        """Return an event store (by default with a new mapper and application recorder)."""
        return EventStore(
            mapper=mapper or self.mapper(),
            recorder=recorder or self.application_recorder(),
        )

    @abstractmethod
    def aggregate_recorder(self, purpose: str = "events") -> AggregateRecorder:
        """Return an aggregate recorder; ``purpose="snapshots"`` for the snapshot store."""

    @abstractmethod
    def application_recorder(self) -> ApplicationRecorder:
        """Return an application recorder."""

    @abstractmethod
    def tracking_recorder(
        self, tracking_recorder_class: type[TTrackingRecorder] | None = None
    ) -> TTrackingRecorder:
        """Return a tracking recorder (of the given class, if given)."""

    @abstractmethod
    def process_recorder(self) -> ProcessRecorder:
        """Return a process recorder."""

    def is_snapshotting_enabled(self) -> bool:
        """Return the truth value of ``IS_SNAPSHOTTING_ENABLED`` (default no)."""
        return strtobool(self.env.get(self.IS_SNAPSHOTTING_ENABLED, "no"))

    def _recorder_class(
        self, key: str, base: type[_R], default: type[_R], given: type[_R] | None = None
    ) -> type[_R]:
        """Return ``given``, else the class the topic in ``key`` names, else ``default``.

        Whichever it is must subclass ``base``: recorders of another back end, or of
        another kind, would fail later and less clearly.
        """
        topic = None if given is not None else self.env.get(key)
        cls = given if given is not None else resolve_topic(topic) if topic else default
        if not (isinstance(cls, type) and issubclass(cls, base)):
            source = "the argument" if given is not None else f"environment variable {key!r}"
            raise InfrastructureFactoryError(
                f"{cls!r} (from {source}) is not a subclass of {base.__qualname__}: "
                f"give a subclass of {base.__qualname__}"
            )
        return cls


# ---------------------------------------------------------------------------------------------
# Connections and connection pooling (used by the SQLite backend)

Params = Sequence[Any] | Mapping[str, Any]


class Cursor(ABC):
    """A database cursor."""

    @abstractmethod
    def execute(self, statement: str | bytes, params: Params | None = None) -> None:
        """Execute ``statement`` with ``params``."""

    @abstractmethod
    def fetchall(self) -> Any:
        """Return all remaining rows."""

    @abstractmethod
    def fetchone(self) -> Any:
        """Return the next row, or None."""


TCursor = TypeVar("TCursor", bound=Cursor)


class Connection(ABC, Generic[TCursor]):
    """A pooled database connection.

    ``in_use`` is acquired from construction until the pool takes the connection back, so
    the max-age timer (when ``max_age`` is set) can only close it while it is idle.
    Subclasses implement :meth:`_close` to close the driver's connection.
    """

    def __init__(self, max_age: float | None = None) -> None:
        self._closed = False
        self._closing = Event()
        self._close_lock = Lock()
        self.in_use = Lock()
        self.in_use.acquire()
        self.is_writer: bool | None = None
        self._max_age_timer: Timer | None = None
        if max_age is not None:
            self._max_age_timer = Timer(max_age, self._close_when_not_in_use)
            self._max_age_timer.daemon = True
            self._max_age_timer.start()

    @property
    def closed(self) -> bool:
        """True once the connection has been closed."""
        return self._closed

    @property
    def closing(self) -> bool:
        """True once the max-age timer has fired: the pool will not reuse it."""
        return self._closing.is_set()

    @abstractmethod
    def commit(self) -> None:
        """Commit the current transaction."""

    @abstractmethod
    def rollback(self) -> None:
        """Roll back the current transaction."""

    @abstractmethod
    def cursor(self) -> TCursor:
        """Return a new cursor."""

    def close(self) -> None:
        """Close the connection (idempotent) and cancel its max-age timer."""
        with self._close_lock:
            if self._closed:
                return
            self._close()
            self._mark_closed()

    @abstractmethod
    def _close(self) -> None:
        """Close the driver's connection (subclasses may call super()._close() after)."""
        self._mark_closed()

    def _mark_closed(self) -> None:
        self._closed = True
        if self._max_age_timer is not None:
            self._max_age_timer.cancel()

    def _close_when_not_in_use(self) -> None:
        self._closing.set()
        with self.in_use:
            if not self._closed:
                self.close()


TConnection = TypeVar("TConnection", bound=Connection[Any])


class ConnectionPool(ABC, Generic[TConnection]):
    """A fair, bounded pool of connections, with optional writer/reader interlocking.

    Up to ``pool_size + max_overflow`` connections are in use at once; up to ``pool_size``
    idle ones are kept for reuse (FIFO). Requests are served in order and wait up to
    ``pool_timeout`` seconds. ``is_writer=True`` admits one writer at a time; with
    ``mutually_exclusive_read_write`` a writer also excludes readers (for SQLite in-memory
    databases). ``pre_ping`` checks a reused connection with ``SELECT 1``.
    """

    def __init__(
        self,
        *,
        pool_size: int = 5,
        max_overflow: int = 10,
        pool_timeout: float = 30.0,
        max_age: float | None = None,
        pre_ping: bool = False,
        mutually_exclusive_read_write: bool = False,
    ) -> None:
        self.pool_size = pool_size
        self.max_overflow = max_overflow
        self.pool_timeout = pool_timeout
        self.max_age = max_age
        self.pre_ping = pre_ping
        self._mutually_exclusive_read_write = mutually_exclusive_read_write
        self._pool: deque[TConnection] = deque()
        self._in_use: dict[int, TConnection] = {}
        self._put_condition = Condition()  # guards _pool, _in_use and _closed
        # One request at a time, in arrival order (a Semaphore's waiters queue up; a Lock's
        # do not).
        self._get_semaphore = Semaphore()
        self._writer_lock = Lock()
        self._num_writers = 0
        self._no_readers = Condition()
        self._num_readers = 0
        self._closed = False

    @property
    def closed(self) -> bool:
        """True once :meth:`close` has been called."""
        return self._closed

    @property
    def num_in_use(self) -> int:
        """The number of connections issued and not yet returned."""
        with self._put_condition:
            return len(self._in_use)

    @property
    def num_in_pool(self) -> int:
        """The number of idle connections kept for reuse."""
        with self._put_condition:
            return len(self._pool)

    def get_connection(
        self, timeout: float | None = None, *, is_writer: bool | None = None
    ) -> TConnection:
        """Return a connection, waiting up to ``timeout`` (default ``pool_timeout``) seconds.

        Raises :class:`ConnectionUnavailableError` on timeout and
        :class:`ConnectionPoolClosedError` if the pool is closed.
        """
        if self._closed:
            raise ConnectionPoolClosedError("Can't get a connection: the pool is closed")
        timeout = self.pool_timeout if timeout is None else timeout
        deadline = monotonic() + timeout
        if not self._get_semaphore.acquire(timeout=timeout):
            raise ConnectionUnavailableError("Timed out waiting for connection pool semaphore")
        try:
            self._acquire_role(is_writer, deadline)
            try:
                conn = self._checkout(deadline)
            except BaseException:
                self._release_role(is_writer)
                raise
            conn.is_writer = is_writer
            return conn
        finally:
            self._get_semaphore.release()

    def put_connection(self, conn: TConnection) -> None:
        """Take back ``conn``: keep it for reuse if there is room, otherwise close it."""
        is_writer, conn.is_writer = conn.is_writer, None
        with self._put_condition:
            if self._closed:
                raise ConnectionPoolClosedError("Can't return a connection: the pool is closed")
            if self._in_use.pop(id(conn), None) is None:
                raise ConnectionNotFromPoolError(
                    f"Connection {conn!r} is not in use from this pool: return connections "
                    "to the pool that issued them, once"
                )
            if not conn.closed:
                if conn.closing or len(self._pool) >= self.pool_size:
                    conn.close()
                else:
                    self._pool.append(conn)
            conn.in_use.release()
            self._release_role(is_writer)
            self._put_condition.notify()

    @abstractmethod
    def _create_connection(self) -> TConnection:
        """Return a new connection (constructed with its ``in_use`` lock held)."""

    def close(self) -> None:
        """Close every connection, in use or idle (idempotent)."""
        with self._put_condition:
            if self._closed:
                return
            for conn in list(self._in_use.values()):
                conn.close()
            while self._pool:
                self._pool.popleft().close()
            self._closed = True

    def _acquire_role(self, is_writer: bool | None, deadline: float) -> None:
        if is_writer is True:
            if not self._writer_lock.acquire(timeout=self._time_remaining(deadline)):
                raise ConnectionUnavailableError("Timed out waiting for return of writer")
            if self._mutually_exclusive_read_write and not self._wait_for_no_readers(deadline):
                self._writer_lock.release()
                raise ConnectionUnavailableError("Timed out waiting for return of reader")
            self._num_writers += 1
        elif is_writer is False:
            if self._mutually_exclusive_read_write:
                # Holding the turn lock, no other writer can start between these two calls.
                if not self._writer_lock.acquire(timeout=self._time_remaining(deadline)):
                    raise ConnectionUnavailableError("Timed out waiting for return of writer")
                self._writer_lock.release()
            with self._no_readers:
                self._num_readers += 1

    def _release_role(self, is_writer: bool | None) -> None:
        if is_writer is True:
            self._num_writers -= 1
            self._writer_lock.release()
        elif is_writer is False:
            with self._no_readers:
                self._num_readers -= 1
                if self._num_readers == 0:
                    self._no_readers.notify_all()

    def _wait_for_no_readers(self, deadline: float) -> bool:
        with self._no_readers:
            return self._no_readers.wait_for(
                lambda: self._num_readers == 0, timeout=self._time_remaining(deadline)
            )

    def _checkout(self, deadline: float) -> TConnection:
        with self._put_condition:
            while True:
                if self._pool:
                    conn = self._pool.popleft()
                    conn.in_use.acquire()
                    if conn.closed or (self.pre_ping and not self._ping(conn)):
                        continue  # closed by its max-age timer, or dead on the server
                elif len(self._in_use) < self.pool_size + self.max_overflow:
                    conn = self._create_connection()
                else:
                    remaining = self._time_remaining(deadline)
                    if remaining <= 0 or not self._put_condition.wait(remaining):
                        raise ConnectionUnavailableError(
                            "Timed out waiting for return of connection: all "
                            f"{self.pool_size + self.max_overflow} connections are in use; "
                            "increase pool_size/max_overflow or the pool timeout"
                        )
                    continue
                self._in_use[id(conn)] = conn
                return conn

    @staticmethod
    def _ping(conn: TConnection) -> bool:
        try:
            conn.cursor().execute("SELECT 1")
        except Exception:
            conn.close()
            return False
        return True

    @staticmethod
    def _time_remaining(deadline: float) -> float:
        return max(0.0, deadline - monotonic())

    def __del__(self) -> None:
        if hasattr(self, "_closed"):
            self.close()


# ---------------------------------------------------------------------------------------------
# Subscriptions

TApplicationRecorder_co = TypeVar(
    "TApplicationRecorder_co", bound=ApplicationRecorder, covariant=True
)


class Subscription(Iterator[Notification], Generic[TApplicationRecorder_co]):
    """A blocking iterator of an application's notifications after ``gt``, in order.

    Use it as a context manager; :meth:`stop` (from any thread, at any time) makes the
    iteration end.
    """

    def __init__(
        self,
        recorder: TApplicationRecorder_co,
        gt: int | None = None,
        topics: Sequence[str] = (),
    ) -> None:
        self._recorder = recorder
        self._last_notification_id = gt
        self._topics = topics
        self._has_been_entered = False
        self._has_been_stopped = False

    def __enter__(self) -> Self:
        if self._has_been_entered:
            raise ProgrammingError(
                "Already entered subscription context manager: a subscription can be "
                "entered once; call the recorder's subscribe() again for a new one"
            )
        self._has_been_entered = True
        return self

    def __exit__(self, *args: object, **kwargs: Any) -> None:
        if not self._has_been_entered:
            raise ProgrammingError(
                "Not already entered subscription context manager: use 'with subscription:'"
            )
        self.stop()

    def stop(self) -> None:
        """End the iteration (the current or next call to ``next()`` stops)."""
        self._has_been_stopped = True

    def __iter__(self) -> Self:
        return self

    @abstractmethod
    def __next__(self) -> Notification:
        """Return the next notification, blocking until there is one."""


class ListenNotifySubscription(Subscription[TApplicationRecorder_co]):
    """A subscription whose background thread pulls notifications each time it is woken.

    The recorder (or a database listener) sets ``_has_been_notified`` after new events are
    committed; the thread then selects everything after the last id it has seen, in pages,
    and passes the pages through a bounded queue to the iterating thread. Subclasses start
    listening in :meth:`_listen`, which runs before the first pull so nothing is missed.
    """

    select_limit = 500
    queue_size = 10

    def __init__(
        self,
        recorder: TApplicationRecorder_co,
        gt: int | None = None,
        topics: Sequence[str] = (),
    ) -> None:
        super().__init__(recorder=recorder, gt=gt, topics=topics)
        self._notifications: Sequence[Notification] = ()
        self._notifications_index = 0
        self._notifications_queue: Queue[Sequence[Notification]] = Queue(self.queue_size)
        self._has_been_notified = Event()
        self._thread_error: BaseException | None = None
        self._listen()
        self._pull_thread = Thread(target=self._loop_on_pull, daemon=True)
        self._pull_thread.start()

    def _listen(self) -> None:
        """Arrange for ``_has_been_notified`` to be set when new events are committed."""

    def __exit__(self, *args: object, **kwargs: Any) -> None:
        try:
            super().__exit__(*args, **kwargs)  # raises if it was never entered
        finally:
            # Even then, no pull thread is left behind.
            self.stop()
            self._pull_thread.join()

    def stop(self) -> None:
        """End the iteration and the pull thread."""
        super().stop()
        self._notifications_queue.shutdown(immediate=True)
        self._has_been_notified.set()

    def __next__(self) -> Notification:
        if self._notifications_index == len(self._notifications) and not self._has_been_stopped:
            try:
                self._notifications = self._notifications_queue.get()
                self._notifications_index = 0
            except ShutDown:
                pass
        if self._has_been_stopped:
            if self._thread_error is not None:
                raise self._thread_error
            raise StopIteration
        notification = self._notifications[self._notifications_index]
        self._notifications_index += 1
        return notification

    def _loop_on_pull(self) -> None:
        try:
            self._pull()  # what was recorded before the subscription started
            while not self._has_been_stopped:
                self._has_been_notified.wait()
                self._pull()
        except BaseException as e:
            if self._thread_error is None:
                self._thread_error = e
            self.stop()

    def _pull(self) -> None:
        while not self._has_been_stopped:
            # Cleared before selecting, so a commit during the select wakes us again.
            self._has_been_notified.clear()
            notifications = self._recorder.select_notifications(
                start=self._last_notification_id or 0,
                limit=self.select_limit,
                topics=self._topics,
                inclusive_of_start=False,
            )
            if notifications:
                try:
                    self._notifications_queue.put(notifications)
                except ShutDown:
                    return
                self._last_notification_id = notifications[-1].id
            if len(notifications) < self.select_limit:
                return
