"""The aggregate and application recorders (events in a table, notifications by rowid), and
subscriptions to an application recorder's notifications."""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Callable, Sequence
from functools import cache
from threading import Event, Thread
from typing import Any
from uuid import UUID

from eventsourcing.persistence import (
    AggregateRecorder,
    ApplicationRecorder,
    ListenNotifySubscription,
    Notification,
    PersistenceError,
    Recorder,
    StoredEvent,
    Tracking,
)
from eventsourcing.sqlite.connections import SQLiteCursor
from eventsourcing.sqlite.datastore import SQLiteDatastore
from eventsourcing.sqlite.errors import translate_error
from eventsourcing.sqlite.identifiers import _check_identifier

# Rows per multi-row INSERT statement. Batches up to _MAX_EXACT_ROWS get one statement of
# exactly their size; larger batches are split into power-of-two chunks (and a small exact
# remainder) so that a bounded set of statement texts stays prepared in sqlite3's cache:
# preparing a 1000-row INSERT costs about as much as running it.
_MAX_EXACT_ROWS = 32
_MAX_CHUNK_ROWS = 512


CREATE_TABLE_ATTEMPTS = 5


class SQLiteRecorder(Recorder):
    """Base class of the SQLite recorders: a datastore and the statements to create tables.

    ``create_table_statements`` may be replaced before calling ``create_table()``.
    """

    def __init__(self, datastore: SQLiteDatastore, **kwargs: Any) -> None:
        if not isinstance(datastore, SQLiteDatastore):
            msg = f"Expected an SQLiteDatastore, got {datastore!r}"
            raise TypeError(msg)
        self.datastore = datastore
        self.create_table_statements = self.construct_create_table_statements()

    def construct_create_table_statements(self) -> list[str]:
        """Return the statements that create this recorder's tables."""
        return []

    def create_table(self) -> None:
        """Create this recorder's tables if they do not exist, in one transaction.

        Processes starting together over a new database file take turns (the transaction
        takes SQLite's write lock first, waiting up to the lock timeout).
        """
        try:
            for attempt in range(1, CREATE_TABLE_ATTEMPTS + 1):
                try:
                    self.datastore.write(self._create_table, transaction=True)
                    break
                except PersistenceError as e:
                    # Processes opening a new file together can be refused the lock at once
                    # (SQLite doesn't always wait, as while a file turns to WAL mode).
                    if attempt == CREATE_TABLE_ATTEMPTS or "locked" not in str(e.__cause__):
                        raise
                    time.sleep(0.1 * attempt)
        except PersistenceError as e:
            # Without the hints meant for saves (a failed CREATE is no version conflict).
            cause = e.__cause__ if isinstance(e.__cause__, sqlite3.Error) else e
            msg = f"Failed to create the tables of {type(self).__name__}: {cause}"
            raise type(e)(msg) from e.__cause__

    def _create_table(self, cursor: sqlite3.Cursor) -> None:
        for statement in self.create_table_statements:
            cursor.execute(statement)

    def erase(self) -> None:
        """Delete every event and position this recorder keeps (and a follower's dead
        letters; its settings stay), in one transaction: for a rebuild."""
        statements = self._erase_statements()

        def erase(cursor: sqlite3.Cursor) -> None:
            for statement in statements:
                cursor.execute(statement)

        self.datastore.write(erase, transaction=True)

    def _erase_statements(self) -> list[str]:
        return []

    def convert_originator_id(self, originator_id: str) -> UUID | str:
        """Convert a stored originator id to the configured type (UUID or str)."""
        if self.datastore.originator_id_type == "uuid":
            return UUID(originator_id)
        return originator_id


def _events_table_statement(table: str, *, rowid: bool) -> str:
    """9.x's events table: a rowid table where rowids are notification ids, else (for an
    aggregate recorder, which has none) WITHOUT ROWID."""
    return (
        f"CREATE TABLE IF NOT EXISTS {table} ("
        "originator_id TEXT, "
        "originator_version INTEGER, "
        "topic TEXT, "
        "state BLOB, "
        "PRIMARY KEY (originator_id, originator_version))" + ("" if rowid else " WITHOUT ROWID")
    )


def _insert_statement(table: str, num_rows: int) -> str:
    values = ",".join(["(?,?,?,?)"] * num_rows)
    return f"INSERT INTO {table} (originator_id,originator_version,topic,state) VALUES {values}"


@cache
def _max_rows_per_statement() -> int:
    """Return the largest power-of-two chunk whose parameters SQLite accepts."""
    # Four parameters per row; SQLite builds before 3.32 allow only 999 parameters.
    probe = sqlite3.connect(":memory:")
    try:
        limit = probe.getlimit(sqlite3.SQLITE_LIMIT_VARIABLE_NUMBER)
    finally:
        probe.close()
    chunk = _MAX_CHUNK_ROWS
    while chunk * 4 > limit:
        chunk //= 2
    return chunk


def _chunk_sizes(num_rows: int, max_chunk: int) -> list[int]:
    """Split a batch into chunks of power-of-two sizes, then one small exact remainder."""
    if num_rows <= _MAX_EXACT_ROWS:
        return [num_rows]
    sizes = []
    chunk = max_chunk
    while num_rows > _MAX_EXACT_ROWS:
        while chunk > num_rows:
            chunk //= 2
        sizes.append(chunk)
        num_rows -= chunk
    if num_rows:
        sizes.append(num_rows)
    return sizes


_NO_ID = object()


def _tracking_statements(tracking: Tracking | None) -> int:
    """How many statements recording ``tracking`` takes (dead letters take one more)."""
    if tracking is None:
        return 0
    return 2 if getattr(tracking, "dead_letters", ()) else 1


def _event_params(stored_events: Sequence[StoredEvent]) -> list[Any]:
    """Flatten stored events into INSERT parameters, UUID ids as 32-character hex.

    States are bound as ``bytearray``: the same BLOB, but ``sqlite3`` looks for an adapter
    for every ``bytes`` parameter (a failed attribute lookup that formats an error message),
    which costs twice as much as the copy.
    """
    params: list[Any] = []
    last_id: object = _NO_ID
    last_key: Any = None
    for s in stored_events:
        originator_id = s.originator_id
        if originator_id is not last_id:
            # Consecutive events usually share one originator: format its id once.
            last_id = originator_id
            last_key = originator_id.hex if isinstance(originator_id, UUID) else originator_id
        params += (last_key, s.originator_version, s.topic, bytearray(s.state))
    return params


class SQLiteAggregateRecorder(SQLiteRecorder, AggregateRecorder):
    """Records stored events of aggregates in a table keyed by id and version."""

    def __init__(
        self,
        datastore: SQLiteDatastore,
        events_table_name: str = "stored_events",
        **kwargs: Any,
    ) -> None:
        self.events_table_name = _check_identifier(events_table_name)
        super().__init__(datastore, **kwargs)
        self._erase_events = f"DELETE FROM {self.events_table_name}"
        table = self.events_table_name
        self._insert_statements: dict[int, str] = {}
        self._max_chunk = _max_rows_per_statement()
        # A subclass that extends _insert_events (9.x's way to write rows of its own with
        # the events) is called inside the transaction; others take the faster paths.
        self._has_insert_hook = type(self)._insert_events not in _LIBRARY_INSERT_EVENTS
        self.insert_events_statement = _insert_statement(table, 1)
        self._select_events_statements = {
            (gt, lte, desc, limit): self._select_events_statement(gt, lte, desc, limit)
            for gt in (False, True)
            for lte in (False, True)
            for desc in (False, True)
            for limit in (False, True)
        }

    def construct_create_table_statements(self) -> list[str]:
        """Return the statement that creates the events table (WITHOUT ROWID)."""
        return [
            *super().construct_create_table_statements(),
            _events_table_statement(self.events_table_name, rowid=False),
        ]

    def insert_events(
        self, stored_events: Sequence[StoredEvent], **kwargs: Any
    ) -> Sequence[int] | None:
        """Insert a batch of stored events atomically; return None."""
        if self._has_insert_hook:
            self._write_through_hook(stored_events, kwargs)
        else:
            self._write_events(stored_events, None)
        return None

    def _erase_statements(self) -> list[str]:
        return [*super()._erase_statements(), self._erase_events]

    def select_events(
        self,
        originator_id: UUID | str,
        *,
        gt: int | None = None,
        lte: int | None = None,
        desc: bool = False,
        limit: int | None = None,
    ) -> list[StoredEvent]:
        """Return the stored events of one originator, filtered, ordered and limited."""
        key = originator_id.hex if isinstance(originator_id, UUID) else originator_id
        params: list[Any] = [key]
        if gt is not None:
            params.append(gt)
        if lte is not None:
            params.append(lte)
        if limit is not None:
            params.append(limit)
        statement = self._select_events_statements[
            gt is not None, lte is not None, bool(desc), limit is not None
        ]
        rows = self.datastore.read(statement, params)
        if not rows:
            return []
        # Every row has the queried id, so it is converted once, not once per row.
        if self.datastore.originator_id_type != "uuid":
            result_id: UUID | str = key
        elif isinstance(originator_id, UUID):
            result_id = originator_id
        else:
            result_id = UUID(originator_id)
        return [StoredEvent(result_id, v, t, s) for v, t, s in rows]

    # -- internals ---------------------------------------------------------------------

    def _select_events_statement(self, gt: bool, lte: bool, desc: bool, limit: bool) -> str:
        statement = (
            "SELECT originator_version, topic, state "
            f"FROM {self.events_table_name} WHERE originator_id=?"
        )
        if gt:
            statement += " AND originator_version>?"
        if lte:
            statement += " AND originator_version<=?"
        statement += " ORDER BY originator_version" + (" DESC" if desc else "")
        if limit:
            statement += " LIMIT ?"
        return statement

    def _get_insert_statement(self, num_rows: int) -> str:
        statement = self._insert_statements.get(num_rows)
        if statement is None:
            statement = _insert_statement(self.events_table_name, num_rows)
            self._insert_statements[num_rows] = statement
        return statement

    def _write_events(self, stored_events: Sequence[StoredEvent], tracking: Tracking | None) -> int:
        """Insert events (and tracking) atomically through the writer; return the last rowid."""
        params = _event_params(stored_events)  # Prepared before taking the write lock.
        sizes = _chunk_sizes(len(stored_events), self._max_chunk) if stored_events else []
        # A single multi-row INSERT is atomic by itself in autocommit mode, so the common
        # small batch needs no BEGIN and COMMIT statements.
        return self.datastore.write(
            lambda cursor: self._insert_rows(cursor, params, sizes, tracking),
            transaction=len(sizes) + _tracking_statements(tracking) > 1,
        )

    def _insert_rows(
        self,
        cursor: sqlite3.Cursor,
        params: list[Any],
        sizes: list[int],
        tracking: Tracking | None,
    ) -> int:
        """Insert flattened event rows (and tracking) with ``cursor``; return the last rowid."""
        if tracking is not None:
            self._insert_tracking(cursor, tracking)
        if not sizes:
            # No rows, but still fail as inserting would if the table is missing.
            cursor.executemany(self.insert_events_statement, ())
            return 0
        if len(sizes) == 1:
            cursor.execute(self._get_insert_statement(sizes[0]), params)
        else:
            start = 0
            for size in sizes:
                end = start + size * 4
                cursor.execute(self._get_insert_statement(size), params[start:end])
                start = end
        return cursor.lastrowid or 0

    def _write_through_hook(
        self, stored_events: Sequence[StoredEvent], kwargs: dict[str, Any]
    ) -> Sequence[int] | None:
        """Call :meth:`_insert_events` in one write transaction, as ``insert_events`` does."""

        def insert(cursor: sqlite3.Cursor) -> Sequence[int] | None:
            # A cursor of the writer's connection, with sqlite3.Row rows, as in 9.x.
            row_cursor = SQLiteCursor(cursor.connection.cursor())
            return self._insert_events(row_cursor, stored_events, **kwargs)

        return self.datastore.write(insert, transaction=True)

    def _insert_events(
        self, c: SQLiteCursor | sqlite3.Cursor, stored_events: Sequence[StoredEvent], **kwargs: Any
    ) -> Sequence[int] | None:
        """Insert events with the cursor of the transaction of ``insert_events``.

        The extension point of ``eventsourcing`` 9.x: a subclass that overrides it (calling
        ``super()._insert_events(c, stored_events, **kwargs)``) can write rows of its own
        with ``c``, in the same transaction as the events; keyword arguments given to
        ``Application.save()`` arrive here. ``insert_events`` calls it whenever a subclass
        overrides it.
        """
        self._insert_rows_with(c, stored_events, None)
        return None

    def _insert_rows_with(
        self,
        c: SQLiteCursor | sqlite3.Cursor,
        stored_events: Sequence[StoredEvent],
        tracking: Tracking | None,
    ) -> int:
        cursor = c.sqlite_cursor if isinstance(c, SQLiteCursor) else c
        sizes = _chunk_sizes(len(stored_events), self._max_chunk) if stored_events else []
        try:
            return self._insert_rows(cursor, _event_params(stored_events), sizes, tracking)
        except sqlite3.Error as e:
            raise translate_error(e) from e

    def _insert_tracking(self, c: SQLiteCursor | sqlite3.Cursor, tracking: Tracking) -> None:
        msg = f"{type(self).__qualname__} does not record tracking"
        raise NotImplementedError(msg)


class SQLiteApplicationRecorder(SQLiteAggregateRecorder, ApplicationRecorder):
    """Records stored events in a rowid table; the rowid is the notification id."""

    def __init__(
        self,
        datastore: SQLiteDatastore,
        events_table_name: str = "stored_events",
        **kwargs: Any,
    ) -> None:
        super().__init__(datastore, events_table_name, **kwargs)
        self.select_max_notification_id_statement = (
            f"SELECT MAX(rowid) FROM {self.events_table_name}"
        )
        self._select_notifications_statements: dict[tuple[bool, bool, bool, int], str] = {}

    def construct_create_table_statements(self) -> list[str]:
        """Return the statement that creates the events table (a rowid table)."""
        return [_events_table_statement(self.events_table_name, rowid=True)]

    def insert_events(
        self, stored_events: Sequence[StoredEvent], **kwargs: Any
    ) -> Sequence[int] | None:
        """Insert a batch of stored events atomically; return their notification ids."""
        if self._has_insert_hook:
            return self._write_through_hook(stored_events, kwargs)
        last = self._write_events(stored_events, None)
        return self._notification_ids(last, len(stored_events))

    def _insert_events(
        self, c: SQLiteCursor | sqlite3.Cursor, stored_events: Sequence[StoredEvent], **kwargs: Any
    ) -> Sequence[int] | None:
        """Insert events with the transaction's cursor; return their notification ids.

        See :meth:`SQLiteAggregateRecorder._insert_events` for extending it.
        """
        last = self._insert_rows_with(c, stored_events, None)
        return self._notification_ids(last, len(stored_events))

    def _max_notification_id(self, c: SQLiteCursor | sqlite3.Cursor) -> int | None:
        """Return the largest notification id, using the caller's cursor."""
        c.execute(self.select_max_notification_id_statement)
        return c.fetchone()[0]  # type: ignore[no-any-return]

    @staticmethod
    def _notification_ids(last_rowid: int, num_rows: int) -> list[int]:
        # The ids are computed rather than returned by INSERT ... RETURNING rowid, which
        # measured about 40% slower per row. This is exact: every insert happens under
        # the writer's transaction (SQLite's write lock), and SQLite gives each new row
        # max(rowid)+1, so one batch gets contiguous rowids ending at last_insert_rowid().
        # (SQLite only picks random rowids after rowid 2**63-1 has been used.)
        return list(range(last_rowid - num_rows + 1, last_rowid + 1)) if num_rows else []

    def select_notifications(
        self,
        start: int | None,
        limit: int,
        stop: int | None = None,
        topics: Sequence[str] = (),
        *,
        inclusive_of_start: bool = True,
    ) -> list[Notification]:
        """Return notifications ordered by id, from ``start``, up to ``stop``, ``limit``."""
        params: list[Any] = []
        if start is not None:
            params.append(start)
        if stop is not None:
            params.append(stop)
        if topics:
            params += topics
        params.append(limit)
        statement = self._get_select_notifications_statement(
            start is not None and not inclusive_of_start,
            start is not None and inclusive_of_start,
            stop is not None,
            len(topics),
        )
        rows = self.datastore.read(statement, params)
        if self.datastore.originator_id_type != "uuid":
            return [Notification(i, v, t, s, n) for i, v, t, s, n in rows]
        # Neighbouring notifications often share an originator: convert each id once.
        uuids: dict[str, UUID] = {}
        notifications = []
        for i, v, t, s, n in rows:
            originator_id = uuids.get(i)
            if originator_id is None:
                originator_id = uuids[i] = UUID(i)
            notifications.append(Notification(originator_id, v, t, s, n))
        return notifications

    def max_notification_id(self) -> int | None:
        """Return the largest notification id, or None if there are no events."""
        rows = self.datastore.read(self.select_max_notification_id_statement, ())
        return rows[0][0]  # type: ignore[no-any-return]

    def subscribe(self, gt: int | None = None, topics: Sequence[str] = ()) -> SQLiteSubscription:
        """Return a subscription to notifications after ``gt``, filtered by ``topics``.

        9.5.6 difference: SQLite subscriptions.
        """
        return SQLiteSubscription(recorder=self, gt=gt, topics=topics)

    def _get_select_notifications_statement(
        self, gt: bool, gte: bool, lte: bool, num_topics: int
    ) -> str:
        key = (gt, gte, lte, num_topics)
        statement = self._select_notifications_statements.get(key)
        if statement is None:
            conditions = []
            if gt:
                conditions.append("rowid>?")
            if gte:
                conditions.append("rowid>=?")
            if lte:
                conditions.append("rowid<=?")
            if num_topics:
                conditions.append(f"topic IN ({','.join('?' * num_topics)})")
            where = f" WHERE {' AND '.join(conditions)}" if conditions else ""
            statement = (
                "SELECT originator_id, originator_version, topic, state, rowid "
                f"FROM {self.events_table_name}{where} ORDER BY rowid LIMIT ?"
            )
            self._select_notifications_statements[key] = statement
        return statement


class SQLiteSubscription(ListenNotifySubscription[SQLiteApplicationRecorder]):
    """Subscription to an SQLite application recorder.

    It is woken after every write through the recorder's datastore, and also every
    ``poll_interval`` seconds, so that writes from other processes (or other datastores)
    are seen.
    """

    poll_interval: float = 0.05

    def _listen(self) -> None:
        self._stop_polling = Event()
        self._datastore = self._recorder.datastore
        self._datastore.add_waker(self._has_been_notified)
        self._poll_thread = Thread(target=self._poll, daemon=True)
        self._poll_thread.start()

    def stop(self) -> None:
        """Stop the subscription: iteration ends and the background threads finish."""
        if hasattr(self, "_stop_polling"):
            self._stop_polling.set()
            self._datastore.remove_waker(self._has_been_notified)
        super().stop()

    def _poll(self) -> None:
        while not self._stop_polling.wait(self.poll_interval):
            self._has_been_notified.set()


# The library's own _insert_events (the process recorder's is added where it is defined):
# a recorder class with another one has extended it.
_LIBRARY_INSERT_EVENTS: set[Callable[..., Any]] = {
    SQLiteAggregateRecorder._insert_events,
    SQLiteApplicationRecorder._insert_events,
}
