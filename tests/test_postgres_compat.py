"""Storage compatibility with ``eventsourcing`` 9.5.6, both ways, on PostgreSQL.

The same scenario as the SQLite compatibility test (``tests/compat/scenario.py``), run by
the anchor's interpreter and by ours against one database: what either writes, both read
identically. And the schema both create is the same: tables, columns, indexes, types.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from anchor import anchor_python
from test_compat import VARIANTS, check_contents, dump, run

from runners.testing.postgres import PostgresDatabase, PostgresServer


@pytest.fixture(scope="session")
def anchor() -> Path:
    return anchor_python()


def scenario_env(db: PostgresDatabase) -> dict[str, str]:
    return {"PERSISTENCE_MODULE": "eventsourcing.postgres", **db.env}


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("writer", ["anchor", "ours"])
def test_postgres_database_is_read_identically(
    anchor: Path, tmp_path: Path, postgres_database: PostgresDatabase, writer: str, variant: str
) -> None:
    env = scenario_env(postgres_database)
    writer_python = anchor if writer == "anchor" else sys.executable
    run(writer_python, "write", variant, env, tmp_path)
    ours = dump(sys.executable, variant, env, tmp_path)
    theirs = dump(anchor, variant, env, tmp_path)
    check_contents(ours)
    assert ours == theirs


def schema(db: PostgresDatabase) -> dict[str, Any]:
    """What a database holds: columns, indexes, composite types (names and definitions)."""
    with db.connect() as conn:
        columns = conn.execute(
            "SELECT table_name, column_name, data_type, is_nullable, column_default, "
            "ordinal_position FROM information_schema.columns WHERE table_schema = 'public' "
            "ORDER BY table_name, ordinal_position"
        ).fetchall()
        indexes = conn.execute(
            "SELECT indexname, indexdef FROM pg_indexes WHERE schemaname = 'public' "
            "ORDER BY indexname"
        ).fetchall()
        types = conn.execute(
            "SELECT t.typname, a.attname, format_type(a.atttypid, a.atttypmod) "
            "FROM pg_type t JOIN pg_namespace n ON n.oid = t.typnamespace "
            "JOIN pg_attribute a ON a.attrelid = t.typrelid "
            "WHERE n.nspname = 'public' AND t.typtype = 'c' "
            "AND t.typrelid IN (SELECT oid FROM pg_class WHERE relkind = 'c') "
            "ORDER BY t.typname, a.attnum"
        ).fetchall()
        options = conn.execute(
            "SELECT relname, reloptions FROM pg_class c JOIN pg_namespace n "
            "ON n.oid = c.relnamespace WHERE n.nspname = 'public' AND relkind = 'r' "
            "ORDER BY relname"
        ).fetchall()
    return {"columns": columns, "indexes": indexes, "types": types, "options": options}


FOLLOWER_STATE = ("_dead_letters", "_follower_settings")


def without_follower_state(found: dict[str, Any]) -> dict[str, Any]:
    """``found`` without the rows of the dead letters and follower settings tables."""
    return {
        kind: [row for row in rows if not any(name in row[0] for name in FOLLOWER_STATE)]
        for kind, rows in found.items()
    }


CREATE_ALL = """
from eventsourcing.application import Application
class Bank(Application):
    pass
app = Bank()
app.factory.aggregate_recorder("snapshots")
app.factory.process_recorder()
app.factory.tracking_recorder()
app.close()
"""


def test_same_tables_columns_indexes_and_types(
    anchor: Path,
    tmp_path: Path,
    postgres_server: PostgresServer,
    postgres_database: PostgresDatabase,
) -> None:
    # Given one database set up by the anchor, and another by us,
    other_name = postgres_database.name + "_anchor"
    postgres_server.create_database(other_name)
    try:
        theirs_db = PostgresDatabase(postgres_server, other_name)
        for python, db in ((sys.executable, postgres_database), (anchor, theirs_db)):
            script = tmp_path / "create_all.py"
            script.write_text(CREATE_ALL)
            result = subprocess.run(
                [str(python), str(script)],
                env={**os.environ, **scenario_env(db)},
                cwd=tmp_path,
                capture_output=True,
                text=True,
            )
            assert result.returncode == 0, result.stderr
        # then they hold the same tables, columns, indexes and types, but for the two
        # tables of follower state that only we have.
        ours = schema(postgres_database)
        assert without_follower_state(ours) == schema(theirs_db)
        assert {c[0] for c in ours["columns"]} == {
            "bank_events",
            "bank_snapshots",
            "bank_tracking",
            "bank_dead_letters",
            "bank_follower_settings",
        }
    finally:
        postgres_server.drop_database(other_name)
