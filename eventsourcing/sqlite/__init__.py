"""SQLite persistence: recorders and an infrastructure factory over the stdlib ``sqlite3``.

Select it with ``PERSISTENCE_MODULE=eventsourcing.sqlite``.

Environment variables (read through ``Environment.get``, so ``<APPNAME>_<KEY>`` wins):

* ``SQLITE_DBNAME`` (required): a file path, a ``file:`` URI, ``:memory:`` (private to one
  datastore), or a shared in-memory URI such as ``file:NAME?mode=memory&cache=shared``.
* ``SQLITE_LOCK_TIMEOUT``: seconds to wait for another connection's lock (int; empty means
  the default of 5).
* ``SINGLE_ROW_TRACKING`` (default ``t``): keep one tracking row per upstream application.
* ``ORIGINATOR_ID_TYPE`` (default ``uuid``): ``uuid`` or ``text`` originator ids.
* ``CREATE_TABLE`` (default ``yes``): create tables when the factory makes a recorder.
* ``APPLICATION_RECORDER_TOPIC``, ``TRACKING_RECORDER_TOPIC``, ``PROCESS_RECORDER_TOPIC``:
  recorder subclasses to construct instead of the defaults.

Tables have fixed names, compatible with ``eventsourcing`` 9.x: ``stored_events``,
``stored_snapshots`` and ``tracking``. Use one database per application.

Guarantees:

* Durability: file databases run in WAL mode with ``synchronous=FULL``, so a write is on
  disk when ``insert_events`` returns.
* Atomicity: each ``insert_events`` call (with its tracking record, if any) is all or
  nothing; a version conflict raises ``IntegrityError`` and writes nothing.
* Ordering: notification ids are SQLite rowids, strictly increasing and contiguous within
  one call. Ids are committed in order (one writer at a time), so a reader never sees a gap
  that is filled later.
* Concurrency: each datastore has one writer connection, used under a lock, so writers are
  serialised; writes that arrive while another is running are committed together (group
  commit, one savepoint each, so a conflict fails only its own call). Readers use pooled
  connections and run concurrently with the writer (WAL). Other processes may share a file
  database (SQLite's file locks, waiting up to the lock timeout). An in-memory database
  has one connection per datastore, and all access to it is serialised (across datastores
  too, for a shared-cache database).
* Subscriptions: ``subscribe()`` is woken after each commit made through the same
  datastore, and polls every ``SQLiteSubscription.poll_interval`` seconds for writes made
  by other processes.

Not provided: per-application table names (see Postgres), and sharing ``:memory:`` between
datastores.
"""

from __future__ import annotations

# The names of the module this package was, as explicit re-exports.
# isort: off
from eventsourcing.sqlite.errors import translate_error as translate_error
from eventsourcing.sqlite.identifiers import (
    _check_identifier as _check_identifier,
    is_memory_db_name as is_memory_db_name,
)
from eventsourcing.sqlite.connections import (
    SQLITE3_DEFAULT_LOCK_TIMEOUT as SQLITE3_DEFAULT_LOCK_TIMEOUT,
    Row as Row,
    SQLiteConnection as SQLiteConnection,
    SQLiteConnectionPool as SQLiteConnectionPool,
    SQLiteCursor as SQLiteCursor,
    SQLiteTransaction as SQLiteTransaction,
)
from eventsourcing.sqlite.datastore import (
    OriginatorIDType as OriginatorIDType,
    SQLiteDatastore as SQLiteDatastore,
)
from eventsourcing.sqlite.recorders import (
    SQLiteAggregateRecorder as SQLiteAggregateRecorder,
    SQLiteApplicationRecorder as SQLiteApplicationRecorder,
    SQLiteRecorder as SQLiteRecorder,
    SQLiteSubscription as SQLiteSubscription,
)
from eventsourcing.sqlite.tracking import (
    SQLiteProcessRecorder as SQLiteProcessRecorder,
    SQLiteTrackingRecorder as SQLiteTrackingRecorder,
)
from eventsourcing.sqlite.factory import Factory as Factory, SQLiteFactory as SQLiteFactory
# isort: on

# The classes keep the topics they had when this package was one module, and have in 9.x
# ("eventsourcing.sqlite:SQLiteFactory"...): topics may be stored, and are compared.
for _public_class in (
    SQLiteAggregateRecorder,
    SQLiteApplicationRecorder,
    SQLiteConnection,
    SQLiteConnectionPool,
    SQLiteCursor,
    SQLiteDatastore,
    SQLiteFactory,
    SQLiteProcessRecorder,
    SQLiteRecorder,
    SQLiteSubscription,
    SQLiteTrackingRecorder,
    SQLiteTransaction,
):
    _public_class.__module__ = __name__
del _public_class
