"""The datastore: a pool of connections to one database.

It retries while connections fail, and translates psycopg's errors.
"""

from __future__ import annotations

import contextlib
import logging
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from time import monotonic, sleep
from typing import TYPE_CHECKING, Any, Literal, TypeVar, cast

import psycopg
import psycopg.errors
import psycopg_pool
import psycopg_pool.base
from psycopg import Connection, Cursor
from psycopg.rows import DictRow, dict_row

from eventsourcing.persistence import ConnectionUnavailableError, OperationalError, PersistenceError
from eventsourcing.postgres.errors import is_connection_failure, translate_error
from eventsourcing.postgres.identifiers import check_identifier
from eventsourcing.postgres.pool import ConnectionPool, _is_alive

if TYPE_CHECKING:
    from types import TracebackType
    from typing import Self

logger = logging.getLogger(__name__)

_T = TypeVar("_T")


OriginatorIDType = Literal["uuid", "text"]


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
