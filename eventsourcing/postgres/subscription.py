"""The subscription to an application recorder, woken by LISTEN/NOTIFY."""

from __future__ import annotations

import threading
from collections.abc import Sequence
from typing import Any

import psycopg
import psycopg.errors
from psycopg import Connection
from psycopg.rows import DictRow
from psycopg.sql import SQL

from eventsourcing.persistence import ListenNotifySubscription, OperationalError, ProgrammingError
from eventsourcing.postgres.application import PostgresApplicationRecorder
from eventsourcing.postgres.datastore import _Backoff
from eventsourcing.postgres.identifiers import NO_PARAMS, quoted


class PostgresSubscription(ListenNotifySubscription[PostgresApplicationRecorder]):
    """A subscription woken by PostgreSQL ``NOTIFY`` on the recorder's channel.

    A listener thread holds its own connection (outside the pool) in ``LISTEN``. If that
    connection fails, it reconnects with backoff and wakes the pull thread, which then
    catches up on anything committed in between.
    """

    #: Seconds between checks for stop() while waiting for a notification.
    poll_interval = 0.1

    def __init__(
        self,
        recorder: PostgresApplicationRecorder,
        gt: int | None = None,
        topics: Sequence[str] = (),
    ) -> None:
        """Start listening, then start pulling (so nothing committed meanwhile is missed)."""
        if not isinstance(recorder, PostgresApplicationRecorder):
            raise ProgrammingError(
                f"PostgresSubscription needs a PostgresApplicationRecorder, got {recorder!r}"
            )
        self._listen_conn: Connection[DictRow] | None = None
        self._listen_thread: threading.Thread | None = None
        super().__init__(recorder=recorder, gt=gt, topics=topics)

    def _listen(self) -> None:
        self._listen_conn = self._connect_and_listen()
        self._listen_thread = threading.Thread(target=self._loop_on_notifies, daemon=True)
        self._listen_thread.start()

    def _connect_and_listen(self) -> Connection[DictRow]:
        conn = self._recorder.datastore.connect()
        try:
            conn.execute(SQL("LISTEN {}").format(quoted(self._recorder.channel_name)), NO_PARAMS)
        except psycopg.Error as e:
            conn.close()
            raise self._recorder.datastore.translate(e) from e
        return conn

    def _loop_on_notifies(self) -> None:
        try:
            while not self._has_been_stopped:
                try:
                    self._wait_for_notifies()
                except (psycopg.OperationalError, psycopg.InterfaceError):
                    if self._has_been_stopped:
                        return
                    self._reconnect()
        except BaseException as e:
            if self._thread_error is None:
                self._thread_error = self._library_error(e)
            self.stop()
        finally:
            if self._listen_conn is not None:
                self._listen_conn.close()

    def _library_error(self, error: BaseException) -> BaseException:
        """Return ``error``, as the library's error if it is psycopg's (the user sees it)."""
        if isinstance(error, psycopg.Error):
            return self._recorder.datastore.translate(error)
        return error

    def _wait_for_notifies(self) -> None:
        assert self._listen_conn is not None
        while not self._has_been_stopped:
            for _ in self._listen_conn.notifies(timeout=self.poll_interval, stop_after=1):
                self._has_been_notified.set()

    def _reconnect(self) -> None:
        if self._listen_conn is not None:
            self._listen_conn.close()
        backoff = _Backoff(self._recorder.datastore.connect_timeout)
        while not self._has_been_stopped:
            try:
                self._listen_conn = self._connect_and_listen()
            except OperationalError:
                if not backoff.wait():
                    raise
                continue
            self._has_been_notified.set()  # catch up on what was committed meanwhile
            return

    def __exit__(self, *args: object, **kwargs: Any) -> None:
        super().__exit__(*args, **kwargs)  # stops, unless it was never entered
        if self._listen_thread is not None:
            self._listen_thread.join()
