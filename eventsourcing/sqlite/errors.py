"""The library's exceptions for ``sqlite3`` errors, with hints on the likely fix."""

from __future__ import annotations

import sqlite3

from eventsourcing.persistence import (
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
