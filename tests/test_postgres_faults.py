"""PostgreSQL under stress: ordering of concurrent writers, version races, faults, secrets.

Each test runs against a real server (a database of its own); nothing is mocked.
"""

from __future__ import annotations

import contextlib
import logging
import random
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any
from uuid import UUID, uuid4

import psycopg
import pytest
from psycopg.sql import SQL

from eventsourcing.application import Application
from eventsourcing.domain import Aggregate, event
from eventsourcing.persistence import (
    IntegrityError,
    OperationalError,
    PersistenceError,
    StoredEvent,
)
from eventsourcing.postgres import PostgresApplicationRecorder, PostgresDatastore, PostgresFactory
from eventsourcing.utils import Environment
from runners.testing.fixtures import require_restartable
from runners.testing.postgres import PostgresDatabase


def datastore(db: PostgresDatabase, **kwargs: Any) -> PostgresDatastore:
    env = db.env
    kwargs.setdefault("pool_size", 2)
    kwargs.setdefault("max_overflow", 14)
    return PostgresDatastore(
        dbname=env["POSTGRES_DBNAME"],
        host=env["POSTGRES_HOST"],
        port=env["POSTGRES_PORT"],
        user=env["POSTGRES_USER"],
        password=env["POSTGRES_PASSWORD"],
        **kwargs,
    )


@pytest.fixture
def datastores(postgres_database: PostgresDatabase) -> Iterator[list[PostgresDatastore]]:
    """Datastores made by a test (via ``datastores.append``), closed after it."""
    made: list[PostgresDatastore] = []
    yield made
    for d in made:
        d.close()


def new_recorder(
    db: PostgresDatabase, made: list[PostgresDatastore], cls: type[PostgresApplicationRecorder]
) -> PostgresApplicationRecorder:
    d = datastore(db)
    made.append(d)
    recorder = cls(d)
    recorder.create_table()
    return recorder


# ---------------------------------------------------------------------------------------------
# Ordering: a reader tailing by notification id never skips or repeats one


class SlowCommitRecorder(PostgresApplicationRecorder):
    """Half its transactions sleep (server-side) between taking ids and committing."""

    before_commit_statements = (
        SQL("SELECT pg_sleep(CASE WHEN random() < 0.5 THEN random() * 0.02 ELSE 0 END)"),
    )


HOLD_KEY = 4242
# A writer's transaction waits here, after taking its ids, while a test holds the lock.
HOLD = (SQL("SELECT pg_advisory_xact_lock_shared({})").format(HOLD_KEY),)


class UnlockedRecorder(PostgresApplicationRecorder):
    """The trap: inserts without the table lock, so ids are not issued in commit order."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.lock_table_statements = self.lock_table_statements[:1]  # SET LOCAL only


@contextmanager
def holding(db: PostgresDatabase) -> Iterator[Callable[[], None]]:
    """Hold the HOLD lock; yield a function that waits until a writer is blocked on it."""
    with db.connect() as conn:
        conn.execute("SELECT pg_advisory_lock(%s)", (HOLD_KEY,))

        def wait_for_writer() -> None:
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline:
                row = conn.execute(
                    "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND NOT granted"
                ).fetchone()
                if row and row[0]:
                    return
                time.sleep(0.01)
            raise AssertionError("the writer never reached its commit")

        try:
            yield wait_for_writer
        finally:
            conn.execute("SELECT pg_advisory_unlock(%s)", (HOLD_KEY,))


Fast = PostgresApplicationRecorder


def tail(recorder: PostgresApplicationRecorder, stop: threading.Event) -> list[int]:
    """Read the log as a follower does: always after the last id seen, never looking back."""
    seen: list[int] = []
    last = 0
    while True:
        stopping = stop.is_set()  # read once more after the writers are done
        batch = recorder.select_notifications(last, 50, inclusive_of_start=False)
        seen.extend(n.id for n in batch)
        if batch:
            last = batch[-1].id
        elif stopping:
            return seen


def test_tailing_reader_sees_every_notification_once_in_order(
    postgres_database: PostgresDatabase, datastores: list[PostgresDatastore]
) -> None:
    # Given 8 writers on connections of their own (as 8 processes would be), half of them
    # slowed down between taking their ids and committing, and a reader tailing the log;
    writers = [
        new_recorder(postgres_database, datastores, SlowCommitRecorder if i % 2 else Fast)
        for i in range(8)
    ]
    reader = new_recorder(postgres_database, datastores, PostgresApplicationRecorder)
    stop = threading.Event()
    seen: list[int] = []
    reader_thread = threading.Thread(target=lambda: seen.extend(tail(reader, stop)))
    reader_thread.start()

    # when each writer saves 40 times (1-3 events per save, some saves conflicting);
    def write(recorder: PostgresApplicationRecorder) -> None:
        for _ in range(40):
            originator_id = uuid4()
            events = [StoredEvent(originator_id, v, "t", b"s") for v in range(random.randint(1, 3))]
            recorder.insert_events(events)
            if random.random() < 0.1:
                with pytest.raises(IntegrityError):
                    recorder.insert_events(events[:1])  # a version conflict: a gap in the ids

    threads = [threading.Thread(target=write, args=(w,)) for w in writers]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    stop.set()
    reader_thread.join()

    # then the reader saw every notification exactly once, in id order.
    everything = [n.id for n in reader.select_notifications(None, 10_000)]
    assert len(everything) >= 8 * 40
    assert seen == everything


def test_the_reader_would_catch_the_trap(
    postgres_database: PostgresDatabase, datastores: list[PostgresDatastore]
) -> None:
    """Without the lock, a lower id that commits later is skipped: the check above sees it."""
    slow = new_recorder(postgres_database, datastores, UnlockedRecorder)
    slow.before_commit_statements = HOLD
    fast = new_recorder(postgres_database, datastores, UnlockedRecorder)
    reader = new_recorder(postgres_database, datastores, PostgresApplicationRecorder)

    with holding(postgres_database) as wait_for_writer:
        slow_writer = threading.Thread(
            target=slow.insert_events, args=([StoredEvent(uuid4(), 1, "t", b"")],)
        )
        slow_writer.start()
        wait_for_writer()  # the slow writer has taken id 1 and not committed
        (fast_id,) = fast.insert_events([StoredEvent(uuid4(), 1, "t", b"")]) or []
        seen = [n.id for n in reader.select_notifications(0, 10, inclusive_of_start=False)]
    slow_writer.join()
    seen += [n.id for n in reader.select_notifications(seen[-1], 10, inclusive_of_start=False)]
    assert seen == [fast_id]  # id 1 was skipped
    assert [n.id for n in reader.select_notifications(None, 10)] == [1, fast_id]


def test_with_the_lock_a_later_writer_waits(
    postgres_database: PostgresDatabase, datastores: list[PostgresDatastore]
) -> None:
    """The same interleaving with the lock: the second writer waits for the first."""
    slow = new_recorder(postgres_database, datastores, PostgresApplicationRecorder)
    slow.before_commit_statements = HOLD
    fast = new_recorder(postgres_database, datastores, PostgresApplicationRecorder)
    reader = new_recorder(postgres_database, datastores, PostgresApplicationRecorder)
    fast_ids: list[int] = []
    with holding(postgres_database) as wait_for_writer:
        slow_writer = threading.Thread(
            target=slow.insert_events, args=([StoredEvent(uuid4(), 1, "t", b"")],)
        )
        slow_writer.start()
        wait_for_writer()
        fast_writer = threading.Thread(
            target=lambda: fast_ids.extend(
                fast.insert_events([StoredEvent(uuid4(), 1, "t", b"")]) or []
            )
        )
        fast_writer.start()
        time.sleep(0.3)
        assert fast_ids == []  # blocked on the table lock
        assert reader.select_notifications(0, 10, inclusive_of_start=False) == []
    slow_writer.join()
    fast_writer.join()
    assert fast_ids == [2]
    assert [n.id for n in reader.select_notifications(0, 10, inclusive_of_start=False)] == [1, 2]


# ---------------------------------------------------------------------------------------------
# Version races: exactly one save wins per version, nothing is half-written


@pytest.mark.parametrize("shared", [True, False], ids=["one-recorder", "recorder-per-thread"])
def test_threads_saving_the_same_aggregate_version(
    postgres_database: PostgresDatabase, datastores: list[PostgresDatastore], shared: bool
) -> None:
    n = 8
    if shared:  # concurrent saves are coalesced: conflicts fail only their own save
        recorders = [new_recorder(postgres_database, datastores, PostgresApplicationRecorder)] * n
    else:
        recorders = [
            new_recorder(postgres_database, datastores, PostgresApplicationRecorder)
            for _ in range(n)
        ]
    originator_id = uuid4()
    for version in range(1, 30, 2):
        barrier = threading.Barrier(n)
        outcomes: list[tuple[int, list[int] | BaseException]] = []

        def save(i: int, v: int, barrier: threading.Barrier, outcomes: list[Any]) -> None:
            events = [
                StoredEvent(originator_id, v, "t", f"{i}-{v}".encode()),
                StoredEvent(originator_id, v + 1, "t", f"{i}-{v + 1}".encode()),
            ]
            barrier.wait()
            try:
                outcomes.append((i, list(recorders[i].insert_events(events) or [])))
            except BaseException as error:
                outcomes.append((i, error))

        threads = [
            threading.Thread(target=save, args=(i, version, barrier, outcomes)) for i in range(n)
        ]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        winners = [(i, ids) for i, ids in outcomes if isinstance(ids, list)]
        losers = [e for _, e in outcomes if isinstance(e, BaseException)]
        assert len(winners) == 1, outcomes
        assert all(isinstance(e, IntegrityError) for e in losers), losers
        assert len(losers) == n - 1
        winner = winners[0][0]
        stored = recorders[0].select_events(originator_id, gt=version - 1)
        assert [(e.originator_version, e.state) for e in stored] == [
            (version, f"{winner}-{version}".encode()),
            (version + 1, f"{winner}-{version + 1}".encode()),
        ]


class Dog(Aggregate):
    @event("Registered")
    def __init__(self, name: str) -> None:
        self.name = name
        self.tricks: list[str] = []

    @event("TrickAdded")
    def add_trick(self, trick: str) -> None:
        self.tricks.append(trick)


def test_application_threads_racing_on_one_aggregate(postgres_database: PostgresDatabase) -> None:
    app = Application[UUID](env=app_env(postgres_database))
    try:
        dog = Dog("Fido")
        app.save(dog)
        barrier = threading.Barrier(6)
        errors: list[BaseException] = []

        def add(trick: str) -> None:
            copy: Dog = app.repository.get(dog.id)
            copy.add_trick(trick)
            barrier.wait()
            try:
                app.save(copy)
            except BaseException as e:
                errors.append(e)

        threads = [threading.Thread(target=add, args=(f"trick{i}",)) for i in range(6)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert len(errors) == 5 and all(isinstance(e, IntegrityError) for e in errors)
        assert len(app.repository.get(dog.id).tricks) == 1
        assert len(app.recorder.select_notifications(start=None, limit=100)) == 2
    finally:
        app.close()


# ---------------------------------------------------------------------------------------------
# Faults: a restarted server, a server that stays down


def wait_for(condition: Callable[[], bool], timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.01)


def app_env(db: PostgresDatabase, **extra: str) -> dict[str, str]:
    return {"PERSISTENCE_MODULE": "eventsourcing.postgres", **db.env, **extra}


def saving(
    app: Application[UUID], stop: threading.Event, threads: int = 1
) -> tuple[list[Any], list[threading.Thread]]:
    """Save new dogs in threads until ``stop``; return the outcomes list and the threads."""
    outcomes: list[Any] = []

    def run() -> None:
        while not stop.is_set():
            dog = Dog("dog")
            dog.add_trick("sit")
            try:
                recordings = app.save(dog)
                outcomes.append((dog.id, [r.notification.id for r in recordings]))
            except PersistenceError as e:
                outcomes.append((dog.id, e))
            time.sleep(0.002)

    workers = [threading.Thread(target=run) for _ in range(threads)]
    for worker in workers:
        worker.start()
    return outcomes, workers


def check_log(app: Application[UUID], outcomes: list[Any]) -> None:
    """Every successful save is stored exactly once; failed saves are not stored at all."""
    notifications = app.recorder.select_notifications(start=None, limit=100_000)
    ids = [n.id for n in notifications]
    assert ids == sorted(set(ids))
    keys = [(n.originator_id, n.originator_version) for n in notifications]
    assert len(keys) == len(set(keys))
    stored = {n.originator_id: n.id for n in notifications}
    for dog_id, outcome in outcomes:
        if isinstance(outcome, list):
            assert len(outcome) == 2 and stored[dog_id] == outcome[-1]
        else:
            assert dog_id not in stored, outcome


@pytest.mark.parametrize("threads", [1, 4])
def test_server_restart_in_the_middle_of_saves(
    postgres_database: PostgresDatabase, threads: int
) -> None:
    server = postgres_database.server
    app = Application[UUID](env=app_env(postgres_database, POSTGRES_CONNECT_TIMEOUT="15"))
    stop = threading.Event()
    try:
        outcomes, workers = saving(app, stop, threads)
        wait_for(lambda: len(outcomes) >= 20)
        before = len(outcomes)
        if server.can_restart:
            server.restart()
        else:  # a server we didn't start: drop every connection instead
            assert server.disconnect_clients(postgres_database.name) > 0
        wait_for(lambda: len(outcomes) > before + 20)
        stop.set()
        for worker in workers:
            worker.join()
        after = [o for _, o in outcomes[before + 1 :]]
        assert len(after) > 10
        # Saves that straddled the restart were retried; any that failed said why.
        for outcome in after:
            if isinstance(outcome, BaseException):
                assert isinstance(outcome, OperationalError), outcome
        assert isinstance(outcomes[-1][1], list)  # saves succeed again, same application
        check_log(app, outcomes)
    finally:
        stop.set()
        app.close()


def test_server_down_longer_than_the_timeout(postgres_database: PostgresDatabase) -> None:
    server = postgres_database.server
    require_restartable(server)
    app = Application[UUID](env=app_env(postgres_database, POSTGRES_CONNECT_TIMEOUT="1"))
    try:
        app.save(Dog("before"))
        server.halt()
        try:
            with pytest.raises(OperationalError) as cm:
                app.save(Dog("during"))
            message = str(cm.value)
            assert "Gave up after" in message and "POSTGRES_CONNECT_TIMEOUT=1" in message
            assert f"{server.settings.host}:{server.settings.port}" in message
            with pytest.raises(OperationalError):
                app.notification_log.select(start=1, limit=10)
        finally:
            server.resume()
        app.save(Dog("after"))  # the same application works again
        names = [
            app.mapper.to_domain_event(n).name
            for n in app.notification_log.select(start=1, limit=10)
        ]
        assert names == ["before", "after"]
    finally:
        app.close()


def test_subscription_survives_a_lost_connection(postgres_database: PostgresDatabase) -> None:
    f = PostgresFactory(Environment("App", app_env(postgres_database)))
    recorder = f.application_recorder()
    try:
        with recorder.subscribe(gt=None) as subscription:
            recorder.insert_events([StoredEvent(uuid4(), 1, "t", b"")])
            assert next(subscription).id == 1
            server = postgres_database.server
            if server.can_restart:
                server.restart()
            else:
                server.disconnect_clients(postgres_database.name)
            recorder.insert_events([StoredEvent(uuid4(), 1, "t", b"")])
            assert next(subscription).id == 2
    finally:
        f.close()


# ---------------------------------------------------------------------------------------------
# Secrets: passwords never appear in logs or error messages


def all_messages(error: BaseException | None) -> str:
    text = []
    while error is not None:
        text += [str(error), repr(error)]
        error = error.__cause__ or error.__context__
    return "\n".join(text)


def test_passwords_never_appear_in_logs_or_errors(
    postgres_database: PostgresDatabase, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    password = postgres_database.env["POSTGRES_PASSWORD"]
    wrong = "not-the-password-" + uuid4().hex
    messages: list[str] = []

    # A working application, through a restart of its connections.
    app = Application[UUID](env=app_env(postgres_database))
    app.save(Dog("Fido"))
    postgres_database.server.disconnect_clients(postgres_database.name)
    app.save(Dog("Rex"))
    datastore = app.factory.datastore  # type: ignore[attr-defined]
    messages += [repr(app.factory), repr(app.recorder), repr(datastore), repr(datastore.pool)]
    app.close()

    # A wrong password, and a server that isn't there.
    for env in (
        app_env(postgres_database, POSTGRES_PASSWORD=wrong, POSTGRES_CONNECT_TIMEOUT="1"),
        app_env(postgres_database, POSTGRES_PORT="1", POSTGRES_CONNECT_TIMEOUT="1"),
    ):
        with pytest.raises(OperationalError) as cm:
            Application(env=env)
        messages.append(all_messages(cm.value))
    assert "password authentication failed" in messages[-2]

    text = "\n".join(messages) + "\n" + caplog.text
    assert password not in text
    assert wrong not in text
    assert "Gave up after" in messages[-1]


def test_get_password_func_is_called_for_new_connections(
    postgres_database: PostgresDatabase,
) -> None:
    calls.clear()
    env = app_env(postgres_database, POSTGRES_GET_PASSWORD_TOPIC=f"{__name__}:get_password")
    del env["POSTGRES_PASSWORD"]
    passwords[0] = postgres_database.env["POSTGRES_PASSWORD"]
    app = Application[UUID](env=env)
    try:
        app.save(Dog("Fido"))
        assert calls
    finally:
        app.close()


calls: list[float] = []
passwords = [""]


def get_password() -> str:
    calls.append(time.monotonic())
    return passwords[0]


def test_uuid_ids_are_uuid_objects(postgres_database: PostgresDatabase) -> None:
    app = Application[UUID](env=app_env(postgres_database))
    try:
        dog = Dog("Fido")
        app.save(dog)
        (notification,) = app.notification_log.select(start=1, limit=1)
        assert isinstance(notification.originator_id, UUID)
        assert app.repository.get(dog.id).name == "Fido"
    finally:
        app.close()


def test_psycopg_is_not_leaked(postgres_database: PostgresDatabase) -> None:
    """Errors from the database come out as the library's, never psycopg's."""
    app = Application[UUID](env=app_env(postgres_database))
    try:
        with app.factory.datastore.get_connection() as conn:  # type: ignore[attr-defined]
            conn.execute("DROP TABLE application_events")
        with pytest.raises(PersistenceError) as cm:
            app.save(Dog("Fido"))
        assert not isinstance(cm.value, psycopg.Error)
    finally:
        app.close()


def backend_pids(datastore: PostgresDatastore, n: int) -> set[int]:
    """The server processes behind ``n`` connections taken from the pool at once."""
    pids = set()
    with contextlib.ExitStack() as stack:
        for _ in range(n):
            conn = stack.enter_context(datastore.get_connection())
            row = conn.execute("SELECT pg_backend_pid() AS pid").fetchone()
            assert row is not None
            pids.add(row["pid"])
    return pids


def test_connections_are_replaced_after_max_age(postgres_database: PostgresDatabase) -> None:
    env = app_env(postgres_database, POSTGRES_CONN_MAX_AGE="0.5", POSTGRES_POOL_SIZE="2")
    f = PostgresFactory(Environment("App", env))
    try:
        before = backend_pids(f.datastore, 2)
        time.sleep(1.0)
        backend_pids(f.datastore, 4)  # expired connections are replaced as they come back
        time.sleep(0.2)
        with postgres_database.connect() as conn:
            rows = conn.execute(
                "SELECT pid FROM pg_stat_activity WHERE datname = %s", (postgres_database.name,)
            ).fetchall()
        assert before.isdisjoint(row[0] for row in rows)
    finally:
        f.close()


def test_pre_ping_hands_out_live_connections_after_a_restart(
    postgres_database: PostgresDatabase,
) -> None:
    f = PostgresFactory(Environment("App", app_env(postgres_database, POSTGRES_PRE_PING="y")))
    try:
        recorder = f.application_recorder()
        backend_pids(f.datastore, 3)
        postgres_database.server.disconnect_clients(postgres_database.name)
        with f.datastore.get_connection() as conn:  # checked before it is handed out
            assert conn.execute("SELECT 1 AS one").fetchone() == {"one": 1}
        assert recorder.max_notification_id() is None
    finally:
        f.close()


# ---------------------------------------------------------------------------------------------
# A connection lost around COMMIT: the outcome is learnt, never guessed


KILL_SELF = SQL("SELECT pg_terminate_backend(pg_backend_pid())")


class LosesConnectionOnce(PostgresApplicationRecorder):
    """The server ends the connection once, just after (or before) a COMMIT."""

    after_commit = True
    lost = 0

    def _commit_statements(self) -> list[Any]:
        statements = super()._commit_statements()
        if self.lost:
            return statements
        self.lost += 1
        kill = (KILL_SELF, ())
        return [*statements, kill] if self.after_commit else [kill, *statements]


@pytest.mark.parametrize("after_commit", [True, False], ids=["committed", "not-committed"])
@pytest.mark.parametrize("size", [1, 100], ids=["insert", "copy"])
def test_save_whose_commit_reply_is_lost_is_recorded_once(
    postgres_database: PostgresDatabase,
    datastores: list[PostgresDatastore],
    after_commit: bool,
    size: int,
) -> None:
    recorder = new_recorder(postgres_database, datastores, LosesConnectionOnce)
    assert isinstance(recorder, LosesConnectionOnce)
    recorder.after_commit = after_commit
    events = [StoredEvent(uuid4(), 1, "t", f"{i}".encode()) for i in range(size)]
    ids = recorder.insert_events(events)
    assert recorder.lost == 1
    stored = recorder.select_notifications(None, 1000)
    assert [n.id for n in stored] == ids
    assert [n.state for n in stored] == [e.state for e in events]
