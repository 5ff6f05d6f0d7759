"""Subscriptions: ``async for notification in recorder.subscribe(gt)``.

A subscription reads the log after the last id it has yielded, in pages, and when it has
read everything it waits to be woken: by a listener (PostgreSQL ``LISTEN``, or the writes of
a recorder in this process) or, failing that, by a poll every ``poll_interval`` seconds, so
writers that no listener hears (other processes on SQLite) are seen too.

Cancelling the iterating task, breaking out of the loop, or :meth:`AsyncSubscription.aclose`
ends it cleanly: the listener is stopped and its connection closed.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Sequence
from typing import TYPE_CHECKING

from eventsourcing.persistence import Notification

if TYPE_CHECKING:
    from typing import Self

    from eventsourcing.asyncio.recorders import AsyncApplicationRecorder

__all__ = ["AsyncSubscription", "Listener"]


class Listener:
    """Wakes a subscription when new events may have been committed; polling otherwise.

    Backends subclass it: :meth:`start` begins listening (before the first read, so nothing
    committed meanwhile is missed) and calls ``wake()`` on news; :meth:`stop` ends it.
    """

    async def start(self, wake: asyncio.Event) -> None:
        """Begin setting ``wake`` when new events are committed."""

    async def stop(self) -> None:
        """Stop listening and release what listening holds."""


class AsyncSubscription:
    """An async iterator of an application's notifications after ``gt``, in order."""

    #: Most notifications read from the log at a time.
    select_limit = 500
    #: Seconds between reads of the log when nothing woke the subscription.
    poll_interval = 1.0

    def __init__(
        self,
        recorder: AsyncApplicationRecorder,
        gt: int | None = None,
        topics: Sequence[str] = (),
        listener: Listener | None = None,
    ) -> None:
        """Read ``recorder``'s notifications after ``gt`` (of ``topics``, if any)."""
        self._recorder = recorder
        self.last_notification_id = gt
        self._topics = topics
        self._listener = listener or Listener()
        self._wake = asyncio.Event()
        self._buffer: list[Notification] = []
        self._state = "new"  # new -> listening -> closed

    async def __aenter__(self) -> Self:
        await self._start()
        return self

    async def __aexit__(self, *args: object) -> None:
        await self.aclose()

    def __aiter__(self) -> Self:
        return self

    async def __anext__(self) -> Notification:
        if not self._buffer:
            batch = await self.next_batch()
            if not batch:
                raise StopAsyncIteration
            self._buffer = batch[::-1]
        return self._buffer.pop()

    async def next_batch(self, limit: int | None = None) -> list[Notification]:
        """Wait for notifications, then return those available (up to ``limit``).

        Returns an empty list only once the subscription is closed.
        """
        if self._buffer:  # what __anext__ holds comes first
            batch, self._buffer = self._buffer[::-1], []
            return batch
        await self._start()
        limit = limit or self.select_limit
        while self._state == "listening":
            self._wake.clear()  # before reading: a commit during the read wakes us again
            notifications = await self._recorder.select_notifications(
                start=self.last_notification_id or 0,
                limit=limit,
                topics=self._topics,
                inclusive_of_start=False,
            )
            if notifications:
                self.last_notification_id = notifications[-1].id
                return list(notifications)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self.poll_interval)
        return []

    async def _start(self) -> None:
        if self._state == "new":
            self._state = "listening"
            await self._listener.start(self._wake)

    def stop(self) -> None:
        """End the iteration: the current or next wait returns (call :meth:`aclose` too)."""
        if self._state != "closed":
            self._state = "closed"
            self._wake.set()

    async def aclose(self) -> None:
        """End the iteration and stop listening (idempotent)."""
        was_listening = self._state == "listening"
        self.stop()
        self._buffer = []
        if was_listening:
            await self._listener.stop()
