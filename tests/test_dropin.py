"""Drop-in details of ``eventsourcing`` 9.5.6 that code migrating to ours relies on (issue 12):
public names that test suites import, and behaviours that differed."""

from __future__ import annotations

from uuid import uuid4

import psycopg
import pytest
from conftest import PostgresDatabase

from eventsourcing.persistence import StoredEvent
from eventsourcing.postgres import PostgresFactory
from eventsourcing.utils import Environment

# ---------------------------------------------------------------------------------------------
# eventsourcing.tests.postgres_utils


def postgres_factory(env: dict[str, str], name: str = "") -> PostgresFactory:
    """Return a PostgreSQL factory for the application ``name`` on the given database."""
    return PostgresFactory(Environment(name, {**env, "POSTGRES_POOL_SIZE": "1"}))


def schema_objects(db: PostgresDatabase) -> set[tuple[str, str]]:
    """Return (schema, name) of every table, composite type and function outside pg_*."""
    with db.connect() as conn:
        rows = conn.execute(
            "SELECT table_schema, table_name FROM information_schema.tables "
            "WHERE table_schema IN ('public', 'myschema') "
            "UNION SELECT n.nspname, t.typname FROM pg_type t "
            "JOIN pg_namespace n ON n.oid = t.typnamespace "
            "WHERE n.nspname IN ('public', 'myschema') AND t.typtype = 'c' "
            "AND t.typrelid IN (SELECT oid FROM pg_class WHERE relkind = 'c') "
            "UNION SELECT n.nspname, p.proname FROM pg_proc p "
            "JOIN pg_namespace n ON n.oid = p.pronamespace "
            "WHERE n.nspname IN ('public', 'myschema')"
        ).fetchall()
    return {(row[0], row[1]) for row in rows}


def test_drop_tables_empties_both_test_schemas(
    postgres_database: PostgresDatabase, monkeypatch: pytest.MonkeyPatch
) -> None:
    from eventsourcing.tests.postgres_utils import drop_tables

    env = {**postgres_database.env, "POSTGRES_ENABLE_DB_FUNCTIONS": "y"}
    for extra in ({}, {"POSTGRES_SCHEMA": "myschema"}):
        f = postgres_factory({**env, **extra}, "Shop")
        f.process_recorder().insert_events([StoredEvent(uuid4(), 1, "t", b"")])
        f.aggregate_recorder("snapshots")
        f.close()
    before = schema_objects(postgres_database)
    assert ("public", "shop_events") in before
    assert ("myschema", "shop_tracking") in before
    assert ("myschema", "stored_event_uuid") in before
    assert ("public", "es_insert_events_uuid") in before

    for key, value in postgres_database.env.items():
        monkeypatch.setenv(key, value)
    drop_tables()

    assert schema_objects(postgres_database) == set()
    drop_tables()  # nothing left to drop is fine


def test_pg_close_all_connections_terminates_other_sessions(
    postgres_database: PostgresDatabase,
) -> None:
    from eventsourcing.tests.postgres_utils import pg_close_all_connections

    env = postgres_database.env
    f = postgres_factory(env, "Shop")
    recorder = f.application_recorder()
    victim = postgres_database.connect()
    try:
        pg_close_all_connections(
            name=env["POSTGRES_DBNAME"],
            host=env["POSTGRES_HOST"],
            port=env["POSTGRES_PORT"],
            user=env["POSTGRES_USER"],
            password=env["POSTGRES_PASSWORD"],
        )
        with pytest.raises(psycopg.OperationalError):
            victim.execute("SELECT 1")
        # The library's pool replaces its terminated connection.
        assert recorder.insert_events([StoredEvent(uuid4(), 1, "t", b"")]) == [1]
    finally:
        victim.close()
        f.close()

