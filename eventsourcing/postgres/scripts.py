"""SQL scripts: several statements sent as one query, in one round trip.

Also the handling of a commit whose outcome is unknown.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import psycopg
import psycopg.errors
from psycopg import Connection
from psycopg.sql import SQL, Composed

from eventsourcing.postgres.errors import _OutcomeUnknownError, is_connection_failure
from eventsourcing.postgres.identifiers import NO_PARAMS

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


def _fetch(conn: Connection[Any], statement: Composed, params: Sequence[Any]) -> list[Any]:
    # Tuple rows and binary results: bytea arrives as bytes and uuid without text parsing.
    with conn.cursor(row_factory=psycopg.rows.tuple_row, binary=True) as curs:
        curs.execute(statement, params)
        return curs.fetchall()
