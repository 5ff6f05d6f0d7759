"""The async PostgreSQL factory: the sync factory's settings and tables, async recorders."""

from __future__ import annotations

import asyncio
from typing import Any

from eventsourcing.asyncio.factory import AsyncInfrastructureFactory
from eventsourcing.asyncio.postgres.datastore import AsyncPostgresDatastore
from eventsourcing.asyncio.postgres.recorders import (
    AsyncPostgresAggregateRecorder,
    AsyncPostgresApplicationRecorder,
    AsyncPostgresProcessRecorder,
    AsyncPostgresTrackingRecorder,
)
from eventsourcing.postgres.factory import PostgresFactory
from eventsourcing.postgres.recorder import PostgresRecorder
from eventsourcing.utils import Environment, EnvType, strtobool

__all__ = ["AsyncPostgresFactory"]


class AsyncPostgresFactory(AsyncInfrastructureFactory):
    """Builds async recorders of the tables the sync factory names, from its settings.

    Two sync factories are made from the environment, neither connecting: one whose
    settings the async pool takes (``POSTGRES_POOL_SIZE`` and the rest), and one whose
    recorders give the statements and create the tables (in a worker thread, once, with
    the sync recorders' own code, its advisory lock and tracking-table migration
    included), on a pool of one connection.
    """

    def __init__(self, env: Environment | EnvType | None) -> None:
        """Read the ``POSTGRES_*`` settings (OSError names a missing or bad one)."""
        super().__init__(env)
        self._settings = PostgresFactory(self._with(CREATE_TABLE="no"))
        self._sql = PostgresFactory(
            self._with(CREATE_TABLE="no", POSTGRES_POOL_SIZE="1", POSTGRES_MAX_OVERFLOW="0")
        )
        self.datastore = AsyncPostgresDatastore(self._settings.datastore)
        self._create_tables = strtobool(self.env.get(PostgresFactory.CREATE_TABLE) or "yes")
        self._ddl_lock = asyncio.Lock()

    def _with(self, **settings: str) -> Environment:
        """This environment, with ``settings`` overriding every key they could be read from."""
        values = dict(self.env)
        for key, value in settings.items():
            for name in self.env.create_keys(key):
                values[name] = value
        return Environment(self.env.name, values)

    async def _create(self, sql: PostgresRecorder) -> None:
        if self._create_tables:
            async with self._ddl_lock:
                await asyncio.to_thread(sql.create_table)

    def aggregate_recorder(self, purpose: str = "events") -> AsyncPostgresAggregateRecorder:
        """Return a recorder of ``<app>_<purpose>`` (e.g. snapshots)."""
        sql = self._sql.aggregate_recorder(purpose)
        return AsyncPostgresAggregateRecorder(sql, self.datastore, self._create)  # type: ignore[arg-type]

    def application_recorder(self) -> AsyncPostgresApplicationRecorder:
        """Return a recorder of ``<app>_events`` (class from APPLICATION_RECORDER_TOPIC)."""
        sql: Any = self._sql.application_recorder()
        return AsyncPostgresApplicationRecorder(sql, self.datastore, self._create)

    def tracking_recorder(self) -> AsyncPostgresTrackingRecorder:
        """Return a recorder of ``<app>_tracking``."""
        sql = self._sql.tracking_recorder()
        return AsyncPostgresTrackingRecorder(sql, self.datastore, self._create)

    def process_recorder(self) -> AsyncPostgresProcessRecorder:
        """Return a recorder of ``<app>_events`` and ``<app>_tracking`` together."""
        sql: Any = self._sql.process_recorder()
        return AsyncPostgresProcessRecorder(sql, self.datastore, self._create)

    async def aclose(self) -> None:
        """Close the async pool, and the sync pool that created the tables."""
        await self.datastore.aclose()
        await asyncio.to_thread(self._sql.close)
        self._settings.close()


Factory = AsyncPostgresFactory
