"""SQLite async recorders (``PERSISTENCE_MODULE=eventsourcing.sqlite``).

Settings are the sync backend's (``SQLITE_DBNAME``, ``SQLITE_LOCK_TIMEOUT``,
``ORIGINATOR_ID_TYPE``, ``CREATE_TABLE``...), and so are the tables, the SQL and the errors:
the sync SQLite recorders do the work, in one thread per factory (the stdlib has no async
driver), so the event loop never waits on the disk or on a lock. Calls run in the order
they are made; the thread starts on first use and ends on ``aclose()``.

Not provided: parallel reads (every call waits its turn in the one thread).
"""

from __future__ import annotations

from eventsourcing.asyncio._synced import SyncedFactory
from eventsourcing.asyncio.threaded import DedicatedThread
from eventsourcing.sqlite import SQLiteFactory
from eventsourcing.utils import Environment, EnvType

__all__ = ["AsyncSQLiteFactory", "Factory"]


class AsyncSQLiteFactory(SyncedFactory):
    """Async recorders over the sync SQLite ones, run in a dedicated thread."""

    sync_factory_class = SQLiteFactory

    def __init__(self, env: Environment | EnvType | None) -> None:
        """Read the settings; the thread starts on first use."""
        name = env.name if isinstance(env, Environment) else ""
        super().__init__(env, DedicatedThread(f"eventsourcing-sqlite-{name or 'app'}"))


Factory = AsyncSQLiteFactory
