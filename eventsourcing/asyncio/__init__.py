"""An asyncio API over the same tables and bytes as the sync one.

``AsyncApplication`` is ``Application`` with ``await``: ``await app.save(...)``,
``await app.repository.get(id)``, ``await app.notification_log.select(...)``, and
``async for notification in app.recorder.subscribe(gt)``. ``PERSISTENCE_MODULE`` and every
other setting mean what they mean for the sync API, and pick the async backend of the same
name: POPO (in memory), SQLite (the sync recorders in a dedicated thread), PostgreSQL
(natively async on psycopg 3). ``AsyncProcessApplication`` follows other applications with
a policy that may be a coroutine, and ``AsyncRunner`` runs a system of them, exactly once.
"""

from __future__ import annotations

from eventsourcing.asyncio.application import AsyncApplication
from eventsourcing.asyncio.factory import AsyncInfrastructureFactory
from eventsourcing.asyncio.follower import AsyncProcessApplication
from eventsourcing.asyncio.recorders import (
    AsyncAggregateRecorder,
    AsyncApplicationRecorder,
    AsyncProcessRecorder,
    AsyncRecorder,
    AsyncTrackingRecorder,
)
from eventsourcing.asyncio.repository import AsyncNotificationLog, AsyncRepository
from eventsourcing.asyncio.runner import AsyncRunner, AsyncSystem
from eventsourcing.asyncio.store import AsyncEventStore
from eventsourcing.asyncio.subscription import AsyncSubscription

__all__ = [
    "AsyncAggregateRecorder",
    "AsyncApplication",
    "AsyncApplicationRecorder",
    "AsyncEventStore",
    "AsyncInfrastructureFactory",
    "AsyncNotificationLog",
    "AsyncProcessApplication",
    "AsyncProcessRecorder",
    "AsyncRecorder",
    "AsyncRepository",
    "AsyncRunner",
    "AsyncSubscription",
    "AsyncSystem",
    "AsyncTrackingRecorder",
]
