"""Helpers for test suites that run against PostgreSQL, as ``eventsourcing`` 9.x ships them.

* :func:`drop_tables` empties the database named by the ``POSTGRES_*`` environment variables:
  every table in the schemas ``public`` and ``myschema``, and the composite types and
  functions that the recorders create.
* :func:`pg_close_all_connections` terminates every other session on the server, so that a
  test can check how the library recovers from lost connections.
"""

from __future__ import annotations

import os

import psycopg
from psycopg.rows import DictRow
from psycopg.sql import SQL, Identifier

from eventsourcing.postgres import PostgresDatastore

__all__ = ["drop_tables", "pg_close_all_connections"]

# The schemas the 9.x test suites use: the default one, and the one of their schema tests.
SCHEMAS = ("public", "myschema")
# What the recorders create besides tables (see eventsourcing.postgres).
COMPOSITE_TYPES = ("stored_event_uuid", "stored_event_text")
FUNCTIONS = ("es_insert_events_uuid", "es_insert_events_text")


def pg_close_all_connections(
    name: str = "eventsourcing",
    host: str = "127.0.0.1",
    port: str = "5432",
    user: str = "postgres",
    password: str = "postgres",
) -> None:
    """Terminate every session on the server but this function's own.

    Connects to database ``name`` first as the operating-system user (local development),
    then as ``user`` with ``password``. Needs a superuser, or a member of
    ``pg_signal_backend``, to terminate other users' sessions.
    """
    try:
        conn = psycopg.connect(dbname=name, host=host, port=port, autocommit=True)
    except psycopg.Error:
        conn = psycopg.connect(
            dbname=name, host=host, port=port, user=user, password=password, autocommit=True
        )
    with conn:
        conn.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE pid <> pg_backend_pid()"
        )


def drop_tables() -> None:
    """Drop every table, and the recorders' types and functions, in the test schemas.

    The database is the one the ``POSTGRES_*`` environment variables name (with 9.x's
    defaults: database, user and password ``eventsourcing`` on 127.0.0.1:5432).
    """
    for schema in SCHEMAS:
        with _datastore(schema) as datastore, datastore.transaction(commit=True) as curs:
            tables = curs.execute(
                "SELECT table_name FROM information_schema.tables WHERE table_schema = %s",
                (schema,),
            ).fetchall()
            for row in tables:
                _drop(curs, "TABLE", schema, row["table_name"])
            for name in COMPOSITE_TYPES:
                _drop(curs, "TYPE", schema, name)
            for name in FUNCTIONS:
                _drop(curs, "FUNCTION", schema, name)


def _datastore(schema: str) -> PostgresDatastore:
    return PostgresDatastore(
        dbname=os.environ.get("POSTGRES_DBNAME", "eventsourcing"),
        host=os.environ.get("POSTGRES_HOST", "127.0.0.1"),
        port=os.environ.get("POSTGRES_PORT", "5432"),
        user=os.environ.get("POSTGRES_USER", "eventsourcing"),
        password=os.environ.get("POSTGRES_PASSWORD", "eventsourcing"),
        schema=schema,
    )


def _drop(curs: psycopg.Cursor[DictRow], kind: str, schema: str, name: str) -> None:
    # IF EXISTS also covers a schema that doesn't exist (PostgreSQL only notes it).
    statement = SQL("DROP " + kind + " IF EXISTS {}.{} CASCADE").format(
        Identifier(schema), Identifier(name)
    )
    curs.execute(statement, prepare=False)
