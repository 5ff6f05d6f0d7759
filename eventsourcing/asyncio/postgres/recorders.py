"""Async PostgreSQL recorders: the sync recorders' SQL and rules, over async connections.

Each async recorder holds the sync recorder of the same kind (``sql``), built by the sync
factory for the same tables but never used to connect, and takes from it every statement
it sends: the table lock that issues notification ids in commit order, the one-round-trip
scripts, the COPY of large batches, the tracking compare-and-set, and the messages of its
errors. What the sync recorder does with a connection is done here with an async one, in
the same order, with the same recovery from a commit whose reply was lost.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Awaitable, Callable, Sequence
from functools import partial
from typing import Any
from uuid import UUID

import psycopg
import psycopg.errors

from eventsourcing.asyncio.postgres.datastore import AsyncBackoff, AsyncConn, AsyncPostgresDatastore
from eventsourcing.asyncio.postgres.saves import AsyncSaveCoalescer
from eventsourcing.asyncio.postgres.scripts import fetch, rollback_quietly, run_script
from eventsourcing.asyncio.recorders import (
    AsyncAggregateRecorder,
    AsyncApplicationRecorder,
    AsyncProcessRecorder,
    AsyncTrackingRecorder,
)
from eventsourcing.asyncio.subscription import AsyncSubscription
from eventsourcing.persistence import (
    IntegrityError,
    Notification,
    OperationalError,
    PersistenceError,
    ProgrammingError,
    StoredEvent,
    Tracking,
)
from eventsourcing.postgres.aggregate import PostgresAggregateRecorder
from eventsourcing.postgres.application import _ROLLBACK_RETRIES, PostgresApplicationRecorder
from eventsourcing.postgres.errors import (
    _is_rolled_back,
    _OutcomeUnknownError,
    _SaveRefusedError,
    is_connection_failure,
    translate_error,
)
from eventsourcing.postgres.identifiers import NO_PARAMS
from eventsourcing.postgres.process import PostgresProcessRecorder
from eventsourcing.postgres.recorder import PostgresRecorder
from eventsourcing.postgres.saves import _PendingSave
from eventsourcing.postgres.scripts import (
    _ROLLBACK_TO_SAVEPOINT,
    _SAVEPOINT,
    _committing,
    _Statement,
)
from eventsourcing.postgres.tracking import PostgresTrackingRecorder

__all__ = [
    "AsyncPostgresAggregateRecorder",
    "AsyncPostgresApplicationRecorder",
    "AsyncPostgresProcessRecorder",
    "AsyncPostgresTrackingRecorder",
]

logger = logging.getLogger(__name__)

_Attempt = Callable[[AsyncConn, list[_PendingSave]], Awaitable[None]]
CreateTables = Callable[[PostgresRecorder], Awaitable[None]]


def _bind(attempt: _Attempt, saves: list[_PendingSave]) -> Callable[[AsyncConn], Awaitable[None]]:
    return lambda conn: attempt(conn, saves)


def _translated(error: psycopg.Error) -> PersistenceError:
    translated = translate_error(error)
    translated.__cause__ = error
    return translated


class _AsyncPostgresRecorder:
    """An async recorder over the sync recorder ``sql``; tables created on first use."""

    sql: Any

    def __init__(
        self, sql: PostgresRecorder, datastore: AsyncPostgresDatastore, create: CreateTables
    ) -> None:
        if getattr(sql, "_has_insert_hook", False):
            msg = (
                f"{type(sql).__name__} extends _insert_events, which writes with a sync cursor: "
                "the async API can't call it. Use the sync API for this recorder, or record "
                "the extra rows from a follower"
            )
            raise ProgrammingError(msg)
        self.sql = sql
        self.datastore = datastore
        self._create = create
        self._opened = False

    async def open(self) -> None:
        """Create the tables (if ``CREATE_TABLE``), once."""
        if not self._opened:
            await self._create(self.sql)
            self._opened = True

    async def _run(self, operation: Callable[[AsyncConn], Awaitable[Any]]) -> Any:
        if not self._opened:
            await self.open()
        return await self.datastore.run(operation)


class AsyncPostgresAggregateRecorder(_AsyncPostgresRecorder, AsyncAggregateRecorder):
    """Stores events in ``sql``'s table keyed by ``(originator_id, originator_version)``."""

    sql: PostgresAggregateRecorder

    async def insert_events(
        self, stored_events: Sequence[StoredEvent], **kwargs: Any
    ) -> Sequence[int] | None:
        """Insert the events in one statement (all or nothing); return None."""
        if stored_events:
            save = _PendingSave(stored_events, None)
            await self._write([save], self._insert_autocommit)
            save.result()
        return None

    async def _insert_autocommit(self, conn: AsyncConn, saves: list[_PendingSave]) -> None:
        params = self.sql._insert_params(saves[0].stored_events)
        try:
            await conn.execute(self.sql.insert_events_statement, params)
        except psycopg.Error as e:
            if is_connection_failure(e, conn):  # type: ignore[arg-type]
                raise _OutcomeUnknownError from e
            raise
        saves[0].ids = []

    async def _write(self, saves: list[_PendingSave], attempt: _Attempt) -> None:
        """Run ``attempt`` until every save is decided, as the sync recorder's ``_write``.

        A failure before COMMIT was sent is retried; after it, the stored rows are read
        back, saves found stored are done, and only the others are tried again.
        """
        if not self._opened:
            await self.open()
        backoff = AsyncBackoff(self.datastore.connect_timeout)
        todo = saves
        while True:
            try:
                await self.datastore.run(_bind(attempt, todo), backoff)
                return
            except _OutcomeUnknownError as e:
                undecided = [save for save in todo if save.error is None]
                try:
                    todo = await self.datastore.run(
                        partial(self._recover, saves=undecided), backoff
                    )
                except OperationalError as lost:
                    msg = (
                        f"The connection to {self.datastore.describe()} was lost while "
                        "committing, and couldn't be made again to learn whether the events "
                        f"were recorded ({lost}): reload the aggregate before retrying"
                    )
                    raise OperationalError(msg) from e
                if not todo:
                    return
                logger.info("retrying %d saves whose commit was lost: %s", len(todo), e.__cause__)
                if not await backoff.wait_async():
                    msg = (
                        f"The connection to {self.datastore.describe()} was lost while "
                        "committing and the retries ran out of time: the events were not "
                        "recorded; retry the command"
                    )
                    raise OperationalError(msg) from None

    async def _recover(self, conn: AsyncConn, saves: list[_PendingSave]) -> list[_PendingSave]:
        """Find which ``saves`` are stored (setting their ids); return those that aren't."""
        keys = [e for save in saves for e in save.stored_events]
        found = await self._select_keys(conn, keys) if keys else {}
        not_stored = []
        for save in saves:
            events = save.stored_events
            rows = [found.get(self.sql._key(e)) for e in events]
            stored = [r[1] for r, e in zip(rows, events, strict=True) if r and r[0] == e.state]
            if events and len(stored) == len(rows):
                save.ids = [i for i in stored if i is not None]
            elif not events and await self._tracking_is_stored(conn, save):
                save.ids = []
            elif any(rows):
                save.error = IntegrityError(
                    "Version conflict: some of these events were recorded by another writer "
                    "while the connection was lost (reload the aggregate and retry the command)"
                )
            else:
                save.ids = None
                not_stored.append(save)
        return not_stored

    async def _select_keys(
        self, conn: AsyncConn, events: Sequence[StoredEvent]
    ) -> dict[tuple[UUID | str, int], tuple[bytes, int | None]]:
        ids, versions, _, _ = self.sql._insert_params(events)
        rows = await fetch(conn, self.sql._select_keys_statement(), [ids, versions])
        return {(row[0], row[1]): (row[2], row[3]) for row in rows}

    async def _tracking_is_stored(self, conn: AsyncConn, save: _PendingSave) -> bool:
        return False

    async def select_events(
        self,
        originator_id: UUID | str,
        *,
        gt: int | None = None,
        lte: int | None = None,
        desc: bool = False,
        limit: int | None = None,
    ) -> Sequence[StoredEvent]:
        """Return the originator's events with ``gt < version <= lte``, ordered by version."""
        sql = self.sql
        statement = sql._select_statement(gt is not None, lte is not None, desc, limit is not None)
        params = [originator_id, *(p for p in (gt, lte, limit) if p is not None)]
        stored_id = sql._stored_id(originator_id)
        rows = await self._run(lambda conn: fetch(conn, statement, params))
        return [StoredEvent(stored_id, v, t, s) for v, t, s in rows]


class AsyncPostgresApplicationRecorder(AsyncPostgresAggregateRecorder, AsyncApplicationRecorder):
    """Stores events with notification ids issued in commit order, as the sync recorder.

    Saves that tasks of one event loop make at the same moment are committed in one
    transaction (see :mod:`eventsourcing.asyncio.postgres.saves`); a failing save of a
    batch fails alone (the batch is redone with a savepoint per save).
    """

    sql: PostgresApplicationRecorder

    def __init__(
        self, sql: PostgresRecorder, datastore: AsyncPostgresDatastore, create: CreateTables
    ) -> None:
        super().__init__(sql, datastore, create)
        self._coalescer = AsyncSaveCoalescer(self._commit, self.sql.max_coalesced_saves)

    async def insert_events(
        self, stored_events: Sequence[StoredEvent], **kwargs: Any
    ) -> Sequence[int] | None:
        """Insert the events (and ``tracking=``, for process recorders) in one transaction.

        Returns the new notification ids, in the order of the events.
        """
        tracking = kwargs.get("tracking")
        if not stored_events and tracking is None:
            return []
        if not self._opened:
            await self.open()
        return await self._coalescer.save(_PendingSave(stored_events, tracking))

    async def _commit(self, saves: list[_PendingSave]) -> None:
        """Commit a batch of saves, deciding each (ids or error); never raise."""
        try:
            await self._write(saves, self._commit_batch)
        except PersistenceError as e:
            for save in saves:
                if save.error is None and save.ids is None:
                    save.error = type(e)(*e.args)

    async def _commit_batch(self, conn: AsyncConn, saves: list[_PendingSave]) -> None:
        for attempt in range(1, _ROLLBACK_RETRIES + 1):
            try:
                await self._commit_batch_once(conn, saves)
                return
            except psycopg.DatabaseError as e:
                if not _is_rolled_back(e):  # a deadlock or serialization failure: retry
                    raise
                await rollback_quietly(conn)
                if attempt == _ROLLBACK_RETRIES:
                    for save in saves:
                        save.error = _translated(e)
                    return
                logger.info("retrying a batch the server rolled back: %s", e)
                await asyncio.sleep(random.uniform(0.0, 0.02 * attempt))

    async def _commit_batch_once(self, conn: AsyncConn, saves: list[_PendingSave]) -> None:
        for save in saves:
            save.ids = save.error = None
        try:
            await self._commit_together(conn, saves)
        except (psycopg.IntegrityError, psycopg.DataError, _SaveRefusedError) as e:
            if len(saves) == 1:
                saves[0].error = self.sql._save_error(e, saves[0])
            else:
                await self._commit_one_by_one(conn, saves)
        except psycopg.DatabaseError as e:
            if is_connection_failure(e, conn) or _is_rolled_back(e):  # type: ignore[arg-type]
                raise
            for save in saves:
                save.error = _translated(e)

    async def _commit_together(self, conn: AsyncConn, saves: list[_PendingSave]) -> None:
        events = [e for save in saves for e in save.stored_events]
        trackings = [save.tracking for save in saves if save.tracking]
        if trackings:
            ids = await self._commit_checked(conn, trackings, events)
        elif len(events) >= self.sql.copy_threshold:
            ids = await self._commit_with_copy(conn, events)
        else:
            ids = await self._commit_in_one_round_trip(conn, events)
        for save in saves:
            save.ids, ids = ids[: len(save.stored_events)], ids[len(save.stored_events) :]

    async def _commit_in_one_round_trip(
        self, conn: AsyncConn, events: Sequence[StoredEvent]
    ) -> list[int]:
        sql = self.sql
        script = [*sql._begin_statements(), sql._insert(events), *sql._commit_statements()]
        with _committing(conn) as commit:  # type: ignore[arg-type]
            commit()  # all is sent at once: a lost connection leaves the outcome unknown
            results = await run_script(conn, script)
        return [row[0] for row in results[0]] if events else []

    async def _commit_with_copy(self, conn: AsyncConn, events: Sequence[StoredEvent]) -> list[int]:
        # COPY can't return ids: take them from the sequence first, under the lock.
        sql = self.sql
        script = [*sql._begin_statements(), (sql._take_ids_statement, (len(events),))]
        ids: list[int] = sorted((await run_script(conn, script))[0][0][0])
        columns = sql._insert_params(events)
        try:
            async with conn.cursor().copy(sql._copy_statement) as copy:
                copy.set_types(sql._copy_types)
                for row in zip(*columns, ids, strict=True):
                    await copy.write_row(row)
        except psycopg.Error:
            await rollback_quietly(conn)
            raise
        with _committing(conn) as commit:  # type: ignore[arg-type]
            commit()
            await run_script(conn, sql._commit_statements())
        return ids

    async def _commit_checked(
        self, conn: AsyncConn, trackings: list[Tracking], events: Sequence[StoredEvent]
    ) -> list[int]:
        # Tracking rows are locked before the events table, as the sync recorder (and 9.x)
        # does, so that writers take the two locks in one order.
        sql = self.sql
        begin, *lock_and_notify = sql._begin_statements()
        script = [begin, *map(sql._checked_tracking, trackings), *lock_and_notify]
        if events:
            script.append(sql._insert(events))
        script += sql._commit_statements()
        with _committing(conn) as commit:  # type: ignore[arg-type]
            commit()
            try:
                results = await run_script(conn, script)
            except psycopg.errors.DivisionByZero:
                raise _SaveRefusedError from None
        return [row[0] for row in results[-1]] if events else []

    async def _commit_one_by_one(self, conn: AsyncConn, saves: list[_PendingSave]) -> None:
        """Commit the saves in one transaction, a savepoint each: a failure fails one save."""
        sql = self.sql
        try:
            await run_script(conn, sql._begin_statements())
            for save in saves:
                await self._save_with_savepoint(conn, save)
            with _committing(conn) as commit:  # type: ignore[arg-type]
                commit()
                await run_script(conn, sql._commit_statements())
        except _OutcomeUnknownError:
            raise
        except BaseException:
            for save in saves:
                save.ids = save.error = None
            raise

    async def _save_with_savepoint(self, conn: AsyncConn, save: _PendingSave) -> None:
        script: list[_Statement] = [(_SAVEPOINT, NO_PARAMS)]
        if save.tracking:
            script.append(self.sql._upsert_tracking(save.tracking))
        if save.stored_events:
            script.append(self.sql._insert(save.stored_events))
        try:
            results = await run_script(conn, script, on_error=_ROLLBACK_TO_SAVEPOINT)
            if save.tracking and not results[0]:
                await run_script(conn, [(_ROLLBACK_TO_SAVEPOINT, NO_PARAMS)])
                raise _SaveRefusedError
            save.ids = [row[0] for row in results[-1]] if save.stored_events else []
        except (psycopg.IntegrityError, psycopg.DataError, _SaveRefusedError) as e:
            save.ids = None
            save.error = self.sql._save_error(e, save)

    async def select_notifications(
        self,
        start: int | None,
        limit: int,
        stop: int | None = None,
        topics: Sequence[str] = (),
        *,
        inclusive_of_start: bool = True,
    ) -> Sequence[Notification]:
        """Return up to ``limit`` notifications from ``start``, in id order."""
        if start is not None and start < 1:
            start, inclusive_of_start = 0, False
        statement = self.sql._notifications_statement(
            start is not None, inclusive_of_start, stop is not None, bool(topics)
        )
        params: list[Any] = [p for p in (start, stop) if p is not None]
        if topics:
            params.append(list(topics))
        params.append(limit)
        rows = await self._run(lambda conn: fetch(conn, statement, params))
        return [Notification(i, v, t, s, n) for n, i, v, t, s in rows]

    async def max_notification_id(self) -> int | None:
        """Return the highest notification id, or None if there are no events."""
        statement = self.sql.max_notification_id_statement
        rows = await self._run(lambda conn: fetch(conn, statement, ()))
        value: int | None = rows[0][0]
        return value

    def subscribe(self, gt: int | None = None, topics: Sequence[str] = ()) -> AsyncSubscription:
        """Notifications after ``gt``, woken by ``LISTEN``/``NOTIFY`` (any writer's)."""
        from eventsourcing.asyncio.postgres.subscription import ListenNotifyListener

        listener = ListenNotifyListener(self.datastore, self.sql.channel_name)
        return AsyncSubscription(self, gt, topics, listener=listener)

    async def aclose(self) -> None:
        """Wait for the saves in flight."""
        await self._coalescer.drain()


class _TrackingMethods(_AsyncPostgresRecorder):
    """The tracking recorder's methods, over ``sql`` (a sync tracking recorder)."""

    async def insert_tracking(self, tracking: Tracking) -> None:
        """Record ``tracking`` (a compare-and-set); IntegrityError if it was refused."""
        save = _PendingSave((), tracking)
        sql = self.sql

        async def attempt(conn: AsyncConn) -> None:
            await self._check_multi_row_table(conn)
            with _committing(conn) as commit:  # type: ignore[arg-type]
                commit()
                curs = await conn.execute(
                    sql._record_tracking_statement, sql._tracking_params(tracking)
                )
                recorded = await curs.fetchone() is not None
            if recorded:
                save.ids = []
            else:
                save.error = sql._tracking_refused_error(save)

        if not self._opened:
            await self.open()
        backoff = AsyncBackoff(self.datastore.connect_timeout)
        while True:
            try:
                await self.datastore.run(attempt, backoff)
                break
            except _OutcomeUnknownError:
                if await self.datastore.run(lambda conn: self._tracking_is_stored(conn, save)):
                    save.error, save.ids = None, []
                    break
                if not await backoff.wait_async():
                    msg = (
                        f"The connection to {self.datastore.describe()} was lost while "
                        "recording tracking, and the retries ran out of time; retry"
                    )
                    raise OperationalError(msg) from None
        save.result()

    async def max_tracking_id(self, application_name: str) -> int | None:
        """Return the highest position recorded for ``application_name``, or None."""
        statement = self.sql.max_tracking_id_statement
        rows = await self._run(lambda conn: fetch(conn, statement, (application_name,)))
        value: int | None = rows[0][0]
        return value

    async def _tracking_is_stored(self, conn: AsyncConn, save: _PendingSave) -> bool:
        assert save.tracking is not None
        statement = self.sql.max_tracking_id_statement
        rows = await fetch(conn, statement, (save.tracking.application_name,))
        return rows[0][0] is not None and rows[0][0] >= save.tracking.notification_id

    async def _check_multi_row_table(self, conn: AsyncConn) -> None:
        sql = self.sql
        if sql.datastore.single_row_tracking or sql._multi_row_checked:
            return
        statement = sql.max_tracking_id_statement
        rows = await fetch(conn, statement, (sql.table_migration_identifier,))
        if rows and rows[0][0]:
            msg = (
                "Can't do multi-row tracking with single-row tracking table "
                f"{sql.tracking_table_name!r}: set SINGLE_ROW_TRACKING=t"
            )
            raise ProgrammingError(msg)
        sql._multi_row_checked = True


class AsyncPostgresTrackingRecorder(_TrackingMethods, AsyncTrackingRecorder):
    """Records, per upstream application, the position processed so far."""

    sql: PostgresTrackingRecorder


class AsyncPostgresProcessRecorder(
    _TrackingMethods, AsyncPostgresApplicationRecorder, AsyncProcessRecorder
):
    """Records new events and a tracking position in one transaction (tracking first)."""

    sql: PostgresProcessRecorder

    async def _commit_batch(self, conn: AsyncConn, saves: list[_PendingSave]) -> None:
        if any(save.tracking for save in saves):
            await self._check_multi_row_table(conn)
        await super()._commit_batch(conn, saves)
