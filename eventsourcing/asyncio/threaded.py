"""Async recorders over sync ones: the POPO and SQLite backends.

The sync recorder does the work, so rows, SQL, locking and errors are exactly the sync
backend's. Where its calls run is the executor's choice: :class:`InlineExecutor` calls it
on the event loop (POPO: in-memory work of microseconds, under a lock nobody holds for
long), :class:`DedicatedThread` hands every call to one thread of its own (SQLite: the
stdlib's driver blocks, so the loop never waits on the disk or a lock).

A task cancelled while its call runs in the thread stops waiting, but the call goes on to
the end: a transaction is committed whole or not at all, never left half done.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from typing import Any, Generic, TypeVar
from uuid import UUID

from eventsourcing.asyncio.recorders import (
    AsyncAggregateRecorder,
    AsyncApplicationRecorder,
    AsyncProcessRecorder,
    AsyncTrackingRecorder,
)
from eventsourcing.asyncio.subscription import AsyncSubscription, Listener
from eventsourcing.persistence import (
    AggregateRecorder,
    ApplicationRecorder,
    Notification,
    ProcessRecorder,
    Recorder,
    StoredEvent,
    Tracking,
    TrackingRecorder,
)

__all__ = [
    "DedicatedThread",
    "Executor",
    "InlineExecutor",
    "ThreadedAggregateRecorder",
    "ThreadedApplicationRecorder",
    "ThreadedProcessRecorder",
    "ThreadedTrackingRecorder",
]

_T = TypeVar("_T")
_R = TypeVar("_R", bound=Recorder)


class Executor:
    """Runs the sync recorders' calls; this one on the event loop itself."""

    async def run(self, func: Callable[..., _T], *args: Any, **kwargs: Any) -> _T:
        """Return ``func(*args, **kwargs)``."""
        return func(*args, **kwargs)

    async def aclose(self) -> None:
        """Stop taking calls."""


InlineExecutor = Executor


class DedicatedThread(Executor):
    """Runs every call in one thread of its own, in the order the calls are made."""

    def __init__(self, name: str) -> None:
        """Name the thread (it starts on the first call)."""
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix=name)

    async def run(self, func: Callable[..., _T], *args: Any, **kwargs: Any) -> _T:
        """Return ``func(*args, **kwargs)`` as called in the thread."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._pool, partial(func, *args, **kwargs))

    async def aclose(self) -> None:
        """Let the calls made so far finish, then end the thread."""
        await asyncio.get_running_loop().run_in_executor(None, self._pool.shutdown)


class _Threaded(Generic[_R]):
    """A sync recorder, made on first use (in the executor: it may create tables)."""

    def __init__(self, make: Callable[[], _R], executor: Executor) -> None:
        self._make = make
        self._executor = executor
        self._sync: _R | None = None
        self._opening = asyncio.Lock()

    async def open(self) -> None:
        """Make the sync recorder (creating its tables), once."""
        await self.sync_recorder()

    async def sync_recorder(self) -> _R:
        """The sync recorder that does the work (made now if not yet)."""
        if self._sync is None:
            async with self._opening:
                if self._sync is None:
                    self._sync = await self._executor.run(self._make)
        return self._sync

    async def _call(self, name: str, *args: Any, **kwargs: Any) -> Any:
        recorder = self._sync or await self.sync_recorder()
        return await self._executor.run(getattr(recorder, name), *args, **kwargs)


class ThreadedAggregateRecorder(_Threaded[AggregateRecorder], AsyncAggregateRecorder):
    """An async aggregate recorder over a sync one."""

    async def insert_events(
        self, stored_events: Sequence[StoredEvent], **kwargs: Any
    ) -> Sequence[int] | None:
        """Store all of ``stored_events`` or none of them (IntegrityError on a conflict)."""
        ids: Sequence[int] | None = await self._call("insert_events", stored_events, **kwargs)
        return ids

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
        events: Sequence[StoredEvent] = await self._call(
            "select_events", originator_id, gt=gt, lte=lte, desc=desc, limit=limit
        )
        return events


class _ThreadedLog(ThreadedAggregateRecorder, AsyncApplicationRecorder):
    """The notification log of a sync application recorder, awaited."""

    _sync: Any

    def __init__(self, make: Callable[[], ApplicationRecorder], executor: Executor) -> None:
        super().__init__(make, executor)
        self._wakers: set[asyncio.Event] = set()

    async def insert_events(
        self, stored_events: Sequence[StoredEvent], **kwargs: Any
    ) -> Sequence[int] | None:
        """Store the events; wake this process's subscriptions."""
        ids = await super().insert_events(stored_events, **kwargs)
        for wake in self._wakers:
            wake.set()
        return ids

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
        notifications: Sequence[Notification] = await self._call(
            "select_notifications",
            start,
            limit,
            stop,
            topics,
            inclusive_of_start=inclusive_of_start,
        )
        return notifications

    async def max_notification_id(self) -> int | None:
        """Return the highest notification id, or None if nothing has been stored."""
        value: int | None = await self._call("max_notification_id")
        return value

    def subscribe(self, gt: int | None = None, topics: Sequence[str] = ()) -> AsyncSubscription:
        """Notifications after ``gt``, woken by this recorder's writes and the sync one's."""
        return AsyncSubscription(self, gt, topics, listener=_SyncWriteListener(self))


class _ThreadsafeWaker(threading.Event):
    """A waker the sync recorders set from any thread: it sets an asyncio event."""

    def __init__(self, wake: asyncio.Event, loop: asyncio.AbstractEventLoop) -> None:
        super().__init__()
        self._async_wake = wake
        self._loop = loop

    def set(self) -> None:
        """Set the asyncio event, in its loop's thread."""
        if not self._loop.is_closed():
            self._loop.call_soon_threadsafe(self._async_wake.set)


class _SyncWriteListener(Listener):
    """Hears the writes of this recorder, and of the sync recorder (POPO) or datastore
    (SQLite) under it, which sync applications in this process may share."""

    def __init__(self, recorder: _ThreadedLog) -> None:
        self._recorder = recorder
        self._wake: asyncio.Event | None = None
        self._waker: _ThreadsafeWaker | None = None

    async def start(self, wake: asyncio.Event) -> None:
        """Listen to writes from now on."""
        self._wake = wake
        self._recorder._wakers.add(wake)
        sync: Any = await self._recorder.sync_recorder()
        self._waker = _ThreadsafeWaker(wake, asyncio.get_running_loop())
        if hasattr(sync, "listen"):  # POPO
            sync.listen(self._waker)
        elif hasattr(getattr(sync, "datastore", None), "add_waker"):  # SQLite
            sync.datastore.add_waker(self._waker)

    async def stop(self) -> None:
        """Stop listening."""
        if self._wake is not None:
            self._recorder._wakers.discard(self._wake)
        sync = self._recorder._sync
        if self._waker is not None and sync is not None:
            if hasattr(sync, "unlisten"):
                sync.unlisten(self._waker)
            elif hasattr(getattr(sync, "datastore", None), "remove_waker"):
                sync.datastore.remove_waker(self._waker)


class ThreadedApplicationRecorder(_ThreadedLog):
    """An async application recorder over a sync one."""


class ThreadedTrackingRecorder(_Threaded[TrackingRecorder], AsyncTrackingRecorder):
    """An async tracking recorder over a sync one."""

    async def insert_tracking(self, tracking: Tracking) -> None:
        """Record ``tracking`` (a compare-and-set); IntegrityError if it was refused."""
        await self._call("insert_tracking", tracking)

    async def max_tracking_id(self, application_name: str) -> int | None:
        """Return the highest notification id recorded for ``application_name``, or None."""
        value: int | None = await self._call("max_tracking_id", application_name)
        return value


class ThreadedProcessRecorder(_ThreadedLog, AsyncProcessRecorder):
    """An async process recorder over a sync one."""

    def __init__(self, make: Callable[[], ProcessRecorder], executor: Executor) -> None:
        super().__init__(make, executor)

    async def insert_tracking(self, tracking: Tracking) -> None:
        """Record ``tracking`` (a compare-and-set); IntegrityError if it was refused."""
        await self._call("insert_tracking", tracking)

    async def max_tracking_id(self, application_name: str) -> int | None:
        """Return the highest notification id recorded for ``application_name``, or None."""
        value: int | None = await self._call("max_tracking_id", application_name)
        return value
