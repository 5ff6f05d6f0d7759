"""Cursors, connections, transactions and the connection pool over ``sqlite3``."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from threading import Lock
from typing import TYPE_CHECKING, Any

from eventsourcing.persistence import (
    Connection,
    ConnectionPool,
    Cursor,
    InterfaceError,
    OperationalError,
)
from eventsourcing.sqlite.errors import translate_error
from eventsourcing.sqlite.identifiers import is_memory_db_name

if TYPE_CHECKING:
    from types import TracebackType


SQLITE3_DEFAULT_LOCK_TIMEOUT = 5
_STATEMENT_CACHE_SIZE = 256

Row = tuple[Any, ...]


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
