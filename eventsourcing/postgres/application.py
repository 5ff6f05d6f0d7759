"""The application recorder: notification ids issued in commit order.

Concurrent saves of one recorder are committed together (see its docstring).
"""

from __future__ import annotations

import logging
import random
from collections.abc import Sequence
from time import sleep
from typing import Any

import psycopg
import psycopg.errors
from psycopg import Connection
from psycopg.rows import DictRow
from psycopg.sql import SQL, Composed, Identifier
from psycopg.sql import Literal as SQLLiteral

from eventsourcing.persistence import (
    ApplicationRecorder,
    IntegrityError,
    Notification,
    PersistenceError,
    ProgrammingError,
    StoredEvent,
    Subscription,
    Tracking,
)
from eventsourcing.postgres.aggregate import PostgresAggregateRecorder
from eventsourcing.postgres.datastore import PostgresDatastore
from eventsourcing.postgres.errors import (
    _is_rolled_back,
    _OutcomeUnknownError,
    _SaveRefusedError,
    is_connection_failure,
)
from eventsourcing.postgres.identifiers import NO_PARAMS, _pg_quote, clip_identifier, quoted
from eventsourcing.postgres.saves import _PendingSave, _SaveCoalescer
from eventsourcing.postgres.scripts import (
    _BEGIN,
    _COMMIT,
    _ROLLBACK_TO_SAVEPOINT,
    _SAVEPOINT,
    _committing,
    _fetch,
    _rollback_quietly,
    _run_script,
    _Statement,
)

logger = logging.getLogger(__name__)


# How often a batch is tried when the server rolls it back (deadlock, serialization).
_ROLLBACK_RETRIES = 5


class PostgresApplicationRecorder(PostgresAggregateRecorder, ApplicationRecorder):
    """Stores events with notification ids, and tells listeners when new ones commit.

    Ordering. Notification ids come from a sequence when rows are inserted, but
    transactions commit in another order: a reader tailing the log by id could read id 7,
    move on, and never see id 6 committed a moment later. So, as ``eventsourcing`` 9.x does,
    each writing transaction takes ``LOCK TABLE ... IN EXCLUSIVE MODE`` before inserting and
    holds it until it commits: ids are then issued in commit order, and a reader never
    skips one. (The lock doesn't block readers. Using the same lock as 9.x keeps the
    guarantee when both libraries write to one table.)

    Cost, and what we do about it. The lock is held through each commit's WAL flush, so
    writers queue up, one flush each. Instead of giving every save its own transaction,
    the saves that threads of this recorder make at the same moment are coalesced
    (:class:`_SaveCoalescer`) into one transaction: one lock, one flush, one NOTIFY for all
    of them, their events sent in one ``INSERT`` (or ``COPY``, for many events) in one
    round trip. If any save of a batch fails (a version conflict, a refused tracking
    record), the batch is redone with a savepoint per save, so the conflict fails only its
    own save and the others commit. Processes coalesce their own threads' saves and take
    turns at the lock.

    Measured on a 2-core machine with ~0.1 ms fsync (new aggregates of one event per save,
    best of two 3 s runs), saves per second::

                                           1 thread   16 threads
        coalesced saves + lock (this)         1,745        9,532
        a transaction per save + lock (9.x)   1,673        1,493
        a transaction per save, no lock       1,675        1,698   (unsafe: skips ids)
        coalesced, no lock                    1,877        9,613   (unsafe: skips ids)

    So the lock itself costs little here (about 1% when coalescing, 12% without), and
    coalescing gives 6x with 16 threads; on disks with slower flushes the lock costs
    each uncoalesced save a whole flush, and coalescing saves more.

    Gaps. A failed or rolled-back insert uses up sequence values, so ids can have gaps;
    they are never filled in later.
    """

    _inserts_return_ids = True

    #: Most saves committed in one transaction (1 turns coalescing off).
    max_coalesced_saves = 100

    #: Batches of at least this many events are sent with binary COPY (faster for many
    #: rows; one more round trip).
    copy_threshold = 64

    #: Statements run after a batch's ids are issued and before COMMIT (none by default;
    #: tests add a server-side delay here, to widen the window between the two).
    before_commit_statements: Sequence[SQL | Composed] = ()

    def __init__(
        self, datastore: PostgresDatastore, *, events_table_name: str = "stored_events"
    ) -> None:
        """Use table ``events_table_name``; its NOTIFY channel is derived from the name."""
        super().__init__(datastore, events_table_name=events_table_name)
        self.sql_create_statements[self.create_table_statement_index] = (
            self._create_events_table_statement(True)
        )
        self.sql_create_statements.append(
            SQL("CREATE UNIQUE INDEX IF NOT EXISTS {} ON {} (notification_id ASC)").format(
                quoted(self.notification_id_index_name), self._table
            )
        )
        # The same channel as 9.x, so that listeners of either library hear both.
        self.channel_name = clip_identifier(events_table_name.replace(".", "_"))
        self.pg_function_name_insert_events = f"es_insert_events_{datastore.originator_id_type}"
        if datastore.enable_db_functions:
            self.sql_create_statements.append(self._create_function_statement())
        self.insert_events_statement = self._insert_statement(returning=True)
        self.max_notification_id_statement = SQL("SELECT MAX(notification_id) FROM {}").format(
            self._table
        )
        self.lock_table_statements: list[Composed] = [
            SQL("SET LOCAL lock_timeout = {}").format(SQLLiteral(f"{datastore.lock_timeout}s")),
            SQL("LOCK TABLE {} IN EXCLUSIVE MODE").format(self._table),
        ]
        self._notify_statement = SQL("NOTIFY {}").format(quoted(self.channel_name))
        # The sequence is looked up once (MATERIALIZED), not once per id: that lookup cost
        # more than the COPY's rows. The ids come back as one array, not a row each.
        self._take_ids_statement = SQL(
            "WITH s AS MATERIALIZED "
            "(SELECT pg_get_serial_sequence({}, 'notification_id')::regclass AS seq) "
            "SELECT array_agg(nextval(s.seq)) FROM s, generate_series(1, %s)"
        ).format(SQLLiteral(self._qualified_name_string().replace("%", "%%")))
        # psycopg runs COPY without reading placeholders: so no doubled % here.
        self._copy_statement = SQL(
            "COPY {}.{} (originator_id, originator_version, topic, state, notification_id) "
            "FROM STDIN (FORMAT BINARY)"
        ).format(Identifier(datastore.schema), Identifier(events_table_name))
        self._copy_types = [datastore.originator_id_type, "int8", "text", "bytea", "int8"]
        self._notification_statements: dict[tuple[bool, bool, bool, bool], Composed] = {}
        self._coalescer = _SaveCoalescer(self._commit, self.max_coalesced_saves)

    def _qualified_name_string(self) -> str:
        return f"{_pg_quote(self.datastore.schema)}.{_pg_quote(self.events_table_name)}"

    def _create_function_statement(self) -> Composed:
        # For 9.x clients that insert through this function. Our own inserts don't use it:
        # its name depends only on the id type, so it can serve one table per schema.
        return SQL(
            "CREATE OR REPLACE FUNCTION {function}(events {type}[]) RETURNS SETOF bigint "
            "LANGUAGE plpgsql AS $BODY$ BEGIN "
            "SET LOCAL lock_timeout = {lock_timeout}; NOTIFY {channel}; "
            "RETURN QUERY INSERT INTO {table} (originator_id, originator_version, topic, state) "
            "SELECT originator_id, originator_version, topic, state FROM unnest(events) "
            "RETURNING notification_id; END; $BODY$"
        ).format(
            function=self.qualified(self.pg_function_name_insert_events),
            type=self.qualified(self.stored_event_type_name),
            lock_timeout=SQLLiteral(f"{self.datastore.lock_timeout}s"),
            channel=quoted(self.channel_name),
            table=self._table,
        )

    def insert_events(
        self, stored_events: Sequence[StoredEvent], **kwargs: Any
    ) -> Sequence[int] | None:
        """Insert the events (and ``tracking=``, for process recorders) in one transaction.

        Returns the new notification ids, in the order of the events.
        """
        if self._has_insert_hook:
            return self._save_through_hook(stored_events, kwargs)
        tracking = kwargs.get("tracking")
        if not stored_events and tracking is None:
            return []
        return self._coalescer.save(_PendingSave(stored_events, tracking))

    def _statements_after_hook(self, events: Sequence[StoredEvent]) -> list[_Statement]:
        lock_and_notify = self._begin_statements()[1:]  # BEGIN was sent before the hook
        return [*lock_and_notify, *super()._statements_after_hook(events)]

    def _commit(self, saves: list[_PendingSave]) -> None:
        """Commit a batch of saves, deciding each (ids or error); never raise."""
        try:
            self._write(saves, self._commit_batch)
        except PersistenceError as e:
            for save in saves:
                if save.error is None and save.ids is None:
                    save.error = type(e)(*e.args)  # one instance per raising thread

    def _commit_batch(self, conn: Connection[DictRow], saves: list[_PendingSave]) -> None:
        for attempt in range(1, _ROLLBACK_RETRIES + 1):
            try:
                self._commit_batch_once(conn, saves)
                return
            except psycopg.DatabaseError as e:
                # A deadlock (with a writer taking the same locks in another order) or a
                # serialization failure, on any path of the batch: retry it whole.
                if not _is_rolled_back(e):
                    raise
                _rollback_quietly(conn)
                if attempt == _ROLLBACK_RETRIES:
                    for save in saves:
                        save.error = self.datastore.translate(e)
                    return
                logger.info("retrying a batch the server rolled back: %s", e)
                sleep(random.uniform(0.0, 0.02 * attempt))

    def _commit_batch_once(self, conn: Connection[DictRow], saves: list[_PendingSave]) -> None:
        for save in saves:  # each attempt decides afresh
            save.ids = save.error = None
        try:
            self._commit_together(conn, saves)
        except (psycopg.IntegrityError, psycopg.DataError, _SaveRefusedError) as e:
            if len(saves) == 1:
                saves[0].error = self._save_error(e, saves[0])
            else:
                self._commit_one_by_one(conn, saves)
        except psycopg.DatabaseError as e:
            if is_connection_failure(e, conn):
                raise
            if _is_rolled_back(e):
                raise  # retried by _commit_batch
            for save in saves:
                save.error = self.datastore.translate(e)

    def _commit_together(self, conn: Connection[DictRow], saves: list[_PendingSave]) -> None:
        events = [e for save in saves for e in save.stored_events]
        trackings = [save.tracking for save in saves if save.tracking]
        if trackings:
            ids = self._commit_checked(conn, trackings, events)
        else:
            ids = self._commit_in_one_round_trip(conn, events)
        for save in saves:
            save.ids, ids = ids[: len(save.stored_events)], ids[len(save.stored_events) :]

    def _commit_in_one_round_trip(
        self, conn: Connection[DictRow], events: Sequence[StoredEvent]
    ) -> list[int]:
        if len(events) >= self.copy_threshold:
            return self._commit_with_copy(conn, events)
        # BEGIN, the lock, NOTIFY, INSERT and COMMIT go to the server as one query. If the
        # INSERT fails, the server skips what follows, COMMIT included, and we roll back.
        script = [*self._begin_statements(), self._insert(events), *self._commit_statements()]
        with _committing(conn) as commit:
            commit()  # all is sent at once: a lost connection leaves the outcome unknown
            results = _run_script(conn, script)
        return [row[0] for row in results[0]] if events else []

    def _commit_with_copy(
        self, conn: Connection[DictRow], events: Sequence[StoredEvent]
    ) -> list[int]:
        # COPY can't return the ids it makes, so take them from the table's sequence first
        # (under the lock, so they are issued in commit order as ever) and copy them in.
        script = [*self._begin_statements(), (self._take_ids_statement, (len(events),))]
        ids: list[int] = sorted(_run_script(conn, script)[0][0][0])
        columns = self._insert_params(events)
        try:
            with conn.cursor().copy(self._copy_statement) as copy:
                copy.set_types(self._copy_types)
                for row in zip(*columns, ids, strict=True):
                    copy.write_row(row)
        except psycopg.Error:
            _rollback_quietly(conn)
            raise
        with _committing(conn) as commit:
            commit()
            _run_script(conn, self._commit_statements())
        return ids

    def _commit_checked(
        self, conn: Connection[DictRow], trackings: list[Tracking], events: Sequence[StoredEvent]
    ) -> list[int]:
        # A refused tracking record raises an error, so the server skips what follows,
        # COMMIT included: the whole batch is one round trip. The tracking rows are locked
        # before the events table, as 9.x does, so that its processes and ours on one
        # follower take the two locks in the same order (else they can deadlock).
        begin, *lock_and_notify = self._begin_statements()
        script = [begin, *map(self._checked_tracking, trackings), *lock_and_notify]
        if events:
            script.append(self._insert(events))
        script += self._commit_statements()
        with _committing(conn) as commit:
            commit()
            try:
                results = _run_script(conn, script)
            except psycopg.errors.DivisionByZero:
                raise _SaveRefusedError from None
        return [row[0] for row in results[-1]] if events else []

    def _commit_one_by_one(self, conn: Connection[DictRow], saves: list[_PendingSave]) -> None:
        """Commit the saves in one transaction, a savepoint each: a failure fails one save."""
        try:
            _run_script(conn, self._begin_statements())
            for save in saves:
                self._save_with_savepoint(conn, save)
            with _committing(conn) as commit:
                commit()
                _run_script(conn, self._commit_statements())
        except _OutcomeUnknownError:
            raise  # the saves' provisional outcomes are checked against what was stored
        except BaseException:
            for save in saves:  # nothing was committed: no save is decided yet
                save.ids = save.error = None
            raise

    def _save_with_savepoint(self, conn: Connection[DictRow], save: _PendingSave) -> None:
        script: list[_Statement] = [(_SAVEPOINT, NO_PARAMS)]
        if save.tracking:
            script.append(self._upsert_tracking(save.tracking))
        if save.stored_events:
            script.append(self._insert(save.stored_events))
        try:
            results = _run_script(conn, script, on_error=_ROLLBACK_TO_SAVEPOINT)
            if save.tracking and not results[0]:
                _run_script(conn, [(_ROLLBACK_TO_SAVEPOINT, NO_PARAMS)])
                raise _SaveRefusedError
            save.ids = [row[0] for row in results[-1]] if save.stored_events else []
        except (psycopg.IntegrityError, psycopg.DataError, _SaveRefusedError) as e:
            save.ids = None
            save.error = self._save_error(e, save)

    def _begin_statements(self) -> list[_Statement]:
        return [
            (_BEGIN, NO_PARAMS),
            *((s, NO_PARAMS) for s in self.lock_table_statements),
            (self._notify_statement, NO_PARAMS),
        ]

    def _commit_statements(self) -> list[_Statement]:
        return [*((s, NO_PARAMS) for s in self.before_commit_statements), (_COMMIT, NO_PARAMS)]

    def _checked_tracking(self, tracking: Tracking) -> _Statement:
        """A statement recording ``tracking`` that raises DivisionByZero if refused."""
        return self._upsert_tracking(tracking)

    def _upsert_tracking(self, tracking: Tracking) -> _Statement:
        raise ProgrammingError(
            f"{type(self).__name__} records no tracking: use a PostgresProcessRecorder "
            "(factory.process_recorder()) to record events with tracking"
        )

    def _save_error(self, error: BaseException, save: _PendingSave | None = None) -> BaseException:
        if isinstance(error, _SaveRefusedError):
            return self._tracking_refused_error(save)
        assert isinstance(error, psycopg.Error)
        return self.datastore.translate(error)

    def _tracking_refused_error(self, save: _PendingSave | None) -> IntegrityError:
        return IntegrityError("Failed to record tracking: the position was already recorded")

    def _select_keys_statement(self) -> Composed:
        id_type = "uuid" if self._is_uuid else "text"
        return SQL(
            "SELECT originator_id, originator_version, state, notification_id FROM {} "
            "WHERE (originator_id, originator_version) IN "
            "(SELECT * FROM unnest(%s::" + id_type + "[], %s::bigint[]))"
        ).format(self._table)

    def select_notifications(
        self,
        start: int | None,
        limit: int,
        stop: int | None = None,
        topics: Sequence[str] = (),
        *,
        inclusive_of_start: bool = True,
    ) -> Sequence[Notification]:
        """Return up to ``limit`` notifications from ``start``, in id order (see 4.6)."""
        if start is not None and start < 1:
            start, inclusive_of_start = 0, False
        statement = self._notifications_statement(
            start is not None, inclusive_of_start, stop is not None, bool(topics)
        )
        params: list[Any] = [p for p in (start, stop) if p is not None]
        if topics:
            params.append(list(topics))
        params.append(limit)
        rows = self.datastore.run(lambda conn: _fetch(conn, statement, params))
        return [Notification(i, v, t, s, n) for n, i, v, t, s in rows]

    def _notifications_statement(
        self, has_start: bool, inclusive: bool, has_stop: bool, has_topics: bool
    ) -> Composed:
        key = (has_start, inclusive, has_stop, has_topics)
        statement = self._notification_statements.get(key)
        if statement is None:
            conditions = []
            if has_start:
                conditions.append("notification_id >= %s" if inclusive else "notification_id > %s")
            if has_stop:
                conditions.append("notification_id <= %s")
            if has_topics:
                conditions.append("topic = ANY(%s)")
            where = (" WHERE " + " AND ".join(conditions)) if conditions else ""
            statement = SQL(
                "SELECT notification_id, originator_id, originator_version, topic, state "
                "FROM {}" + where + " ORDER BY notification_id LIMIT %s"
            ).format(self._table)
            self._notification_statements[key] = statement
        return statement

    def max_notification_id(self) -> int | None:
        """Return the highest notification id, or None if there are no events."""
        rows = self.datastore.run(lambda conn: _fetch(conn, self.max_notification_id_statement, ()))
        value: int | None = rows[0][0]
        return value

    def subscribe(
        self, gt: int | None = None, topics: Sequence[str] = ()
    ) -> Subscription[ApplicationRecorder]:
        """Return a subscription to notifications after ``gt``, woken by LISTEN/NOTIFY."""
        # Imported here: the subscription module imports this one.
        from eventsourcing.postgres.subscription import PostgresSubscription

        return PostgresSubscription(recorder=self, gt=gt, topics=topics)
