"""The datastore: one writer connection under a lock, pooled readers, subscription wakers."""

from __future__ import annotations

import sqlite3
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager, suppress
from threading import Event, Lock, RLock
from typing import Any, Literal, TypeVar
from weakref import WeakValueDictionary

from eventsourcing.persistence import (
    ConnectionPoolClosedError,
    PersistenceError,
)
from eventsourcing.sqlite.connections import (
    Row,
    SQLiteConnection,
    SQLiteConnectionPool,
    SQLiteCursor,
)
from eventsourcing.sqlite.errors import translate_error

_T = TypeVar("_T")
OriginatorIDType = Literal["uuid", "text"]


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
