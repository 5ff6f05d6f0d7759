"""The SQLite DCB recorder, and the factory of ``PERSISTENCE_MODULE=eventsourcing.dcb.sqlite``.

9.5.6 has none (9.5.6 difference: SQLite DCB recorder). The settings are those of
:mod:`eventsourcing.sqlite` (``SQLITE_DBNAME``, ``SQLITE_LOCK_TIMEOUT``, ``CREATE_TABLE``).
Use one database per application.

Tables: ``dcb_events(position INTEGER PRIMARY KEY, type, data, tags)``, the tags held as
a JSON array, and ``dcb_tags(tag, position)``, one row per distinct tag of each event,
which the reads of tagged query items go through.

Guarantees:

* An append runs in one ``BEGIN IMMEDIATE`` transaction: it holds SQLite's write lock
  while its condition is checked and its events are inserted, so appenders in any
  processes take turns, and two whose conditions exclude each other can't both succeed.
  Appends through one datastore from several threads are committed together (one fsync),
  each in its own savepoint, so a failed condition fails only its own append.
* Positions are rowids: they increase by one, and are committed in order.
* A read is one statement: its events and its head come from one snapshot.
* Subscriptions are woken after each append through the same datastore, and poll every
  ``SQLiteDCBSubscription.poll_interval`` seconds for appends from other processes.
"""

from __future__ import annotations

import json
import sqlite3
from threading import Event, Thread
from typing import TYPE_CHECKING, Any

from eventsourcing import sqlite as _sqlite  # not by name: see SQLiteDCBFactory
from eventsourcing.dcb.api import (
    DCBAppendCondition,
    DCBEvent,
    DCBQuery,
    DCBQueryItem,
    DCBReadResponse,
    DCBRecorder,
    DCBSequencedEvent,
)
from eventsourcing.dcb.persistence import DCBInfrastructureFactory, DCBListenNotifySubscription
from eventsourcing.dcb.popo import SimpleDCBReadResponse
from eventsourcing.persistence import IntegrityError, ProgrammingError

if TYPE_CHECKING:
    from collections.abc import Sequence

__all__ = ["SQLiteDCBFactory", "SQLiteDCBRecorder", "SQLiteDCBSubscription"]

_CREATE_STATEMENTS = [
    "CREATE TABLE IF NOT EXISTS dcb_events ("
    "position INTEGER PRIMARY KEY, type TEXT NOT NULL, data BLOB NOT NULL, tags TEXT NOT NULL)",
    "CREATE TABLE IF NOT EXISTS dcb_tags ("
    "tag TEXT NOT NULL, position INTEGER NOT NULL, PRIMARY KEY (tag, position)) WITHOUT ROWID",
]
_COLUMNS = "e.position, e.type, e.data, e.tags"
_INSERT_TAG = "INSERT INTO dcb_tags (tag, position) VALUES (?, ?)"


def _marks(n: int) -> str:
    return ", ".join("?" * n)


def _item_positions(item: DCBQueryItem, after: int) -> tuple[str, list[Any]]:
    """A SELECT of the positions of events after ``after`` that match ``item``."""
    types = list(item.types)
    type_filter = f" AND e.type IN ({_marks(len(types))})" if types else ""
    if not item.tags:
        return f"SELECT e.position FROM dcb_events e WHERE e.position > ?{type_filter}", [
            after,
            *types,
        ]
    first, *others = dict.fromkeys(item.tags)  # distinct, in order
    # Candidates by the first tag (the primary key's order), then each other tag by key.
    others_filter = "".join(
        " AND EXISTS (SELECT 1 FROM dcb_tags o WHERE o.tag = ? AND o.position = t.position)"
        for _ in others
    )
    if not types:
        sql = f"SELECT t.position FROM dcb_tags t WHERE t.tag = ? AND t.position > ?{others_filter}"
        return sql, [first, after, *others]
    sql = (
        "SELECT t.position FROM dcb_tags t JOIN dcb_events e ON e.position = t.position "
        f"WHERE t.tag = ? AND t.position > ?{others_filter}{type_filter}"
    )
    return sql, [first, after, *others, *types]


def _select_statement(query: DCBQuery | None, after: int) -> tuple[str, list[Any]]:
    """A SELECT of the events after ``after`` that match ``query``, in order, with a LIMIT ?."""
    items = query.items if query is not None else []
    if not items or any(not i.tags and not i.types for i in items):
        sql = f"SELECT {_COLUMNS} FROM dcb_events e WHERE e.position > ? ORDER BY e.position"
        return sql + " LIMIT ?", [after]
    parts = [_item_positions(item, after) for item in items]
    union = " UNION ".join(sql for sql, _ in parts)
    params = [p for _, item_params in parts for p in item_params]
    sql = f"SELECT {_COLUMNS} FROM dcb_events e WHERE e.position IN ({union}) ORDER BY e.position"
    return sql + " LIMIT ?", params


class SQLiteDCBRecorder(DCBRecorder, _sqlite.SQLiteRecorder):
    """Records DCB events in an SQLite database (see the module docstring)."""

    def construct_create_table_statements(self) -> list[str]:
        """The statements that create the two tables."""
        return list(_CREATE_STATEMENTS)

    def read(
        self,
        query: DCBQuery | None = None,
        *,
        after: int | None = None,
        limit: int | None = None,
    ) -> DCBReadResponse:
        """Return the events matching ``query`` after ``after`` (at most ``limit``)."""
        sql, params = _select_statement(query, after or 0)
        params.append(-1 if limit is None else limit)  # LIMIT -1: no limit
        if limit is not None:
            events = [self._sequenced(r) for r in self.datastore.read(sql, params)]
            return SimpleDCBReadResponse(iter(events), events[-1].position if events else None)
        # The head in the same statement, so from the same snapshot: a row of its own.
        sql = (
            "SELECT NULL, NULL, NULL, NULL, (SELECT max(position) FROM dcb_events) "
            f"UNION ALL SELECT *, NULL FROM ({sql})"
        )
        rows = self.datastore.read(sql, params)
        head = next(row[4] for row in rows if row[0] is None)
        events = [self._sequenced(r) for r in rows if r[0] is not None]
        return SimpleDCBReadResponse(iter(events), head)

    @staticmethod
    def _sequenced(row: Any) -> DCBSequencedEvent:
        return DCBSequencedEvent(
            event=DCBEvent(type=row[1], data=row[2], tags=json.loads(row[3])), position=row[0]
        )

    def append(
        self, events: Sequence[DCBEvent], condition: DCBAppendCondition | None = None
    ) -> int:
        """Append ``events`` in one transaction, unless ``condition`` fails (IntegrityError)."""
        if not events:
            msg = "Can't append no events: pass at least one DCBEvent"
            raise ProgrammingError(msg)
        rows = [(e.type, bytes(e.data), json.dumps(list(e.tags))) for e in events]
        tag_sets = [dict.fromkeys(e.tags) for e in events]

        def write(cursor: sqlite3.Cursor) -> int:
            if condition is not None and self._condition_fails(cursor, condition):
                raise IntegrityError(condition)
            positions = []
            for row in rows:
                cursor.execute("INSERT INTO dcb_events (type, data, tags) VALUES (?, ?, ?)", row)
                positions.append(cursor.lastrowid)
            cursor.executemany(
                _INSERT_TAG,
                [(tag, pos) for pos, tags in zip(positions, tag_sets, strict=True) for tag in tags],
            )
            return int(positions[-1])  # type: ignore[arg-type]

        return self.datastore.write(write, transaction=True)

    @staticmethod
    def _condition_fails(cursor: sqlite3.Cursor, condition: DCBAppendCondition) -> bool:
        sql, params = _select_statement(condition.fail_if_events_match, condition.after or 0)
        cursor.execute(f"SELECT EXISTS ({sql})", [*params, 1])
        return bool(cursor.fetchone()[0])

    def subscribe(
        self,
        query: DCBQuery | None = None,
        *,
        after: int | None = None,
    ) -> SQLiteDCBSubscription:
        """Iterate over matching events after ``after``, then over new ones."""
        return SQLiteDCBSubscription(self, query=query, after=after)


class SQLiteDCBSubscription(DCBListenNotifySubscription[SQLiteDCBRecorder]):
    """Woken after appends through the recorder's datastore, and by polling for others'."""

    #: Seconds between reads for appends made by other processes (or other datastores).
    poll_interval: float = 0.05

    def __init__(
        self,
        recorder: SQLiteDCBRecorder,
        query: DCBQuery | None = None,
        after: int | None = None,
    ) -> None:
        self._stop_polling = Event()
        super().__init__(recorder=recorder, query=query, after=after)
        self._poll_thread = Thread(target=self._poll, name="DCB subscription poll", daemon=True)
        self._poll_thread.start()

    def _start_listening(self) -> None:
        self._recorder.datastore.add_waker(self._has_been_notified)

    def stop(self) -> None:
        """End the iteration and the polling."""
        if hasattr(self, "_stop_polling"):
            self._stop_polling.set()
            self._recorder.datastore.remove_waker(self._has_been_notified)
        super().stop()

    def _poll(self) -> None:
        while not self._stop_polling.wait(self.poll_interval):
            self._has_been_notified.set()


class SQLiteDCBFactory(
    _sqlite.SQLiteFactory, DCBInfrastructureFactory[_sqlite.SQLiteTrackingRecorder]
):
    """Makes the SQLite DCB recorder (and, sharing its database, recorders for views).

    ``SQLiteFactory`` is not imported by name, so that this is the one factory class that
    ``InfrastructureFactory.construct`` finds in this module.
    """

    def dcb_recorder(self) -> DCBRecorder:
        """Return the recorder, creating its tables unless ``CREATE_TABLE`` is false."""
        recorder = SQLiteDCBRecorder(datastore=self.datastore)
        if self.env_create_table():
            recorder.create_table()
        return recorder
