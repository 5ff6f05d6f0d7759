"""Worker processes that append to one DCB database at once (for the concurrency tests).

Each worker is a student who tries to join a course of limited places: read the course's
events, count the students who joined, and if a place is left, append a join on the
condition that no event of the course came after the read. A conflict means another
student got in first: read again and retry.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

from eventsourcing.dcb.api import DCBAppendCondition, DCBEvent, DCBQuery, DCBQueryItem
from eventsourcing.persistence import IntegrityError

if TYPE_CHECKING:
    from multiprocessing.queues import Queue
    from multiprocessing.synchronize import Barrier

    from eventsourcing.dcb.api import DCBRecorder

COURSE = "course-1"


def open_recorder(kind: str, settings: dict[str, str]) -> tuple[DCBRecorder, Any]:
    """A recorder of ``kind`` (``postgres`` or ``sqlite``) and what to close after."""
    if kind == "postgres":
        from eventsourcing.dcb.postgres_tt import PostgresDCBRecorderTT
        from eventsourcing.postgres import PostgresDatastore

        datastore: Any = PostgresDatastore(
            dbname=settings["POSTGRES_DBNAME"],
            host=settings["POSTGRES_HOST"],
            port=settings["POSTGRES_PORT"],
            user=settings["POSTGRES_USER"],
            password=settings["POSTGRES_PASSWORD"],
        )
        return PostgresDCBRecorderTT(datastore), datastore
    from eventsourcing.dcb.sqlite import SQLiteDCBRecorder
    from eventsourcing.sqlite import SQLiteDatastore

    datastore = SQLiteDatastore(settings["SQLITE_DBNAME"], lock_timeout=30)
    return SQLiteDCBRecorder(datastore), datastore


def join_course(
    kind: str,
    settings: dict[str, str],
    student: str,
    places: int,
    barrier: Barrier,
    results: Queue[tuple[str, str, int]],
) -> None:
    """Try to join the course; put (student, outcome, conflicts) on ``results``."""
    recorder, datastore = open_recorder(kind, settings)
    course = DCBQuery(items=[DCBQueryItem(tags=[COURSE])])
    conflicts = 0
    try:
        barrier.wait()  # every worker reads at about the same moment
        while True:
            response = recorder.read(course)
            joined = sum(1 for e in response if e.event.type == "StudentJoined")
            if joined >= places:
                results.put((student, "full", conflicts))
                return
            data = json.dumps({"student": student, "read_at": response.head}).encode()
            try:
                recorder.append(
                    [DCBEvent("StudentJoined", data, [COURSE, student])],
                    DCBAppendCondition(course, after=response.head),
                )
            except IntegrityError:
                conflicts += 1
                continue
            results.put((student, "joined", conflicts))
            return
    finally:
        datastore.close()
