"""The DCB interface: events, queries, append conditions, read responses and recorders.

An event matches a query item when the item names no types or the event's type is one of
them, and every tag of the item is a tag of the event. An event matches a query when the
query has no items, or the event matches at least one item. Positions are integers that
increase with each appended event (the first is 1).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Generic, TypeVar

from eventsourcing.persistence import ProgrammingError

if TYPE_CHECKING:
    from collections.abc import Sequence
    from typing import Self

__all__ = [
    "DCBAppendCondition",
    "DCBEvent",
    "DCBQuery",
    "DCBQueryItem",
    "DCBReadResponse",
    "DCBRecorder",
    "DCBSequencedEvent",
    "DCBSubscription",
    "TDCBRecorder_co",
]


@dataclass
class DCBQueryItem:
    """Selects events of any of ``types`` (all types if none) that have all of ``tags``."""

    types: list[str] = field(default_factory=list)
    tags: list[str] = field(default_factory=list)


@dataclass
class DCBQuery:
    """Selects events that match any of ``items`` (every event if there are none)."""

    items: list[DCBQueryItem] = field(default_factory=list)


@dataclass
class DCBAppendCondition:
    """Fail an append if an event after position ``after`` matches ``fail_if_events_match``.

    With ``after=None`` every recorded event counts.
    """

    fail_if_events_match: DCBQuery = field(default_factory=DCBQuery)
    after: int | None = None


@dataclass
class DCBEvent:
    """An event as stored: its type, its data and its tags."""

    type: str
    data: bytes
    tags: list[str] = field(default_factory=list)


@dataclass
class DCBSequencedEvent:
    """A recorded event with its position in the recorder's sequence."""

    event: DCBEvent
    position: int


class DCBReadResponse(Iterator[DCBSequencedEvent], ABC):
    """The events a read selected, in order of position, and the ``head`` of the read.

    Without a limit, ``head`` is the last position recorded when the read was made (None
    if nothing was); with a limit, it is the position of the last event returned (None if
    none was). ``head`` is the ``after`` of a condition that fails if anything read has
    changed since.
    """

    @property
    @abstractmethod
    def head(self) -> int | None:
        """The position the read was made at (see the class docstring)."""

    @abstractmethod
    def __next__(self) -> DCBSequencedEvent:
        """Return the next selected event."""


class DCBRecorder(ABC):
    """Records DCB events and reads them by query."""

    @abstractmethod
    def read(
        self,
        query: DCBQuery | None = None,
        *,
        after: int | None = None,
        limit: int | None = None,
    ) -> DCBReadResponse:
        """Return the events matching ``query`` after position ``after``, at most ``limit``."""

    @abstractmethod
    def append(
        self, events: Sequence[DCBEvent], condition: DCBAppendCondition | None = None
    ) -> int:
        """Append ``events`` atomically and return the position of the last of them.

        Raises ``IntegrityError`` if an event matching ``condition`` has been recorded
        after ``condition.after``; then nothing is appended.
        """

    @abstractmethod
    def subscribe(
        self,
        query: DCBQuery | None = None,
        *,
        after: int | None = None,
    ) -> DCBSubscription[Self]:
        """Iterate over the events matching ``query`` after ``after``, waiting for more."""


TDCBRecorder_co = TypeVar("TDCBRecorder_co", bound=DCBRecorder, covariant=True)


class DCBSubscription(Iterator[DCBSequencedEvent], Generic[TDCBRecorder_co]):
    """Events of a recorder after a position, then new ones as they are appended.

    Use it as a context manager (once); :meth:`stop` ends the iteration from any thread.
    """

    def __init__(
        self,
        recorder: TDCBRecorder_co,
        query: DCBQuery | None = None,
        after: int | None = None,
    ) -> None:
        self._recorder = recorder
        self._query = query
        self._has_been_entered = False
        self._has_been_stopped = False
        self._last_position: int = after or 0

    def __enter__(self) -> Self:
        if self._has_been_entered:
            msg = "Already entered subscription context manager: use a new subscription"
            raise ProgrammingError(msg)
        self._has_been_entered = True
        return self

    def __exit__(self, *args: object, **kwargs: Any) -> None:
        if not self._has_been_entered:
            msg = "Not already entered subscription context manager: use 'with' to enter it"
            raise ProgrammingError(msg)
        self.stop()

    def stop(self) -> None:
        """End the iteration."""
        self._has_been_stopped = True

    def __iter__(self) -> Self:
        return self

    @abstractmethod
    def __next__(self) -> DCBSequencedEvent:
        """Return the next event, waiting until there is one or the subscription stops."""
