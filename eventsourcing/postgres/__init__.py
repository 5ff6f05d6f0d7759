"""PostgreSQL persistence: recorders and an infrastructure factory over psycopg 3.

Select it with ``PERSISTENCE_MODULE=eventsourcing.postgres`` and install the extra:
``pip install 'eventsourcing[postgres]'``.

Environment variables (read through ``Environment.get``, so ``<APPNAME>_<KEY>`` wins):

* ``POSTGRES_DBNAME``, ``POSTGRES_HOST``, ``POSTGRES_USER`` (required), ``POSTGRES_PORT``
  (default 5432).
* ``POSTGRES_PASSWORD`` (required), or ``POSTGRES_GET_PASSWORD_TOPIC``: the topic of a
  zero-argument callable returning a password, called for every new connection (e.g. for
  short-lived cloud tokens).
* ``POSTGRES_CONNECT_TIMEOUT`` (int seconds, default 30): how long to wait for a connection,
  from the pool or from a restarting server, before giving up.
* ``POSTGRES_POOL_SIZE`` (default 5) and ``POSTGRES_MAX_OVERFLOW`` (default 10): connections
  kept, and extra ones opened under load. ``POSTGRES_MAX_WAITING`` (default 0, unlimited):
  requests allowed to queue for a connection before failing at once.
* ``POSTGRES_CONN_MAX_AGE`` (float seconds, default 3600): connections are replaced after
  this age. ``POSTGRES_PRE_PING`` (default no): check a connection before handing it out.
* ``POSTGRES_LOCK_TIMEOUT`` (int seconds, default 0 = wait forever): how long a save waits for
  the table lock. ``POSTGRES_IDLE_IN_TRANSACTION_SESSION_TIMEOUT`` (int seconds, default 5).
* ``POSTGRES_SCHEMA`` (default ``public``; created if missing). ``CREATE_TABLE`` (default yes).
* ``ORIGINATOR_ID_TYPE``: ``uuid`` (default) or ``text`` columns for originator ids.
* ``SINGLE_ROW_TRACKING`` (default ``t``): one tracking row per upstream application, older
  multi-row tracking tables being migrated. ``POSTGRES_ENABLE_DB_FUNCTIONS`` (default no):
  also create the ``es_insert_events_<type>`` function that 9.x clients may call (our own
  inserts don't use it: one function per id type can serve only one table per schema;
  9.5.6 difference: PostgreSQL insert function unused).
* ``APPLICATION_RECORDER_TOPIC``, ``TRACKING_RECORDER_TOPIC``, ``PROCESS_RECORDER_TOPIC``.

Tables are named after the application (``<name>_events``, ``<name>_snapshots``,
``<name>_tracking``; ``stored_events``, ``stored_snapshots`` and ``notification_tracking``
without a name), with the same columns as ``eventsourcing`` 9.x, so either library reads
what the other wrote. Names reach SQL only as quoted identifiers; a name PostgreSQL can't
hold (over 63 bytes, or with a NUL) is refused with ``ProgrammingError``.

Guarantees:

* Durability: a save has been committed (``synchronous_commit`` as the server has it, on by
  default) when ``insert_events`` returns.
* Atomicity: one save (its events and tracking record) is all or nothing; a version conflict
  raises ``IntegrityError`` for that save only.
* Ordering: a reader tailing the log by notification id never skips an id that commits later
  (see :class:`PostgresApplicationRecorder`). Ids increase but may have gaps.
* Faults: a lost connection or a restarting server is retried with backoff for up to the
  connect timeout; then ``OperationalError`` says what failed. If a connection is lost
  after COMMIT was sent, the rows are read back to learn whether the save was recorded, so
  a save is never applied twice (if the server can't be reached to look, the error says
  the outcome is unknown). An exhausted
  pool raises ``ConnectionUnavailableError``. Passwords never appear in messages or logs.
  (9.5.6 difference: PostgreSQL retries and reconnection.)
* Subscriptions: ``subscribe()`` is woken by ``LISTEN``/``NOTIFY``, so writers in any process
  (ours or ``eventsourcing`` 9.x) wake it.

Speed: a save is one query (BEGIN, lock, NOTIFY, INSERT, COMMIT) in one round trip;
concurrent saves of one recorder share a transaction; batches of many events use binary
``COPY``; reads use binary results. Not provided: sharding, or ordering across tables.
"""

from __future__ import annotations

import logging

try:
    import psycopg  # noqa: F401 (a clear message if the extra is missing)
    import psycopg_pool  # noqa: F401
except ImportError as e:  # pragma: no cover
    raise ImportError(
        f"eventsourcing.postgres needs psycopg 3 and psycopg_pool ({e}); install the extra: "
        "pip install 'eventsourcing[postgres]'"
    ) from e

# Every name of the module this package was, public or not, as an explicit re-export.
# isort: off
from eventsourcing.postgres.identifiers import (
    check_identifier as check_identifier,
    clip_identifier as clip_identifier,
    MAX_IDENTIFIER_BYTES as MAX_IDENTIFIER_BYTES,
    NO_PARAMS as NO_PARAMS,
    _pg_quote as _pg_quote,
    quoted as quoted,
)
from eventsourcing.postgres.errors import (
    _CONNECTION_SQLSTATES as _CONNECTION_SQLSTATES,
    _ERROR_CLASSES as _ERROR_CLASSES,
    _HINTS as _HINTS,
    is_connection_failure as is_connection_failure,
    _is_rolled_back as _is_rolled_back,
    _OutcomeUnknownError as _OutcomeUnknownError,
    _SaveRefusedError as _SaveRefusedError,
    translate_error as translate_error,
)
from eventsourcing.postgres.pool import (
    ConnectionPool as ConnectionPool,
    CT as CT,
    _is_alive as _is_alive,
    _POOL_NAME_PREFIX as _POOL_NAME_PREFIX,
    _pool_numbers as _pool_numbers,
    _QuietReconnects as _QuietReconnects,
    _ReconnectBackoff as _ReconnectBackoff,
)
from eventsourcing.postgres.datastore import (
    _Backoff as _Backoff,
    _CantConnectError as _CantConnectError,
    _check_originator_id_type as _check_originator_id_type,
    _OPEN_TRANSACTION as _OPEN_TRANSACTION,
    OriginatorIDType as OriginatorIDType,
    PostgresDatastore as PostgresDatastore,
    _ServerUnreachableError as _ServerUnreachableError,
    _T as _T,
)
from eventsourcing.postgres.scripts import (
    _BEGIN as _BEGIN,
    _COMMIT as _COMMIT,
    _committing as _committing,
    _fetch as _fetch,
    _MAX_SCRIPT_QUERIES as _MAX_SCRIPT_QUERIES,
    _rollback_quietly as _rollback_quietly,
    _ROLLBACK_TO_SAVEPOINT as _ROLLBACK_TO_SAVEPOINT,
    _run_script as _run_script,
    _SAVEPOINT as _SAVEPOINT,
    _SCRIPT_QUERIES as _SCRIPT_QUERIES,
    _script_query as _script_query,
    _Statement as _Statement,
)
from eventsourcing.postgres.saves import (
    _bind as _bind,
    _PendingSave as _PendingSave,
    _SaveCoalescer as _SaveCoalescer,
)
from eventsourcing.postgres.recorder import (
    _create_type as _create_type,
    _DDL_LOCK_KEY as _DDL_LOCK_KEY,
    _DDL_LOCK_STATEMENT as _DDL_LOCK_STATEMENT,
    _is_create_type as _is_create_type,
    PostgresRecorder as PostgresRecorder,
    _TABLE_OPTIONS as _TABLE_OPTIONS,
)
from eventsourcing.postgres.aggregate import (
    _LIBRARY_INSERT_EVENTS as _LIBRARY_INSERT_EVENTS,
    _MAX_VALUES_ROWS as _MAX_VALUES_ROWS,
    PgStoredEvent as PgStoredEvent,
    PostgresAggregateRecorder as PostgresAggregateRecorder,
)
from eventsourcing.postgres.application import (
    PostgresApplicationRecorder as PostgresApplicationRecorder,
    _ROLLBACK_RETRIES as _ROLLBACK_RETRIES,
)
from eventsourcing.postgres.subscription import (
    PostgresSubscription as PostgresSubscription,
)
from eventsourcing.postgres.tracking import (
    PostgresTrackingRecorder as PostgresTrackingRecorder,
    _TrackingWriter as _TrackingWriter,
)
from eventsourcing.postgres.process import (
    PostgresProcessRecorder as PostgresProcessRecorder,
)
from eventsourcing.postgres.factory import (
    BasePostgresFactory as BasePostgresFactory,
    Factory as Factory,
    PostgresFactory as PostgresFactory,
    TPostgresTrackingRecorder as TPostgresTrackingRecorder,
    _TRecorder as _TRecorder,
)
# isort: on

__all__ = [
    "BasePostgresFactory",
    "ConnectionPool",
    "Factory",
    "PgStoredEvent",
    "PostgresAggregateRecorder",
    "PostgresApplicationRecorder",
    "PostgresDatastore",
    "PostgresFactory",
    "PostgresProcessRecorder",
    "PostgresRecorder",
    "PostgresSubscription",
    "PostgresTrackingRecorder",
]

# The classes keep the topics they had when this package was one module, and have in 9.x
# ("eventsourcing.postgres:PostgresFactory"...): topics may be stored, and are compared.
for _public_class in (
    BasePostgresFactory,
    ConnectionPool,
    PgStoredEvent,
    PostgresAggregateRecorder,
    PostgresApplicationRecorder,
    PostgresDatastore,
    PostgresFactory,
    PostgresProcessRecorder,
    PostgresRecorder,
    PostgresSubscription,
    PostgresTrackingRecorder,
):
    _public_class.__module__ = __name__
del _public_class

# The parent of the package's module loggers (configuring it configures them).
logger = logging.getLogger(__name__)
