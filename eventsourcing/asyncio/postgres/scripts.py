"""The sync recorder's SQL scripts, sent over async connections.

The statements, their composition into one query and the handling of a commit whose
outcome is unknown are those of :mod:`eventsourcing.postgres.scripts`; only the I/O is
awaited here.
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from typing import Any, cast

import psycopg
import psycopg.rows
from psycopg import AsyncConnection, Connection
from psycopg.sql import SQL, Composed

from eventsourcing.postgres.identifiers import NO_PARAMS
from eventsourcing.postgres.scripts import _script_query, _Statement

AsyncConn = AsyncConnection[Any]


async def run_script(
    conn: AsyncConn, script: Sequence[_Statement], on_error: SQL | None = None
) -> list[list[tuple[Any, ...]]]:
    """Run the statements as one query, in one round trip; return each result's rows.

    As the sync ``_run_script``: on an error, ``on_error`` undoes the failed part, or else
    the transaction is rolled back, and the error is raised.
    """
    # The query's bytes depend only on the connection's encoding (an AdaptContext).
    query = _script_query(cast("Connection[Any]", conn), [statement for statement, _ in script])
    params = [p for _, statement_params in script for p in statement_params]
    curs = psycopg.AsyncClientCursor(conn, row_factory=psycopg.rows.tuple_row)
    try:
        await curs.execute(query, params, prepare=False)
    except psycopg.Error:
        if on_error is not None and not conn.broken:
            await curs.execute(on_error, NO_PARAMS)
        else:
            await rollback_quietly(conn)
        raise
    results = []
    while True:
        if curs.description is not None:
            results.append(await curs.fetchall())
        if not curs.nextset():
            return results


async def rollback_quietly(conn: AsyncConn) -> None:
    """Roll back an open transaction, if the connection can still say so."""
    if conn.broken or conn.closed:
        return
    if conn.info.transaction_status != psycopg.pq.TransactionStatus.IDLE:
        with contextlib.suppress(psycopg.Error):
            await conn.execute("ROLLBACK", NO_PARAMS)


async def fetch(conn: AsyncConn, statement: Composed, params: Sequence[Any]) -> list[Any]:
    """Rows of ``statement`` as tuples, with binary results (bytea as bytes, uuid parsed)."""
    async with conn.cursor(row_factory=psycopg.rows.tuple_row, binary=True) as curs:
        await curs.execute(statement, params)
        return await curs.fetchall()
