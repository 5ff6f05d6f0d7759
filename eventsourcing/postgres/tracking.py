"""The tracking recorder: the position processed so far, per upstream application."""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from typing import Any, Literal

from psycopg import Connection, Cursor
from psycopg.rows import DictRow
from psycopg.sql import SQL
from psycopg.sql import Literal as SQLLiteral

from eventsourcing.persistence import (
    IntegrityError,
    OperationalError,
    ProgrammingError,
    Tracking,
    TrackingRecorder,
)
from eventsourcing.postgres.datastore import PostgresDatastore, _Backoff
from eventsourcing.postgres.errors import _OutcomeUnknownError
from eventsourcing.postgres.identifiers import NO_PARAMS, clip_identifier, quoted
from eventsourcing.postgres.recorder import _TABLE_OPTIONS, PostgresRecorder
from eventsourcing.postgres.saves import _bind, _PendingSave
from eventsourcing.postgres.scripts import _committing, _fetch


class PostgresTrackingRecorder(PostgresRecorder, TrackingRecorder):
    """Records, per upstream application, the position processed so far.

    Single-row tracking (the default) keeps one row per application, only ever moved
    forwards; a marker row ``("__migration__", 1)`` says the table has this layout. An
    older multi-row table is migrated when the table is created: it is renamed to
    ``bkup1_<name>`` and each application's maximum is copied into a new table.
    """

    table_migration_identifier = "__migration__"

    def __init__(
        self,
        datastore: PostgresDatastore,
        *,
        tracking_table_name: str = "notification_tracking",
        **kwargs: Any,
    ) -> None:
        """Use table ``tracking_table_name`` (other keyword arguments go to base classes)."""
        super().__init__(datastore, **kwargs)
        self.check_identifier_length(tracking_table_name)
        self.tracking_table_name = tracking_table_name
        self._tracking_table = self.qualified(tracking_table_name)
        self._multi_row_checked = False
        self.tracking_table_exists = False
        self.tracking_migration_previous: int | None = None
        self.tracking_migration_current: int | None = None
        primary_key = (
            "application_name"
            if datastore.single_row_tracking
            else ("application_name, notification_id")
        )
        self.sql_create_statements.append(
            SQL(
                "CREATE TABLE IF NOT EXISTS {} (application_name text, notification_id bigint, "
                "PRIMARY KEY (" + primary_key + "))" + _TABLE_OPTIONS
            ).format(self._tracking_table)
        )
        if datastore.single_row_tracking:
            # 9.x's statement, kept for code that uses it: one notification, only forwards.
            self.insert_tracking_statement = SQL(
                "INSERT INTO {0} AS t VALUES (%(application_name)s, %(notification_id)s) "
                "ON CONFLICT (application_name) DO UPDATE "
                "SET notification_id = EXCLUDED.notification_id "
                "WHERE t.notification_id < EXCLUDED.notification_id RETURNING notification_id"
            ).format(self._tracking_table)
            # What the recorder runs: a compare-and-set. The row moves to the new position
            # only if it is still before the first notification the record covers (the
            # row lock serialises concurrent writers, 9.x's included).
            self._record_tracking_statement = SQL(
                "INSERT INTO {0} AS t VALUES (%s, %s) ON CONFLICT (application_name) DO UPDATE "
                "SET notification_id = EXCLUDED.notification_id "
                "WHERE t.notification_id < %s RETURNING notification_id"
            ).format(self._tracking_table)
            # The same, failing when refused (1 / 0 rows recorded), for scripts that
            # end in COMMIT: the server then skips the rest of the script.
            self._checked_tracking_statement = SQL(
                "WITH recorded AS ({}) SELECT 1 / count(*) FROM recorded"
            ).format(self._record_tracking_statement)
        else:
            self.insert_tracking_statement = SQL(
                "INSERT INTO {} VALUES (%(application_name)s, %(notification_id)s)"
            ).format(self._tracking_table)
            # A row per notification: overlapping records collide on the primary key.
            self._record_tracking_statement = SQL(
                "INSERT INTO {} SELECT %s, unnest(%s::bigint[]) RETURNING notification_id"
            ).format(self._tracking_table)
            self._checked_tracking_statement = self._record_tracking_statement  # collides
        self.max_tracking_id_statement = SQL(
            "SELECT MAX(notification_id) FROM {} WHERE application_name = %s"
        ).format(self._tracking_table)

    def create_table(self) -> None:
        """Create (or migrate) the tracking table, and the base classes' tables.

        Notes what it found as 9.x does: ``tracking_table_exists``, and the layout version
        before and after (``tracking_migration_previous`` and ``_current``: 1 for the
        single-row layout, None for the multi-row one).
        """
        self.datastore.run(self._create_schema)
        migration = self._migration_state()
        self.tracking_table_exists = migration != "absent"
        previous = None if migration == "absent" else migration
        self.tracking_migration_previous = self.tracking_migration_current = previous
        super().create_table()
        if self.datastore.single_row_tracking:
            self.tracking_migration_current = 1
        if not self.datastore.single_row_tracking and migration not in (None, "absent"):
            raise OperationalError(
                "Can't do multi-row tracking with single-row tracking table "
                f"{self.tracking_table_name!r}: set SINGLE_ROW_TRACKING=t"
            )

    def _migration_state(self) -> int | Literal["absent"] | None:
        try:
            return self.max_tracking_id(self.table_migration_identifier)
        except ProgrammingError:  # no table yet
            return "absent"

    def _create_table(self, curs: Cursor[DictRow]) -> None:
        maxima: dict[str, int] = {}
        exists = self._table_exists(curs)
        if self.datastore.single_row_tracking and exists and not self._is_migrated(curs):
            maxima = self._move_multi_row_table(curs)
            exists = False
        super()._create_table(curs)
        if self.datastore.single_row_tracking and not exists:
            self._upsert(curs, self.table_migration_identifier, 1)
            for application_name, notification_id in maxima.items():
                self._upsert(curs, application_name, notification_id)

    def _table_exists(self, curs: Cursor[DictRow]) -> bool:
        row = curs.execute(
            "SELECT 1 AS found FROM pg_tables WHERE schemaname = %s AND tablename = %s",
            (self.datastore.schema, self.tracking_table_name),
        ).fetchone()
        return row is not None

    def _is_migrated(self, curs: Cursor[DictRow]) -> bool:
        curs.execute(self.max_tracking_id_statement, (self.table_migration_identifier,))
        row = curs.fetchone()
        return row is not None and bool(row["max"])

    def _move_multi_row_table(self, curs: Cursor[DictRow]) -> dict[str, int]:
        """Rename a multi-row table to bkup1_<name>; return each application's maximum."""
        lock_timeout = SQLLiteral(f"{self.datastore.lock_timeout}s")
        curs.execute(SQL("SET LOCAL lock_timeout = {}").format(lock_timeout), NO_PARAMS)
        curs.execute(
            SQL("LOCK TABLE {} IN ACCESS EXCLUSIVE MODE").format(self._tracking_table), NO_PARAMS
        )
        rows = curs.execute(
            SQL(
                "SELECT application_name, MAX(notification_id) AS max FROM {} "
                "GROUP BY application_name"
            ).format(self._tracking_table),
            NO_PARAMS,
        ).fetchall()
        backup = clip_identifier(f"bkup1_{self.tracking_table_name}")
        curs.execute(
            SQL("ALTER TABLE {} RENAME TO {}").format(self._tracking_table, quoted(backup)),
            NO_PARAMS,
        )
        return {row["application_name"]: row["max"] for row in rows}

    def _upsert(self, curs: Cursor[Any], application_name: str, notification_id: int) -> bool:
        curs.execute(
            self._record_tracking_statement,
            self._tracking_params(Tracking(application_name, notification_id)),
        )
        return curs.fetchone() is not None

    def _tracking_params(self, tracking: Tracking) -> tuple[Any, ...]:
        """The parameters of ``_record_tracking_statement`` that record ``tracking``."""
        name = tracking.application_name
        if self.datastore.single_row_tracking:
            return name, tracking.notification_id, tracking.first_notification_id()
        return name, list(tracking.notification_ids())

    def _insert_tracking(self, curs: Cursor[DictRow], tracking: Tracking) -> None:
        """Record ``tracking`` with the cursor of a transaction the caller manages.

        Custom views call it inside ``with self.datastore.transaction(commit=True) as
        curs:``, so that the view's rows and the position commit together (as in 9.x).
        Raises :class:`IntegrityError` if the position was recorded already.
        """
        self._check_multi_row_table(curs.connection)
        curs.execute(self._record_tracking_statement, self._tracking_params(tracking))
        if self.datastore.single_row_tracking and curs.fetchone() is None:
            raise self._tracking_refused_error(_PendingSave((), tracking))

    def insert_tracking(self, tracking: Tracking) -> None:
        """Record ``tracking``; IntegrityError if it isn't after the recorded position."""
        save = _PendingSave((), tracking)
        self._write_tracking(save)
        save.result()

    def _write_tracking(self, save: _PendingSave) -> None:
        assert save.tracking is not None
        tracking = save.tracking

        def attempt(conn: Connection[DictRow], saves: list[_PendingSave]) -> None:
            """Upsert the tracking record, deciding the save."""
            self._check_multi_row_table(conn)
            # One statement in autocommit mode: atomic, and one round trip.
            with _committing(conn) as commit, conn.cursor() as curs:
                commit()
                curs.execute(self._record_tracking_statement, self._tracking_params(tracking))
                recorded = curs.fetchone() is not None
            if recorded:
                save.ids = []
            else:
                save.error = self._tracking_refused_error(save)

        _TrackingWriter(self).write([save], attempt)

    def _check_multi_row_table(self, conn: Connection[DictRow]) -> None:
        if self.datastore.single_row_tracking or self._multi_row_checked:
            return
        with conn.cursor() as curs:
            if self._table_exists(curs) and self._is_migrated(curs):
                raise ProgrammingError(
                    "Can't do multi-row tracking with single-row tracking table "
                    f"{self.tracking_table_name!r}: set SINGLE_ROW_TRACKING=t"
                )
        self._multi_row_checked = True

    def _tracking_refused_error(self, save: _PendingSave | None) -> IntegrityError:
        assert save is not None and save.tracking is not None
        t = save.tracking
        return IntegrityError(
            f"Failed to record tracking for {t.application_name} {t.notification_id}: "
            "that position was already recorded, or a later one was (the notification has "
            "been processed already)"
        )

    def max_tracking_id(self, application_name: str) -> int | None:
        """Return the highest position recorded for ``application_name``, or None."""
        rows = self.datastore.run(
            lambda conn: _fetch(conn, self.max_tracking_id_statement, (application_name,))
        )
        value: int | None = rows[0][0]
        return value

    def _tracking_is_stored(self, conn: Connection[DictRow], save: _PendingSave) -> bool:
        assert save.tracking is not None
        rows = _fetch(conn, self.max_tracking_id_statement, (save.tracking.application_name,))
        return rows[0][0] is not None and rows[0][0] >= save.tracking.notification_id


class _TrackingWriter:
    """Writes a tracking record with the same retry and recovery as events (see ``_write``)."""

    def __init__(self, recorder: PostgresTrackingRecorder) -> None:
        self.recorder = recorder

    def write(
        self,
        saves: list[_PendingSave],
        attempt: Callable[[Connection[DictRow], list[_PendingSave]], None],
    ) -> None:
        """Run ``attempt``; if its outcome is unknown, look, and retry if not recorded."""
        datastore = self.recorder.datastore
        backoff = _Backoff(datastore.connect_timeout)
        save = saves[0]
        while True:
            try:
                datastore.run(_bind(attempt, saves), backoff)
                return
            except _OutcomeUnknownError:
                if datastore.run(partial(self.recorder._tracking_is_stored, save=save)):
                    save.error, save.ids = None, []
                    return
                if not backoff.wait():
                    raise OperationalError(
                        f"The connection to {datastore.describe()} was lost while recording "
                        "tracking, and the retries ran out of time; retry"
                    ) from None
