"""The connection pool: psycopg_pool's, with a fresh password per connection.

It reconnects quickly after an outage, and quietly.
"""

from __future__ import annotations

import itertools
import logging
from collections.abc import Callable
from typing import Any, Generic, TypeVar

import psycopg
import psycopg.errors
import psycopg_pool
import psycopg_pool.base
from psycopg import Connection

CT = TypeVar("CT", bound=Connection[Any])


_POOL_NAME_PREFIX = "eventsourcing-"
_pool_numbers = itertools.count(1)


class _QuietReconnects(logging.Filter):
    """Drops psycopg_pool's per-attempt "error connecting" warnings for our pools.

    While a server refuses connections the pool retries every 0.1-2 s and would warn each
    time (pages of lines a minute); the datastore reports the outage itself, once, in the
    error it raises when its ``connect_timeout`` runs out.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        """Keep every record except reconnection noise from pools named by us."""
        args = record.args
        return not (
            str(record.msg).startswith(("error connecting in", "reconnection attempt in pool"))
            and isinstance(args, tuple)
            and str(args[0]).startswith(_POOL_NAME_PREFIX)
        )


logging.getLogger("psycopg.pool").addFilter(_QuietReconnects())


class ConnectionPool(psycopg_pool.ConnectionPool[CT], Generic[CT]):
    """A psycopg_pool pool that can fetch a fresh password for each new connection."""

    def __init__(
        self,
        *args: Any,
        get_password_func: Callable[[], str] | None = None,
        **kwargs: Any,
    ) -> None:
        """Take psycopg_pool's arguments, and ``get_password_func`` (called per connection)."""
        self.get_password_func = get_password_func
        kwargs.setdefault("name", f"{_POOL_NAME_PREFIX}{next(_pool_numbers)}")
        super().__init__(*args, **kwargs)

    def _connect(self, timeout: float | None = None) -> CT:
        if self.get_password_func is not None:
            # Replace the dict rather than mutate it: other workers may be reading it.
            self.kwargs = {**self._static_kwargs(), "password": self.get_password_func()}
        return super()._connect(timeout=timeout)

    def _add_connection(self, attempt: Any, growing: bool = False) -> None:
        # psycopg_pool waits 1 s, then 2, 4, 8... between attempts to reconnect: too slow to
        # notice that a restarted server is back. Start at 0.1 s and never wait over 2 s.
        attempt = attempt or _ReconnectBackoff(timeout=self.reconnect_timeout)
        super()._add_connection(attempt, growing)

    def _static_kwargs(self) -> dict[str, Any]:
        kwargs = self.kwargs
        return dict(kwargs() if callable(kwargs) else kwargs or {})


class _ReconnectBackoff(psycopg_pool.base.AttemptWithBackoff):
    """Reconnection delays for the pool: 0.1 s, doubling, at most 2 s."""

    INITIAL_DELAY = 0.1

    def update_delay(self, now: float) -> None:
        """Double the delay (starting at 0.1 s), capped at 2 s."""
        super().update_delay(now)
        self.delay = min(self.delay, 2.0)


def _is_alive(conn: Connection[Any]) -> bool:
    try:
        ConnectionPool.check_connection(conn)
    except psycopg.Error:
        return False
    return True
