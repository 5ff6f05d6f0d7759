"""The PostgreSQL listener of async subscriptions: ``LISTEN`` on the recorder's channel.

The sync recorder (and 9.x) sends ``NOTIFY`` on the channel in each writing transaction,
so writers in any process wake the subscription. The listener holds a connection of its
own, outside the pool; if it fails, it reconnects with backoff and wakes the subscription,
which then reads whatever was committed in between.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

import psycopg
from psycopg.sql import SQL

from eventsourcing.asyncio.postgres.datastore import AsyncBackoff, AsyncConn, AsyncPostgresDatastore
from eventsourcing.asyncio.subscription import Listener
from eventsourcing.persistence import OperationalError
from eventsourcing.postgres.identifiers import NO_PARAMS, quoted

__all__ = ["ListenNotifyListener"]

logger = logging.getLogger(__name__)


class ListenNotifyListener(Listener):
    """Wakes a subscription on each ``NOTIFY`` of ``channel``."""

    def __init__(self, datastore: AsyncPostgresDatastore, channel: str) -> None:
        """Listen on ``channel`` of the datastore's database."""
        self._datastore = datastore
        self._listen_statement = SQL("LISTEN {}").format(quoted(channel))
        self._task: asyncio.Task[None] | None = None
        self._conn: AsyncConn | None = None

    async def start(self, wake: asyncio.Event) -> None:
        """Connect and LISTEN now (so nothing committed after this is missed)."""
        self._conn = await self._connect_and_listen()
        self._task = asyncio.create_task(self._loop(wake))

    async def _connect_and_listen(self) -> AsyncConn:
        conn = await self._datastore.connect()
        await conn.set_autocommit(True)
        try:
            await conn.execute(self._listen_statement, NO_PARAMS)
        except psycopg.Error as e:
            await conn.close()
            raise await self._datastore.translate(e) from e
        return conn

    async def _loop(self, wake: asyncio.Event) -> None:
        while True:
            try:
                assert self._conn is not None
                async for _ in self._conn.notifies():
                    wake.set()
            except (psycopg.OperationalError, psycopg.InterfaceError) as e:
                logger.info("reconnecting a subscription's listener: %s", e)
            await self._reconnect()
            wake.set()  # read what was committed while we weren't listening

    async def _reconnect(self) -> None:
        if self._conn is not None:
            with contextlib.suppress(Exception):
                await self._conn.close()
        backoff = AsyncBackoff(self._datastore.connect_timeout)
        while True:
            try:
                self._conn = await self._connect_and_listen()
                return
            except OperationalError:
                if not await backoff.wait_async():
                    backoff = AsyncBackoff(self._datastore.connect_timeout)  # keep trying

    async def stop(self) -> None:
        """Stop listening and close the connection."""
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        conn, self._conn = self._conn, None
        if conn is not None:
            with contextlib.suppress(Exception):
                await conn.close()
