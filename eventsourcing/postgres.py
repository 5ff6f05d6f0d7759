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

import contextlib
import itertools
import logging
import random
import threading
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from functools import partial
from time import monotonic, sleep
from typing import TYPE_CHECKING, Any, Generic, Literal, NamedTuple, TypeVar, cast
from uuid import UUID

try:
    import psycopg
    import psycopg.errors
    import psycopg_pool
    import psycopg_pool.base
    from psycopg import Connection, Cursor
    from psycopg.rows import DictRow, dict_row
    from psycopg.sql import SQL, Composable, Composed, Identifier
    from psycopg.sql import Literal as SQLLiteral
except ImportError as e:  # pragma: no cover
    raise ImportError(
        f"eventsourcing.postgres needs psycopg 3 and psycopg_pool ({e}); install the extra: "
        "pip install 'eventsourcing[postgres]'"
    ) from e

from typing_extensions import TypeVar as TypeVarWithDefault

from eventsourcing.persistence import (
    AggregateRecorder,
    ApplicationRecorder,
    BaseInfrastructureFactory,
    ConnectionUnavailableError,
    DatabaseError,
    DataError,
    InfrastructureFactory,
    IntegrityError,
    InterfaceError,
    InternalError,
    ListenNotifySubscription,
    Notification,
    NotSupportedError,
    OperationalError,
    PersistenceError,
    ProcessRecorder,
    ProgrammingError,
    StoredEvent,
    Subscription,
    Tracking,
    TrackingRecorder,
    TTrackingRecorder,
)
from eventsourcing.utils import Environment, EnvType, resolve_topic, strtobool

if TYPE_CHECKING:
    from types import TracebackType
    from typing import Self

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

logger = logging.getLogger(__name__)

_T = TypeVar("_T")
OriginatorIDType = Literal["uuid", "text"]

# PostgreSQL keeps at most NAMEDATALEN - 1 = 63 bytes of an identifier and silently cuts
# longer ones, so two long names could end up naming one table: refuse them instead.
MAX_IDENTIFIER_BYTES = 63


# ---------------------------------------------------------------------------------------------
# Errors: psycopg's are translated at this seam into the PEP 249 errors of persistence.py.

_ERROR_CLASSES: tuple[tuple[type[Exception], type[PersistenceError]], ...] = (
    (psycopg_pool.PoolTimeout, ConnectionUnavailableError),
    (psycopg_pool.TooManyRequests, ConnectionUnavailableError),
    (psycopg.InterfaceError, InterfaceError),
    (psycopg.DataError, DataError),
    (psycopg.OperationalError, OperationalError),
    (psycopg.IntegrityError, IntegrityError),
    (psycopg.InternalError, InternalError),
    (psycopg.ProgrammingError, ProgrammingError),
    (psycopg.NotSupportedError, NotSupportedError),
    (psycopg.DatabaseError, DatabaseError),
    (psycopg.Error, PersistenceError),
)

_HINTS: dict[type[Exception], str] = {
    psycopg.errors.UniqueViolation: (
        "a record with this key is already stored (for events: a version conflict; reload "
        "the aggregate and retry the command)"
    ),
    psycopg.errors.UndefinedTable: "create the table with create_table(), or set CREATE_TABLE=yes",
    psycopg.errors.LockNotAvailable: (
        "another transaction held the lock longer than POSTGRES_LOCK_TIMEOUT; raise it, or "
        "retry the command"
    ),
    psycopg.errors.InsufficientPrivilege: "grant the POSTGRES_USER the privilege named above",
}

# SQLSTATE classes and codes that mean the connection, not the statement, failed: the
# operation can be retried on another connection.
_CONNECTION_SQLSTATES = ("08", "57P01", "57P02", "57P03")


def translate_error(error: psycopg.Error) -> PersistenceError:
    """Return the persistence error for a psycopg error, its message ending with a hint."""
    message = str(error).strip() or type(error).__name__
    for psycopg_class, hint in _HINTS.items():
        if isinstance(error, psycopg_class):
            message = f"{message} ({hint})"
            break
    for psycopg_class, error_class in _ERROR_CLASSES:
        if isinstance(error, psycopg_class):
            return error_class(message)
    return PersistenceError(message)  # pragma: no cover (psycopg.Error is last above)


def is_connection_failure(error: BaseException, conn: Connection[Any] | None = None) -> bool:
    """True if ``error`` means the connection or server failed (worth a retry elsewhere)."""
    if isinstance(error, psycopg_pool.TooManyRequests | psycopg_pool.PoolClosed):
        return False
    if not isinstance(error, psycopg.OperationalError | psycopg.InterfaceError):
        return False
    if conn is not None and (conn.broken or conn.closed):
        return True
    sqlstate = error.sqlstate or ""
    if sqlstate.startswith(_CONNECTION_SQLSTATES):
        return True
    # No SQLSTATE: the client library failed to talk to the server.
    return not sqlstate and not isinstance(error, psycopg_pool.PoolTimeout)


class _SaveRefusedError(Exception):
    """A tracking record was refused inside a batch: roll back that save only."""


def _is_rolled_back(error: psycopg.Error) -> bool:
    """True if the server rolled the transaction back (SQLSTATE class 40: a deadlock, a
    serialization failure): nothing was recorded, and it may be tried again."""
    return (error.sqlstate or "").startswith("40")


class _OutcomeUnknownError(Exception):
    """The connection failed after COMMIT was sent: the batch may or may not be stored."""


# ---------------------------------------------------------------------------------------------
# Identifiers


def check_identifier(name: str, what: str = "identifier") -> str:
    """Return ``name`` if PostgreSQL can hold it as an identifier, else raise ProgrammingError.

    Quotes, semicolons and any other characters are fine, since names are only ever passed
    to SQL as quoted identifiers; the limits are 1-63 bytes of UTF-8 and no NUL character.
    """
    size = len(name.encode("utf8"))
    if size > MAX_IDENTIFIER_BYTES:
        raise ProgrammingError(
            f"Identifier too long: {name!r} ({what}) is {size} bytes of UTF-8, and PostgreSQL "
            f"keeps only {MAX_IDENTIFIER_BYTES}; use a shorter application or table name"
        )
    if not name or "\x00" in name:
        raise ProgrammingError(
            f"Invalid {what} {name!r}: PostgreSQL identifiers can't be empty or contain NUL"
        )
    return name


def quoted(name: str) -> Identifier:
    """Return ``name`` as a quoted identifier for statements run with parameters.

    psycopg reads ``%`` in a statement as the start of a placeholder, even inside a quoted
    identifier, so it is doubled here; every statement built from these is executed with a
    parameter sequence (empty if need be), which turns ``%%`` back into ``%``.
    """
    return Identifier(name.replace("%", "%%"))


NO_PARAMS: tuple[()] = ()


def _pg_quote(name: str) -> str:
    """Quote ``name`` as PostgreSQL does, for functions that parse names from strings."""
    return '"' + name.replace('"', '""') + '"'


def clip_identifier(name: str) -> str:
    """Cut ``name`` to 63 bytes at a character boundary, as PostgreSQL itself does."""
    encoded = name.encode("utf8")
    if len(encoded) <= MAX_IDENTIFIER_BYTES:
        return name
    return encoded[:MAX_IDENTIFIER_BYTES].decode("utf8", errors="ignore")


# ---------------------------------------------------------------------------------------------
# Connections


class PgStoredEvent(NamedTuple):
    """A stored event as a row of the ``stored_event_<type>`` composite type."""

    originator_id: UUID | str
    originator_version: int
    topic: str
    state: bytes


CT = TypeVar("CT", bound=Connection[Any])


_POOL_NAME_PREFIX = "eventsourcing-"
_pool_numbers = itertools.count(1)


class _QuietReconnects(logging.Filter):
    """Drops psycopg_pool's per-attempt "error connecting" warnings for our pools.

    While a server refuses connections the pool retries every 0.1-2 s and would warn each
    time (pages of lines a minute); the datastore reports the outage itself, once, in the
    error it raises when its ``connect_timeout`` runs out.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        """Keep every record except reconnection noise from pools named by us."""
        args = record.args
        return not (
            str(record.msg).startswith(("error connecting in", "reconnection attempt in pool"))
            and isinstance(args, tuple)
            and str(args[0]).startswith(_POOL_NAME_PREFIX)
        )


logging.getLogger("psycopg.pool").addFilter(_QuietReconnects())


class ConnectionPool(psycopg_pool.ConnectionPool[CT], Generic[CT]):
    """A psycopg_pool pool that can fetch a fresh password for each new connection."""

    def __init__(
        self,
        *args: Any,
        get_password_func: Callable[[], str] | None = None,
        **kwargs: Any,
    ) -> None:
        """Take psycopg_pool's arguments, and ``get_password_func`` (called per connection)."""
        self.get_password_func = get_password_func
        kwargs.setdefault("name", f"{_POOL_NAME_PREFIX}{next(_pool_numbers)}")
        super().__init__(*args, **kwargs)

    def _connect(self, timeout: float | None = None) -> CT:
        if self.get_password_func is not None:
            # Replace the dict rather than mutate it: other workers may be reading it.
            self.kwargs = {**self._static_kwargs(), "password": self.get_password_func()}
        return super()._connect(timeout=timeout)

    def _add_connection(self, attempt: Any, growing: bool = False) -> None:
        # psycopg_pool waits 1 s, then 2, 4, 8... between attempts to reconnect: too slow to
        # notice that a restarted server is back. Start at 0.1 s and never wait over 2 s.
        attempt = attempt or _ReconnectBackoff(timeout=self.reconnect_timeout)
        super()._add_connection(attempt, growing)

    def _static_kwargs(self) -> dict[str, Any]:
        kwargs = self.kwargs
        return dict(kwargs() if callable(kwargs) else kwargs or {})


class _ReconnectBackoff(psycopg_pool.base.AttemptWithBackoff):
    """Reconnection delays for the pool: 0.1 s, doubling, at most 2 s."""

    INITIAL_DELAY = 0.1

    def update_delay(self, now: float) -> None:
        """Double the delay (starting at 0.1 s), capped at 2 s."""
        super().update_delay(now)
        self.delay = min(self.delay, 2.0)


class PostgresDatastore:
    """A pool of connections to one database, with psycopg errors translated.

    Connections are in autocommit mode with a dict row factory; the pool opens on first use.
    :meth:`run` retries an operation with backoff while the connection or server fails, for
    up to ``connect_timeout`` seconds.
    """

    def __init__(
        self,
        dbname: str,
        host: str,
        port: str | int,
        user: str,
        password: str,
        *,
        connect_timeout: float = 5.0,
        idle_in_transaction_session_timeout: float = 0,
        pool_size: int = 1,
        max_overflow: int = 0,
        max_waiting: int = 0,
        conn_max_age: float = 60 * 60.0,
        pre_ping: bool = False,
        lock_timeout: int = 0,
        schema: str = "",
        pool_open_timeout: float | None = None,
        get_password_func: Callable[[], str] | None = None,
        single_row_tracking: bool = True,
        originator_id_type: OriginatorIDType = "uuid",
        enable_db_functions: bool = False,
    ) -> None:
        """Configure the pool (nothing connects until first use)."""
        self.dbname = dbname
        self.host = host
        self.port = port
        self.user = user
        self.connect_timeout = connect_timeout
        self.idle_in_transaction_session_timeout = idle_in_transaction_session_timeout
        self.pre_ping = pre_ping
        self.lock_timeout = lock_timeout
        self.schema = check_identifier(schema.strip() or "public", "schema name")
        self.pool_open_timeout = pool_open_timeout
        self.single_row_tracking = single_row_tracking
        self.originator_id_type = _check_originator_id_type(originator_id_type, ValueError)
        self.enable_db_functions = enable_db_functions
        #: Names of the composite types the recorders use (``stored_event_uuid``...).
        self.db_type_names: set[str] = set()
        self._closed = False
        self._open_lock = threading.Lock()
        self._is_open = False
        self._pool_kwargs: dict[str, Any] = {
            "get_password_func": get_password_func,
            "connection_class": Connection[DictRow],
            "kwargs": self._connect_kwargs(password),
            "min_size": pool_size,
            "max_size": pool_size + max_overflow,
            "open": False,
            "timeout": connect_timeout,
            "max_waiting": max_waiting,
            "max_lifetime": conn_max_age,
            # Not psycopg_pool's check: it waits 1, 2, 4... s between dead connections,
            # so a pool of dead ones (after a restart) times out. See _checkout().
            "check": None,
        }
        self.pool: ConnectionPool[Connection[DictRow]] = ConnectionPool(**self._pool_kwargs)

    def _connect_kwargs(self, password: str) -> dict[str, Any]:
        timeout_ms = int(self.idle_in_transaction_session_timeout * 1000)
        return {
            "dbname": self.dbname,
            "host": self.host,
            "port": self.port,
            "user": self.user,
            "password": password,
            "autocommit": True,
            "row_factory": dict_row,
            "connect_timeout": max(1, round(self.connect_timeout)),
            # Set at connection start-up, so it costs no extra round trip.
            "options": f"-c idle_in_transaction_session_timeout={timeout_ms}",
        }

    def describe(self) -> str:
        """Say which server and database this is, for messages (never the password)."""
        return f"PostgreSQL at {self.host}:{self.port}, database {self.dbname!r} as {self.user!r}"

    def connect(self) -> Connection[DictRow]:
        """Return a new connection outside the pool (the caller closes it)."""
        kwargs = self.pool._static_kwargs()
        if self.pool.get_password_func is not None:
            kwargs["password"] = self.pool.get_password_func()
        try:
            return Connection[DictRow].connect(**kwargs)
        except psycopg.Error as e:
            raise self._connect_error(e) from None

    def _connect_error(self, error: psycopg.Error) -> _CantConnectError:
        return _CantConnectError(
            f"Can't connect to {self.describe()}: {str(error).strip()} (check that the server "
            "is running and the POSTGRES_* settings)",
            # Class 28: invalid authorization (a wrong password or user); 3D: no such database.
            permanent=(error.sqlstate or "").startswith(("28", "3D")),
        )

    @contextmanager
    def get_connection(self) -> Iterator[Connection[DictRow]]:
        """Lend a pooled connection; psycopg errors become the library's errors.

        A transaction the caller began (``BEGIN``) and left open is committed when the
        block ends without an error, and rolled back otherwise, as with 9.x; a commit
        that fails (say, after ``idle_in_transaction_session_timeout``) raises.
        """
        conn = self._checkout(_Backoff(self.connect_timeout))
        try:
            with self._translated():
                yield conn
                if conn.info.transaction_status in _OPEN_TRANSACTION:
                    conn.commit()
        finally:
            self.pool.putconn(conn)  # the pool rolls back what is still open

    def _checkout(self, backoff: _Backoff) -> Connection[DictRow]:
        """Take a connection from the pool, waiting while the server can't be reached.

        With ``pre_ping``, a connection is checked first; if it is dead (the server was
        restarted, say), every idle connection is checked and the dead ones replaced.
        """
        while True:
            self._open_pool()
            try:
                conn = self.pool.getconn(timeout=backoff.remaining())
            except psycopg.Error as e:
                error = self.translate(e)
                if not isinstance(error, _ServerUnreachableError):
                    raise error from e
                if not self._wait_to_retry(error, backoff):
                    raise self._gave_up(error, backoff) from e
                continue
            if not self.pre_ping or _is_alive(conn):
                return conn
            self.pool.putconn(conn)  # a broken connection is discarded by the pool
            if not self._wait_to_retry(OperationalError("a pooled connection was dead"), backoff):
                raise OperationalError(
                    f"Gave up after {backoff.elapsed():.1f}s waiting for a live connection to "
                    f"{self.describe()}"
                )

    def _open_pool(self) -> None:
        if self._is_open:
            return
        with self._open_lock:
            if self._closed:
                raise OperationalError(
                    f"The datastore for {self.describe()} is closed: construct a new factory "
                    "(or application) to use the database again"
                )
            if not self._is_open:
                wait = self.pool_open_timeout is not None
                try:
                    self.pool.open(wait, self.pool_open_timeout or 30.0)
                except psycopg.Error as e:
                    raise self._open_failed(e) from e
                self._is_open = True

    def _open_failed(self, error: psycopg.Error) -> OperationalError:
        """Explain why the pool didn't open in ``pool_open_timeout``; make a fresh pool.

        psycopg_pool closes a pool that times out opening, and a closed pool can't be
        opened again: the next use of the datastore tries again with a new one (9.5.6
        difference: a pool that failed to open is replaced).
        """
        self.pool = ConnectionPool(**self._pool_kwargs)
        try:
            self.connect().close()
        except _CantConnectError as e:
            reason = str(e)
        else:
            reason = f"{self.describe()} accepted a connection only now ({error})"
        return OperationalError(
            f"The connection pool didn't open within pool_open_timeout="
            f"{self.pool_open_timeout:g}s: {reason}"
        )

    @contextmanager
    def _translated(self) -> Iterator[None]:
        try:
            yield
        except psycopg.Error as e:
            raise self.translate(e) from e

    def translate(self, error: psycopg.Error) -> PersistenceError:
        """Return the library's error for ``error`` (caused by it), explaining pool timeouts."""
        translated = self._translate(error)
        translated.__cause__ = error
        return translated

    def _translate(self, error: psycopg.Error) -> PersistenceError:
        if isinstance(error, psycopg_pool.PoolTimeout):
            return self._pool_timeout_error()
        if isinstance(error, psycopg_pool.PoolClosed):
            return OperationalError(
                f"The connection pool for {self.describe()} is closed: construct a new "
                "factory (or application) to use the database again"
            )
        return translate_error(error)

    def _pool_timeout_error(self) -> OperationalError:
        # First see whether the server accepts connections at all (the pool counts the
        # connections it is trying to make as its own): if not, say why.
        try:
            self.connect().close()
        except _CantConnectError as e:
            if e.permanent:
                return OperationalError(str(e))  # e.g. a wrong password: retrying won't help
            return _ServerUnreachableError(str(e))
        stats = self.pool.get_stats()
        if stats.get("pool_size", 0) >= self.pool.max_size and not stats.get("pool_available"):
            return ConnectionUnavailableError(
                f"Timed out after {self.pool.timeout}s waiting for a connection to "
                f"{self.describe()}: all {self.pool.max_size} connections are in use "
                "(raise POSTGRES_POOL_SIZE or POSTGRES_MAX_OVERFLOW, or POSTGRES_CONNECT_TIMEOUT)"
            )
        return ConnectionUnavailableError(
            f"Timed out after {self.pool.timeout}s waiting for a connection to "
            f"{self.describe()} (raise POSTGRES_CONNECT_TIMEOUT if the server is slow to accept)"
        )

    @contextmanager
    def cursor(self) -> Iterator[Cursor[DictRow]]:
        """Lend a cursor of a pooled connection (autocommit: each statement commits)."""
        with self.get_connection() as conn:
            yield conn.cursor()

    @contextmanager
    def transaction(self, *, commit: bool = False) -> Iterator[Cursor[DictRow]]:
        """Lend a cursor inside a transaction, committed on exit only if ``commit``."""
        with self.get_connection() as conn, conn.transaction(force_rollback=not commit):
            yield conn.cursor()

    def run(
        self, operation: Callable[[Connection[DictRow]], _T], backoff: _Backoff | None = None
    ) -> _T:
        """Call ``operation`` with a pooled connection, retrying while connections fail.

        A failure of the connection or server (lost connection, server restarting, no
        connection to be had) is retried on another connection with exponential backoff,
        for up to ``connect_timeout`` seconds; then ``OperationalError`` says what failed.
        Other errors are raised at once. An operation that writes must make sure that a
        retry can't repeat a write that was committed (see ``_write``).
        """
        backoff = backoff or _Backoff(self.connect_timeout)
        while True:
            conn = self._checkout(backoff)
            try:
                return operation(conn)
            except psycopg.Error as e:
                error = self.translate(e)
                if not is_connection_failure(e, conn):
                    raise error from e
                if not self._wait_to_retry(error, backoff):
                    raise self._gave_up(error, backoff) from e
            finally:
                self.pool.putconn(conn)

    def _wait_to_retry(self, error: PersistenceError, backoff: _Backoff) -> bool:
        if backoff.attempts == 0:
            # The first failure after a server restart: drop the other dead idle connections
            # now, rather than failing on each of them in turn.
            with contextlib.suppress(Exception):
                self.pool.check()
        logger.info("retrying after a connection failure: %s", error)
        return backoff.wait()

    def _gave_up(self, error: PersistenceError, backoff: _Backoff) -> OperationalError:
        attempts = backoff.attempts + 1
        return OperationalError(
            f"Gave up after {attempts} attempt{'s' * (attempts > 1)} over "
            f"{backoff.elapsed():.1f}s (POSTGRES_CONNECT_TIMEOUT={self.connect_timeout:g}) to "
            f"use {self.describe()}: {error}"
        )

    def close(self) -> None:
        """Close the pool and its connections (idempotent)."""
        with self._open_lock:
            self._closed = True
            self._is_open = False
        with contextlib.suppress(Exception):
            self.pool.close()

    def __enter__(self) -> Self:
        """Open the pool now, waiting for its first connections."""
        self._open_pool()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc_val: BaseException | None,
        exc_tb: TracebackType | None,
    ) -> None:
        """Close the datastore."""
        self.close()

    def __del__(self) -> None:
        if hasattr(self, "_open_lock"):
            self.close()


_OPEN_TRANSACTION = (psycopg.pq.TransactionStatus.INTRANS, psycopg.pq.TransactionStatus.INERROR)


def _is_alive(conn: Connection[Any]) -> bool:
    try:
        ConnectionPool.check_connection(conn)
    except psycopg.Error:
        return False
    return True


class _ServerUnreachableError(OperationalError):
    """No connection could be made: the server is down, restarting or refusing us."""


class _CantConnectError(OperationalError):
    """A new connection failed; ``permanent`` if retrying can't help (e.g. a bad password)."""

    def __init__(self, message: str, *, permanent: bool = False) -> None:
        super().__init__(message)
        self.permanent = permanent


def _check_originator_id_type(value: str, error_class: type[Exception]) -> OriginatorIDType:
    lowered = value.lower()
    if lowered not in ("uuid", "text"):
        raise error_class(f"Invalid ORIGINATOR_ID_TYPE '{value}', must be 'uuid' or 'text'")
    return cast(OriginatorIDType, lowered)


class _Backoff:
    """Exponential backoff (50 ms doubling to 1 s) within a total time budget."""

    def __init__(self, budget: float) -> None:
        self.started = monotonic()
        self.deadline = self.started + budget
        self.attempts = 0
        self.delay = 0.05

    def remaining(self) -> float:
        """Seconds left in the budget (at least a small positive amount)."""
        return max(0.1, self.deadline - monotonic())

    def elapsed(self) -> float:
        """Seconds since the first attempt."""
        return monotonic() - self.started

    def wait(self) -> bool:
        """Sleep before the next attempt; return False if the budget is spent."""
        if monotonic() + self.delay > self.deadline:
            return False
        sleep(self.delay)
        self.attempts += 1
        self.delay = min(self.delay * 2, 1.0)
        return True


# ---------------------------------------------------------------------------------------------
# Recorders


class PostgresRecorder:
    """Base of the PostgreSQL recorders: a datastore and the statements that create tables.

    ``sql_create_statements`` may be changed before :meth:`create_table` (tests do, to check
    that failures surface as the library's errors).
    """

    MAX_IDENTIFIER_LEN = MAX_IDENTIFIER_BYTES

    def __init__(self, datastore: PostgresDatastore, **kwargs: Any) -> None:
        """Use ``datastore``; subclasses add their create statements."""
        self.datastore = datastore
        self.sql_create_statements: list[Composed] = []
        self._schema = quoted(datastore.schema)

    @staticmethod
    def check_identifier_length(name: str) -> None:
        """Raise ProgrammingError if PostgreSQL can't hold ``name`` as an identifier."""
        check_identifier(name, "table name")

    def qualified(self, name: str) -> Composed:
        """Return ``schema.name`` as quoted identifiers."""
        return SQL("{}.{}").format(self._schema, quoted(name))

    def create_table(self) -> None:
        """Create the schema (if missing), then this recorder's types, tables and indexes.

        Processes that start together over an empty database take turns: the tables are
        created holding an advisory lock, because two ``CREATE TABLE IF NOT EXISTS`` of one
        table at once can collide in PostgreSQL's catalogue.
        (9.5.6 difference: tables created once by concurrent processes.)
        """
        self.datastore.run(self._create_schema)
        for statement in self.sql_create_statements:
            if _is_create_type(statement):
                self.datastore.run(partial(_create_type, statement=statement))
        try:
            with self.datastore.transaction(commit=True) as curs:
                curs.execute(_DDL_LOCK_STATEMENT, NO_PARAMS, prepare=False)
                self._create_table(curs)
        except PersistenceError as e:
            raise self._create_table_error(e) from e.__cause__

    def _create_table_error(self, error: PersistenceError) -> PersistenceError:
        """The error of a failed table creation, without hints meant for saves."""
        cause = error.__cause__
        message = str(cause).strip() if isinstance(cause, psycopg.Error) else str(error)
        return type(error)(
            f"Failed to create the tables of {type(self).__name__} in {self.datastore.describe()}: "
            f"{message}"
        )

    def _create_schema(self, conn: Connection[DictRow]) -> None:
        found = conn.execute(
            "SELECT 1 FROM pg_namespace WHERE nspname = %s", (self.datastore.schema,)
        ).fetchone()
        if found is None:
            # Another process may create it at this moment: that is as good.
            exists = (psycopg.errors.DuplicateSchema, psycopg.errors.UniqueViolation)
            with contextlib.suppress(*exists):
                conn.execute(SQL("CREATE SCHEMA IF NOT EXISTS {}").format(self._schema), NO_PARAMS)

    def _create_table(self, curs: Cursor[DictRow]) -> None:
        for statement in self.sql_create_statements:
            if not _is_create_type(statement):
                curs.execute(statement, NO_PARAMS, prepare=False)


# Serialises the table creation of every process on one database (a fixed key: the
# bytes of "es_ddl!" as a number), see PostgresRecorder.create_table.
_DDL_LOCK_KEY = int.from_bytes(b"es_ddl!", "big")
_DDL_LOCK_STATEMENT = SQL(f"SELECT pg_advisory_xact_lock({_DDL_LOCK_KEY})")


def _is_create_type(statement: Composable) -> bool:
    return isinstance(statement, Composed) and any(
        isinstance(part, SQL) and part.as_string().lstrip().startswith("CREATE TYPE")
        for part in statement
    )


def _create_type(conn: Connection[DictRow], *, statement: Composed) -> None:
    # There is no CREATE TYPE IF NOT EXISTS: try it, and accept that it exists (perhaps
    # created at this moment by another process).
    with contextlib.suppress(psycopg.errors.DuplicateObject, psycopg.errors.UniqueViolation):
        conn.execute(statement, NO_PARAMS, prepare=False)


_TABLE_OPTIONS = (
    " WITH (autovacuum_enabled = true, autovacuum_vacuum_threshold = 100000000, "
    "autovacuum_vacuum_scale_factor = 0.5, autovacuum_analyze_threshold = 1000, "
    "autovacuum_analyze_scale_factor = 0.01)"
)


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


def _bind(
    attempt: Callable[[Connection[DictRow], list[_PendingSave]], None],
    saves: list[_PendingSave],
) -> Callable[[Connection[DictRow]], None]:
    return lambda conn: attempt(conn, saves)


def _fetch(conn: Connection[Any], statement: Composed, params: Sequence[Any]) -> list[Any]:
    # Tuple rows and binary results: bytea arrives as bytes and uuid without text parsing.
    with conn.cursor(row_factory=psycopg.rows.tuple_row, binary=True) as curs:
        curs.execute(statement, params)
        return curs.fetchall()


# ---------------------------------------------------------------------------------------------
# Saves, and the coalescing of concurrent saves into one transaction


class _PendingSave:
    """One call of ``insert_events``: its events and tracking, and then its outcome."""

    __slots__ = ("done", "error", "ids", "is_leader", "stored_events", "tracking")

    def __init__(self, stored_events: Sequence[StoredEvent], tracking: Tracking | None) -> None:
        self.stored_events = stored_events
        self.tracking = tracking
        self.ids: list[int] | None = None
        self.error: BaseException | None = None
        self.done = threading.Event()
        self.is_leader = False

    def result(self) -> list[int]:
        """Return the notification ids, or raise the save's error."""
        if self.error is not None:
            raise self.error
        if self.ids is None:  # pragma: no cover (every path decides each save)
            raise InternalError("a save was left undecided")
        return self.ids


class _SaveCoalescer:
    """Lets one thread commit the saves that other threads make meanwhile, as one transaction.

    The first thread to save becomes the leader: it takes every save queued so far (up to
    ``max_saves``) and commits them together, while threads arriving meanwhile queue up and
    wait. When the leader is done it wakes them; if more saves queued up during its commit,
    the first of them becomes the next leader. One thread saving alone commits straight away.
    """

    def __init__(self, commit: Callable[[list[_PendingSave]], None], max_saves: int) -> None:
        self._commit = commit
        self.max_saves = max_saves
        self._lock = threading.Lock()
        self._queue: list[_PendingSave] = []
        self._busy = False

    def save(self, pending: _PendingSave) -> list[int]:
        """Queue ``pending``, commit it (as leader or follower) and return its ids."""
        with self._lock:
            self._queue.append(pending)
            leads = not self._busy
            self._busy = True
        if not leads:
            pending.done.wait()
            if not pending.is_leader:
                return pending.result()
        self._lead()
        return pending.result()

    def _lead(self) -> None:
        with self._lock:
            batch = self._queue[: self.max_saves]
            del self._queue[: self.max_saves]
        try:
            self._commit(batch)
        except BaseException as e:  # e.g. KeyboardInterrupt: no save may wait forever
            for pending in batch:
                if pending.error is None and pending.ids is None:
                    pending.error = e
            raise
        finally:
            with self._lock:
                if self._queue:
                    successor = self._queue[0]
                    successor.is_leader = True
                    successor.done.set()
                else:
                    self._busy = False
            for pending in batch:
                pending.done.set()


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
        self._take_ids_statement = SQL(
            "SELECT nextval(pg_get_serial_sequence({}, 'notification_id')) "
            "FROM generate_series(1, %s)"
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
        ids = [row[0] for row in _run_script(conn, script)[0]]
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
        return PostgresSubscription(recorder=self, gt=gt, topics=topics)


# How often a batch is tried when the server rolls it back (deadlock, serialization).
_ROLLBACK_RETRIES = 5

# Up to this many events are inserted with VALUES, more with arrays (or COPY).
_MAX_VALUES_ROWS = 16

_BEGIN = SQL("BEGIN")
_COMMIT = SQL("COMMIT")
_SAVEPOINT = SQL("SAVEPOINT save")
_ROLLBACK_TO_SAVEPOINT = SQL("ROLLBACK TO SAVEPOINT save")


_Statement = tuple[SQL | Composed, Sequence[Any]]


def _run_script(
    conn: Connection[Any], script: Sequence[_Statement], on_error: SQL | None = None
) -> list[list[tuple[Any, ...]]]:
    """Run the statements as one query, in one round trip; return the rows of each query
    that returns rows, in order.

    Parameters are bound on the client side (psycopg's ClientCursor), which is what lets
    several statements with parameters go as one query, and costs less than a pipeline. On
    an error, ``on_error`` (a statement) undoes the failed part, or else the transaction is
    rolled back, and the error is raised.
    """
    query = _script_query(conn, [statement for statement, _ in script])
    params = [p for _, statement_params in script for p in statement_params]
    curs = psycopg.ClientCursor(conn, row_factory=psycopg.rows.tuple_row)
    try:
        curs.execute(query, params, prepare=False)
    except psycopg.Error:
        if on_error is not None and not conn.broken:
            curs.execute(on_error, NO_PARAMS)
        else:
            _rollback_quietly(conn)
        raise
    results = []
    while True:
        if curs.description is not None:
            results.append(curs.fetchall())
        if not curs.nextset():
            return results


# The bytes of scripts already composed, by the ids of their statements (kept alive by the
# entry, so that no id is reused while it is a key): composing costs more than sending.
_SCRIPT_QUERIES: dict[tuple[object, ...], tuple[bytes, list[SQL | Composed]]] = {}
_MAX_SCRIPT_QUERIES = 1024


def _script_query(conn: Connection[Any], statements: list[SQL | Composed]) -> bytes:
    """Return the statements joined into one query, as bytes for ``conn``."""
    key = (conn.info.encoding, *map(id, statements))
    found = _SCRIPT_QUERIES.get(key)
    if found is None:
        if len(_SCRIPT_QUERIES) >= _MAX_SCRIPT_QUERIES:
            _SCRIPT_QUERIES.clear()
        found = SQL("; ").join(statements).as_bytes(conn), statements
        _SCRIPT_QUERIES[key] = found
    return found[0]


def _rollback_quietly(conn: Connection[Any]) -> None:
    if conn.broken or conn.closed:
        return
    if conn.info.transaction_status != psycopg.pq.TransactionStatus.IDLE:
        with contextlib.suppress(psycopg.Error):
            conn.execute("ROLLBACK", NO_PARAMS)


@contextmanager
def _committing(conn: Connection[Any]) -> Iterator[Callable[[], None]]:
    """Turn a connection failure after ``commit()`` was called into _OutcomeUnknownError."""
    sent = False

    def commit() -> None:
        """Mark that COMMIT is being sent."""
        nonlocal sent
        sent = True

    try:
        yield commit
    except psycopg.Error as e:
        if sent and is_connection_failure(e, conn):
            raise _OutcomeUnknownError from e
        raise


class PostgresSubscription(ListenNotifySubscription[PostgresApplicationRecorder]):
    """A subscription woken by PostgreSQL ``NOTIFY`` on the recorder's channel.

    A listener thread holds its own connection (outside the pool) in ``LISTEN``. If that
    connection fails, it reconnects with backoff and wakes the pull thread, which then
    catches up on anything committed in between.
    """

    #: Seconds between checks for stop() while waiting for a notification.
    poll_interval = 0.1

    def __init__(
        self,
        recorder: PostgresApplicationRecorder,
        gt: int | None = None,
        topics: Sequence[str] = (),
    ) -> None:
        """Start listening, then start pulling (so nothing committed meanwhile is missed)."""
        if not isinstance(recorder, PostgresApplicationRecorder):
            raise ProgrammingError(
                f"PostgresSubscription needs a PostgresApplicationRecorder, got {recorder!r}"
            )
        self._listen_conn: Connection[DictRow] | None = None
        self._listen_thread: threading.Thread | None = None
        super().__init__(recorder=recorder, gt=gt, topics=topics)

    def _listen(self) -> None:
        self._listen_conn = self._connect_and_listen()
        self._listen_thread = threading.Thread(target=self._loop_on_notifies, daemon=True)
        self._listen_thread.start()

    def _connect_and_listen(self) -> Connection[DictRow]:
        conn = self._recorder.datastore.connect()
        try:
            conn.execute(SQL("LISTEN {}").format(quoted(self._recorder.channel_name)), NO_PARAMS)
        except psycopg.Error as e:
            conn.close()
            raise self._recorder.datastore.translate(e) from e
        return conn

    def _loop_on_notifies(self) -> None:
        try:
            while not self._has_been_stopped:
                try:
                    self._wait_for_notifies()
                except (psycopg.OperationalError, psycopg.InterfaceError):
                    if self._has_been_stopped:
                        return
                    self._reconnect()
        except BaseException as e:
            if self._thread_error is None:
                self._thread_error = self._library_error(e)
            self.stop()
        finally:
            if self._listen_conn is not None:
                self._listen_conn.close()

    def _library_error(self, error: BaseException) -> BaseException:
        """Return ``error``, as the library's error if it is psycopg's (the user sees it)."""
        if isinstance(error, psycopg.Error):
            return self._recorder.datastore.translate(error)
        return error

    def _wait_for_notifies(self) -> None:
        assert self._listen_conn is not None
        while not self._has_been_stopped:
            for _ in self._listen_conn.notifies(timeout=self.poll_interval, stop_after=1):
                self._has_been_notified.set()

    def _reconnect(self) -> None:
        if self._listen_conn is not None:
            self._listen_conn.close()
        backoff = _Backoff(self._recorder.datastore.connect_timeout)
        while not self._has_been_stopped:
            try:
                self._listen_conn = self._connect_and_listen()
            except OperationalError:
                if not backoff.wait():
                    raise
                continue
            self._has_been_notified.set()  # catch up on what was committed meanwhile
            return

    def __exit__(self, *args: object, **kwargs: Any) -> None:
        super().__exit__(*args, **kwargs)  # stops, unless it was never entered
        if self._listen_thread is not None:
            self._listen_thread.join()


# ---------------------------------------------------------------------------------------------
# Tracking


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
        primary_key = "application_name" if datastore.single_row_tracking else (
            "application_name, notification_id"
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


TPostgresTrackingRecorder = TypeVarWithDefault(
    "TPostgresTrackingRecorder",
    bound=PostgresTrackingRecorder,
    default=PostgresTrackingRecorder,
)


class PostgresProcessRecorder(
    PostgresTrackingRecorder, PostgresApplicationRecorder, ProcessRecorder
):
    """Records new events and a tracking position in one transaction (tracking first)."""

    def __init__(
        self,
        datastore: PostgresDatastore,
        *,
        events_table_name: str = "stored_events",
        tracking_table_name: str = "notification_tracking",
    ) -> None:
        """Use the two tables (both in the datastore's schema)."""
        super().__init__(
            datastore,
            tracking_table_name=tracking_table_name,
            events_table_name=events_table_name,
        )

    def _upsert_tracking(self, tracking: Tracking) -> _Statement:
        return self._record_tracking_statement, self._tracking_params(tracking)

    def _checked_tracking(self, tracking: Tracking) -> _Statement:
        return self._checked_tracking_statement, self._tracking_params(tracking)

    def _insert_events(
        self, curs: Cursor[DictRow], stored_events: Sequence[StoredEvent], **kwargs: Any
    ) -> None:
        """Record the ``tracking=`` record, before the events, in the same transaction."""
        tracking: Tracking | None = kwargs.get("tracking")
        if tracking is not None:
            self._insert_tracking(curs, tracking)

    def _commit_batch(self, conn: Connection[DictRow], saves: list[_PendingSave]) -> None:
        if any(save.tracking for save in saves):
            self._check_multi_row_table(conn)
        super()._commit_batch(conn, saves)

    def _tracking_refused_error(self, save: _PendingSave | None) -> IntegrityError:
        return PostgresTrackingRecorder._tracking_refused_error(self, save)

    def _tracking_is_stored(self, conn: Connection[DictRow], save: _PendingSave) -> bool:
        return PostgresTrackingRecorder._tracking_is_stored(self, conn, save)


# The library's own _insert_events: a recorder class with another one has extended it.
_LIBRARY_INSERT_EVENTS = {
    PostgresAggregateRecorder._insert_events,
    PostgresProcessRecorder._insert_events,
}


# ---------------------------------------------------------------------------------------------
# Factory


class BasePostgresFactory(BaseInfrastructureFactory[TTrackingRecorder]):
    """Reads the ``POSTGRES_*`` settings and builds one datastore for all recorders."""

    POSTGRES_DBNAME = "POSTGRES_DBNAME"
    POSTGRES_HOST = "POSTGRES_HOST"
    POSTGRES_PORT = "POSTGRES_PORT"
    POSTGRES_USER = "POSTGRES_USER"
    POSTGRES_PASSWORD = "POSTGRES_PASSWORD"
    POSTGRES_GET_PASSWORD_TOPIC = "POSTGRES_GET_PASSWORD_TOPIC"
    POSTGRES_CONNECT_TIMEOUT = "POSTGRES_CONNECT_TIMEOUT"
    POSTGRES_CONN_MAX_AGE = "POSTGRES_CONN_MAX_AGE"
    POSTGRES_PRE_PING = "POSTGRES_PRE_PING"
    POSTGRES_MAX_WAITING = "POSTGRES_MAX_WAITING"
    POSTGRES_LOCK_TIMEOUT = "POSTGRES_LOCK_TIMEOUT"
    POSTGRES_POOL_SIZE = "POSTGRES_POOL_SIZE"
    POSTGRES_MAX_OVERFLOW = "POSTGRES_MAX_OVERFLOW"
    POSTGRES_IDLE_IN_TRANSACTION_SESSION_TIMEOUT = "POSTGRES_IDLE_IN_TRANSACTION_SESSION_TIMEOUT"
    POSTGRES_SCHEMA = "POSTGRES_SCHEMA"
    POSTGRES_SINGLE_ROW_TRACKING = "SINGLE_ROW_TRACKING"
    ORIGINATOR_ID_TYPE = "ORIGINATOR_ID_TYPE"
    POSTGRES_ENABLE_DB_FUNCTIONS = "POSTGRES_ENABLE_DB_FUNCTIONS"
    CREATE_TABLE = "CREATE_TABLE"

    def __init__(self, env: Environment | EnvType | None):
        """Read the settings (see the module docstring); OSError names a missing or bad one."""
        super().__init__(env)
        password, get_password_func = self._password()
        self.datastore = PostgresDatastore(
            dbname=self._required(self.POSTGRES_DBNAME, "database name"),
            host=self._required(self.POSTGRES_HOST, "host"),
            port=self.env.get(self.POSTGRES_PORT) or "5432",
            user=self._required(self.POSTGRES_USER, "user"),
            password=password,
            get_password_func=get_password_func,
            connect_timeout=self._int(self.POSTGRES_CONNECT_TIMEOUT, 30),
            idle_in_transaction_session_timeout=self._int(
                self.POSTGRES_IDLE_IN_TRANSACTION_SESSION_TIMEOUT, 5
            ),
            pool_size=self._int(self.POSTGRES_POOL_SIZE, 5),
            max_overflow=self._int(self.POSTGRES_MAX_OVERFLOW, 10),
            max_waiting=self._int(self.POSTGRES_MAX_WAITING, 0),
            conn_max_age=self._float(self.POSTGRES_CONN_MAX_AGE, 60 * 60.0),
            pre_ping=strtobool(self.env.get(self.POSTGRES_PRE_PING) or "no"),
            lock_timeout=self._int(self.POSTGRES_LOCK_TIMEOUT, 0),
            schema=self.env.get(self.POSTGRES_SCHEMA) or "",
            single_row_tracking=strtobool(self.env.get(self.POSTGRES_SINGLE_ROW_TRACKING, "t")),
            originator_id_type=_check_originator_id_type(
                self.env.get(self.ORIGINATOR_ID_TYPE, "uuid"), OSError
            ),
            enable_db_functions=strtobool(self.env.get(self.POSTGRES_ENABLE_DB_FUNCTIONS) or "no"),
        )

    def _required(self, key: str, what: str) -> str:
        value = self.env.get(key)
        if value is None:
            raise OSError(f"Postgres {what} not found in environment with key '{key}'")
        return value

    def _password(self) -> tuple[str, Callable[[], str] | None]:
        topic = self.env.get(self.POSTGRES_GET_PASSWORD_TOPIC)
        if topic:
            func: Callable[[], str] = resolve_topic(topic)
            return "", func
        return self._required(self.POSTGRES_PASSWORD, "password"), None

    def _int(self, key: str, default: int) -> int:
        return self._number(key, default, int, "an integer")

    def _float(self, key: str, default: float) -> float:
        return self._number(key, default, float, "a float")

    def _number(self, key: str, default: _T, kind: Callable[[str], _T], described: str) -> _T:
        text = self.env.get(key)
        if not text or not text.strip():
            return default
        try:
            return kind(text)
        except ValueError:
            raise OSError(
                f"Postgres environment value for key '{key}' is invalid. If set, {described} "
                f"or empty string is expected: '{text}'"
            ) from None

    def env_create_table(self) -> bool:
        """True unless ``CREATE_TABLE`` is false (read now, not at construction)."""
        return strtobool(self.env.get(self.CREATE_TABLE) or "yes")

    def __enter__(self) -> Self:
        """Open the pool now."""
        self.datastore.__enter__()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc_val: BaseException | None,
        exc_tb: TracebackType | None,
    ) -> None:
        """Close the datastore."""
        self.close()

    def close(self) -> None:
        """Close the datastore's connections."""
        if hasattr(self, "datastore"):
            self.datastore.close()


_TRecorder = TypeVar("_TRecorder", bound=PostgresRecorder)


class PostgresFactory(
    BasePostgresFactory[PostgresTrackingRecorder],
    InfrastructureFactory[PostgresTrackingRecorder],
):
    """Builds PostgreSQL recorders whose tables are named after the application."""

    aggregate_recorder_class: type[PostgresAggregateRecorder] = PostgresAggregateRecorder
    application_recorder_class: type[PostgresApplicationRecorder] = PostgresApplicationRecorder
    tracking_recorder_class: type[PostgresTrackingRecorder] = PostgresTrackingRecorder
    process_recorder_class: type[PostgresProcessRecorder] = PostgresProcessRecorder

    def _prefix(self, default: str) -> str:
        return self.env.name.lower() or default

    def aggregate_recorder(self, purpose: str = "events") -> AggregateRecorder:
        """Return a recorder of ``<app>_<purpose>`` (e.g. snapshots)."""
        recorder = type(self).aggregate_recorder_class(
            datastore=self.datastore, events_table_name=f"{self._prefix('stored')}_{purpose}"
        )
        return self._created(recorder)

    def application_recorder(self) -> ApplicationRecorder:
        """Return a recorder of ``<app>_events`` (class from APPLICATION_RECORDER_TOPIC)."""
        cls = self._recorder_class(
            self.APPLICATION_RECORDER_TOPIC,
            PostgresApplicationRecorder,
            type(self).application_recorder_class,
        )
        recorder = cls(datastore=self.datastore, events_table_name=self._events_table())
        return self._created(recorder)

    def tracking_recorder(
        self, tracking_recorder_class: type[TPostgresTrackingRecorder] | None = None
    ) -> TPostgresTrackingRecorder:
        """Return a recorder of ``<app>_tracking`` (class from the argument or the topic)."""
        cls = self._recorder_class(
            self.TRACKING_RECORDER_TOPIC,
            cast("type[TPostgresTrackingRecorder]", PostgresTrackingRecorder),
            cast("type[TPostgresTrackingRecorder]", type(self).tracking_recorder_class),
            given=tracking_recorder_class,
        )
        recorder = cls(datastore=self.datastore, tracking_table_name=self._tracking_table())
        return self._created(recorder)

    def process_recorder(self) -> ProcessRecorder:
        """Return a recorder of ``<app>_events`` and ``<app>_tracking`` together."""
        cls = self._recorder_class(
            self.PROCESS_RECORDER_TOPIC,
            PostgresProcessRecorder,
            type(self).process_recorder_class,
        )
        recorder = cls(
            datastore=self.datastore,
            events_table_name=self._events_table(),
            tracking_table_name=self._tracking_table(),
        )
        return self._created(recorder)

    def _events_table(self) -> str:
        return f"{self._prefix('stored')}_events"

    def _tracking_table(self) -> str:
        return f"{self._prefix('notification')}_tracking"

    def _created(self, recorder: _TRecorder) -> _TRecorder:
        if self.env_create_table():
            recorder.create_table()
        return recorder


Factory = PostgresFactory
