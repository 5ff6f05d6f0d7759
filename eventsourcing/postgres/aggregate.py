"""The aggregate recorder: events keyed by originator id and version.

Saves survive connection failures without being applied twice (``_write``).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from functools import partial
from typing import Any, NamedTuple
from uuid import UUID

import psycopg
import psycopg.errors
from psycopg import Connection, Cursor
from psycopg.rows import DictRow
from psycopg.sql import SQL, Composed

from eventsourcing.persistence import (
    AggregateRecorder,
    IntegrityError,
    OperationalError,
    StoredEvent,
)
from eventsourcing.postgres.datastore import PostgresDatastore, _Backoff
from eventsourcing.postgres.errors import _OutcomeUnknownError, is_connection_failure
from eventsourcing.postgres.identifiers import NO_PARAMS, clip_identifier, quoted
from eventsourcing.postgres.recorder import _TABLE_OPTIONS, PostgresRecorder
from eventsourcing.postgres.saves import _bind, _PendingSave
from eventsourcing.postgres.scripts import (
    _BEGIN,
    _COMMIT,
    _committing,
    _fetch,
    _rollback_quietly,
    _run_script,
    _Statement,
)

logger = logging.getLogger(__name__)


class PgStoredEvent(NamedTuple):
    """A stored event as a row of the ``stored_event_<type>`` composite type."""

    originator_id: UUID | str
    originator_version: int
    topic: str
    state: bytes


# Up to this many events are inserted with VALUES, more with arrays (or COPY).
_MAX_VALUES_ROWS = 16


class PostgresAggregateRecorder(PostgresRecorder, AggregateRecorder):
    """Stores events in a table keyed by ``(originator_id, originator_version)``."""

    def __init__(
        self, datastore: PostgresDatastore, *, events_table_name: str = "stored_events"
    ) -> None:
        """Use table ``events_table_name`` in the datastore's schema."""
        super().__init__(datastore)
        self.check_identifier_length(events_table_name)
        self.events_table_name = events_table_name
        self.notification_id_index_name = clip_identifier(
            f"{events_table_name}_notification_id_idx"
        )
        self.stored_event_type_name = f"stored_event_{datastore.originator_id_type}"
        datastore.db_type_names.add(self.stored_event_type_name)
        self._is_uuid = datastore.originator_id_type == "uuid"
        self._table = self.qualified(events_table_name)
        self.create_table_statement_index = len(self.sql_create_statements)
        self.sql_create_statements.append(self._create_events_table_statement(False))
        self.sql_create_statements.append(
            SQL(
                "CREATE TYPE {} AS (originator_id {}, originator_version bigint, topic text, "
                "state bytea)"
            ).format(
                self.qualified(self.stored_event_type_name),
                quoted(datastore.originator_id_type),
            )
        )
        self.insert_events_statement = self._insert_statement(returning=False)
        self._values_statements: dict[int, Composed] = {}
        self.select_events_statement = SQL(
            "SELECT originator_version, topic, state FROM {} WHERE originator_id = %s"
        ).format(self._table)
        self._select_statements: dict[tuple[bool, bool, bool, bool], Composed] = {}
        # A subclass that extends _insert_events (9.x's way to write rows of its own with
        # the events) is called inside the transaction; others take the faster paths.
        self._has_insert_hook = type(self)._insert_events not in _LIBRARY_INSERT_EVENTS

    def _erase_statements(self) -> list[Composed]:
        return [*super()._erase_statements(), SQL("DELETE FROM {}").format(self._table)]

    def construct_pg_stored_event(
        self, originator_id: UUID | str, originator_version: int, topic: str, state: bytes
    ) -> PgStoredEvent:
        """Return a row of the ``stored_event_<type>`` composite type, as 9.x does.

        A list of them can be passed as the parameter of ``unnest(%s::<schema>.<type>[])``.
        """
        return PgStoredEvent(originator_id, originator_version, topic, state)

    def _create_events_table_statement(self, with_notification_id: bool) -> Composed:
        notification_id = "notification_id bigserial, " if with_notification_id else ""
        return SQL(
            "CREATE TABLE IF NOT EXISTS {} (originator_id {} NOT NULL, "
            "originator_version bigint NOT NULL, topic text, state bytea, "
            + notification_id
            + "PRIMARY KEY (originator_id, originator_version))"
            + _TABLE_OPTIONS
        ).format(self._table, quoted(self.datastore.originator_id_type))

    #: Whether ``_insert`` statements return the new notification ids.
    _inserts_return_ids = False

    def _insert_statement(self, *, returning: bool) -> Composed:
        id_type = "uuid" if self._is_uuid else "text"
        statement = SQL(
            "INSERT INTO {} (originator_id, originator_version, topic, state) "
            "SELECT * FROM unnest(%s::" + id_type + "[], %s::bigint[], %s::text[], %s::bytea[])"
        ).format(self._table)
        if returning:
            statement += SQL(" RETURNING notification_id")
        return statement

    def _insert_params(self, stored_events: Sequence[StoredEvent]) -> tuple[list[Any], ...]:
        ids = [e.originator_id for e in stored_events]
        if self._is_uuid:
            if not all(type(i) is UUID for i in ids):
                ids = [i if isinstance(i, UUID) else UUID(str(i)) for i in ids]
        else:
            ids = [str(i) for i in ids]
        return (
            ids,
            [e.originator_version for e in stored_events],
            [e.topic for e in stored_events],
            [e.state for e in stored_events],
        )

    def insert_events(
        self, stored_events: Sequence[StoredEvent], **kwargs: Any
    ) -> Sequence[int] | None:
        """Insert the events in one statement (all or nothing); return None."""
        if self._has_insert_hook:
            self._save_through_hook(stored_events, kwargs)
        elif stored_events:
            save = _PendingSave(stored_events, None)
            self._write([save], self._insert_autocommit)
            save.result()
        return None

    def _insert_events(
        self, curs: Cursor[DictRow], stored_events: Sequence[StoredEvent], **kwargs: Any
    ) -> None:
        """Write what goes with the events, in their transaction, before they are inserted.

        The extension point of ``eventsourcing`` 9.x: a subclass that overrides it (calling
        ``super()._insert_events(curs, stored_events, **kwargs)``) can write rows of its
        own with ``curs``, in the same transaction as the events; keyword arguments given
        to ``Application.save()`` arrive here. This one writes nothing (a process
        recorder's records the tracking position).
        """

    def _save_through_hook(
        self, stored_events: Sequence[StoredEvent], kwargs: dict[str, Any]
    ) -> list[int]:
        """Insert the events in a transaction that calls :meth:`_insert_events` first."""
        save = _PendingSave(stored_events, kwargs.get("tracking"))
        self._write([save], partial(self._commit_through_hook, kwargs=kwargs))
        return save.result()

    def _commit_through_hook(
        self, conn: Connection[DictRow], saves: list[_PendingSave], *, kwargs: dict[str, Any]
    ) -> None:
        save = saves[0]
        save.ids = save.error = None
        events = save.stored_events
        try:
            conn.execute(_BEGIN, NO_PARAMS, prepare=False)
            with conn.cursor() as curs:
                self._insert_events(curs, events, **kwargs)
            results = _run_script(conn, self._statements_after_hook(events))
            with _committing(conn) as commit:
                commit()
                _run_script(conn, [(_COMMIT, NO_PARAMS)])
        except (psycopg.IntegrityError, psycopg.DataError) as e:
            _rollback_quietly(conn)
            save.error = self.datastore.translate(e)
        except IntegrityError as e:  # a refused tracking record
            _rollback_quietly(conn)
            save.error = e
        except _OutcomeUnknownError:
            raise
        except BaseException:
            _rollback_quietly(conn)
            raise
        else:
            save.ids = [row[0] for row in results[-1]] if events and results else []

    def _statements_after_hook(self, events: Sequence[StoredEvent]) -> list[_Statement]:
        return [self._insert(events)] if events else []

    def _insert(self, events: Sequence[StoredEvent]) -> _Statement:
        if len(events) > _MAX_VALUES_ROWS:
            return self.insert_events_statement, self._insert_params(events)
        # A few rows go as VALUES: psycopg binds scalars on the client several times
        # faster than arrays (one row: about 30 us instead of 90-180 us).
        statement = self._values_statements.get(len(events))
        if statement is None:
            statement = self._values_statements[len(events)] = self._values_statement(len(events))
        columns = self._insert_params(events)
        return statement, [value for row in zip(*columns, strict=True) for value in row]

    def _values_statement(self, rows: int) -> Composed:
        id_type = "uuid" if self._is_uuid else "text"
        row = "(%s::" + id_type + ", %s::bigint, %s::text, %s::bytea)"
        statement = SQL(
            "INSERT INTO {} (originator_id, originator_version, topic, state) VALUES "
            + ", ".join([row] * rows)
        ).format(self._table)
        if self._inserts_return_ids:
            statement += SQL(" RETURNING notification_id")
        return statement

    def _insert_autocommit(self, conn: Connection[DictRow], saves: list[_PendingSave]) -> None:
        params = self._insert_params(saves[0].stored_events)
        try:
            conn.execute(self.insert_events_statement, params)
        except psycopg.Error as e:
            if is_connection_failure(e, conn):
                raise _OutcomeUnknownError from e  # it may have committed before the loss
            raise
        saves[0].ids = []

    def _write(
        self,
        saves: list[_PendingSave],
        attempt: Callable[[Connection[DictRow], list[_PendingSave]], None],
    ) -> None:
        """Run ``attempt`` until it has decided every save, surviving connection failures.

        A failure before COMMIT was sent is retried (nothing was stored). A failure after it
        leaves the outcome unknown: the stored rows are then read back, saves found stored
        are done, and only the others are tried again.
        """
        backoff = _Backoff(self.datastore.connect_timeout)
        todo = saves
        while True:
            try:
                self.datastore.run(_bind(attempt, todo), backoff)
                return
            except _OutcomeUnknownError as e:
                undecided = [save for save in todo if save.error is None]
                try:
                    todo = self.datastore.run(partial(self._recover, saves=undecided), backoff)
                except OperationalError as lost:
                    raise OperationalError(
                        f"The connection to {self.datastore.describe()} was lost while "
                        "committing, and couldn't be made again to learn whether the events "
                        f"were recorded ({lost}): reload the aggregate before retrying"
                    ) from e
                if not todo:
                    return
                logger.info("retrying %d saves whose commit was lost: %s", len(todo), e.__cause__)
                if not backoff.wait():
                    raise OperationalError(
                        f"The connection to {self.datastore.describe()} was lost while "
                        "committing and the retries ran out of time: the events were not "
                        "recorded; retry the command"
                    ) from None

    def _recover(self, conn: Connection[DictRow], saves: list[_PendingSave]) -> list[_PendingSave]:
        """Find which ``saves`` are stored (setting their ids); return those that aren't."""
        keys = [e for save in saves for e in save.stored_events]
        found = self._select_keys(conn, keys) if keys else {}
        not_stored = []
        for save in saves:
            rows = [found.get(self._key(e)) for e in save.stored_events]
            events = save.stored_events
            stored = [r[1] for r, e in zip(rows, events, strict=True) if r and r[0] == e.state]
            if events and len(stored) == len(rows):
                save.ids = [i for i in stored if i is not None]
            elif not save.stored_events and self._tracking_is_stored(conn, save):
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

    def _tracking_is_stored(self, conn: Connection[DictRow], save: _PendingSave) -> bool:
        return False

    def _key(self, event: StoredEvent) -> tuple[UUID | str, int]:
        return self._stored_id(event.originator_id), event.originator_version

    def _select_keys(
        self, conn: Connection[DictRow], events: Sequence[StoredEvent]
    ) -> dict[tuple[UUID | str, int], tuple[bytes, int | None]]:
        ids, versions, _, _ = self._insert_params(events)
        rows = _fetch(conn, self._select_keys_statement(), [ids, versions])
        return {(row[0], row[1]): (row[2], row[3]) for row in rows}

    def _select_keys_statement(self) -> Composed:
        id_type = "uuid" if self._is_uuid else "text"
        return SQL(
            "SELECT originator_id, originator_version, state, NULL::bigint FROM {} "
            "WHERE (originator_id, originator_version) IN "
            "(SELECT * FROM unnest(%s::" + id_type + "[], %s::bigint[]))"
        ).format(self._table)

    def select_events(
        self,
        originator_id: UUID | str,
        *,
        gt: int | None = None,
        lte: int | None = None,
        desc: bool = False,
        limit: int | None = None,
    ) -> Sequence[StoredEvent]:
        """Return the originator's events with ``gt < version <= lte``, ordered by version."""
        statement = self._select_statement(gt is not None, lte is not None, desc, limit is not None)
        params = [originator_id, *(p for p in (gt, lte, limit) if p is not None)]
        stored_id = self._stored_id(originator_id)
        rows = self.datastore.run(lambda conn: _fetch(conn, statement, params))
        return [StoredEvent(stored_id, v, t, s) for v, t, s in rows]

    def _stored_id(self, originator_id: UUID | str) -> UUID | str:
        # Return ids as the column holds them: UUID for uuid columns, str for text ones.
        if self._is_uuid and not isinstance(originator_id, UUID):
            try:
                return UUID(originator_id)
            except ValueError:
                return originator_id  # not a UUID: the database will say so
        return originator_id if self._is_uuid else str(originator_id)

    def _select_statement(self, gt: bool, lte: bool, desc: bool, limit: bool) -> Composed:
        key = (gt, lte, desc, limit)
        statement = self._select_statements.get(key)
        if statement is None:
            statement = self.select_events_statement
            if gt:
                statement += SQL(" AND originator_version > %s")
            if lte:
                statement += SQL(" AND originator_version <= %s")
            order = " ORDER BY originator_version DESC" if desc else " ORDER BY originator_version"
            statement += SQL(order)
            if limit:
                statement += SQL(" LIMIT %s")
            self._select_statements[key] = statement
        return statement


# The library's own _insert_events: a recorder class with another one has extended it
# (the process recorder adds its own to this set).
_LIBRARY_INSERT_EVENTS: set[object] = {PostgresAggregateRecorder._insert_events}
