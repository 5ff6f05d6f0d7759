"""The DCB persistence layer: mappers, the event store, factories and subscriptions.

* :class:`DCBMapper` converts tagged decisions to stored events and back.
* :class:`DCBEventStore` appends and reads tagged decisions with selectors, which it turns
  into queries of types (decision topics) and tags.
* :class:`DCBInfrastructureFactory` is the factory that ``PERSISTENCE_MODULE`` names for a
  DCB application; its :meth:`~DCBInfrastructureFactory.dcb_recorder` makes the recorder.
* :class:`DCBListenNotifySubscription` is a subscription that reads in pages on a thread
  whenever it is woken; each recorder wakes it in its own way.
"""

from __future__ import annotations

import threading
from abc import ABC, abstractmethod
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any, Generic

from eventsourcing.dcb.api import (
    DCBAppendCondition,
    DCBEvent,
    DCBQuery,
    DCBQueryItem,
    DCBReadResponse,
    DCBRecorder,
    DCBSequencedEvent,
    DCBSubscription,
    TDCBRecorder_co,
)
from eventsourcing.dcb.domain import Selector, Tagged, TDecision
from eventsourcing.persistence import (
    BaseInfrastructureFactory,
    Queue,
    ShutDown,
    TTrackingRecorder,
)
from eventsourcing.utils import get_topic

if TYPE_CHECKING:
    from collections.abc import Sequence

__all__ = [
    "DCBEventStore",
    "DCBEventStoreReadResponse",
    "DCBInfrastructureFactory",
    "DCBListenNotifySubscription",
    "DCBMapper",
    "NotFoundError",
]


class DCBMapper(ABC, Generic[TDecision]):
    """Converts between tagged decisions and stored DCB events."""

    @abstractmethod
    def to_dcb_event(self, event: Tagged[TDecision]) -> DCBEvent:
        """Return the stored form of a tagged decision."""

    @abstractmethod
    def to_domain_event(self, event: DCBEvent) -> Tagged[TDecision]:
        """Return the tagged decision a stored event holds."""


def selectors_to_query(cb: Selector | Sequence[Selector] | None) -> DCBQuery:
    """The query of a consistency boundary: decision classes become their topics."""
    selectors = [cb] if isinstance(cb, Selector) else cb or []
    return DCBQuery(
        items=[
            DCBQueryItem(types=[get_topic(t) for t in s.types], tags=list(s.tags))
            for s in selectors
        ]
    )


class DCBEventStore(Generic[TDecision]):
    """Appends and reads tagged decisions, through a mapper and a recorder."""

    def __init__(self, mapper: DCBMapper[TDecision], recorder: DCBRecorder):
        self.mapper = mapper
        self.recorder = recorder

    def append(
        self,
        events: Sequence[Tagged[TDecision]],
        cb: Selector | Sequence[Selector] | None = None,
        after: int | None = None,
    ) -> int:
        """Append ``events``, failing if a decision selected by ``cb`` came after ``after``.

        Returns the position of the last event (0, appending nothing, if there are none).
        Without ``cb`` and ``after`` the append is unconditional.
        """
        if not events:
            return 0
        condition = (
            None
            if cb is None and after is None
            else DCBAppendCondition(fail_if_events_match=selectors_to_query(cb), after=after)
        )
        to_dcb_event = self.mapper.to_dcb_event
        return self.recorder.append(events=[to_dcb_event(e) for e in events], condition=condition)

    def read(
        self,
        cb: Selector | Sequence[Selector] | None = None,
        *,
        after: int | None = None,
    ) -> DCBEventStoreReadResponse[TDecision]:
        """Return the tagged decisions selected by ``cb`` (all if None) after ``after``."""
        response = self.recorder.read(query=selectors_to_query(cb), after=after)
        return DCBEventStoreReadResponse(response, self.mapper)


class DCBEventStoreReadResponse(Iterator[Tagged[TDecision]]):
    """Tagged decisions of a read, with the read's ``head``."""

    def __init__(self, dcb_read_response: DCBReadResponse, mapper: DCBMapper[TDecision]):
        self._dcb_read_response = dcb_read_response
        self._mapper = mapper

    @property
    def head(self) -> int | None:
        """The head of the read (see :class:`~eventsourcing.dcb.api.DCBReadResponse`)."""
        return self._dcb_read_response.head

    def __next__(self) -> Tagged[TDecision]:
        return self._mapper.to_domain_event(next(self._dcb_read_response).event)


class NotFoundError(Exception):
    """No decision is tagged with the id of the enduring object asked for."""


class DCBInfrastructureFactory(BaseInfrastructureFactory[TTrackingRecorder], ABC):
    """A persistence module's factory for DCB applications."""

    @abstractmethod
    def dcb_recorder(self) -> DCBRecorder:
        """Return the recorder of the application the factory's environment is for."""


class DCBListenNotifySubscription(DCBSubscription[TDCBRecorder_co]):
    """Reads pages of ``select_limit`` events on a thread each time it is woken.

    A recorder wakes it by setting ``_has_been_notified`` (after an append in this process,
    on a NOTIFY, or on a poll). Pages go through a bounded queue, so a slow consumer
    holds the reader back rather than filling memory. An error of the reading thread
    ends the iteration and is raised by ``__next__``.
    """

    select_limit = 500

    def __init__(
        self,
        recorder: TDCBRecorder_co,
        query: DCBQuery | None = None,
        after: int | None = None,
    ) -> None:
        super().__init__(recorder=recorder, query=query, after=after)
        self._events: Sequence[DCBSequencedEvent] = []
        self._events_index: int = 0
        self._events_queue: Queue[Sequence[DCBSequencedEvent]] = Queue(maxsize=10)
        self._has_been_notified = threading.Event()
        self._thread_error: BaseException | None = None
        self._pull_thread = threading.Thread(
            target=self._loop_on_pull, name="DCB subscription", daemon=True
        )
        # Listening before the first read: an append between the two still wakes it.
        self._start_listening()
        self._pull_thread.start()

    def _start_listening(self) -> None:
        """Have the recorder set ``_has_been_notified`` after appends (none by default)."""

    def __exit__(self, *args: object, **kwargs: Any) -> None:
        super().__exit__(*args, **kwargs)
        self._pull_thread.join()

    def stop(self) -> None:
        """End the iteration, waking a ``__next__`` that waits and the reading thread."""
        super().stop()
        self._events_queue.shutdown(immediate=True)
        self._has_been_notified.set()

    def __next__(self) -> DCBSequencedEvent:
        if self._events_index == len(self._events) and not self._has_been_stopped:
            try:
                self._events = self._events_queue.get()
            except ShutDown:
                pass
            else:
                self._events_index = 0
        if self._has_been_stopped:
            if self._thread_error is not None:
                raise self._thread_error
            raise StopIteration
        event = self._events[self._events_index]
        self._events_index += 1
        return event

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
        # Cleared before reading: a wake-up during the read makes the loop read again.
        while not self._has_been_stopped:
            self._has_been_notified.clear()
            events = list(
                self._recorder.read(
                    query=self._query, after=self._last_position, limit=self.select_limit
                )
            )
            if events:
                try:
                    self._events_queue.put(events)
                except ShutDown:
                    return
                self._last_position = events[-1].position
            if len(events) < self.select_limit:
                return
