"""PostgreSQL async recorders (``PERSISTENCE_MODULE=eventsourcing.postgres``).

Natively async, on psycopg 3's ``AsyncConnection`` and psycopg_pool's
``AsyncConnectionPool`` (the ``postgres`` extra). Settings are the sync backend's
(``POSTGRES_DBNAME``, ``POSTGRES_HOST``, ``POSTGRES_POOL_SIZE``... see
:mod:`eventsourcing.postgres`), and so are the tables and every statement sent, so sync and
async applications (ours or 9.x) share a database.

Guarantees, as the sync backend's: a save is committed when ``insert_events`` returns; one
save is all or nothing; notification ids are issued in commit order (the table lock), so a
reader tailing the log never skips one; a lost connection or a restarting server is
retried with backoff for up to ``POSTGRES_CONNECT_TIMEOUT``, and a commit whose reply was
lost is looked up, never applied twice; psycopg's errors become the library's. Concurrent
saves of one event loop share a transaction. A cancelled save is recorded whole or not
at all, and leaves the pool healthy.

Not provided: recorder classes that extend ``_insert_events`` (a sync-cursor hook).
"""

from __future__ import annotations

try:
    import psycopg  # noqa: F401 (a clear message if the extra is missing)
    import psycopg_pool  # noqa: F401
except ImportError as e:  # pragma: no cover
    msg = (
        f"eventsourcing.asyncio.postgres needs psycopg 3 and psycopg_pool ({e}); install the "
        "extra: pip install 'eventsourcing[postgres]'"
    )
    raise ImportError(msg) from e

from eventsourcing.asyncio.postgres.datastore import AsyncPostgresDatastore
from eventsourcing.asyncio.postgres.factory import AsyncPostgresFactory, Factory
from eventsourcing.asyncio.postgres.recorders import (
    AsyncPostgresAggregateRecorder,
    AsyncPostgresApplicationRecorder,
    AsyncPostgresProcessRecorder,
    AsyncPostgresTrackingRecorder,
)

__all__ = [
    "AsyncPostgresAggregateRecorder",
    "AsyncPostgresApplicationRecorder",
    "AsyncPostgresDatastore",
    "AsyncPostgresFactory",
    "AsyncPostgresProcessRecorder",
    "AsyncPostgresTrackingRecorder",
    "Factory",
]
