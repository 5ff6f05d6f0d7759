"""The async recorder interfaces: the sync ones of :mod:`eventsourcing.persistence`, awaited.

Each method has the name, arguments and meaning of its sync counterpart, and stores the same
rows, so that an async and a sync application can share a database. Only the waiting
differs: a call suspends the calling task, never the event loop.
"""

from __future__ import annotations

import asyncio
from abc import ABC, abstractmethod
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any
from uuid import UUID

from eventsourcing.persistence import Notification, StoredEvent, Tracking

if TYPE_CHECKING:
    from eventsourcing.asyncio.subscription import AsyncSubscription

__all__ = [
    "AsyncAggregateRecorder",
    "AsyncApplicationRecorder",
    "AsyncProcessRecorder",
    "AsyncRecorder",
    "AsyncTrackingRecorder",
]


class AsyncRecorder:
    """Base of every async recorder: opened on first use, closed by :meth:`aclose`."""

    async def open(self) -> None:
        """Prepare for use (create tables, open connections); idempotent."""

    async def aclose(self) -> None:
        """Release what the recorder holds; idempotent."""


class AsyncAggregateRecorder(AsyncRecorder, ABC):
    """Stores the events of aggregates, each in its own sequence of versions."""

    @abstractmethod
    async def insert_events(
        self, stored_events: Sequence[StoredEvent], **kwargs: Any
    ) -> Sequence[int] | None:
        """Store all of ``stored_events`` or none of them (IntegrityError on a conflict)."""

    @abstractmethod
    async def select_events(
        self,
        originator_id: UUID | str,
        *,
        gt: int | None = None,
        lte: int | None = None,
        desc: bool = False,
        limit: int | None = None,
    ) -> Sequence[StoredEvent]:
        """Return one aggregate's events with ``gt < version <= lte``, ordered by version."""


class AsyncApplicationRecorder(AsyncAggregateRecorder):
    """Also keeps all events of an application in one total order of notification ids."""

    @abstractmethod
    async def select_notifications(
        self,
        start: int | None,
        limit: int,
        stop: int | None = None,
        topics: Sequence[str] = (),
        *,
        inclusive_of_start: bool = True,
    ) -> Sequence[Notification]:
        """Return up to ``limit`` notifications from ``start`` to ``stop`` (inclusive)."""

    @abstractmethod
    async def max_notification_id(self) -> int | None:
        """Return the highest notification id, or None if nothing has been stored."""

    @abstractmethod
    def subscribe(self, gt: int | None = None, topics: Sequence[str] = ()) -> AsyncSubscription:
        """Return an async iterator of the notifications after ``gt``, waiting for new ones."""


class AsyncTrackingRecorder(AsyncRecorder, ABC):
    """Records how far a follower has processed each upstream application."""

    @abstractmethod
    async def insert_tracking(self, tracking: Tracking) -> None:
        """Record ``tracking`` (a compare-and-set); IntegrityError if it was refused."""

    @abstractmethod
    async def max_tracking_id(self, application_name: str) -> int | None:
        """Return the highest notification id recorded for ``application_name``, or None."""

    async def has_tracking_id(self, application_name: str, notification_id: int | None) -> bool:
        """Return True if ``notification_id`` is None or has been reached."""
        if notification_id is None:
            return True
        max_id = await self.max_tracking_id(application_name)
        return max_id is not None and max_id >= notification_id

    async def wait(
        self, application_name: str, notification_id: int | None, timeout: float = 1.0
    ) -> None:
        """Wait until ``notification_id`` of ``application_name`` has been processed.

        Polls with back-off (10 ms doubling to 0.4 s); TimeoutError after ``timeout``
        seconds. Cancel the awaiting task to stop waiting.
        """
        deadline = asyncio.get_running_loop().time() + timeout
        interval = 0.01
        while not await self.has_tracking_id(application_name, notification_id):
            remaining = deadline - asyncio.get_running_loop().time()
            if remaining <= 0:
                msg = (
                    f"Timed out waiting for notification {notification_id} from application "
                    f"'{application_name}' to be processed (timeout={timeout}s; pass a longer "
                    "timeout to wait longer)"
                )
                raise TimeoutError(msg)
            await asyncio.sleep(min(interval, remaining))
            interval = min(interval * 2, 0.4)


class AsyncProcessRecorder(AsyncTrackingRecorder, AsyncApplicationRecorder):
    """Records new events and a tracking position in one transaction (``tracking=``)."""
