"""The tracking and process recorders: positions in upstream logs, recorded with events."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterable, Sequence
from datetime import datetime
from typing import Any

from eventsourcing.deadletters import (
    DEAD_LETTER_COLUMNS,
    OPEN_STATUSES,
    RESOLVED,
    RETRYING,
    DeadLetter,
    FollowerStateRecorder,
    RetryTracking,
    dead_letter_filter,
    dead_letter_row,
)
from eventsourcing.persistence import (
    IntegrityError,
    OperationalError,
    ProcessRecorder,
    StoredEvent,
    Tracking,
    TrackingRecorder,
)
from eventsourcing.sqlite.connections import Row, SQLiteCursor
from eventsourcing.sqlite.datastore import SQLiteDatastore
from eventsourcing.sqlite.recorders import (
    _LIBRARY_INSERT_EVENTS,
    SQLiteApplicationRecorder,
    SQLiteRecorder,
)


class SQLiteTrackingRecorder(SQLiteRecorder, TrackingRecorder, FollowerStateRecorder):
    """Records the position reached in each upstream application's notification log.

    Single-row tracking (the default) keeps one row per application name and only lets it
    increase. Multi-row tracking keeps one row per processed notification. A multi-row
    table is migrated to single-row form by ``create_table()`` when single-row tracking is
    configured: the old table is renamed ``old1_tracking`` and the maxima are copied.
    """

    table_migration_identifier = "__migration__"

    def __init__(self, datastore: SQLiteDatastore, **kwargs: Any) -> None:
        super().__init__(datastore, **kwargs)
        self.tracking_table_exists = False
        self.tracking_migration_previous: int | None = None
        self.tracking_migration_current: int | None = None
        self.has_checked_for_multi_row_tracking_table = False
        if self.datastore.single_row_tracking:
            # 9.x's statement, kept for code that uses it: one notification, only forwards.
            self.insert_tracking_statement = (
                "INSERT INTO tracking VALUES (:application_name, :notification_id) "
                "ON CONFLICT (application_name) DO UPDATE "
                "SET notification_id=excluded.notification_id "
                "WHERE tracking.notification_id<excluded.notification_id "
                "RETURNING notification_id"
            )
            # What the recorder runs: a compare-and-set on the first notification covered.
            self._record_tracking_statement = (
                "INSERT INTO tracking (application_name, notification_id) VALUES (?,?) "
                "ON CONFLICT (application_name) DO UPDATE "
                "SET notification_id=excluded.notification_id "
                "WHERE tracking.notification_id<? "
                "RETURNING notification_id"
            )
        else:
            self.insert_tracking_statement = (
                "INSERT INTO tracking VALUES (:application_name, :notification_id)"
            )
            self._record_tracking_statement = (
                "INSERT INTO tracking (application_name, notification_id) VALUES (?,?)"
            )
        self.select_max_tracking_id_statement = (
            "SELECT MAX(notification_id) FROM tracking WHERE application_name=?"
        )

    def construct_create_table_statements(self) -> list[str]:
        """Return the statement that creates the tracking table."""
        key = (
            "application_name"
            if self.datastore.single_row_tracking
            else ("application_name, notification_id")
        )
        return [
            *super().construct_create_table_statements(),
            "CREATE TABLE IF NOT EXISTS tracking ("
            "application_name TEXT, "
            "notification_id INTEGER, "
            f"PRIMARY KEY ({key})) "
            "WITHOUT ROWID",
            *_FOLLOWER_STATE_TABLES,
        ]

    def _erase_statements(self) -> list[str]:
        statements = ["DELETE FROM tracking", "DELETE FROM dead_letters"]
        return [*super()._erase_statements(), *statements]

    def insert_tracking(self, tracking: Tracking) -> None:
        """Record that ``tracking.notification_id`` has been processed."""
        self.datastore.write(
            lambda cursor: self._insert_tracking(cursor, tracking), transaction=False
        )

    def max_tracking_id(self, application_name: str) -> int | None:
        """Return the largest notification id recorded for an application, or None."""
        rows = self.datastore.read(self.select_max_tracking_id_statement, (application_name,))
        return rows[0][0]  # type: ignore[no-any-return]

    # -- internals ---------------------------------------------------------------------

    def _create_table(self, cursor: sqlite3.Cursor) -> None:
        exists = _table_exists(cursor, "tracking")
        marker = self._read_marker(cursor) if exists else None
        self.tracking_table_exists = exists
        self.tracking_migration_previous = self.tracking_migration_current = marker
        single_row = self.datastore.single_row_tracking
        if not single_row and marker is not None:
            msg = "Can't do multi-row tracking with single-row tracking table"
            raise OperationalError(msg)
        maxima: list[Row] = []
        needs_marker = single_row and marker is None
        if needs_marker and exists:
            maxima = self._move_multi_row_table(cursor)
        super()._create_table(cursor)
        if needs_marker:
            for name, notification_id in [(self.table_migration_identifier, 1), *maxima]:
                self._insert_tracking(cursor, Tracking(name, notification_id))
            self.tracking_migration_current = 1

    def _read_marker(self, cursor: sqlite3.Cursor) -> int | None:
        return self._max_tracking_id(self.table_migration_identifier, cursor)

    @staticmethod
    def _move_multi_row_table(cursor: sqlite3.Cursor) -> list[Row]:
        """Rename a multi-row tracking table out of the way; return its maxima."""
        cursor.execute(
            "SELECT application_name, MAX(notification_id) FROM tracking GROUP BY application_name"
        )
        maxima = cursor.fetchall()
        number = 1
        while _table_exists(cursor, f"old{number}_tracking"):
            number += 1
        cursor.execute(f"ALTER TABLE tracking RENAME TO old{number}_tracking")
        return maxima

    def _insert_tracking(self, c: SQLiteCursor | sqlite3.Cursor, tracking: Tracking) -> None:
        """Record ``tracking`` with the cursor of a transaction the caller manages.

        Subclasses that update their own tables call this inside
        ``with self.datastore.transaction(commit=True) as c:`` so that both commit together.
        """
        cursor = c.sqlite_cursor if isinstance(c, SQLiteCursor) else c
        if isinstance(tracking, RetryTracking):
            _resolve_retried_letter(cursor, tracking)
            return
        self._record_position(cursor, tracking)
        letters = getattr(tracking, "dead_letters", ())
        if letters:
            cursor.executemany(_INSERT_DEAD_LETTER, [_letter_row(d) for d in letters])

    def _record_position(self, cursor: sqlite3.Cursor, tracking: Tracking) -> None:
        name, notification_id = tracking.application_name, tracking.notification_id
        if not self.datastore.single_row_tracking:
            # A row per notification: overlapping batches collide on the primary key.
            self._check_has_multi_row_tracking_table(cursor)
            rows = [(name, i) for i in tracking.notification_ids()]
            cursor.executemany(self._record_tracking_statement, rows)
            return
        # A compare-and-set: nothing from the first notification on may be recorded yet.
        params = (name, notification_id, tracking.first_notification_id())
        # fetchall() (not fetchone) so that the statement completes and commits.
        if not cursor.execute(self._record_tracking_statement, params).fetchall():
            msg = (
                f"Failed to record tracking for {name} {notification_id}: a position at or "
                f"after notification {tracking.first_notification_id()} is already recorded "
                f"for {name!r} (the notification was probably processed already)"
            )
            raise IntegrityError(msg)

    def _max_tracking_id(
        self, application_name: str, c: SQLiteCursor | sqlite3.Cursor
    ) -> int | None:
        """Return the largest notification id recorded for an application, using ``c``."""
        c.execute(self.select_max_tracking_id_statement, (application_name,))
        return c.fetchone()[0]  # type: ignore[no-any-return]

    def _check_has_multi_row_tracking_table(self, cursor: sqlite3.Cursor) -> None:
        if self.has_checked_for_multi_row_tracking_table:
            return
        if self._read_marker(cursor):
            msg = (
                "Can't do multi-row tracking with single-row tracking table (the 'tracking' "
                "table was migrated to single-row tracking; set SINGLE_ROW_TRACKING=t)"
            )
            raise OperationalError(msg)
        self.has_checked_for_multi_row_tracking_table = True


    # -- follower state (see eventsourcing.deadletters) ---------------------------------

    def select_dead_letters(
        self,
        *,
        leader_name: str | None = None,
        statuses: Sequence[str] = OPEN_STATUSES,
        originator_id: str | None = None,
        notification_id: int | None = None,
    ) -> list[DeadLetter]:
        """The dead letters that match, in order of leader name and notification id."""
        where, params = dead_letter_filter(
            "?", statuses, leader_name, originator_id, notification_id
        )
        statement = (
            f"SELECT {DEAD_LETTER_COLUMNS} FROM dead_letters WHERE {where} "
            "ORDER BY leader_name, notification_id"
        )
        return [_letter_of_row(row) for row in self.datastore.read(statement, params)]

    def count_dead_letters(self) -> dict[tuple[str, str], int]:
        """How many dead letters there are, by leader name and status."""
        rows = self.datastore.read(
            "SELECT leader_name, status, COUNT(*) FROM dead_letters GROUP BY 1, 2", ()
        )
        return {(leader, status): count for leader, status, count in rows}

    def set_dead_letter_status(
        self,
        letters: Iterable[tuple[str, int]],
        status: str,
        *,
        from_statuses: Sequence[str],
        reason: str | None = None,
    ) -> int:
        """Move the matching letters to ``status``; return how many moved."""
        marks = ",".join("?" * len(from_statuses))
        statement = (
            "UPDATE dead_letters SET status=?, reason=COALESCE(?, reason) "
            f"WHERE leader_name=? AND notification_id=? AND status IN ({marks})"
        )
        keys = list(letters)

        def move(cursor: sqlite3.Cursor) -> int:
            moved = 0
            for leader_name, number in keys:
                cursor.execute(statement, (status, reason, leader_name, number, *from_statuses))
                moved += cursor.rowcount
            return moved

        return self.datastore.write(move, transaction=True)

    def update_dead_letter(self, letter: DeadLetter) -> None:
        """Write ``letter`` over the recorded letter of the same notification."""
        self.datastore.write(
            lambda cursor: cursor.execute(_REPLACE_DEAD_LETTER, _letter_row(letter)),
            transaction=False,
        )

    def get_follower_setting(self, name: str) -> str | None:
        """The value of the follower setting ``name``, or None."""
        rows = self.datastore.read("SELECT value FROM follower_settings WHERE name=?", (name,))
        return rows[0][0] if rows else None

    def set_follower_setting(self, name: str, value: str | None) -> None:
        """Set (or, with None, remove) the follower setting ``name``."""
        params: tuple[str, ...] = (name,)
        statement = "DELETE FROM follower_settings WHERE name=?"
        if value is not None:
            statement = "INSERT OR REPLACE INTO follower_settings (name, value) VALUES (?, ?)"
            params = (name, value)
        self.datastore.write(lambda cursor: cursor.execute(statement, params), transaction=False)

    def reset_tracking(self, application_name: str, notification_id: int | None) -> None:
        """Make ``notification_id`` the position; remove the dead letters after it."""

        def reset(cursor: sqlite3.Cursor) -> None:
            name = application_name
            cursor.execute("DELETE FROM tracking WHERE application_name=?", (name,))
            if notification_id is not None:
                cursor.execute(
                    "INSERT INTO tracking (application_name, notification_id) VALUES (?, ?)",
                    (name, notification_id),
                )
            cursor.execute(
                "DELETE FROM dead_letters WHERE leader_name=? AND notification_id>?",
                (name, notification_id or 0),
            )

        self.datastore.write(reset, transaction=True)


_FOLLOWER_STATE_TABLES = [
    "CREATE TABLE IF NOT EXISTS dead_letters ("
    "leader_name TEXT, notification_id INTEGER, originator_id TEXT, "
    "originator_version INTEGER, topic TEXT, error_type TEXT, error_message TEXT, "
    "traceback TEXT, attempts INTEGER, first_failed_at TEXT, last_failed_at TEXT, "
    "status TEXT, reason TEXT, PRIMARY KEY (leader_name, notification_id)) WITHOUT ROWID",
    "CREATE TABLE IF NOT EXISTS follower_settings (name TEXT PRIMARY KEY, value TEXT) "
    "WITHOUT ROWID",
]
_INSERT_DEAD_LETTER = (
    f"INSERT INTO dead_letters ({DEAD_LETTER_COLUMNS}) VALUES ({'?,' * 12}?)"
)
_REPLACE_DEAD_LETTER = _INSERT_DEAD_LETTER.replace("INSERT", "INSERT OR REPLACE", 1)


def _letter_row(letter: DeadLetter) -> tuple[Any, ...]:
    row = dead_letter_row(letter)
    return (*row[:9], row[9].isoformat(), row[10].isoformat(), *row[11:])


def _letter_of_row(row: Row) -> DeadLetter:
    values = list(row)
    values[9] = datetime.fromisoformat(values[9])
    values[10] = datetime.fromisoformat(values[10])
    return DeadLetter(*values)


def _resolve_retried_letter(cursor: sqlite3.Cursor, tracking: Tracking) -> None:
    """The compare-and-set of a retry: the letter must still be waiting for it."""
    cursor.execute(
        "UPDATE dead_letters SET status=? WHERE leader_name=? AND notification_id=? "
        "AND status=?",
        (RESOLVED, tracking.application_name, tracking.notification_id, RETRYING),
    )
    if cursor.rowcount != 1:
        msg = (
            f"Failed to record the retry of {tracking.application_name} notification "
            f"{tracking.notification_id}: its dead letter is no longer waiting for a retry "
            "(another process retried or discarded it)"
        )
        raise IntegrityError(msg)


def _table_exists(cursor: sqlite3.Cursor, name: str) -> bool:
    cursor.execute("SELECT 1 FROM sqlite_master WHERE type='table' AND name=?", (name,))
    return bool(cursor.fetchall())


class SQLiteProcessRecorder(SQLiteTrackingRecorder, SQLiteApplicationRecorder, ProcessRecorder):
    """Records new events together with the tracking record of the event processed."""

    def __init__(
        self, datastore: SQLiteDatastore, *, events_table_name: str = "stored_events"
    ) -> None:
        super().__init__(datastore, events_table_name=events_table_name)

    def insert_events(
        self, stored_events: Sequence[StoredEvent], **kwargs: Any
    ) -> Sequence[int] | None:
        """Insert events and the optional ``tracking`` record in one transaction."""
        if self._has_insert_hook:
            return self._write_through_hook(stored_events, kwargs)
        tracking: Tracking | None = kwargs.get("tracking")
        last = self._write_events(stored_events, tracking)
        return self._notification_ids(last, len(stored_events))

    def _insert_events(
        self, c: SQLiteCursor | sqlite3.Cursor, stored_events: Sequence[StoredEvent], **kwargs: Any
    ) -> Sequence[int] | None:
        """Insert events and the ``tracking=`` record with the transaction's cursor.

        See :meth:`SQLiteAggregateRecorder._insert_events` for extending it.
        """
        last = self._insert_rows_with(c, stored_events, kwargs.get("tracking"))
        return self._notification_ids(last, len(stored_events))


_LIBRARY_INSERT_EVENTS.add(SQLiteProcessRecorder._insert_events)
