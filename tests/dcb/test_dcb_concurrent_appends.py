"""The append condition holds between appenders in different processes.

Eight processes, started together, each try to take one of three places on a course
(read, then append on the condition that nothing of the course came after the read).
Exactly three join, each from the position the previous join was appended at: no two
appends succeeded from the same read. On PostgreSQL and on an SQLite file.
"""

from __future__ import annotations

import json
import multiprocessing
from pathlib import Path
from typing import Any

from eventsourcing.dcb.api import DCBEvent, DCBQuery, DCBQueryItem

from .concurrent_appenders import COURSE, join_course, open_recorder

WORKERS = 8
PLACES = 3


def run_students(kind: str, settings: dict[str, str]) -> list[tuple[str, str, int]]:
    ctx = multiprocessing.get_context("spawn")
    barrier = ctx.Barrier(WORKERS)
    results: Any = ctx.Queue()
    processes = [
        ctx.Process(
            target=join_course,
            args=(kind, settings, f"student-{i}", PLACES, barrier, results),
        )
        for i in range(WORKERS)
    ]
    for p in processes:
        p.start()
    outcomes = [results.get(timeout=120) for _ in processes]
    for p in processes:
        p.join(timeout=60)
        assert p.exitcode == 0
    return outcomes


def check_course(kind: str, settings: dict[str, str], first_position: int) -> None:
    recorder, datastore = open_recorder(kind, settings)
    try:
        course = DCBQuery(items=[DCBQueryItem(tags=[COURSE])])
        joins = [e for e in recorder.read(course) if e.event.type == "StudentJoined"]
    finally:
        datastore.close()
    assert len(joins) == PLACES
    # Each join was appended from a read that had seen every earlier event of the course.
    read_at = [json.loads(e.event.data)["read_at"] for e in joins]
    assert read_at == [first_position, *[e.position for e in joins[:-1]]]


def scenario(kind: str, settings: dict[str, str]) -> None:
    recorder, datastore = open_recorder(kind, settings)
    try:
        recorder.create_table()  # type: ignore[attr-defined]
        first = recorder.append([DCBEvent("CourseRegistered", b"{}", [COURSE])])
    finally:
        datastore.close()
    outcomes = run_students(kind, settings)
    assert sorted(o[1] for o in outcomes) == ["full"] * (WORKERS - PLACES) + ["joined"] * PLACES
    assert sum(o[2] for o in outcomes) > 0, "expected the processes to have contended"
    check_course(kind, settings, first)


def test_postgres(postgres_database: Any) -> None:
    scenario("postgres", postgres_database.env)


def test_sqlite_file(tmp_path: Path) -> None:
    scenario("sqlite", {"SQLITE_DBNAME": str(tmp_path / "course.db")})
