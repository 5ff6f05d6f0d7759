"""The tracking recorder: the position processed so far, per upstream application."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from functools import partial
from typing import Any, Literal

from psycopg import Connection, Cursor
from psycopg.rows import DictRow
from psycopg.sql import SQL, Composed
from psycopg.sql import Literal as SQLLiteral

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
    ProgrammingError,
    Tracking,
    TrackingRecorder,
)
from eventsourcing.postgres.datastore import PostgresDatastore, _Backoff
from eventsourcing.postgres.errors import _OutcomeUnknownError
from eventsourcing.postgres.identifiers import NO_PARAMS, clip_identifier, quoted
from eventsourcing.postgres.recorder import _TABLE_OPTIONS, PostgresRecorder
from eventsourcing.postgres.saves import _bind, _PendingSave
from eventsourcing.postgres.scripts import _committing, _fetch, _Statement


class PostgresTrackingRecorder(PostgresRecorder, TrackingRecorder, FollowerStateRecorder):
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
        self._state = _FollowerStateTables(self, tracking_table_name)
        self.sql_create_statements.extend(self._state.create_statements())

    def _erase_statements(self) -> list[Composed]:
        return [
            *super()._erase_statements(),
            SQL("DELETE FROM {}").format(self._tracking_table),
            SQL("DELETE FROM {}").format(self._state.letters),
        ]

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

    def _tracking_statement(self, tracking: Tracking, *, checked: bool) -> _Statement:
        """The statement that records ``tracking`` (with its dead letters, or the retry of
        one); ``checked``: one that raises DivisionByZero if refused, for scripts."""
        if isinstance(tracking, RetryTracking):
            return self._state.resolve_statement(tracking, checked=checked)
        letters = getattr(tracking, "dead_letters", ())
        if letters:
            return self._state.park_statement(tracking, letters, checked=checked)
        if checked:
            return self._checked_tracking_statement, self._tracking_params(tracking)
        return self._record_tracking_statement, self._tracking_params(tracking)

    def _insert_tracking(self, curs: Cursor[DictRow], tracking: Tracking) -> None:
        """Record ``tracking`` with the cursor of a transaction the caller manages.

        Custom views call it inside ``with self.datastore.transaction(commit=True) as
        curs:``, so that the view's rows and the position commit together (as in 9.x).
        Raises :class:`IntegrityError` if the position was recorded already.
        """
        self._check_multi_row_table(curs.connection)
        curs.execute(*self._tracking_statement(tracking, checked=False))
        refusable = self.datastore.single_row_tracking or isinstance(tracking, RetryTracking)
        if refusable and curs.fetchone() is None:
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
                curs.execute(*self._tracking_statement(tracking, checked=False))
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
        if isinstance(t, RetryTracking):
            return IntegrityError(
                f"Failed to record the retry of {t.application_name} notification "
                f"{t.notification_id}: its dead letter is no longer waiting for a retry "
                "(another process retried or discarded it)"
            )
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
        if isinstance(save.tracking, RetryTracking):
            return self._state.is_resolved(conn, save.tracking)
        rows = _fetch(conn, self.max_tracking_id_statement, (save.tracking.application_name,))
        return rows[0][0] is not None and rows[0][0] >= save.tracking.notification_id


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
            "%s", statuses, leader_name, originator_id, notification_id
        )
        statement = SQL(
            "SELECT " + DEAD_LETTER_COLUMNS + " FROM {} WHERE " + where
            + " ORDER BY leader_name, notification_id"
        ).format(self._state.letters)  # fmt: skip
        rows = self.datastore.run(lambda conn: _fetch(conn, statement, params))
        return [DeadLetter(*row) for row in rows]

    def count_dead_letters(self) -> dict[tuple[str, str], int]:
        """How many dead letters there are, by leader name and status."""
        statement = SQL(
            "SELECT leader_name, status, COUNT(*) FROM {} GROUP BY 1, 2"
        ).format(self._state.letters)
        rows = self.datastore.run(lambda conn: _fetch(conn, statement, NO_PARAMS))
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
        keys = list(letters)
        statement = SQL(
            "UPDATE {} SET status = %s, reason = COALESCE(%s, reason) "
            "WHERE (leader_name, notification_id) IN "
            "(SELECT * FROM unnest(%s::text[], %s::bigint[])) AND status = ANY(%s)"
        ).format(self._state.letters)
        params = (status, reason, [k[0] for k in keys], [k[1] for k in keys],
                  list(from_statuses))  # fmt: skip
        return self.datastore.run(lambda conn: _execute(conn, statement, params))

    def update_dead_letter(self, letter: DeadLetter) -> None:
        """Write ``letter`` over the recorded letter of the same notification."""
        statement = SQL(
            "INSERT INTO {} (" + DEAD_LETTER_COLUMNS + ") VALUES (" + ", ".join(["%s"] * 13)
            + ") ON CONFLICT (leader_name, notification_id) DO UPDATE SET "
            + ", ".join(f"{c} = EXCLUDED.{c}" for c in _UPDATABLE)
        ).format(self._state.letters)  # fmt: skip
        self.datastore.run(lambda conn: _execute(conn, statement, dead_letter_row(letter)))

    def get_follower_setting(self, name: str) -> str | None:
        """The value of the follower setting ``name``, or None."""
        statement = SQL("SELECT value FROM {} WHERE name = %s").format(self._state.settings)
        rows = self.datastore.run(lambda conn: _fetch(conn, statement, (name,)))
        return rows[0][0] if rows else None

    def set_follower_setting(self, name: str, value: str | None) -> None:
        """Set (or, with None, remove) the follower setting ``name``."""
        table = self._state.settings
        params: tuple[str, ...] = (name,)
        statement = SQL("DELETE FROM {} WHERE name = %s").format(table)
        if value is not None:
            statement = SQL(
                "INSERT INTO {} (name, value) VALUES (%s, %s) "
                "ON CONFLICT (name) DO UPDATE SET value = EXCLUDED.value"
            ).format(table)
            params = (name, value)
        self.datastore.run(lambda conn: _execute(conn, statement, params))

    def reset_tracking(self, application_name: str, notification_id: int | None) -> None:
        """Make ``notification_id`` the position; remove the dead letters after it."""
        script = [
            SQL("DELETE FROM {} WHERE application_name = %s").format(self._tracking_table),
            SQL("INSERT INTO {} (application_name, notification_id) "
                "SELECT %s, %s::bigint WHERE %s::bigint IS NOT NULL").format(self._tracking_table),
            SQL("DELETE FROM {} WHERE leader_name = %s AND notification_id > %s").format(
                self._state.letters),
        ]  # fmt: skip
        params = [
            (application_name,),
            (application_name, notification_id, notification_id),
            (application_name, notification_id or 0),
        ]

        def reset(conn: Connection[DictRow]) -> None:
            with conn.transaction(), conn.cursor() as curs:
                for statement, statement_params in zip(script, params, strict=True):
                    curs.execute(statement, statement_params)

        self.datastore.run(reset)


_UPDATABLE = DEAD_LETTER_COLUMNS.split(", ")[2:]


def _execute(conn: Connection[DictRow], statement: Composed, params: Sequence[Any]) -> int:
    """Run one statement in its own transaction; return how many rows it changed."""
    with conn.transaction(), conn.cursor() as curs:
        curs.execute(statement, params)
        return curs.rowcount


class _FollowerStateTables:
    """The tables of a follower's dead letters and settings, beside its tracking table.

    They are created with the tracking table; 9.5.6 neither makes nor reads them, so a
    database either library wrote still works with the other (9.5.6 difference: follower
    state tables).
    """

    def __init__(self, recorder: PostgresTrackingRecorder, tracking_table_name: str) -> None:
        base = tracking_table_name.removesuffix("_tracking")
        self.letters_name = clip_identifier(f"{base}_dead_letters")
        self.settings_name = clip_identifier(f"{base}_follower_settings")
        self.letters = recorder.qualified(self.letters_name)
        self.settings = recorder.qualified(self.settings_name)
        self.tracking = recorder

    def create_statements(self) -> list[Composed]:
        return [
            SQL(
                "CREATE TABLE IF NOT EXISTS {} (leader_name text, notification_id bigint, "
                "originator_id text, originator_version bigint, topic text, error_type text, "
                "error_message text, traceback text, attempts integer, "
                "first_failed_at timestamptz, last_failed_at timestamptz, status text, "
                "reason text, PRIMARY KEY (leader_name, notification_id))" + _TABLE_OPTIONS
            ).format(self.letters),
            SQL(
                "CREATE TABLE IF NOT EXISTS {} (name text PRIMARY KEY, value text)"
                + _TABLE_OPTIONS
            ).format(self.settings),
        ]

    def park_statement(
        self, tracking: Tracking, letters: Sequence[DeadLetter], *, checked: bool
    ) -> _Statement:
        """Record ``tracking`` and, only if it is accepted, insert ``letters``."""
        recorder = self.tracking
        columns = list(zip(*map(dead_letter_row, letters), strict=True))
        statement = SQL(
            "WITH recorded AS ({record}), parked AS (INSERT INTO {letters} ("
            + DEAD_LETTER_COLUMNS + ") SELECT * FROM unnest(%s::text[], %s::bigint[], "
            "%s::text[], %s::bigint[], %s::text[], %s::text[], %s::text[], %s::text[], "
            "%s::integer[], %s::timestamptz[], %s::timestamptz[], %s::text[], %s::text[]) "
            "WHERE EXISTS (SELECT 1 FROM recorded) RETURNING 1) "
            + ("SELECT 1 / count(*) FROM recorded" if checked
               else "SELECT notification_id FROM recorded")
        ).format(record=recorder._record_tracking_statement, letters=self.letters)  # fmt: skip
        params = (*recorder._tracking_params(tracking), *map(list, columns))
        return statement, params

    def resolve_statement(self, tracking: Tracking, *, checked: bool) -> _Statement:
        """Move the retried letter from retrying to resolved (refused if it isn't retrying)."""
        update = SQL(
            "UPDATE {} SET status = %s WHERE leader_name = %s AND notification_id = %s "
            "AND status = %s RETURNING notification_id"
        ).format(self.letters)
        statement = (
            SQL("WITH resolved AS ({}) SELECT 1 / count(*) FROM resolved").format(update)
            if checked
            else update
        )
        params = (RESOLVED, tracking.application_name, tracking.notification_id, RETRYING)
        return statement, params

    def is_resolved(self, conn: Connection[DictRow], tracking: Tracking) -> bool:
        """Whether the retry of ``tracking``'s letter was recorded (after a lost reply)."""
        statement = SQL(
            "SELECT status FROM {} WHERE leader_name = %s AND notification_id = %s"
        ).format(self.letters)
        rows = _fetch(conn, statement, (tracking.application_name, tracking.notification_id))
        return bool(rows) and rows[0][0] == RESOLVED


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
