"""The async datastore: psycopg_pool's AsyncConnectionPool, with the sync datastore's
retries, reconnection and error translation.

Settings come from a sync :class:`~eventsourcing.postgres.PostgresDatastore` (which the
sync factory builds from the ``POSTGRES_*`` variables, without connecting).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from time import monotonic
from typing import Any, TypeVar

import psycopg
import psycopg_pool
from psycopg import AsyncConnection

from eventsourcing.persistence import (
    ConnectionUnavailableError,
    OperationalError,
    PersistenceError,
)
from eventsourcing.postgres.datastore import (
    PostgresDatastore,
    _Backoff,
    _CantConnectError,
    _ServerUnreachableError,
)
from eventsourcing.postgres.errors import is_connection_failure, translate_error
from eventsourcing.postgres.pool import _POOL_NAME_PREFIX, _pool_numbers, _ReconnectBackoff

__all__ = ["AsyncPostgresDatastore"]

logger = logging.getLogger(__name__)

_T = TypeVar("_T")
AsyncConn = AsyncConnection[Any]


class AsyncBackoff(_Backoff):
    """The sync datastore's backoff (50 ms doubling to 1 s, within a budget), awaited."""

    async def wait_async(self) -> bool:
        """Sleep before the next attempt; return False if the budget is spent."""
        if monotonic() + self.delay > self.deadline:
            return False
        await asyncio.sleep(self.delay)
        self.attempts += 1
        self.delay = min(self.delay * 2, 1.0)
        return True


class _AsyncPool(psycopg_pool.AsyncConnectionPool[AsyncConn]):
    """Reconnects as the sync pool does: 0.1 s doubling to 2 s, not psycopg_pool's 1, 2, 4..."""

    async def _add_connection(self, attempt: Any, growing: bool = False) -> None:
        attempt = attempt or _ReconnectBackoff(timeout=self.reconnect_timeout)
        await super()._add_connection(attempt, growing)


class AsyncPostgresDatastore:
    """A pool of async connections to one database, with psycopg errors translated.

    :meth:`run` retries an operation with backoff while the connection or server fails,
    for up to ``connect_timeout`` seconds, as the sync datastore's ``run`` does.
    """

    def __init__(self, settings: PostgresDatastore) -> None:
        """Take the settings of ``settings`` (a sync datastore that is never opened)."""
        self.settings = settings
        self.connect_timeout = settings.connect_timeout
        self.pre_ping = settings.pre_ping
        pool_kwargs = settings._pool_kwargs
        static = dict(pool_kwargs["kwargs"])
        static.pop("row_factory", None)  # tuple rows: the recorders ask for nothing else
        get_password = pool_kwargs["get_password_func"]
        self._connect_kwargs: Callable[[], dict[str, Any]] = (
            (lambda: {**static, "password": get_password()})
            if get_password is not None
            else (lambda: static)
        )
        self._pool_args: dict[str, Any] = {
            "kwargs": self._connect_kwargs,
            "min_size": pool_kwargs["min_size"],
            "max_size": pool_kwargs["max_size"],
            "timeout": pool_kwargs["timeout"],
            "max_waiting": pool_kwargs["max_waiting"],
            "max_lifetime": pool_kwargs["max_lifetime"],
        }
        self.pool: _AsyncPool | None = None
        self._closed = False

    def describe(self) -> str:
        """Say which server and database this is, for messages (never the password)."""
        return self.settings.describe()

    async def connect(self) -> AsyncConn:
        """Return a new connection outside the pool (the caller closes it)."""
        try:
            return await AsyncConnection.connect(**self._connect_kwargs())
        except psycopg.Error as e:
            raise self.settings._connect_error(e) from None

    async def _open_pool(self) -> _AsyncPool:
        if self.pool is not None:
            return self.pool
        if self._closed:
            msg = (
                f"The datastore for {self.describe()} is closed: construct a new factory "
                "(or application) to use the database again"
            )
            raise OperationalError(msg)
        name = f"{_POOL_NAME_PREFIX}async-{next(_pool_numbers)}"
        pool = _AsyncPool(open=False, name=name, **self._pool_args)
        await pool.open(wait=False)
        self.pool = pool
        return pool

    async def run(
        self, operation: Callable[[AsyncConn], Awaitable[_T]], backoff: AsyncBackoff | None = None
    ) -> _T:
        """Await ``operation`` with a pooled connection, retrying while connections fail.

        A failure of the connection or server is retried on another connection with
        backoff, for up to ``connect_timeout`` seconds; then ``OperationalError`` says what
        failed. Other errors are raised at once, translated.
        """
        backoff = backoff or AsyncBackoff(self.connect_timeout)
        while True:
            pool = await self._open_pool()
            conn = await self._checkout(pool, backoff)
            try:
                return await operation(conn)
            except psycopg.Error as e:
                error = await self.translate(e)
                if not is_connection_failure(e, conn):  # type: ignore[arg-type]
                    raise error from e
                if not await self._wait_to_retry(pool, error, backoff):
                    raise self._gave_up(error, backoff) from e
            finally:
                await pool.putconn(conn)  # rolls back what is still open, or discards

    async def _checkout(self, pool: _AsyncPool, backoff: AsyncBackoff) -> AsyncConn:
        while True:
            try:
                conn = await pool.getconn(timeout=backoff.remaining())
            except psycopg.Error as e:
                error = await self.translate(e)
                if not isinstance(error, _ServerUnreachableError):
                    raise error from e
                if not await self._wait_to_retry(pool, error, backoff):
                    raise self._gave_up(error, backoff) from e
                continue
            if not self.pre_ping or await _is_alive(conn):
                return conn
            await pool.putconn(conn)
            if not await self._wait_to_retry(pool, OperationalError("dead connection"), backoff):
                msg = (
                    f"Gave up after {backoff.elapsed():.1f}s waiting for a live connection to "
                    f"{self.describe()}"
                )
                raise OperationalError(msg)

    async def _wait_to_retry(
        self, pool: _AsyncPool, error: PersistenceError, backoff: AsyncBackoff
    ) -> bool:
        if backoff.attempts == 0:
            # The first failure after a server restart: drop the other dead idle ones now.
            with contextlib.suppress(Exception):
                await pool.check()
        logger.info("retrying after a connection failure: %s", error)
        return await backoff.wait_async()

    def _gave_up(self, error: PersistenceError, backoff: AsyncBackoff) -> OperationalError:
        attempts = backoff.attempts + 1
        return OperationalError(
            f"Gave up after {attempts} attempt{'s' * (attempts > 1)} over "
            f"{backoff.elapsed():.1f}s (POSTGRES_CONNECT_TIMEOUT={self.connect_timeout:g}) to "
            f"use {self.describe()}: {error}"
        )

    async def translate(self, error: psycopg.Error) -> PersistenceError:
        """Return the library's error for ``error`` (caused by it), as the sync datastore's."""
        translated: PersistenceError
        if isinstance(error, psycopg_pool.PoolTimeout):
            translated = await self._pool_timeout_error()
        elif isinstance(error, psycopg_pool.PoolClosed):
            translated = OperationalError(
                f"The connection pool for {self.describe()} is closed: construct a new "
                "factory (or application) to use the database again"
            )
        else:
            translated = translate_error(error)
        translated.__cause__ = error
        return translated

    async def _pool_timeout_error(self) -> OperationalError:
        # Does the server accept connections at all? If not, say why.
        try:
            await (await self.connect()).close()
        except _CantConnectError as e:
            if e.permanent:
                return OperationalError(str(e))
            return _ServerUnreachableError(str(e))
        size = self._pool_args["max_size"]
        return ConnectionUnavailableError(
            f"Timed out after {self._pool_args['timeout']}s waiting for a connection to "
            f"{self.describe()}: all {size} connections may be in use (raise "
            "POSTGRES_POOL_SIZE or POSTGRES_MAX_OVERFLOW, or POSTGRES_CONNECT_TIMEOUT)"
        )

    def stats(self) -> dict[str, int]:
        """The pool's statistics (psycopg_pool's ``get_stats``), empty before first use."""
        return self.pool.get_stats() if self.pool is not None else {}

    async def aclose(self) -> None:
        """Close the pool and its connections (idempotent)."""
        self._closed = True
        pool, self.pool = self.pool, None
        if pool is not None:
            with contextlib.suppress(Exception):
                await pool.close()


async def _is_alive(conn: AsyncConn) -> bool:
    try:
        await psycopg_pool.AsyncConnectionPool.check_connection(conn)
    except psycopg.Error:
        return False
    return True
