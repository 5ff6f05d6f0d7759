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

import re
import sqlite3
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager, suppress
from functools import cache
from threading import Event, Lock, RLock, Thread
from typing import TYPE_CHECKING, Any, Literal, TypeVar
from uuid import UUID
from weakref import WeakValueDictionary

from eventsourcing.persistence import (
    AggregateRecorder,
    ApplicationRecorder,
    Connection,
    ConnectionPool,
    ConnectionPoolClosedError,
    Cursor,
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
    Recorder,
    StoredEvent,
    Tracking,
    TrackingRecorder,
)
from eventsourcing.utils import Environment, EnvType, strtobool

if TYPE_CHECKING:
    from types import TracebackType

SQLITE3_DEFAULT_LOCK_TIMEOUT = 5

_T = TypeVar("_T")
Row = tuple[Any, ...]
OriginatorIDType = Literal["uuid", "text"]

# Rows per multi-row INSERT statement. Batches up to _MAX_EXACT_ROWS get one statement of
# exactly their size; larger batches are split into power-of-two chunks (and a small exact
# remainder) so that a bounded set of statement texts stays prepared in sqlite3's cache:
# preparing a 1000-row INSERT costs about as much as running it.
_MAX_EXACT_ROWS = 32
_MAX_CHUNK_ROWS = 512
_STATEMENT_CACHE_SIZE = 256

_IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)?")

_ERROR_CLASSES: dict[type[BaseException], type[PersistenceError]] = {
    sqlite3.InterfaceError: InterfaceError,
    sqlite3.DataError: DataError,
    sqlite3.OperationalError: OperationalError,
    sqlite3.IntegrityError: IntegrityError,
    sqlite3.InternalError: InternalError,
    sqlite3.ProgrammingError: ProgrammingError,
    sqlite3.NotSupportedError: NotSupportedError,
    sqlite3.DatabaseError: DatabaseError,
    sqlite3.Error: PersistenceError,
}

_HINTS = (
    ("no such table", "create the table with create_table(), or set CREATE_TABLE=yes"),
    (
        "UNIQUE constraint failed",
        "a record with this key is already stored (for events: a version conflict; "
        "reload the aggregate and retry the command)",
    ),
)


def translate_error(error: sqlite3.Error) -> PersistenceError:
    """Return the library exception with the same PEP 249 name as a ``sqlite3`` error.

    The message is SQLite's, followed by a hint on the likely fix when one is known.
    """
    message = str(error)
    for fragment, hint in _HINTS:
        if fragment in message:
            message = f"{message} ({hint})"
            break
    for cls in type(error).__mro__:
        target = _ERROR_CLASSES.get(cls)
        if target is not None:
            return target(message)
    return PersistenceError(message)  # pragma: no cover (every sqlite3 error is an Error)


def is_memory_db_name(db_name: str | None) -> bool:
    """Say whether an SQLite database name refers to an in-memory database."""
    return bool(db_name) and (":memory:" in str(db_name) or "mode=memory" in str(db_name))


def _check_identifier(name: str) -> str:
    """Return a table name unchanged if it is safe to put into SQL text."""
    if not isinstance(name, str) or not _IDENTIFIER.fullmatch(name):
        msg = (
            f"Invalid SQLite table name {name!r}: use letters, digits and underscores, "
            "optionally prefixed with a schema name and a dot"
        )
        raise ValueError(msg)
    return name


# --------------------------------------------------------------------------------------
# Cursors, connections, transactions and the connection pool.
# --------------------------------------------------------------------------------------


class SQLiteCursor(Cursor):
    """A :class:`~eventsourcing.persistence.Cursor` over a ``sqlite3.Cursor``.

    Rows are ``sqlite3.Row`` objects (index or name access). Used as a context manager,
    the cursor is closed on exit.
    """

    def __init__(self, sqlite_cursor: sqlite3.Cursor) -> None:
        self.sqlite_cursor = sqlite_cursor

    def __enter__(self) -> sqlite3.Cursor:
        return self.sqlite_cursor

    def __exit__(self, *args: object) -> None:
        self.sqlite_cursor.close()

    def execute(self, statement: str | bytes, params: Any = None) -> None:
        """Execute one SQL statement with optional parameters."""
        sql = statement.decode() if isinstance(statement, bytes) else statement
        if params is None:
            self.sqlite_cursor.execute(sql)
        else:
            self.sqlite_cursor.execute(sql, params)

    def executemany(self, statement: str, params: Any) -> None:
        """Execute one SQL statement once for each set of parameters."""
        self.sqlite_cursor.executemany(statement, params)

    def fetchall(self) -> list[Any]:
        """Return the remaining rows of the last query."""
        return self.sqlite_cursor.fetchall()

    def fetchone(self) -> Any:
        """Return the next row of the last query, or None."""
        return self.sqlite_cursor.fetchone()

    @property
    def lastrowid(self) -> int | None:
        """The rowid of the last row inserted by ``execute``."""
        return self.sqlite_cursor.lastrowid


class SQLiteConnection(Connection[SQLiteCursor]):
    """A pooled connection to an SQLite database (autocommit mode)."""

    def __init__(self, sqlite_conn: sqlite3.Connection, max_age: float | None = None) -> None:
        super().__init__(max_age=max_age)
        self.sqlite_conn = sqlite_conn
        # The recorders use this cursor: plain tuple rows are faster to make and read
        # than sqlite3.Row, and reusing one cursor saves allocating one per statement.
        self.tuple_cursor = sqlite_conn.cursor()
        self.tuple_cursor.row_factory = None

    @contextmanager
    def transaction(self, *, commit: bool) -> Iterator[SQLiteCursor]:
        """Yield a cursor inside a transaction that commits only if ``commit`` is true."""
        with SQLiteTransaction(self, commit=commit) as cursor, cursor:
            yield cursor

    def cursor(self) -> SQLiteCursor:
        """Return a new cursor whose rows are ``sqlite3.Row`` objects."""
        return SQLiteCursor(self.sqlite_conn.cursor())

    def commit(self) -> None:
        """Commit the current transaction."""
        self.sqlite_conn.commit()

    def rollback(self) -> None:
        """Roll back the current transaction."""
        self.sqlite_conn.rollback()

    def _close(self) -> None:
        self.sqlite_conn.close()
        super()._close()


class SQLiteTransaction:
    """Context manager for one transaction on a connection.

    Entering issues ``BEGIN`` (``BEGIN IMMEDIATE`` when committing, so that a writer takes
    SQLite's write lock up front and waits for it under the busy timeout, rather than
    failing on a lock upgrade). Exiting rolls back if an exception was raised, commits if
    ``commit`` is true, and rolls back otherwise. ``sqlite3`` errors, raised in the block or
    when finishing, are re-raised as the library exception with the same name; other
    exceptions pass through unchanged.
    """

    def __init__(self, connection: Any, *, commit: bool = False) -> None:
        self.connection = connection
        self.commit = commit
        self._cursor: Any = None

    def __enter__(self) -> SQLiteCursor:
        try:
            self._cursor = self.connection.cursor()
            self._cursor.execute("BEGIN IMMEDIATE" if self.commit else "BEGIN")
        except sqlite3.Error as e:
            raise translate_error(e) from e
        return self._cursor  # type: ignore[no-any-return]

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc_val: BaseException | None,
        exc_tb: TracebackType | None,
    ) -> None:
        try:
            if exc_val is not None or not self.commit:
                self.connection.rollback()
            else:
                self.connection.commit()
        except sqlite3.Error as e:
            if exc_val is None:
                raise translate_error(e) from e
        if isinstance(exc_val, sqlite3.Error):
            raise translate_error(exc_val) from exc_val


class SQLiteConnectionPool(ConnectionPool[SQLiteConnection]):
    """Pool of connections to one SQLite database.

    Connections are opened with ``uri=True``, ``check_same_thread=False``, autocommit
    (``isolation_level=None``), ``timeout=lock_timeout or 5`` and ``sqlite3.Row`` rows. A
    file database is switched to WAL mode (once) and every connection to it runs with
    ``synchronous=FULL``. With an in-memory database, reads and writes are mutually
    exclusive, because a shared-cache database locks whole tables.
    """

    def __init__(
        self,
        *,
        db_name: str,
        lock_timeout: int | None = None,
        pool_size: int = 5,
        max_overflow: int = 10,
        pool_timeout: float = 5.0,
        max_age: float | None = None,
        pre_ping: bool = False,
    ) -> None:
        self.db_name = db_name
        self.lock_timeout = lock_timeout
        self.is_sqlite_memory_mode = is_memory_db_name(db_name)
        self.is_journal_mode_wal = False
        self.journal_mode_was_changed_to_wal = False
        self._wal_lock = Lock()
        super().__init__(
            pool_size=pool_size,
            max_overflow=max_overflow,
            pool_timeout=pool_timeout,
            max_age=max_age,
            pre_ping=pre_ping,
            mutually_exclusive_read_write=self.is_sqlite_memory_mode,
        )

    @staticmethod
    def detect_memory_mode(db_name: str) -> bool:
        """Say whether ``db_name`` refers to an in-memory database."""
        return is_memory_db_name(db_name)

    def _create_connection(self) -> SQLiteConnection:
        return self.connect()

    def connect(self) -> SQLiteConnection:
        """Open a new connection that is not tracked by the pool (the pool uses this too)."""
        try:
            sqlite_conn = sqlite3.connect(
                self.db_name,
                uri=True,
                check_same_thread=False,
                isolation_level=None,
                cached_statements=_STATEMENT_CACHE_SIZE,
                timeout=self.lock_timeout or SQLITE3_DEFAULT_LOCK_TIMEOUT,
            )
        except (sqlite3.Error, TypeError, ValueError) as e:
            msg = f"Failed to connect to SQLite database {self.db_name!r}: {e}"
            raise InterfaceError(msg) from e
        try:
            if not self.is_sqlite_memory_mode:
                self._configure_file_database(sqlite_conn)
        except sqlite3.Error as e:
            sqlite_conn.close()
            raise translate_error(e) from e
        sqlite_conn.row_factory = sqlite3.Row
        return SQLiteConnection(sqlite_conn, max_age=self.max_age)

    def _configure_file_database(self, sqlite_conn: sqlite3.Connection) -> None:
        # The synchronous setting belongs to the connection, so it is set on each one.
        sqlite_conn.execute("PRAGMA synchronous=FULL")
        if self.is_journal_mode_wal:
            return
        # The journal mode belongs to the database file, so it is checked once per pool.
        with self._wal_lock:
            if self.is_journal_mode_wal:
                return
            mode = sqlite_conn.execute("PRAGMA journal_mode").fetchone()[0]
            if str(mode).lower() != "wal":
                mode = sqlite_conn.execute("PRAGMA journal_mode=WAL").fetchone()[0]
                if str(mode).lower() != "wal":
                    msg = (
                        f"Failed to switch SQLite database {self.db_name!r} to WAL journal "
                        f"mode (it stayed in {mode!r} mode); check the file is writable"
                    )
                    raise OperationalError(msg)
                self.journal_mode_was_changed_to_wal = True
            self.is_journal_mode_wal = True


# --------------------------------------------------------------------------------------
# The datastore: one writer connection under a lock, pooled readers, subscription wakers.
# --------------------------------------------------------------------------------------


class _LockHolder:
    """Holds a lock in a ``WeakValueDictionary`` (a plain lock cannot be weakly referenced).

    The lock is reentrant because a finaliser can run in a thread that holds it: the
    garbage collector may close a forgotten application (``Application.__del__``) whose
    datastore shares this lock, in the middle of another datastore's write.
    """

    __slots__ = ("__weakref__", "lock")

    def __init__(self) -> None:
        self.lock = RLock()


# All datastores in this process that open the same shared-cache in-memory database share
# one lock, because SQLite's shared cache fails (rather than waits) on table lock conflicts.
_shared_memory_locks: WeakValueDictionary[str, _LockHolder] = WeakValueDictionary()
_shared_memory_locks_lock = Lock()


def _lock_holder_for_database(db_name: str, is_memory: bool) -> _LockHolder:
    if not is_memory or db_name == ":memory:":
        return _LockHolder()
    with _shared_memory_locks_lock:
        holder = _shared_memory_locks.get(db_name)
        if holder is None:
            holder = _shared_memory_locks[db_name] = _LockHolder()
        return holder


class _WriteRequest:
    """A write waiting to be run by whichever thread next holds the write lock."""

    __slots__ = ("done", "error", "func", "result", "transaction")

    def __init__(self, func: Callable[[sqlite3.Cursor], Any], transaction: bool) -> None:
        self.func = func
        self.transaction = transaction
        self.done = False
        self.result: Any = None
        self.error: BaseException | None = None


def _group_failure(error: BaseException) -> BaseException:
    """Return a new exception (one per waiting thread) for a group commit that failed."""
    if isinstance(error, sqlite3.Error):
        return translate_error(error)
    if isinstance(error, PersistenceError):
        return type(error)(*error.args)
    return PersistenceError(f"Group commit failed, nothing was written: {error!r}")


class SQLiteDatastore:
    """Connections to one SQLite database, shared by the recorders of one factory.

    Writes go through one dedicated writer connection, used under ``write_lock``: SQLite
    allows one writer at a time anyway, and a single connection lets each write be one
    statement in autocommit mode (no separate ``BEGIN``/``COMMIT``) when it can be.
    Reads of a file database use connections from ``pool`` and run concurrently with the
    writer (WAL mode). An in-memory database is used only through the writer connection,
    so reads and writes are serialised.
    """

    def __init__(
        self,
        db_name: str,
        *,
        lock_timeout: int | None = None,
        pool_size: int = 5,
        max_overflow: int = 10,
        pool_timeout: float = 5.0,
        max_age: float | None = None,
        pre_ping: bool = False,
        single_row_tracking: bool = True,
        originator_id_type: OriginatorIDType = "uuid",
    ) -> None:
        self.pool = SQLiteConnectionPool(
            db_name=db_name,
            lock_timeout=lock_timeout,
            pool_size=pool_size,
            max_overflow=max_overflow,
            pool_timeout=pool_timeout,
            max_age=max_age,
            pre_ping=pre_ping,
        )
        self.single_row_tracking = single_row_tracking
        self.originator_id_type: OriginatorIDType = originator_id_type
        self.is_memory = self.pool.is_sqlite_memory_mode
        self._lock_holder = _lock_holder_for_database(db_name, self.is_memory)
        self.write_lock = self._lock_holder.lock
        self._writer: SQLiteConnection | None = None
        self._pending_writes: deque[_WriteRequest] = deque()
        self._wakers: tuple[Event, ...] = ()
        self._wakers_lock = Lock()

    # -- public API ------------------------------------------------------------------

    @contextmanager
    def transaction(self, *, commit: bool) -> Iterator[SQLiteCursor]:
        """Yield a cursor in a transaction: on the writer if ``commit``, else on a reader."""
        with self.get_connection(commit=commit) as conn, conn.transaction(commit=commit) as c:
            yield c
        if commit:
            self.wake_subscribers()

    @contextmanager
    def get_connection(self, *, commit: bool) -> Iterator[SQLiteConnection]:
        """Yield the writer connection (under the write lock) if ``commit``, else a reader."""
        if commit or self.is_memory:
            with self.write_lock:
                yield self._get_writer()
            return
        pool = self.pool
        conn = pool.get_connection(is_writer=False)
        try:
            yield conn
        finally:
            pool.put_connection(conn)

    def close(self) -> None:
        """Close the writer and the pool. Later use raises ``ConnectionPoolClosedError``."""
        with self.write_lock:
            self._close_connections()
        self.wake_subscribers()

    def __del__(self) -> None:
        # Without taking the write lock: nothing else refers to this datastore, and the
        # lock may be shared (shared-cache databases) and held by the collecting thread.
        # Nothing useful can be done about an error in a finaliser.
        with suppress(Exception):
            self._close_connections()

    def _close_connections(self) -> None:
        writer, self._writer = self._writer, None
        if writer is not None:
            writer.close()
        self.pool.close()

    # -- used by the recorders ---------------------------------------------------------

    def read(self, statement: str, params: Sequence[Any]) -> list[Row]:
        """Run one query and return its rows as tuples."""
        if self.is_memory:
            with self.write_lock:
                try:
                    return self._get_writer().tuple_cursor.execute(statement, params).fetchall()
                except sqlite3.Error as e:
                    raise translate_error(e) from e
        pool = self.pool
        conn = pool.get_connection()
        try:
            return conn.tuple_cursor.execute(statement, params).fetchall()
        except sqlite3.Error as e:
            raise translate_error(e) from e
        finally:
            pool.put_connection(conn)

    def write(self, func: Callable[[sqlite3.Cursor], _T], *, transaction: bool) -> _T:
        """Call ``func`` with the writer's cursor, under the write lock; return its result.

        With ``transaction`` the call runs between ``BEGIN IMMEDIATE`` and ``COMMIT`` and is
        rolled back on any error; without, ``func`` must make one statement (atomic by
        itself in autocommit mode). Subscribers are woken after the write.

        Writes from threads that find the lock taken are committed together (group
        commit): the next thread to get the lock runs every queued write in one
        transaction, each in its own savepoint, so a failed write is undone alone while
        the others share one commit, and so one fsync.
        """
        if self.write_lock.acquire(blocking=False):
            try:
                result = self._write_alone(func, transaction)
            finally:
                self.write_lock.release()
        else:
            result = self._write_in_group(func, transaction)
        if self._wakers:
            self.wake_subscribers()
        return result

    def _write_alone(self, func: Callable[[sqlite3.Cursor], _T], transaction: bool) -> _T:
        # Called with the write lock held.
        writer = self._get_writer()
        cursor = writer.tuple_cursor
        try:
            if not transaction:
                return func(cursor)
            cursor.execute("BEGIN IMMEDIATE")
            try:
                result = func(cursor)
                cursor.execute("COMMIT")
            except BaseException:
                if writer.sqlite_conn.in_transaction:
                    writer.sqlite_conn.rollback()
                raise
            return result
        except sqlite3.Error as e:
            raise translate_error(e) from e

    def _write_in_group(self, func: Callable[[sqlite3.Cursor], _T], transaction: bool) -> _T:
        request = _WriteRequest(func, transaction)
        self._pending_writes.append(request)
        with self.write_lock:
            if not request.done:
                batch = []
                pending = self._pending_writes
                while pending:
                    batch.append(pending.popleft())
                self._run_group(batch)
        if request.error is not None:
            raise request.error
        return request.result  # type: ignore[no-any-return]

    def _run_group(self, batch: list[_WriteRequest]) -> None:
        # Called with the write lock held. Every request is marked done, whatever happens.
        try:
            if len(batch) == 1:
                request = batch[0]
                try:
                    request.result = self._write_alone(request.func, request.transaction)
                except BaseException as e:
                    request.error = e
            else:
                self._commit_group(batch)
        finally:
            for request in batch:
                request.done = True

    def _commit_group(self, batch: list[_WriteRequest]) -> None:
        try:
            writer = self._get_writer()
            cursor = writer.tuple_cursor
            cursor.execute("BEGIN IMMEDIATE")
            try:
                for request in batch:
                    self._run_in_savepoint(writer, request)
                cursor.execute("COMMIT")
            except BaseException:
                if writer.sqlite_conn.in_transaction:
                    writer.sqlite_conn.rollback()
                raise
        except BaseException as e:
            # Nothing was committed, so every write in the group failed; a write that
            # failed by itself keeps its own error.
            for request in batch:
                request.result = None
                if request.error is None:
                    request.error = _group_failure(e)
            if not isinstance(e, Exception):
                raise  # KeyboardInterrupt and the like belong to this thread.

    @staticmethod
    def _run_in_savepoint(writer: SQLiteConnection, request: _WriteRequest) -> None:
        cursor = writer.tuple_cursor
        cursor.execute("SAVEPOINT request")
        try:
            request.result = request.func(cursor)
        except Exception as e:
            request.error = translate_error(e) if isinstance(e, sqlite3.Error) else e
            if not writer.sqlite_conn.in_transaction:
                # SQLite rolled back the whole transaction (disk full, I/O error, ...).
                raise
            cursor.execute("ROLLBACK TO request")
        cursor.execute("RELEASE request")

    def add_waker(self, event: Event) -> None:
        """Set ``event`` after every write through this datastore."""
        with self._wakers_lock:
            self._wakers = (*self._wakers, event)

    def remove_waker(self, event: Event) -> None:
        """Stop setting ``event`` after writes."""
        with self._wakers_lock:
            self._wakers = tuple(e for e in self._wakers if e is not event)

    def wake_subscribers(self) -> None:
        """Set every registered waker event."""
        for event in self._wakers:
            event.set()

    def _get_writer(self) -> SQLiteConnection:
        # Called with the write lock held.
        writer = self._writer
        if writer is None:
            if self.pool.closed:
                msg = (
                    f"SQLite datastore for {self.pool.db_name!r} is closed; "
                    "construct a new factory or datastore to use the database again"
                )
                raise ConnectionPoolClosedError(msg)
            writer = self._writer = self.pool.connect()
        return writer


# --------------------------------------------------------------------------------------
# Recorders.
# --------------------------------------------------------------------------------------


class SQLiteRecorder(Recorder):
    """Base class of the SQLite recorders: a datastore and the statements to create tables.

    ``create_table_statements`` may be replaced before calling ``create_table()``.
    """

    def __init__(self, datastore: SQLiteDatastore, **kwargs: Any) -> None:
        if not isinstance(datastore, SQLiteDatastore):
            msg = f"Expected an SQLiteDatastore, got {datastore!r}"
            raise TypeError(msg)
        self.datastore = datastore
        self.create_table_statements = self.construct_create_table_statements()

    def construct_create_table_statements(self) -> list[str]:
        """Return the statements that create this recorder's tables."""
        return []

    def create_table(self) -> None:
        """Create this recorder's tables if they do not exist, in one transaction.

        Processes starting together over a new database file take turns (the transaction
        takes SQLite's write lock first, waiting up to the lock timeout).
        """
        try:
            self.datastore.write(self._create_table, transaction=True)
        except PersistenceError as e:
            # Without the hints meant for saves (a failed CREATE is no version conflict).
            cause = e.__cause__ if isinstance(e.__cause__, sqlite3.Error) else e
            msg = f"Failed to create the tables of {type(self).__name__}: {cause}"
            raise type(e)(msg) from e.__cause__

    def _create_table(self, cursor: sqlite3.Cursor) -> None:
        for statement in self.create_table_statements:
            cursor.execute(statement)

    def convert_originator_id(self, originator_id: str) -> UUID | str:
        """Convert a stored originator id to the configured type (UUID or str)."""
        if self.datastore.originator_id_type == "uuid":
            return UUID(originator_id)
        return originator_id


def _insert_statement(table: str, num_rows: int) -> str:
    values = ",".join(["(?,?,?,?)"] * num_rows)
    return f"INSERT INTO {table} (originator_id,originator_version,topic,state) VALUES {values}"


@cache
def _max_rows_per_statement() -> int:
    """Return the largest power-of-two chunk whose parameters SQLite accepts."""
    # Four parameters per row; SQLite builds before 3.32 allow only 999 parameters.
    probe = sqlite3.connect(":memory:")
    try:
        limit = probe.getlimit(sqlite3.SQLITE_LIMIT_VARIABLE_NUMBER)
    finally:
        probe.close()
    chunk = _MAX_CHUNK_ROWS
    while chunk * 4 > limit:
        chunk //= 2
    return chunk


def _chunk_sizes(num_rows: int, max_chunk: int) -> list[int]:
    """Split a batch into chunks of power-of-two sizes, then one small exact remainder."""
    if num_rows <= _MAX_EXACT_ROWS:
        return [num_rows]
    sizes = []
    chunk = max_chunk
    while num_rows > _MAX_EXACT_ROWS:
        while chunk > num_rows:
            chunk //= 2
        sizes.append(chunk)
        num_rows -= chunk
    if num_rows:
        sizes.append(num_rows)
    return sizes


_NO_ID = object()


def _event_params(stored_events: Sequence[StoredEvent]) -> list[Any]:
    """Flatten stored events into INSERT parameters, UUID ids as 32-character hex.

    States are bound as ``bytearray``: the same BLOB, but ``sqlite3`` looks for an adapter
    for every ``bytes`` parameter (a failed attribute lookup that formats an error message),
    which costs twice as much as the copy.
    """
    params: list[Any] = []
    last_id: object = _NO_ID
    last_key: Any = None
    for s in stored_events:
        originator_id = s.originator_id
        if originator_id is not last_id:
            # Consecutive events usually share one originator: format its id once.
            last_id = originator_id
            last_key = originator_id.hex if isinstance(originator_id, UUID) else originator_id
        params += (last_key, s.originator_version, s.topic, bytearray(s.state))
    return params


class SQLiteAggregateRecorder(SQLiteRecorder, AggregateRecorder):
    """Records stored events of aggregates in a table keyed by id and version."""

    def __init__(
        self,
        datastore: SQLiteDatastore,
        events_table_name: str = "stored_events",
        **kwargs: Any,
    ) -> None:
        self.events_table_name = _check_identifier(events_table_name)
        super().__init__(datastore, **kwargs)
        table = self.events_table_name
        self._insert_statements: dict[int, str] = {}
        self._max_chunk = _max_rows_per_statement()
        # A subclass that extends _insert_events (9.x's way to write rows of its own with
        # the events) is called inside the transaction; others take the faster paths.
        self._has_insert_hook = type(self)._insert_events not in _LIBRARY_INSERT_EVENTS
        self.insert_events_statement = _insert_statement(table, 1)
        self._select_events_statements = {
            (gt, lte, desc, limit): self._select_events_statement(gt, lte, desc, limit)
            for gt in (False, True)
            for lte in (False, True)
            for desc in (False, True)
            for limit in (False, True)
        }

    def construct_create_table_statements(self) -> list[str]:
        """Return the statement that creates the events table (WITHOUT ROWID)."""
        return [
            *super().construct_create_table_statements(),
            f"CREATE TABLE IF NOT EXISTS {self.events_table_name} ("
            "originator_id TEXT, "
            "originator_version INTEGER, "
            "topic TEXT, "
            "state BLOB, "
            "PRIMARY KEY (originator_id, originator_version)) "
            "WITHOUT ROWID",
        ]

    def insert_events(
        self, stored_events: Sequence[StoredEvent], **kwargs: Any
    ) -> Sequence[int] | None:
        """Insert a batch of stored events atomically; return None."""
        if self._has_insert_hook:
            self._write_through_hook(stored_events, kwargs)
        else:
            self._write_events(stored_events, None)
        return None

    def select_events(
        self,
        originator_id: UUID | str,
        *,
        gt: int | None = None,
        lte: int | None = None,
        desc: bool = False,
        limit: int | None = None,
    ) -> list[StoredEvent]:
        """Return the stored events of one originator, filtered, ordered and limited."""
        key = originator_id.hex if isinstance(originator_id, UUID) else originator_id
        params: list[Any] = [key]
        if gt is not None:
            params.append(gt)
        if lte is not None:
            params.append(lte)
        if limit is not None:
            params.append(limit)
        statement = self._select_events_statements[
            gt is not None, lte is not None, bool(desc), limit is not None
        ]
        rows = self.datastore.read(statement, params)
        if not rows:
            return []
        # Every row has the queried id, so it is converted once, not once per row.
        if self.datastore.originator_id_type != "uuid":
            result_id: UUID | str = key
        elif isinstance(originator_id, UUID):
            result_id = originator_id
        else:
            result_id = UUID(originator_id)
        return [StoredEvent(result_id, v, t, s) for v, t, s in rows]

    # -- internals ---------------------------------------------------------------------

    def _select_events_statement(self, gt: bool, lte: bool, desc: bool, limit: bool) -> str:
        statement = (
            "SELECT originator_version, topic, state "
            f"FROM {self.events_table_name} WHERE originator_id=?"
        )
        if gt:
            statement += " AND originator_version>?"
        if lte:
            statement += " AND originator_version<=?"
        statement += " ORDER BY originator_version" + (" DESC" if desc else "")
        if limit:
            statement += " LIMIT ?"
        return statement

    def _get_insert_statement(self, num_rows: int) -> str:
        statement = self._insert_statements.get(num_rows)
        if statement is None:
            statement = _insert_statement(self.events_table_name, num_rows)
            self._insert_statements[num_rows] = statement
        return statement

    def _write_events(self, stored_events: Sequence[StoredEvent], tracking: Tracking | None) -> int:
        """Insert events (and tracking) atomically through the writer; return the last rowid."""
        params = _event_params(stored_events)  # Prepared before taking the write lock.
        sizes = _chunk_sizes(len(stored_events), self._max_chunk) if stored_events else []
        # A single multi-row INSERT is atomic by itself in autocommit mode, so the common
        # small batch needs no BEGIN and COMMIT statements.
        return self.datastore.write(
            lambda cursor: self._insert_rows(cursor, params, sizes, tracking),
            transaction=len(sizes) + (tracking is not None) > 1,
        )

    def _insert_rows(
        self,
        cursor: sqlite3.Cursor,
        params: list[Any],
        sizes: list[int],
        tracking: Tracking | None,
    ) -> int:
        """Insert flattened event rows (and tracking) with ``cursor``; return the last rowid."""
        if tracking is not None:
            self._insert_tracking(cursor, tracking)
        if not sizes:
            # No rows, but still fail as inserting would if the table is missing.
            cursor.executemany(self.insert_events_statement, ())
            return 0
        if len(sizes) == 1:
            cursor.execute(self._get_insert_statement(sizes[0]), params)
        else:
            start = 0
            for size in sizes:
                end = start + size * 4
                cursor.execute(self._get_insert_statement(size), params[start:end])
                start = end
        return cursor.lastrowid or 0

    def _write_through_hook(
        self, stored_events: Sequence[StoredEvent], kwargs: dict[str, Any]
    ) -> Sequence[int] | None:
        """Call :meth:`_insert_events` in one write transaction, as ``insert_events`` does."""

        def insert(cursor: sqlite3.Cursor) -> Sequence[int] | None:
            # A cursor of the writer's connection, with sqlite3.Row rows, as in 9.x.
            row_cursor = SQLiteCursor(cursor.connection.cursor())
            return self._insert_events(row_cursor, stored_events, **kwargs)

        return self.datastore.write(insert, transaction=True)

    def _insert_events(
        self, c: SQLiteCursor | sqlite3.Cursor, stored_events: Sequence[StoredEvent], **kwargs: Any
    ) -> Sequence[int] | None:
        """Insert events with the cursor of the transaction of ``insert_events``.

        The extension point of ``eventsourcing`` 9.x: a subclass that overrides it (calling
        ``super()._insert_events(c, stored_events, **kwargs)``) can write rows of its own
        with ``c``, in the same transaction as the events; keyword arguments given to
        ``Application.save()`` arrive here. ``insert_events`` calls it whenever a subclass
        overrides it.
        """
        self._insert_rows_with(c, stored_events, None)
        return None

    def _insert_rows_with(
        self,
        c: SQLiteCursor | sqlite3.Cursor,
        stored_events: Sequence[StoredEvent],
        tracking: Tracking | None,
    ) -> int:
        cursor = c.sqlite_cursor if isinstance(c, SQLiteCursor) else c
        sizes = _chunk_sizes(len(stored_events), self._max_chunk) if stored_events else []
        try:
            return self._insert_rows(cursor, _event_params(stored_events), sizes, tracking)
        except sqlite3.Error as e:
            raise translate_error(e) from e

    def _insert_tracking(self, c: SQLiteCursor | sqlite3.Cursor, tracking: Tracking) -> None:
        msg = f"{type(self).__qualname__} does not record tracking"
        raise NotImplementedError(msg)


class SQLiteApplicationRecorder(SQLiteAggregateRecorder, ApplicationRecorder):
    """Records stored events in a rowid table; the rowid is the notification id."""

    def __init__(
        self,
        datastore: SQLiteDatastore,
        events_table_name: str = "stored_events",
        **kwargs: Any,
    ) -> None:
        super().__init__(datastore, events_table_name, **kwargs)
        self.select_max_notification_id_statement = (
            f"SELECT MAX(rowid) FROM {self.events_table_name}"
        )
        self._select_notifications_statements: dict[tuple[bool, bool, bool, int], str] = {}

    def construct_create_table_statements(self) -> list[str]:
        """Return the statement that creates the events table (a rowid table)."""
        return [
            f"CREATE TABLE IF NOT EXISTS {self.events_table_name} ("
            "originator_id TEXT, "
            "originator_version INTEGER, "
            "topic TEXT, "
            "state BLOB, "
            "PRIMARY KEY (originator_id, originator_version))"
        ]

    def insert_events(
        self, stored_events: Sequence[StoredEvent], **kwargs: Any
    ) -> Sequence[int] | None:
        """Insert a batch of stored events atomically; return their notification ids."""
        if self._has_insert_hook:
            return self._write_through_hook(stored_events, kwargs)
        last = self._write_events(stored_events, None)
        return self._notification_ids(last, len(stored_events))

    def _insert_events(
        self, c: SQLiteCursor | sqlite3.Cursor, stored_events: Sequence[StoredEvent], **kwargs: Any
    ) -> Sequence[int] | None:
        """Insert events with the transaction's cursor; return their notification ids.

        See :meth:`SQLiteAggregateRecorder._insert_events` for extending it.
        """
        last = self._insert_rows_with(c, stored_events, None)
        return self._notification_ids(last, len(stored_events))

    def _max_notification_id(self, c: SQLiteCursor | sqlite3.Cursor) -> int | None:
        """Return the largest notification id, using the caller's cursor."""
        c.execute(self.select_max_notification_id_statement)
        return c.fetchone()[0]  # type: ignore[no-any-return]

    @staticmethod
    def _notification_ids(last_rowid: int, num_rows: int) -> list[int]:
        # The ids are computed rather than returned by INSERT ... RETURNING rowid, which
        # measured about 40% slower per row. This is exact: every insert happens under
        # the writer's transaction (SQLite's write lock), and SQLite gives each new row
        # max(rowid)+1, so one batch gets contiguous rowids ending at last_insert_rowid().
        # (SQLite only picks random rowids after rowid 2**63-1 has been used.)
        return list(range(last_rowid - num_rows + 1, last_rowid + 1)) if num_rows else []

    def select_notifications(
        self,
        start: int | None,
        limit: int,
        stop: int | None = None,
        topics: Sequence[str] = (),
        *,
        inclusive_of_start: bool = True,
    ) -> list[Notification]:
        """Return notifications ordered by id, from ``start``, up to ``stop``, ``limit``."""
        params: list[Any] = []
        if start is not None:
            params.append(start)
        if stop is not None:
            params.append(stop)
        if topics:
            params += topics
        params.append(limit)
        statement = self._get_select_notifications_statement(
            start is not None and not inclusive_of_start,
            start is not None and inclusive_of_start,
            stop is not None,
            len(topics),
        )
        rows = self.datastore.read(statement, params)
        if self.datastore.originator_id_type != "uuid":
            return [Notification(i, v, t, s, n) for i, v, t, s, n in rows]
        # Neighbouring notifications often share an originator: convert each id once.
        uuids: dict[str, UUID] = {}
        notifications = []
        for i, v, t, s, n in rows:
            originator_id = uuids.get(i)
            if originator_id is None:
                originator_id = uuids[i] = UUID(i)
            notifications.append(Notification(originator_id, v, t, s, n))
        return notifications

    def max_notification_id(self) -> int | None:
        """Return the largest notification id, or None if there are no events."""
        rows = self.datastore.read(self.select_max_notification_id_statement, ())
        return rows[0][0]  # type: ignore[no-any-return]

    def subscribe(self, gt: int | None = None, topics: Sequence[str] = ()) -> SQLiteSubscription:
        """Return a subscription to notifications after ``gt``, filtered by ``topics``.

        9.5.6 difference: SQLite subscriptions.
        """
        return SQLiteSubscription(recorder=self, gt=gt, topics=topics)

    def _get_select_notifications_statement(
        self, gt: bool, gte: bool, lte: bool, num_topics: int
    ) -> str:
        key = (gt, gte, lte, num_topics)
        statement = self._select_notifications_statements.get(key)
        if statement is None:
            conditions = []
            if gt:
                conditions.append("rowid>?")
            if gte:
                conditions.append("rowid>=?")
            if lte:
                conditions.append("rowid<=?")
            if num_topics:
                conditions.append(f"topic IN ({','.join('?' * num_topics)})")
            where = f" WHERE {' AND '.join(conditions)}" if conditions else ""
            statement = (
                "SELECT originator_id, originator_version, topic, state, rowid "
                f"FROM {self.events_table_name}{where} ORDER BY rowid LIMIT ?"
            )
            self._select_notifications_statements[key] = statement
        return statement


class SQLiteSubscription(ListenNotifySubscription[SQLiteApplicationRecorder]):
    """Subscription to an SQLite application recorder.

    It is woken after every write through the recorder's datastore, and also every
    ``poll_interval`` seconds, so that writes from other processes (or other datastores)
    are seen.
    """

    poll_interval: float = 0.05

    def _listen(self) -> None:
        self._stop_polling = Event()
        self._datastore = self._recorder.datastore
        self._datastore.add_waker(self._has_been_notified)
        self._poll_thread = Thread(target=self._poll, daemon=True)
        self._poll_thread.start()

    def stop(self) -> None:
        """Stop the subscription: iteration ends and the background threads finish."""
        if hasattr(self, "_stop_polling"):
            self._stop_polling.set()
            self._datastore.remove_waker(self._has_been_notified)
        super().stop()

    def _poll(self) -> None:
        while not self._stop_polling.wait(self.poll_interval):
            self._has_been_notified.set()


class SQLiteTrackingRecorder(SQLiteRecorder, TrackingRecorder):
    """Records the position reached in each upstream application's notification log.

    Single-row tracking (the default) keeps one row per application name and only lets it
    increase. Multi-row tracking keeps one row per processed notification. A multi-row
    table is migrated to single-row form by ``create_table()`` when single-row tracking is
    configured: the old table is renamed ``old1_tracking`` and the maxima are copied.
    """

    table_migration_identifier = "__migration__"

    def __init__(self, datastore: SQLiteDatastore, **kwargs: Any) -> None:
        super().__init__(datastore, **kwargs)
        self.tracking_table_exists = False
        self.tracking_migration_previous: int | None = None
        self.tracking_migration_current: int | None = None
        self.has_checked_for_multi_row_tracking_table = False
        if self.datastore.single_row_tracking:
            # 9.x's statement, kept for code that uses it: one notification, only forwards.
            self.insert_tracking_statement = (
                "INSERT INTO tracking VALUES (:application_name, :notification_id) "
                "ON CONFLICT (application_name) DO UPDATE "
                "SET notification_id=excluded.notification_id "
                "WHERE tracking.notification_id<excluded.notification_id "
                "RETURNING notification_id"
            )
            # What the recorder runs: a compare-and-set on the first notification covered.
            self._record_tracking_statement = (
                "INSERT INTO tracking (application_name, notification_id) VALUES (?,?) "
                "ON CONFLICT (application_name) DO UPDATE "
                "SET notification_id=excluded.notification_id "
                "WHERE tracking.notification_id<? "
                "RETURNING notification_id"
            )
        else:
            self.insert_tracking_statement = (
                "INSERT INTO tracking VALUES (:application_name, :notification_id)"
            )
            self._record_tracking_statement = (
                "INSERT INTO tracking (application_name, notification_id) VALUES (?,?)"
            )
        self.select_max_tracking_id_statement = (
            "SELECT MAX(notification_id) FROM tracking WHERE application_name=?"
        )

    def construct_create_table_statements(self) -> list[str]:
        """Return the statement that creates the tracking table."""
        key = (
            "application_name"
            if self.datastore.single_row_tracking
            else ("application_name, notification_id")
        )
        return [
            *super().construct_create_table_statements(),
            "CREATE TABLE IF NOT EXISTS tracking ("
            "application_name TEXT, "
            "notification_id INTEGER, "
            f"PRIMARY KEY ({key})) "
            "WITHOUT ROWID",
        ]

    def insert_tracking(self, tracking: Tracking) -> None:
        """Record that ``tracking.notification_id`` has been processed."""
        self.datastore.write(
            lambda cursor: self._insert_tracking(cursor, tracking), transaction=False
        )

    def max_tracking_id(self, application_name: str) -> int | None:
        """Return the largest notification id recorded for an application, or None."""
        rows = self.datastore.read(self.select_max_tracking_id_statement, (application_name,))
        return rows[0][0]  # type: ignore[no-any-return]

    # -- internals ---------------------------------------------------------------------

    def _create_table(self, cursor: sqlite3.Cursor) -> None:
        exists = _table_exists(cursor, "tracking")
        marker = self._read_marker(cursor) if exists else None
        self.tracking_table_exists = exists
        self.tracking_migration_previous = self.tracking_migration_current = marker
        single_row = self.datastore.single_row_tracking
        if not single_row and marker is not None:
            msg = "Can't do multi-row tracking with single-row tracking table"
            raise OperationalError(msg)
        maxima: list[Row] = []
        needs_marker = single_row and marker is None
        if needs_marker and exists:
            maxima = self._move_multi_row_table(cursor)
        super()._create_table(cursor)
        if needs_marker:
            for name, notification_id in [(self.table_migration_identifier, 1), *maxima]:
                self._insert_tracking(cursor, Tracking(name, notification_id))
            self.tracking_migration_current = 1

    def _read_marker(self, cursor: sqlite3.Cursor) -> int | None:
        return self._max_tracking_id(self.table_migration_identifier, cursor)

    @staticmethod
    def _move_multi_row_table(cursor: sqlite3.Cursor) -> list[Row]:
        """Rename a multi-row tracking table out of the way; return its maxima."""
        cursor.execute(
            "SELECT application_name, MAX(notification_id) FROM tracking GROUP BY application_name"
        )
        maxima = cursor.fetchall()
        number = 1
        while _table_exists(cursor, f"old{number}_tracking"):
            number += 1
        cursor.execute(f"ALTER TABLE tracking RENAME TO old{number}_tracking")
        return maxima

    def _insert_tracking(self, c: SQLiteCursor | sqlite3.Cursor, tracking: Tracking) -> None:
        """Record ``tracking`` with the cursor of a transaction the caller manages.

        Subclasses that update their own tables call this inside
        ``with self.datastore.transaction(commit=True) as c:`` so that both commit together.
        """
        cursor = c.sqlite_cursor if isinstance(c, SQLiteCursor) else c
        name, notification_id = tracking.application_name, tracking.notification_id
        if not self.datastore.single_row_tracking:
            # A row per notification: overlapping batches collide on the primary key.
            self._check_has_multi_row_tracking_table(cursor)
            rows = [(name, i) for i in tracking.notification_ids()]
            cursor.executemany(self._record_tracking_statement, rows)
            return
        # A compare-and-set: nothing from the first notification on may be recorded yet.
        params = (name, notification_id, tracking.first_notification_id())
        # fetchall() (not fetchone) so that the statement completes and commits.
        if not cursor.execute(self._record_tracking_statement, params).fetchall():
            msg = (
                f"Failed to record tracking for {name} {notification_id}: a position at or "
                f"after notification {tracking.first_notification_id()} is already recorded "
                f"for {name!r} (the notification was probably processed already)"
            )
            raise IntegrityError(msg)

    def _max_tracking_id(
        self, application_name: str, c: SQLiteCursor | sqlite3.Cursor
    ) -> int | None:
        """Return the largest notification id recorded for an application, using ``c``."""
        c.execute(self.select_max_tracking_id_statement, (application_name,))
        return c.fetchone()[0]  # type: ignore[no-any-return]

    def _check_has_multi_row_tracking_table(self, cursor: sqlite3.Cursor) -> None:
        if self.has_checked_for_multi_row_tracking_table:
            return
        if self._read_marker(cursor):
            msg = (
                "Can't do multi-row tracking with single-row tracking table (the 'tracking' "
                "table was migrated to single-row tracking; set SINGLE_ROW_TRACKING=t)"
            )
            raise OperationalError(msg)
        self.has_checked_for_multi_row_tracking_table = True


def _table_exists(cursor: sqlite3.Cursor, name: str) -> bool:
    cursor.execute("SELECT 1 FROM sqlite_master WHERE type='table' AND name=?", (name,))
    return bool(cursor.fetchall())


class SQLiteProcessRecorder(SQLiteTrackingRecorder, SQLiteApplicationRecorder, ProcessRecorder):
    """Records new events together with the tracking record of the event processed."""

    def __init__(
        self, datastore: SQLiteDatastore, *, events_table_name: str = "stored_events"
    ) -> None:
        super().__init__(datastore, events_table_name=events_table_name)

    def insert_events(
        self, stored_events: Sequence[StoredEvent], **kwargs: Any
    ) -> Sequence[int] | None:
        """Insert events and the optional ``tracking`` record in one transaction."""
        if self._has_insert_hook:
            return self._write_through_hook(stored_events, kwargs)
        tracking: Tracking | None = kwargs.get("tracking")
        last = self._write_events(stored_events, tracking)
        return self._notification_ids(last, len(stored_events))

    def _insert_events(
        self, c: SQLiteCursor | sqlite3.Cursor, stored_events: Sequence[StoredEvent], **kwargs: Any
    ) -> Sequence[int] | None:
        """Insert events and the ``tracking=`` record with the transaction's cursor.

        See :meth:`SQLiteAggregateRecorder._insert_events` for extending it.
        """
        last = self._insert_rows_with(c, stored_events, kwargs.get("tracking"))
        return self._notification_ids(last, len(stored_events))


# The library's own _insert_events: a recorder class with another one has extended it.
_LIBRARY_INSERT_EVENTS = {
    SQLiteAggregateRecorder._insert_events,
    SQLiteApplicationRecorder._insert_events,
    SQLiteProcessRecorder._insert_events,
}


_R = TypeVar("_R", bound=SQLiteRecorder)


# --------------------------------------------------------------------------------------
# The infrastructure factory.
# --------------------------------------------------------------------------------------


class SQLiteFactory(InfrastructureFactory[SQLiteTrackingRecorder]):
    """Makes SQLite recorders that share one :class:`SQLiteDatastore` (see module docs)."""

    SQLITE_DBNAME = "SQLITE_DBNAME"
    SQLITE_LOCK_TIMEOUT = "SQLITE_LOCK_TIMEOUT"
    SQLITE_SINGLE_ROW_TRACKING = "SINGLE_ROW_TRACKING"
    ORIGINATOR_ID_TYPE = "ORIGINATOR_ID_TYPE"
    CREATE_TABLE = "CREATE_TABLE"

    aggregate_recorder_class: type[SQLiteAggregateRecorder] = SQLiteAggregateRecorder
    application_recorder_class: type[SQLiteApplicationRecorder] = SQLiteApplicationRecorder
    tracking_recorder_class: type[SQLiteTrackingRecorder] = SQLiteTrackingRecorder
    process_recorder_class: type[SQLiteProcessRecorder] = SQLiteProcessRecorder

    def __init__(self, env: Environment | EnvType | None) -> None:
        super().__init__(env)
        self.datastore = SQLiteDatastore(
            db_name=self._db_name(),
            lock_timeout=self._lock_timeout(),
            single_row_tracking=self._truth(self.SQLITE_SINGLE_ROW_TRACKING, "t"),
            originator_id_type=self._originator_id_type(),
        )

    def aggregate_recorder(self, purpose: str = "events") -> SQLiteAggregateRecorder:
        """Return an aggregate recorder using the table ``stored_<purpose>``."""
        recorder = self.aggregate_recorder_class(
            datastore=self.datastore, events_table_name="stored_" + purpose
        )
        return self._maybe_create_table(recorder)

    def application_recorder(self) -> SQLiteApplicationRecorder:
        """Return an application recorder (``APPLICATION_RECORDER_TOPIC`` may choose it)."""
        cls = self._recorder_class(
            self.APPLICATION_RECORDER_TOPIC,
            SQLiteApplicationRecorder,
            self.application_recorder_class,
        )
        return self._maybe_create_table(cls(datastore=self.datastore))

    def tracking_recorder(
        self, tracking_recorder_class: type[SQLiteTrackingRecorder] | None = None
    ) -> SQLiteTrackingRecorder:
        """Return a tracking recorder: of the given class, else ``TRACKING_RECORDER_TOPIC``."""
        cls = self._recorder_class(
            self.TRACKING_RECORDER_TOPIC,
            SQLiteTrackingRecorder,
            self.tracking_recorder_class,
            given=tracking_recorder_class,
        )
        return self._maybe_create_table(cls(datastore=self.datastore))

    def process_recorder(self) -> SQLiteProcessRecorder:
        """Return a process recorder (``PROCESS_RECORDER_TOPIC`` may choose it)."""
        cls = self._recorder_class(
            self.PROCESS_RECORDER_TOPIC, SQLiteProcessRecorder, self.process_recorder_class
        )
        return self._maybe_create_table(cls(datastore=self.datastore))

    def env_create_table(self) -> bool:
        """Say whether recorders should create their tables (``CREATE_TABLE``)."""
        return self._truth(self.CREATE_TABLE, "yes")

    def close(self) -> None:
        """Close the datastore."""
        self.datastore.close()

    # -- internals ---------------------------------------------------------------------

    def _maybe_create_table(self, recorder: _R) -> _R:
        if self.env_create_table():
            recorder.create_table()
        return recorder

    def _db_name(self) -> str:
        db_name = self.env.get(self.SQLITE_DBNAME)
        if not db_name:
            keys = ", ".join(self.env.create_keys(self.SQLITE_DBNAME))
            msg = f"SQLite database name not found in environment with keys: {keys}"
            raise OSError(msg)
        return db_name

    def _lock_timeout(self) -> int | None:
        value = (self.env.get(self.SQLITE_LOCK_TIMEOUT) or "").strip()
        if not value:
            return None
        try:
            return int(value)
        except ValueError:
            msg = (
                f"SQLite environment value for key '{self.SQLITE_LOCK_TIMEOUT}' is invalid. "
                f"If set, an int or empty string is expected: '{value}'"
            )
            raise OSError(msg) from None

    def _originator_id_type(self) -> OriginatorIDType:
        value = self.env.get(self.ORIGINATOR_ID_TYPE, "uuid") or "uuid"
        if value.lower() == "uuid":
            return "uuid"
        if value.lower() == "text":
            return "text"
        msg = f"Invalid {self.ORIGINATOR_ID_TYPE} '{value}', must be 'uuid' or 'text'"
        raise OSError(msg)

    def _truth(self, key: str, default: str) -> bool:
        value = self.env.get(key, default) or default
        try:
            return strtobool(value)
        except ValueError:
            msg = (
                f"SQLite environment value for key {key!r} is invalid: {value!r}; "
                "expected a truth value such as 'yes'/'no', 't'/'f' or '1'/'0'"
            )
            raise ValueError(msg) from None


Factory = SQLiteFactory
