"""The base of the recorders: a datastore, and tables created one process at a time."""

from __future__ import annotations

import contextlib
from functools import partial
from typing import Any

import psycopg
import psycopg.errors
from psycopg import Connection, Cursor
from psycopg.rows import DictRow
from psycopg.sql import SQL, Composable, Composed

from eventsourcing.persistence import PersistenceError
from eventsourcing.postgres.datastore import PostgresDatastore
from eventsourcing.postgres.identifiers import (
    MAX_IDENTIFIER_BYTES,
    NO_PARAMS,
    check_identifier,
    quoted,
)


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

    def erase(self) -> None:
        """Delete every event and position this recorder keeps (and a follower's dead
        letters; its settings stay), in one transaction: for a rebuild."""
        statements = self._erase_statements()

        def erase(conn: Connection[DictRow]) -> None:
            with conn.transaction(), conn.cursor() as curs:
                for statement in statements:
                    curs.execute(statement, NO_PARAMS, prepare=False)

        self.datastore.run(erase)

    def _erase_statements(self) -> list[Composed]:
        return []

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
