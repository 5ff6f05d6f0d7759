"""Drop-in details of ``eventsourcing`` 9.5.6 that code migrating to ours relies on (issue 12):
public names that test suites import, and behaviours that differed."""

from __future__ import annotations

import gc
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from queue import Queue
from typing import Any, Generic, TypeVar
from uuid import UUID, uuid4

import psycopg
import psycopg.sql
import pytest
from system_model import Counters, DogSchool

from eventsourcing.domain import Aggregate, CanMutateAggregate
from eventsourcing.persistence import (
    IntegrityError,
    InternalError,
    Notification,
    OperationalError,
    ProgrammingError,
    StoredEvent,
    Tracking,
)
from eventsourcing.postgres import (
    PostgresApplicationRecorder,
    PostgresDatastore,
    PostgresFactory,
    PostgresTrackingRecorder,
)
from eventsourcing.projection import ProcessingJob
from eventsourcing.sqlite import SQLiteApplicationRecorder, SQLiteDatastore
from eventsourcing.system import (
    ConvertingJob,
    ConvertingThread,
    NotificationConvertingError,
    ProcessingThread,
    PullingThread,
    RecordingEvent,
    RecordingEventReceiver,
    System,
)
from eventsourcing.tests.persistence import tmpfile_uris
from eventsourcing.utils import Environment
from runners.testing.fixtures import require_restartable
from runners.testing.postgres import PostgresDatabase
from runners.testing.servers import free_port

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


# ---------------------------------------------------------------------------------------------
# eventsourcing.system.PullingThread and ConvertingThread


class Prompts(RecordingEventReceiver[UUID]):
    """Keeps the prompts a leader sends, to deliver them later in any order."""

    def __init__(self) -> None:
        self.received: list[RecordingEvent[UUID]] = []

    def receive_recording_event(self, new_recording_event: RecordingEvent[UUID]) -> None:
        self.received.append(new_recording_event)


def wait_for(condition: Callable[[], bool], timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.01)


def test_pipeline_threads_process_a_leader_exactly_once() -> None:
    school = System([[DogSchool, Counters]]).leader_cls("DogSchool")()
    counters = Counters()
    counters.follow(school.name, school.notification_log)
    fido = school.register("Fido")  # before the threads: read from the log
    has_errored = threading.Event()
    converting_queue: Queue[ConvertingJob[UUID]] = Queue()
    processing_queue: Queue[list[ProcessingJob[UUID]] | None] = Queue()
    threads = [
        ProcessingThread[UUID](processing_queue, counters, has_errored),
        ConvertingThread[UUID](
            converting_queue, processing_queue, counters, school.name, has_errored
        ),
        PullingThread[UUID](converting_queue, counters, school.name, has_errored),
    ]
    pulling = threads[-1]
    assert isinstance(pulling, PullingThread)
    for thread in threads:
        thread.start()
        assert thread.has_started.wait(5)
    prompts = Prompts()
    school.lead(prompts)
    try:
        school.add_trick(fido, "sit")
        school.add_trick(fido, "roll")
        school.rename(fido, "Rex")  # not of the policy's interest, tracked all the same
        school.add_trick(fido, "fetch")
        # Deliver the later prompts first: ids decide, nothing is lost or done twice.
        for recording_event in [*reversed(prompts.received), *prompts.received]:
            pulling.receive_recording_event(recording_event)
        last_id = school.recorder.max_notification_id()
        wait_for(lambda: counters.recorder.max_tracking_id(school.name) == last_id)
        assert counters.count(fido) == 3
        assert not has_errored.is_set()
    finally:
        for thread in threads:
            thread.stop()
        for thread in threads:
            thread.join(5)
        school.close()
        counters.close()


def test_pipeline_threads_report_errors_by_stage() -> None:
    school = System([[DogSchool, Counters]]).leader_cls("DogSchool")()
    counters = Counters()
    counters.follow(school.name, school.notification_log)
    has_errored = threading.Event()
    converting_queue: Queue[ConvertingJob[UUID]] = Queue()
    processing_queue: Queue[list[ProcessingJob[UUID]] | None] = Queue()
    converting = ConvertingThread[UUID](
        converting_queue, processing_queue, counters, school.name, has_errored
    )
    converting.start()
    undecodable = Notification(
        id=1, originator_id=uuid4(), originator_version=1, topic="nowhere:Nothing", state=b"{}"
    )
    converting_queue.put([undecodable])
    assert has_errored.wait(5)
    converting.join(5)
    assert isinstance(converting.error, NotificationConvertingError)
    assert "nowhere" in str(converting.error)
    assert converting.error.__cause__ is not None
    school.close()
    counters.close()


# ---------------------------------------------------------------------------------------------
# Generic event classes (9.x's issue #295)


@dataclass(frozen=True)
class Shared:
    """A value that generic events carry."""

    system_id: str


@dataclass(frozen=True)
class ExtendedShared(Shared):
    """A more specific value."""

    task_id: str


TShared = TypeVar("TShared", bound=Shared)
TID = TypeVar("TID", UUID, str)


def test_generic_event_classes_keep_their_own_type_arguments() -> None:
    class A(Aggregate):
        pass

    class B(A):
        class Something(A.Event, Generic[TShared]):
            shared: TShared

        class Else(Something[ExtendedShared]):
            pass

        class Scheduled(Else):
            pass

        class Created(A.Created, Something[ExtendedShared]):
            pass

        def schedule(self, shared: ExtendedShared) -> None:
            self.trigger_event(self.Scheduled, shared=shared)

    # The redefined nested classes keep the hierarchy, and the id type stays UUID.
    assert issubclass(B.Scheduled, B.Else) and issubclass(B.Else, B.Something)
    assert issubclass(B.Created, B.Something)
    assert B.Scheduled.originator_id_type is UUID
    b = B._create(B.Created, shared=ExtendedShared("s1", "t1"))
    b.schedule(ExtendedShared("s1", "t2"))
    events = b.collect_events()
    assert [type(e) for e in events] == [B.Created, B.Scheduled]
    assert events[1].shared == ExtendedShared("s1", "t2")
    copy = None
    for e in events:
        copy = e.mutate(copy)
    assert isinstance(copy, B) and copy.version == 2


def test_only_the_id_type_parameter_gives_the_id_type() -> None:
    class Keyed(CanMutateAggregate[TID], Generic[TShared, TID]):
        pass

    class ByName(Keyed[ExtendedShared, str]):
        pass

    assert ByName.originator_id_type is str
    with pytest.raises(TypeError, match="Aggregate ID type arg cannot be <class 'int'>"):

        class _ByNumber(Keyed[ExtendedShared, int]):  # type: ignore[type-var]
            pass


# ---------------------------------------------------------------------------------------------
# eventsourcing.tests.persistence.tmpfile_uris


def test_tmpfile_uris_outlive_their_generator() -> None:
    uri = next(tmpfile_uris())  # the generator is gone at once
    gc.collect()
    assert uri != next(tmpfile_uris())
    recorder = SQLiteApplicationRecorder(SQLiteDatastore(uri))
    recorder.create_table()
    assert recorder.insert_events([StoredEvent(uuid4(), 1, "t", b"x")]) == [1]
    again = SQLiteApplicationRecorder(SQLiteDatastore(uri))
    assert [n.id for n in again.select_notifications(None, 10)] == [1]
    recorder.datastore.close()
    again.datastore.close()


def test_tmpfile_uris_are_removed_when_the_process_exits() -> None:
    script = (
        "from eventsourcing.tests.persistence import tmpfile_uris\n"
        "from eventsourcing.sqlite import SQLiteDatastore, SQLiteApplicationRecorder\n"
        "uri = next(tmpfile_uris())\n"
        "SQLiteApplicationRecorder(SQLiteDatastore(uri)).create_table()\n"
        "print(uri)\n"
    )
    uri = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, check=True
    ).stdout.strip()
    path = Path(uri.removeprefix("file:"))
    assert path.name.endswith("_eventsourcing_test.db")
    assert not path.parent.exists()


# ---------------------------------------------------------------------------------------------
# PostgreSQL: no psycopg or psycopg_pool error escapes untranslated


def unreachable_datastore(**kwargs: Any) -> PostgresDatastore:
    """A datastore for a port that nothing listens on."""
    return PostgresDatastore(
        "nowhere", "127.0.0.1", free_port(), "user", "password", connect_timeout=1, **kwargs
    )


DATASTORE_USES: dict[str, Callable[[PostgresDatastore], object]] = {
    "enter": lambda d: d.__enter__(),
    "get_connection": lambda d: d.get_connection().__enter__(),
    "transaction": lambda d: d.transaction(commit=True).__enter__(),
    "cursor": lambda d: d.cursor().__enter__(),
    "recorder": lambda d: PostgresApplicationRecorder(d).create_table(),
}


@pytest.mark.parametrize(
    ("use", "pool_open_timeout"),
    # Entering a datastore waits for the pool only with a pool_open_timeout.
    [(use, 0.5) for use in sorted(DATASTORE_USES)]
    + [(use, None) for use in sorted(DATASTORE_USES) if use != "enter"],
)
def test_unreachable_server_raises_operational_error(
    use: str, pool_open_timeout: float | None
) -> None:
    datastore = unreachable_datastore(pool_open_timeout=pool_open_timeout)
    try:
        with pytest.raises(OperationalError) as cm:
            DATASTORE_USES[use](datastore)
        assert not isinstance(cm.value, psycopg.Error)
        assert "Can't connect to PostgreSQL at 127.0.0.1" in str(cm.value)
        if pool_open_timeout:
            assert "pool_open_timeout=0.5s" in str(cm.value)
    finally:
        datastore.close()


def test_pool_opens_on_a_later_use_once_the_server_is_back(
    postgres_database: PostgresDatabase,
) -> None:
    server = postgres_database.server
    require_restartable(server)
    env = postgres_database.env
    datastore = PostgresDatastore(
        env["POSTGRES_DBNAME"],
        env["POSTGRES_HOST"],
        env["POSTGRES_PORT"],
        env["POSTGRES_USER"],
        env["POSTGRES_PASSWORD"],
        connect_timeout=1,
        pool_open_timeout=1,
    )
    try:
        server.halt()
        try:
            with pytest.raises(OperationalError, match="pool_open_timeout=1s"):
                datastore.transaction().__enter__()
        finally:
            server.resume()
        with datastore.transaction() as curs:
            assert curs.execute("SELECT 1 AS one").fetchone() == {"one": 1}
    finally:
        datastore.close()


def test_psycopg_errors_inside_get_connection_are_translated(
    postgres_database: PostgresDatabase,
) -> None:
    datastore = postgres_factory(postgres_database.env).datastore
    try:
        with pytest.raises(ProgrammingError) as cm, datastore.get_connection() as conn:
            conn.execute("SELECT * FROM no_such_table")
        assert isinstance(cm.value.__cause__, psycopg.errors.UndefinedTable)
        with pytest.raises(IntegrityError), datastore.transaction(commit=True) as curs:
            curs.execute("CREATE TEMP TABLE t (x int PRIMARY KEY)")
            curs.execute("INSERT INTO t VALUES (1), (1)")
    finally:
        datastore.close()


# ---------------------------------------------------------------------------------------------
# PostgreSQL: a transaction the caller begins on a lent connection


def test_explicit_begin_on_a_lent_connection(postgres_database: PostgresDatabase) -> None:
    env = postgres_database.env
    datastore = PostgresDatastore(
        env["POSTGRES_DBNAME"],
        env["POSTGRES_HOST"],
        env["POSTGRES_PORT"],
        env["POSTGRES_USER"],
        env["POSTGRES_PASSWORD"],
        idle_in_transaction_session_timeout=1,
    )
    try:
        with datastore.get_connection() as conn:
            conn.execute("CREATE TABLE pages (name text PRIMARY KEY)")
        # Left open, committed at the end of the block (as 9.5.6 does).
        with datastore.get_connection() as conn:
            conn.execute("BEGIN")
            conn.execute("INSERT INTO pages VALUES ('kept')")
        # Rolled back when the block fails.
        with pytest.raises(ZeroDivisionError), datastore.get_connection() as conn:
            conn.execute("BEGIN")
            conn.execute("INSERT INTO pages VALUES ('dropped')")
            _ = 1 / 0
        # Idle in the transaction for longer than the timeout: the server ends it.
        with pytest.raises(InternalError) as cm, datastore.get_connection() as conn:
            conn.execute("BEGIN")
            conn.execute("INSERT INTO pages VALUES ('timed out')")
            time.sleep(1.5)
        assert "idle-in-transaction timeout" in str(cm.value)
        with pytest.raises(InternalError), datastore.transaction(commit=True) as curs:
            curs.execute("INSERT INTO pages VALUES ('timed out too')")
            time.sleep(1.5)
        with postgres_database.connect() as other:
            names = other.execute("SELECT name FROM pages").fetchall()
        assert names == [("kept",)]
    finally:
        datastore.close()


# ---------------------------------------------------------------------------------------------
# PostgreSQL: public attributes of 9.5.6


def datastore_on(db: PostgresDatabase, **kwargs: Any) -> PostgresDatastore:
    """A datastore on the test's database."""
    env = db.env
    return PostgresDatastore(
        env["POSTGRES_DBNAME"],
        env["POSTGRES_HOST"],
        env["POSTGRES_PORT"],
        env["POSTGRES_USER"],
        env["POSTGRES_PASSWORD"],
        **kwargs,
    )


@pytest.mark.parametrize("id_type", ["uuid", "text"])
def test_composite_type_names_and_rows(postgres_database: PostgresDatabase, id_type: str) -> None:
    datastore = datastore_on(postgres_database, originator_id_type=id_type)
    try:
        assert datastore.db_type_names == set()
        recorder = PostgresApplicationRecorder(datastore, events_table_name="pages_events")
        recorder.create_table()
        assert datastore.db_type_names == {f"stored_event_{id_type}"}
        # Rows made by construct_pg_stored_event go in through the composite type.
        originator_id = uuid4() if id_type == "uuid" else "page-1"
        rows = [
            recorder.construct_pg_stored_event(originator_id, v, "topic", b"state %d" % v)
            for v in (1, 2)
        ]
        statement = psycopg.sql.SQL(
            "INSERT INTO pages_events (originator_id, originator_version, topic, state) "
            "SELECT * FROM unnest(%s::public.{}[])"
        ).format(psycopg.sql.Identifier(f"stored_event_{id_type}"))
        with datastore.transaction(commit=True) as curs:
            curs.execute(statement, (rows,))
        stored = recorder.select_events(originator_id)
        assert [(e.originator_version, e.state) for e in stored] == [
            (1, b"state 1"),
            (2, b"state 2"),
        ]
    finally:
        datastore.close()


def tracking_state(recorder: PostgresTrackingRecorder) -> tuple[bool, int | None, int | None]:
    return (
        recorder.tracking_table_exists,
        recorder.tracking_migration_previous,
        recorder.tracking_migration_current,
    )


def test_tracking_table_state_is_noted(postgres_database: PostgresDatabase) -> None:
    single = datastore_on(postgres_database)
    multi = datastore_on(postgres_database, single_row_tracking=False)
    try:
        recorder = PostgresTrackingRecorder(single, tracking_table_name="fresh")
        assert tracking_state(recorder) == (False, None, None)
        recorder.create_table()
        assert tracking_state(recorder) == (False, None, 1)
        again = PostgresTrackingRecorder(single, tracking_table_name="fresh")
        again.create_table()
        assert tracking_state(again) == (True, 1, 1)

        legacy = PostgresTrackingRecorder(multi, tracking_table_name="legacy")
        legacy.create_table()
        assert tracking_state(legacy) == (False, None, None)
        legacy.insert_tracking(Tracking("Upstream", 7))
        migrated = PostgresTrackingRecorder(single, tracking_table_name="legacy")
        migrated.create_table()
        assert tracking_state(migrated) == (True, None, 1)
        assert migrated.max_tracking_id("Upstream") == 7
    finally:
        single.close()
        multi.close()
