"""The async repository and notification log."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterable, Iterator, Sequence
from contextlib import asynccontextmanager
from copy import deepcopy
from itertools import chain
from typing import Any, Generic

from eventsourcing.application import (
    AggregateNotFoundError,
    Cache,
    LocalNotificationLog,
    LRUCache,
    ProjectorFunction,
    Section,
    project_aggregate,
)
from eventsourcing.asyncio.recorders import AsyncApplicationRecorder
from eventsourcing.asyncio.store import AsyncEventStore
from eventsourcing.domain import DomainEventProtocol, TAggregateID
from eventsourcing.persistence import Notification

__all__ = ["AsyncNotificationLog", "AsyncRepository"]


class AsyncRepository(Generic[TAggregateID]):
    """Rebuilds aggregates from an async event store, from a snapshot if there is one.

    As the sync :class:`~eventsourcing.application.Repository`: ``cache_maxsize`` None is
    no cache, ``<= 0`` an unbounded one, else an LRU cache of that size; a cached aggregate
    is fast-forwarded with newer stored events on each ``get`` (one task at a time per
    aggregate), and handed out as a deep copy unless ``deepcopy_from_cache`` is false.
    """

    def __init__(
        self,
        event_store: AsyncEventStore[TAggregateID],
        *,
        snapshot_store: AsyncEventStore[TAggregateID] | None = None,
        cache_maxsize: int | None = None,
        fastforward: bool = True,
        deepcopy_from_cache: bool = True,
    ) -> None:
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
        self.deepcopy_from_cache = deepcopy_from_cache
        # One lock per aggregate being fast-forwarded, with its number of users.
        self._locks: dict[TAggregateID, tuple[asyncio.Lock, int]] = {}

    async def get(
        self,
        aggregate_id: TAggregateID,
        *,
        version: int | None = None,
        projector_func: ProjectorFunction[Any, Any] = project_aggregate,
        deepcopy_from_cache: bool = True,
    ) -> Any:
        """Return the aggregate with ``aggregate_id``, at ``version`` if given.

        Raises :class:`~eventsourcing.application.AggregateNotFoundError` when there is
        nothing to rebuild it from.
        """
        cache = self.cache
        if cache is None or version is not None:
            return await self._reconstruct(aggregate_id, version, projector_func)
        copy = deepcopy_from_cache and self.deepcopy_from_cache
        try:
            aggregate = cache.get(aggregate_id)
        except KeyError:
            aggregate = await self._reconstruct(aggregate_id, None, projector_func)
            cache.put(aggregate_id, aggregate)
        else:
            if self.fastforward:
                async with self._lock(aggregate_id):
                    aggregate = await self._apply_newer_events(aggregate_id, projector_func)
                    return deepcopy(aggregate) if copy else aggregate
        return deepcopy(aggregate) if copy else aggregate

    async def contains(self, aggregate_id: TAggregateID) -> bool:
        """Tell whether the repository can rebuild the aggregate with this id."""
        try:
            await self.get(aggregate_id)
        except AggregateNotFoundError:
            return False
        return True

    async def _reconstruct(
        self,
        aggregate_id: TAggregateID,
        version: int | None,
        projector_func: ProjectorFunction[Any, Any],
    ) -> Any:
        history = await self._select_history(aggregate_id, version)
        aggregate = projector_func(None, history)
        if aggregate is None:
            msg = f"Aggregate {aggregate_id!r} version {version!r} not found."
            raise AggregateNotFoundError(msg)
        return aggregate

    async def _select_history(
        self, aggregate_id: TAggregateID, version: int | None
    ) -> Iterable[DomainEventProtocol[TAggregateID]]:
        """The latest snapshot at or before ``version`` (if any), then the later events."""
        if self.snapshot_store is not None:
            snapshots = await self.snapshot_store.get(aggregate_id, desc=True, limit=1, lte=version)
            snapshot = next(snapshots, None)
            if snapshot is not None:
                events = await self.event_store.get(
                    aggregate_id, gt=snapshot.originator_version, lte=version
                )
                return chain((snapshot,), events)
        return await self.event_store.get(aggregate_id, lte=version)

    async def _apply_newer_events(
        self, aggregate_id: TAggregateID, projector_func: ProjectorFunction[Any, Any]
    ) -> Any:
        assert self.cache is not None
        try:
            aggregate = self.cache.get(aggregate_id)  # as the task before us left it
        except KeyError:  # evicted meanwhile
            aggregate = await self._reconstruct(aggregate_id, None, projector_func)
            self.cache.put(aggregate_id, aggregate)
            return aggregate
        new_events: Iterator[Any] = await self.event_store.get(aggregate_id, gt=aggregate.version)
        result = projector_func(aggregate, new_events)
        if result is None:
            msg = f"Aggregate {aggregate_id!r} version None not found."
            raise AggregateNotFoundError(msg)
        if result is not aggregate:
            self.cache.put(aggregate_id, result)  # immutable aggregates come back anew
        return result

    @asynccontextmanager
    async def _lock(self, aggregate_id: TAggregateID) -> AsyncIterator[None]:
        lock, users = self._locks.get(aggregate_id) or (asyncio.Lock(), 0)
        self._locks[aggregate_id] = (lock, users + 1)
        try:
            async with lock:
                yield
        finally:
            lock, users = self._locks[aggregate_id]
            if users > 1:
                self._locks[aggregate_id] = (lock, users - 1)
            else:
                del self._locks[aggregate_id]


class AsyncNotificationLog:
    """An application's events in the order they were recorded, read in pages.

    ``await log.select(start, limit)`` and ``await log["1,10"]`` behave as the sync
    :class:`~eventsourcing.application.LocalNotificationLog`'s.
    """

    DEFAULT_SECTION_SIZE = LocalNotificationLog.DEFAULT_SECTION_SIZE

    def __init__(
        self, recorder: AsyncApplicationRecorder, section_size: int = DEFAULT_SECTION_SIZE
    ) -> None:
        """Read from ``recorder``, at most ``section_size`` notifications at a time."""
        self.recorder = recorder
        self.section_size = section_size

    async def __getitem__(self, requested_section_id: str) -> Section:
        """Return the section ``"first,last"``, clipped to the log and the section size."""
        first, last = LocalNotificationLog._parse_section_id(requested_section_id)
        start = max(1, first)
        limit = min(max(0, last - start + 1), self.section_size)
        notifications = await self.select(start, limit)
        if not notifications:
            return Section(id=None, items=notifications, next_id=None)
        first_id, last_id = notifications[0].id, notifications[-1].id
        next_id = None
        if len(notifications) == limit:
            next_id = LocalNotificationLog.format_section_id(last_id + 1, last_id + limit)
        section_id = LocalNotificationLog.format_section_id(first_id, last_id)
        return Section(id=section_id, items=notifications, next_id=next_id)

    async def select(
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
        return await self.recorder.select_notifications(
            start=start,
            limit=limit,
            stop=stop,
            topics=topics,
            inclusive_of_start=inclusive_of_start,
        )
