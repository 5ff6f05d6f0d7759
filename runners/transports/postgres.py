"""Prompts through PostgreSQL ``LISTEN``/``NOTIFY``: ``PROMPT_TRANSPORT=postgres``.

Features: a PostgreSQL application recorder already sends ``NOTIFY`` on its table's channel
in the transaction that inserts events (9.x does the same), so publishing costs nothing and
is done by the database when the leader commits, from whichever process saves. A worker
holds one extra connection per leader database, in ``LISTEN`` on its leaders' channels.

Guarantees: a notification is delivered to listeners connected at commit; one sent while a
worker's connection was down is lost (the worker polls meanwhile). Needs every leader of a
listening worker on PostgreSQL.

Outages: a listener that can't connect when the transport is made connects on the next
:meth:`~PostgresNotifyTransport.wait`, which raises
:class:`~runners.errors.TransportConnectionError` until the database answers.
"""

from __future__ import annotations

import selectors
from collections.abc import Iterator, Mapping
from contextlib import contextmanager, suppress
from typing import Any

from eventsourcing.persistence import ApplicationRecorder, PersistenceError
from eventsourcing.postgres import PostgresApplicationRecorder, PostgresDatastore
from runners.errors import PromptTransportError, TransportConnectionError
from runners.transports.base import PromptTransport

try:
    import psycopg
    from psycopg import sql
except ImportError as e:  # pragma: no cover - depends on the installed extras
    raise ImportError(
        "postgres prompt transport needs psycopg 3: pip install 'eventsourcing[postgres]'"
    ) from e

__all__ = ["PostgresNotifyTransport"]


class _Listener:
    """One connection in LISTEN on the channels of the leaders in one database."""

    def __init__(self, datastore: PostgresDatastore) -> None:
        self.datastore = datastore
        self.channels: dict[str, str] = {}  # channel -> leader
        self.conn: psycopg.Connection[Any] | None = None

    def connect(self) -> psycopg.Connection[Any]:
        if self.conn is None or self.conn.closed:
            conn = self.datastore.connect()
            try:
                for channel in self.channels:
                    conn.execute(sql.SQL("LISTEN {}").format(sql.Identifier(channel)))
            except BaseException:
                conn.close()
                raise
            self.conn = conn
        return self.conn

    def drain(self) -> set[str]:
        assert self.conn is not None
        return {
            self.channels[n.channel]
            for n in self.conn.notifies(timeout=0)
            if n.channel in self.channels
        }

    def close(self) -> None:
        conn, self.conn = self.conn, None
        if conn is not None:
            conn.close()


class PostgresNotifyTransport(PromptTransport):
    """Listens for the NOTIFY that leaders' recorders send on commit; publishing is free."""

    def __init__(self, recorders: Mapping[str, ApplicationRecorder] | None = None) -> None:
        """Listen on the channels of ``recorders`` (leader name -> the leader's recorder)."""
        recorders = recorders or {}
        super().__init__(recorders)
        self._listeners: dict[tuple[str, str, str], _Listener] = {}
        for leader, recorder in recorders.items():
            if not isinstance(recorder, PostgresApplicationRecorder):
                msg = (
                    f"PROMPT_TRANSPORT=postgres needs the leader {leader!r} on PostgreSQL, but "
                    f"it is stored with {type(recorder).__name__}: set its PERSISTENCE_MODULE "
                    "to eventsourcing.postgres, or use a redis:// or kombu+ transport"
                )
                raise PromptTransportError(msg)
            store = recorder.datastore
            key = (str(store.host), str(store.port), store.dbname)
            listener = self._listeners.setdefault(key, _Listener(store))
            listener.channels[recorder.channel_name] = leader
        with suppress(TransportConnectionError), self._translated():  # down: wait() retries
            for listener in self._listeners.values():
                listener.connect()

    @contextmanager
    def _translated(self) -> Iterator[None]:
        try:
            yield
        except (psycopg.Error, PersistenceError, OSError) as e:
            for listener in self._listeners.values():
                listener.close()
            raise TransportConnectionError(f"PostgreSQL LISTEN connection: {e}") from e

    def publish(self, leader_name: str, notification_id: int) -> None:
        """Nothing to do: the leader's recorder sent NOTIFY when it committed."""

    def wait(self, timeout: float) -> list[str]:
        """Wait up to ``timeout`` for a NOTIFY on any leader's channel."""
        if not self._listeners:
            return []
        prompted: set[str] = set()
        with self._translated(), selectors.DefaultSelector() as selector:
            for listener in self._listeners.values():
                selector.register(listener.connect().fileno(), selectors.EVENT_READ, listener)
            for key, _ in selector.select(timeout=max(0.0, timeout)):
                prompted |= key.data.drain()
        return sorted(prompted)

    def close(self) -> None:
        """Close the LISTEN connections."""
        for listener in self._listeners.values():
            listener.close()
