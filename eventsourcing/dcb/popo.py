"""The in-memory DCB recorder, and the factory of ``PERSISTENCE_MODULE=eventsourcing.dcb.popo``.

Events are kept in a list in position order, under one lock: an append's condition is
checked and its events added atomically. Reads and appends copy events, so nothing a
caller holds changes what is stored. Subscriptions are woken by each append.
"""

from __future__ import annotations

import contextlib
from typing import TYPE_CHECKING

from eventsourcing import popo as _popo  # not POPOFactory by name: see InMemoryDCBFactory
from eventsourcing.dcb._matching import compile_query
from eventsourcing.dcb.api import (
    DCBAppendCondition,
    DCBEvent,
    DCBQuery,
    DCBReadResponse,
    DCBRecorder,
    DCBSequencedEvent,
)
from eventsourcing.dcb.persistence import DCBInfrastructureFactory, DCBListenNotifySubscription
from eventsourcing.persistence import IntegrityError, ProgrammingError
from eventsourcing.popo import POPORecorder, POPOTrackingRecorder

if TYPE_CHECKING:
    from collections.abc import Iterator, Sequence
    from threading import Event

__all__ = [
    "InMemoryDCBFactory",
    "InMemoryDCBRecorder",
    "InMemorySubscription",
    "SimpleDCBReadResponse",
]


class InMemoryDCBRecorder(DCBRecorder, POPORecorder):
    """Keeps DCB events in memory (positions start at 1 and have no gaps)."""

    def __init__(self) -> None:
        super().__init__()
        self.events: list[DCBSequencedEvent] = []
        self._listeners: set[Event] = set()

    def read(
        self,
        query: DCBQuery | None = None,
        *,
        after: int | None = None,
        limit: int | None = None,
    ) -> DCBReadResponse:
        """Return copies of the events matching ``query`` after ``after`` (at most ``limit``)."""
        with self._database_lock:
            selected = self._select(query, after, limit)
            if limit is None:
                head = self.events[-1].position if self.events else None
            else:
                head = selected[-1].position if selected else None
            return SimpleDCBReadResponse(iter([_copy(e) for e in selected]), head)

    def _select(
        self, query: DCBQuery | None, after: int | None, limit: int | None
    ) -> list[DCBSequencedEvent]:
        # Positions are 1, 2, 3...: the first event after ``after`` is at index ``after``.
        start = max(after or 0, 0)
        matches = compile_query(query)
        selected: list[DCBSequencedEvent] = []
        if limit is not None and limit <= 0:
            return selected
        for sequenced in self.events[start:]:
            if matches(sequenced.event):
                selected.append(sequenced)
                if limit is not None and len(selected) >= limit:
                    break
        return selected

    def append(
        self, events: Sequence[DCBEvent], condition: DCBAppendCondition | None = None
    ) -> int:
        """Append copies of ``events`` unless ``condition`` fails (``IntegrityError``)."""
        if not events:
            msg = "Can't append no events: pass at least one DCBEvent"
            raise ProgrammingError(msg)
        with self._database_lock:
            if condition is not None and self._select(
                condition.fail_if_events_match, condition.after, 1
            ):
                raise IntegrityError(condition)
            next_position = len(self.events) + 1
            self.events.extend(
                DCBSequencedEvent(event=_copy_event(event), position=next_position + i)
                for i, event in enumerate(events)
            )
            for listener in self._listeners:
                listener.set()
            return self.events[-1].position

    def subscribe(
        self,
        query: DCBQuery | None = None,
        *,
        after: int | None = None,
    ) -> InMemorySubscription:
        """Iterate over matching events after ``after``, then over new ones."""
        return InMemorySubscription(self, query=query, after=after)

    def listen(self, event: Event) -> None:
        """Set ``event`` after each append."""
        with self._database_lock:
            self._listeners.add(event)

    def unlisten(self, event: Event) -> None:
        """Stop setting ``event`` after appends."""
        with self._database_lock, contextlib.suppress(KeyError):
            self._listeners.remove(event)


def _copy_event(event: DCBEvent) -> DCBEvent:
    # The type and data are immutable: only the list of tags needs copying (much cheaper
    # than deepcopy, and as safe).
    return DCBEvent(type=event.type, data=bytes(event.data), tags=list(event.tags))


def _copy(sequenced: DCBSequencedEvent) -> DCBSequencedEvent:
    return DCBSequencedEvent(event=_copy_event(sequenced.event), position=sequenced.position)


class InMemorySubscription(DCBListenNotifySubscription[InMemoryDCBRecorder]):
    """A subscription woken by each append to its in-memory recorder."""

    def _start_listening(self) -> None:
        self._recorder.listen(self._has_been_notified)

    def stop(self) -> None:
        """End the iteration and stop listening to appends."""
        super().stop()
        self._recorder.unlisten(self._has_been_notified)


class SimpleDCBReadResponse(DCBReadResponse):
    """A read response over events already selected.

    Given no ``head``, the head is the position of the last event iterated over.
    """

    def __init__(self, events: Iterator[DCBSequencedEvent], head: int | None = None):
        self.events = events
        self._head_was_given = head is not None
        self._head = head

    @property
    def head(self) -> int | None:
        """The head of the read."""
        return self._head

    def __next__(self) -> DCBSequencedEvent:
        event = next(self.events)
        if not self._head_was_given:
            self._head = event.position
        return event


class InMemoryDCBFactory(_popo.POPOFactory, DCBInfrastructureFactory[POPOTrackingRecorder]):
    """Makes a new, empty in-memory DCB recorder (and POPO recorders for views).

    ``POPOFactory`` is not imported by name, so that this is the one factory class that
    ``InfrastructureFactory.construct`` finds in this module; with 9.5.6, a view's
    factory can't be constructed from a DCB persistence module, which holds two (9.5.6
    difference: DCB modules name one factory).
    """

    def dcb_recorder(self) -> DCBRecorder:
        """Return a new in-memory DCB recorder."""
        return InMemoryDCBRecorder()
