"""Storage compatibility with 9.5.6's ``eventsourcing.dcb.postgres_tt``, both ways.

Each library, in its own interpreter (``dcb_client.py``), appends to and reads one
database: what one appends the other reads identically, and each one's append conditions
see the other's events. Either library may create the schema, and both create the same
tables, columns, indexes, types and 9.5.6's two append functions.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from anchor import anchor_python

from runners.testing.postgres import PostgresDatabase

CLIENT = Path(__file__).with_name("dcb_client.py")
STUDENT, COURSE = "student-1", "course-1"


@pytest.fixture(scope="session")
def anchor() -> Path:
    return anchor_python()


def client(
    python: Path | str, db: PostgresDatabase, ops: list[dict[str, Any]], **env: str
) -> list[dict[str, Any]]:
    """Run ``ops`` with the library of ``python``; return one result per operation."""
    environ = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    if str(python) == sys.executable:  # ours, from this working tree
        environ["PYTHONPATH"] = str(Path(__file__).parents[2])
    result = subprocess.run(
        [str(python), str(CLIENT), "Enrolment", json.dumps(ops)],
        env={**environ, **db.env, **env},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    return [json.loads(line) for line in result.stdout.splitlines()]


def append(events: list[tuple[str, str, list[str]]], items: Any = None, after: Any = None) -> Any:
    condition = None if items is None else {"items": items, "after": after}
    return {
        "op": "append",
        "events": [[t, d.encode().hex(), tags] for t, d, tags in events],
        "condition": condition,
    }


def read(items: Any = (), after: int | None = None, limit: int | None = None) -> Any:
    return {"op": "read", "items": list(items), "after": after, "limit": limit}


FIRST_WRITES = [
    append([("StudentRegistered", "s", [STUDENT])]),
    append([("CourseRegistered", "c", [COURSE])], [[[], [COURSE]]], 0),
    # A condition on both tags, from the position the writer read at.
    append([("StudentJoinedCourse", "j", [STUDENT, COURSE])], [[[], [STUDENT]]], 2),
    # Stale: the student has an event after 1.
    append([("StudentJoinedCourse", "x", [STUDENT, COURSE])], [[[], [STUDENT]]], 1),
]
FIRST_RESULTS = [{"position": 1}, {"position": 2}, {"position": 3}, {"error": "IntegrityError"}]

READS = [
    read(),
    read([[[], [STUDENT]]]),
    read([[[], [STUDENT, COURSE]]], after=1),
    read([[["CourseRegistered"], [COURSE]]]),
    read(after=1, limit=1),
]


@pytest.mark.parametrize("first", ["anchor", "ours"])
def test_each_library_reads_and_appends_after_the_other(
    anchor: Path, postgres_database: PostgresDatabase, first: str
) -> None:
    ours = sys.executable
    writer, other = (anchor, ours) if first == "anchor" else (ours, anchor)

    # Given events appended by one library (which creates the schema),
    assert client(writer, postgres_database, FIRST_WRITES) == FIRST_RESULTS

    # both read the same events and heads (the other library's objects are added to the
    # schema by its first use, as each library does by default),
    from_writer = client(writer, postgres_database, READS)
    from_other = client(other, postgres_database, READS)
    assert from_writer == from_other
    assert [e[0] for e in from_other[0]["events"]] == [1, 2, 3]
    assert from_other[0]["events"][2] == [3, "StudentJoinedCourse", b"j".hex(), [STUDENT, COURSE]]
    assert [e[0] for e in from_other[1]["events"]] == [1, 3]
    assert from_other[4] == {"events": [[2, "CourseRegistered", b"c".hex(), [COURSE]]], "head": 2}

    # and the other library's conditions see the writer's events, and the reverse.
    joined_again = append([("StudentJoinedCourse", "y", [STUDENT, COURSE])], [[[], [COURSE]]], 2)
    assert client(other, postgres_database, [joined_again]) == [{"error": "IntegrityError"}]
    left = append([("StudentLeftCourse", "l", [STUDENT, COURSE])], [[[], [COURSE]]], 3)
    assert client(other, postgres_database, [left]) == [{"position": 4}]
    stale = append([("CoursePlacesUpdated", "p", [COURSE])], [[[], [COURSE]]], 3)
    assert client(writer, postgres_database, [stale]) == [{"error": "IntegrityError"}]
    fresh = append([("CoursePlacesUpdated", "p", [COURSE])], [[[], [COURSE]]], 4)
    unconditional = append([("Audit", "a", [])])
    assert client(writer, postgres_database, [fresh, unconditional]) == [
        {"position": 5},
        {"position": 6},
    ]
    everything = [read()]
    assert client(anchor, postgres_database, everything, CREATE_TABLE="false") == client(
        ours, postgres_database, everything, CREATE_TABLE="false"
    )


@pytest.mark.parametrize("first", ["anchor", "ours"])
def test_enduring_objects_saved_by_one_are_got_and_saved_by_the_other(
    anchor: Path, postgres_database: PostgresDatabase, first: str
) -> None:
    ours = sys.executable
    writer, other = (anchor, ours) if first == "anchor" else (ours, anchor)
    [saved] = client(
        writer, postgres_database, [{"op": "save_dog", "name": "Fido", "tricks": ["sit"]}]
    )
    dog_id = saved["id"]
    get = {"op": "get_dog", "id": dog_id}
    assert client(other, postgres_database, [get]) == [
        {"name": "Fido", "tricks": ["sit"], "position": 2}
    ]
    # The other adds a trick; a copy the writer got before that is then stale.
    results = client(
        writer,
        postgres_database,
        [get, {"op": "add_trick", "id": dog_id, "trick": "beg"}],
    )
    assert results[1] == {"position": 3}
    assert client(other, postgres_database, [get])[0]["tricks"] == ["sit", "beg"]


def schema(db: PostgresDatabase) -> dict[str, Any]:
    """Tables, columns, indexes, composite types and function signatures of a database."""
    with db.connect() as conn:

        def rows(sql: str) -> list[Any]:
            return [tuple(r) for r in conn.execute(sql).fetchall()]

        return {
            "columns": rows(
                "SELECT table_name, column_name, data_type, is_nullable, column_default "
                "FROM information_schema.columns WHERE table_schema = 'public' "
                "ORDER BY table_name, ordinal_position"
            ),
            "indexes": rows(
                "SELECT indexname, indexdef FROM pg_indexes WHERE schemaname = 'public' "
                "ORDER BY indexname"
            ),
            "types": rows(
                "SELECT t.typname, a.attname, format_type(a.atttypid, a.atttypmod) "
                "FROM pg_type t JOIN pg_attribute a ON a.attrelid = t.typrelid "
                "JOIN pg_namespace n ON n.oid = t.typnamespace "
                "WHERE n.nspname = 'public' AND t.typtype = 'c' AND t.typname LIKE 'dcb%' "
                "ORDER BY t.typname, a.attnum"
            ),
            "functions": rows(
                "SELECT p.proname, pg_get_function_identity_arguments(p.oid), "
                "pg_get_function_result(p.oid) FROM pg_proc p "
                "JOIN pg_namespace n ON n.oid = p.pronamespace "
                "WHERE n.nspname = 'public' AND p.proname LIKE 'dcb_%' ORDER BY p.proname"
            ),
            "foreign_keys": rows(
                "SELECT conrelid::regclass::text, pg_get_constraintdef(oid) FROM pg_constraint "
                "WHERE contype = 'f' ORDER BY 1"
            ),
        }


def test_both_libraries_create_the_same_schema(
    anchor: Path, postgres_server: Any, postgres_database: PostgresDatabase
) -> None:
    client(anchor, postgres_database, [read()])
    theirs = schema(postgres_database)
    with PostgresDatabase.create(postgres_server) as second:
        client(sys.executable, second, [read()])
        ours = schema(second)
    # Ours has one more function: the append function of its table, which 9.5.6's call.
    ours_functions = [f for f in ours.pop("functions") if f[0] != "enrolment_events_tt_main_append"]
    assert ours_functions == theirs.pop("functions")
    assert ours == theirs
    assert theirs["columns"] and theirs["indexes"] and theirs["types"]


def test_appending_to_a_schema_only_9_5_6_created_says_how_to_add_ours(
    anchor: Path, postgres_database: PostgresDatabase
) -> None:
    from eventsourcing.dcb.api import DCBEvent
    from eventsourcing.dcb.postgres_tt import PostgresTTDCBFactory
    from eventsourcing.persistence import ProgrammingError
    from eventsourcing.utils import Environment

    client(anchor, postgres_database, FIRST_WRITES[:1])
    env = Environment("Enrolment", {**postgres_database.env, "CREATE_TABLE": "no"})
    with PostgresTTDCBFactory(env) as factory:
        recorder = factory.dcb_recorder()
        assert len(list(recorder.read())) == 1  # reading needs nothing of ours
        with pytest.raises(ProgrammingError, match="CREATE_TABLE left at its default"):
            recorder.append([DCBEvent("t", b"")])
        recorder.create_table()  # type: ignore[attr-defined]
        assert recorder.append([DCBEvent("t", b"")]) == 2
    assert client(anchor, postgres_database, [read()])[0]["head"] == 2
