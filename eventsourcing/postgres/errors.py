"""Errors: psycopg's translated into the PEP 249 errors of persistence.py.

Also the internal signals of the save paths.
"""

from __future__ import annotations

from typing import Any

import psycopg
import psycopg.errors
import psycopg_pool
import psycopg_pool.base
from psycopg import Connection

from eventsourcing.persistence import (
    ConnectionUnavailableError,
    DatabaseError,
    DataError,
    IntegrityError,
    InterfaceError,
    InternalError,
    NotSupportedError,
    OperationalError,
    PersistenceError,
    ProgrammingError,
)

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
