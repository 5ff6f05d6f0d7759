"""The PostgreSQL DCB recorder, over 9.5.6's ``postgres_tt`` schema (a main and a tag table).

Select it with ``PERSISTENCE_MODULE=eventsourcing.dcb.postgres_tt``; the ``POSTGRES_*``
settings are those of :mod:`eventsourcing.postgres`. An application's tables are
``<name>_events_tt_main`` and ``<name>_events_tt_tag`` (``dcb_events_...`` without a
name). The schema is described in :mod:`eventsourcing.dcb._postgres_sql`.

Guarantees:

* An append is one statement (one round trip, committed when it returns). Appends of one
  table take turns (an EXCLUSIVE table lock, which reads don't wait for), so positions
  are committed in order and a condition is checked against everything committed before;
  concurrent appenders in any processes, of either library, can't both succeed when each
  one's condition excludes the other.
* A read is one statement: its events and its head come from one snapshot.
* Every query is supported: items with tags are found through the tag table's index,
  items with only types through the main table; 9.5.6's PostgreSQL recorder refuses
  them, except one item of one type (9.5.6 difference: DCB queries of types without tags).
* Subscriptions are woken by ``LISTEN``/``NOTIFY`` on the channel named after the main
  table, so appends from any process (of either library) wake them.
"""

from __future__ import annotations

import threading
from typing import TYPE_CHECKING, Any, NamedTuple

import psycopg
import psycopg.errors
from psycopg.rows import tuple_row
from psycopg.sql import SQL

from eventsourcing import postgres as _postgres  # not by name: see PostgresTTDCBFactory
from eventsourcing.dcb._postgres_sql import (
    DB_FUNCTION_NAME_DCB_CONDITIONAL_APPEND_TT,
    DB_FUNCTION_NAME_DCB_UNCONDITIONAL_APPEND_TT,
    DB_TYPE_NAME_DCB_EVENT_TT,
    DB_TYPE_NAME_DCB_QUERY_ITEM_TT,
    DCBStatements,
)
from eventsourcing.dcb.api import (
    DCBAppendCondition,
    DCBEvent,
    DCBQuery,
    DCBReadResponse,
    DCBRecorder,
    DCBSequencedEvent,
)
from eventsourcing.dcb.persistence import DCBInfrastructureFactory, DCBListenNotifySubscription
from eventsourcing.dcb.popo import SimpleDCBReadResponse
from eventsourcing.persistence import IntegrityError, ProgrammingError
from eventsourcing.postgres import PostgresDatastore, PostgresRecorder, PostgresTrackingRecorder
from eventsourcing.postgres.identifiers import NO_PARAMS, quoted

if TYPE_CHECKING:
    from collections.abc import Sequence

    from psycopg import Connection
    from psycopg.rows import DictRow

__all__ = [
    "DB_FUNCTION_NAME_DCB_CONDITIONAL_APPEND_TT",
    "DB_FUNCTION_NAME_DCB_UNCONDITIONAL_APPEND_TT",
    "DB_TYPE_NAME_DCB_EVENT_TT",
    "DB_TYPE_NAME_DCB_QUERY_ITEM_TT",
    "PostgresDCBRecorderTT",
    "PostgresDCBSubscription",
    "PostgresTTDCBFactory",
    "PsycopgDCBEvent",
    "PsycopgDCBQueryItem",
]

Row = tuple[Any, ...]


def _flatten(lists: Sequence[Sequence[str]]) -> tuple[list[int], list[str]]:
    """One flat list and the ``n + 1`` offsets of its parts (see the SQL module)."""
    bounds = [0]
    flat: list[str] = []
    for part in lists:
        flat.extend(part)
        bounds.append(len(flat))
    return bounds, flat


class PostgresDCBRecorderTT(DCBRecorder, PostgresRecorder):
    """Records DCB events in a main table and a tag table (9.5.6's ``postgres_tt`` schema)."""

    def __init__(self, datastore: PostgresDatastore, *, events_table_name: str = "dcb_events"):
        super().__init__(datastore)
        self.events_table_name = events_table_name + "_tt_main"
        self.channel_name = self.events_table_name.replace(".", "_")
        self.tags_table_name = events_table_name + "_tt_tag"
        self.index_name_id_cover_type = self.events_table_name + "_idx_id_type"
        self.index_name_tag_main_id = self.tags_table_name + "_idx_tag_main_id"
        # One append function per table: 9.5.6's two functions are one per schema, so the
        # last table created wins (9.5.6 difference: one DCB append function per table).
        self.append_function_name = self.events_table_name + "_append"
        for name in (
            self.events_table_name,
            self.tags_table_name,
            self.index_name_id_cover_type,
            self.index_name_tag_main_id,
            self.append_function_name,
        ):
            self.check_identifier_length(name)
        self.datastore.db_type_names.update(
            (DB_TYPE_NAME_DCB_EVENT_TT, DB_TYPE_NAME_DCB_QUERY_ITEM_TT)
        )
        self._sql = DCBStatements(
            schema=datastore.schema,
            events_table=self.events_table_name,
            tags_table=self.tags_table_name,
            id_type_index=self.index_name_id_cover_type,
            tag_main_id_index=self.index_name_tag_main_id,
            channel=self.channel_name,
            append_function=self.append_function_name,
            lock_timeout=datastore.lock_timeout,
        )
        self.sql_create_statements.extend(self._sql.create_statements())

    # -- reading ---------------------------------------------------------------------

    def read(
        self,
        query: DCBQuery | None = None,
        *,
        after: int | None = None,
        limit: int | None = None,
    ) -> DCBReadResponse:
        """Return the events matching ``query`` after ``after`` (at most ``limit``)."""
        shape, params = self._query_params(query)
        params["after"] = after or 0
        params["limit"] = limit
        if limit is not None:
            rows = self._select(self._sql.without_head[shape], params)
            events = [self._sequenced(row) for row in rows]
            head = events[-1].position if events else None
        else:
            rows = self._select(self._sql.with_head[shape], params)
            head = rows[0][4] if rows else None
            events = [self._sequenced(row) for row in rows if row[0] is not None]
        return SimpleDCBReadResponse(iter(events), head)

    @staticmethod
    def _sequenced(row: Row) -> DCBSequencedEvent:
        return DCBSequencedEvent(
            event=DCBEvent(type=row[1], data=row[2], tags=row[3]), position=row[0]
        )

    @staticmethod
    def _query_params(query: DCBQuery | None) -> tuple[str, dict[str, Any]]:
        """Which statement reads ``query`` (all, tagged, typed or mixed) and its parameters."""
        items = query.items if query is not None else []
        tagged = [item for item in items if item.tags]
        loose = [item for item in items if not item.tags]
        if not items or any(not item.types for item in loose):
            return "all", {}  # an item without tags or types matches every event
        params: dict[str, Any] = {"loose_types": [t for item in loose for t in item.types]}
        if tagged:
            params["n_items"] = len(tagged)
            params["tag_bounds"], params["item_tags"] = _flatten([i.tags for i in tagged])
            params["type_bounds"], params["item_types"] = _flatten([i.types for i in tagged])
        if not tagged:
            return "typed", params
        return ("mixed" if loose else "tagged"), params

    def _select(self, statement: Any, params: dict[str, Any]) -> list[Row]:
        def select(conn: Connection[DictRow]) -> list[Row]:
            with conn.cursor(row_factory=tuple_row, binary=True) as cursor:
                cursor.execute(statement, params, prepare=True)
                return cursor.fetchall()

        return self.datastore.run(select)

    # -- appending -------------------------------------------------------------------

    def append(
        self, events: Sequence[DCBEvent], condition: DCBAppendCondition | None = None
    ) -> int:
        """Append ``events`` in one statement, unless ``condition`` fails (IntegrityError)."""
        if not events:
            msg = "Can't append no events: pass at least one DCBEvent"
            raise ProgrammingError(msg)
        event_bounds, event_tags = _flatten([e.tags for e in events])
        if condition is None:
            condition_params: list[Any] = [False, None, [], [], [], []]
        else:
            items = condition.fail_if_events_match.items
            type_bounds, types = _flatten([i.types for i in items])
            tag_bounds, tags = _flatten([i.tags for i in items])
            condition_params = [True, condition.after, type_bounds, types, tag_bounds, tags]
        params = [
            *condition_params,
            [e.type for e in events],
            [e.data for e in events],
            event_bounds,
            event_tags,
        ]
        # Not retried on another connection: if the connection fails after the statement
        # was sent, the append may have been committed, and a retry could append it twice.
        try:
            with (
                self.datastore.get_connection() as conn,
                conn.cursor(row_factory=tuple_row) as cursor,
            ):
                cursor.execute(self._sql.append, params, prepare=True)
                row = cursor.fetchone()
        except ProgrammingError as e:
            if isinstance(e.__cause__, psycopg.errors.UndefinedFunction):
                raise self._no_append_function() from e
            raise
        if row is None or row[0] is None:
            raise IntegrityError(condition)
        return int(row[0])

    def _no_append_function(self) -> ProgrammingError:
        return ProgrammingError(
            f"The function {self.append_function_name} does not exist in "
            f"{self.datastore.describe()}: the tables were created by eventsourcing 9.5.6, "
            "or not at all. Create this library's objects once: construct the application "
            "with CREATE_TABLE left at its default (yes), or call create_table() on the "
            "recorder (tables and data are kept; 9.5.6 clients go on working)"
        )

    # -- subscribing -----------------------------------------------------------------

    def subscribe(
        self,
        query: DCBQuery | None = None,
        *,
        after: int | None = None,
    ) -> PostgresDCBSubscription:
        """Iterate over matching events after ``after``, woken by NOTIFY for new ones."""
        return PostgresDCBSubscription(recorder=self, query=query, after=after)


class PsycopgDCBEvent(NamedTuple):
    """The fields of the ``dcb_event_tt`` composite type."""

    type: str
    data: bytes
    tags: list[str]


class PsycopgDCBQueryItem(NamedTuple):
    """The fields of the ``dcb_query_item_tt`` composite type."""

    types: list[str]
    tags: list[str]


class PostgresDCBSubscription(DCBListenNotifySubscription[PostgresDCBRecorderTT]):
    """A subscription woken by ``NOTIFY`` on the recorder's channel.

    It listens (on its own connection, outside the pool) before its first read, so that
    nothing appended between the two is missed.
    """

    #: Seconds between checks for stop() while waiting for a notification.
    poll_interval = 0.1

    def __init__(
        self,
        recorder: PostgresDCBRecorderTT,
        query: DCBQuery | None = None,
        after: int | None = None,
    ) -> None:
        datastore = recorder.datastore
        self._listen_connection = datastore.connect()
        try:
            self._listen_connection.execute(
                SQL("LISTEN {}").format(quoted(recorder.channel_name)), NO_PARAMS
            )
        except psycopg.Error as e:
            self._listen_connection.close()
            raise datastore.translate(e) from e
        super().__init__(recorder=recorder, query=query, after=after)
        self._listen_thread = threading.Thread(
            target=self._listen, name="DCB subscription LISTEN", daemon=True
        )
        self._listen_thread.start()

    def __exit__(self, *args: object, **kwargs: Any) -> None:
        super().__exit__(*args, **kwargs)
        self._listen_thread.join()

    def _listen(self) -> None:
        conn = self._listen_connection
        try:
            while not self._has_been_stopped:
                for _ in conn.notifies(timeout=self.poll_interval, stop_after=1):
                    self._has_been_notified.set()
        except BaseException as e:
            if self._thread_error is None:
                if isinstance(e, psycopg.Error):
                    self._thread_error = self._recorder.datastore.translate(e)
                else:
                    self._thread_error = e
            self.stop()
        finally:
            conn.close()


class PostgresTTDCBFactory(
    _postgres.PostgresFactory,
    DCBInfrastructureFactory[PostgresTrackingRecorder],
):
    """Makes the PostgreSQL DCB recorder of ``<app name>_events`` (``dcb_events`` unnamed).

    It makes the other recorders of ``PostgresFactory`` too, so that a projection's view
    can use the application's persistence module (9.5.6 difference: DCB modules name one
    factory). ``PostgresFactory`` is not imported by name, so that this is the one factory
    class that ``InfrastructureFactory.construct`` finds in this module.
    """

    def dcb_recorder(self) -> DCBRecorder:
        """Return the recorder, creating its tables unless ``CREATE_TABLE`` is false."""
        prefix = self.env.name.lower() or "dcb"
        recorder = PostgresDCBRecorderTT(
            datastore=self.datastore, events_table_name=prefix + "_events"
        )
        if self.env_create_table():
            recorder.create_table()
        return recorder
