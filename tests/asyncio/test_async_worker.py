"""The runner CLI running an async follower (``runners.async_worker``) as a real process.

The system is the async Dog School (``async_dogschool:system``: DogSchool -> Counters, a
coroutine policy). Events are written with the sync and the async API; what the worker
recorded is counted with sqlite3 and psycopg, not through the library. Workers are
SIGTERMed (exit 0 after the batch in hand), SIGKILLed mid-run and restarted, and run two at
a time on one follower (one holds the lease): each event is processed exactly once.
"""

from __future__ import annotations

import asyncio
import os
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from uuid import UUID

import pytest
from async_dogschool import DogSchool, SyncDogSchool, per_app_env

from eventsourcing.application import ProcessingEvent
from eventsourcing.asyncio import AsyncProcessApplication, AsyncSystem

ROOT = Path(__file__).resolve().parents[2]
HERE = Path(__file__).resolve().parent
SYSTEM = "async_dogschool:system"
WAIT = 60.0


class Broken(AsyncProcessApplication[UUID]):
    """A follower whose policy fails on every event."""

    async def policy(self, domain_event: Any, processing_event: ProcessingEvent[UUID]) -> None:
        raise ValueError("this policy always fails")


class Slow(AsyncProcessApplication[UUID]):
    """A follower whose policy takes ``SLOW_POLICY_SECONDS`` over each event."""

    async def policy(self, domain_event: Any, processing_event: ProcessingEvent[UUID]) -> None:
        await asyncio.sleep(float(os.environ["SLOW_POLICY_SECONDS"]))


failing_system = AsyncSystem(pipes=[[DogSchool, Broken]])
slow_system = AsyncSystem(pipes=[[DogSchool, Slow]])


class Worker:
    """``python -m runners run async_dogschool:system --app Counters``, logging to a file."""

    def __init__(
        self,
        env: dict[str, str],
        log: Path,
        *extra: str,
        system: str = SYSTEM,
        app: str = "Counters",
    ) -> None:
        self.args = ["run", system, "--app", app, "--poll-interval", "0.2", *extra]
        self.env = {**os.environ, **env, "PYTHONPATH": f"{HERE}{os.pathsep}{ROOT}"}
        self.log = log
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> Worker:
        with self.log.open("ab") as out:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "runners", *self.args],
                env=self.env, stdout=out, stderr=subprocess.STDOUT, cwd=ROOT,
            )  # fmt: skip
        return self

    def text(self) -> str:
        return self.log.read_text(errors="replace")

    def wait_for(self, line: str, timeout: float = WAIT) -> None:
        deadline = time.monotonic() + timeout
        while line not in self.text():
            assert self.process is not None
            if self.process.poll() is not None:
                raise AssertionError(f"worker exited {self.process.returncode}:\n{self.text()}")
            assert time.monotonic() < deadline, f"no {line!r} in the log:\n{self.text()}"
            time.sleep(0.02)

    def signal(self, signum: int) -> int:
        assert self.process is not None
        self.process.send_signal(signum)
        return self.process.wait(30)


@pytest.fixture(params=["sqlite", "postgres"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[dict[str, Any]]:
    """The environment of a shareable store, and how to count the follower's rows in it."""
    if request.param == "sqlite":
        env = per_app_env(
            {"PERSISTENCE_MODULE": "eventsourcing.sqlite", "SQLITE_DBNAME": "unused"},
            str(tmp_path),
        )

        def query(sql: str) -> Any:
            with sqlite3.connect(env["COUNTERS_SQLITE_DBNAME"]) as conn:
                return conn.execute(sql).fetchone()[0]

        tables = {"events": "stored_events", "tracking": "tracking"}
        yield {"env": env, "query": query, "tables": tables}
        return
    database = request.getfixturevalue("postgres_database")

    def pg_query(sql: str) -> Any:
        with database.connect() as conn:
            row = conn.execute(sql).fetchone()
            return row[0] if isinstance(row, tuple) else next(iter(row.values()))

    tables = {"events": "counters_events", "tracking": "counters_tracking"}
    env = {"PERSISTENCE_MODULE": "eventsourcing.postgres", **database.env}
    yield {"env": env, "query": pg_query, "tables": tables}


def counted(store: dict[str, Any]) -> tuple[int, int]:
    """The follower's stored events, and its position in DogSchool's log (0: none)."""
    query: Callable[[str], Any] = store["query"]
    tables = store["tables"]
    try:
        events = query(f"SELECT count(*) FROM {tables['events']}")
        position = query(
            f"SELECT coalesce(max(notification_id), 0) FROM {tables['tracking']} "
            "WHERE application_name = 'DogSchool'"
        )
    except Exception:  # the worker has yet to create its tables
        return 0, 0
    return int(events), int(position)


def wait_processed(store: dict[str, Any], last_id: int, timeout: float = WAIT) -> None:
    deadline = time.monotonic() + timeout
    while counted(store)[1] < last_id:
        assert time.monotonic() < deadline, f"position {counted(store)} never reached {last_id}"
        time.sleep(0.05)


def write_sync(env: dict[str, str], dogs: int, tricks: int) -> tuple[list[UUID], int]:
    """Register ``dogs`` dogs with ``tricks`` tricks each (sync API); return the ids and
    the last notification id."""
    school = SyncDogSchool(env=env)
    try:
        ids = [school.register_dog(f"dog{i}") for i in range(dogs)]
        for _ in range(tricks):
            for dog_id in ids:
                school.add_trick(dog_id, "sit")
        return ids, school.recorder.max_notification_id() or 0
    finally:
        school.close()


def write_async(env: dict[str, str], dog_ids: list[UUID]) -> int:
    """Add a trick to each dog with the async API; return the last notification id."""

    async def write() -> int:
        async with DogSchool(env=env) as school:
            await asyncio.gather(*(school.add_trick(d, "stay") for d in dog_ids))
            return await school.recorder.max_notification_id() or 0

    return asyncio.run(write())


def test_each_event_once_then_sigterm_exits_0(store: dict[str, Any], tmp_path: Path) -> None:
    env = store["env"]
    dog_ids, last = write_sync(env, dogs=5, tricks=2)
    worker = Worker(env, tmp_path / "worker.log").start()
    worker.wait_for("holding the lease")
    wait_processed(store, last)
    # Written while it runs, with the async API: PostgreSQL's NOTIFY or a poll wakes it.
    last = write_async(env, dog_ids)
    wait_processed(store, last)
    # One Created per dog's counter, one Incremented per trick (3 per dog).
    assert counted(store) == (5 + 5 * 3, last)
    assert worker.signal(signal.SIGTERM) == 0
    assert "SIGTERM: finishing the batch in hand" in worker.text()


def test_sigkill_mid_run_restart_and_a_standby_process_each_event_once(
    store: dict[str, Any], tmp_path: Path
) -> None:
    env = {**store["env"], "PROCESS_BATCH_SIZE": "4"}
    dog_ids, last = write_sync(env, dogs=20, tricks=15)
    first = Worker(env, tmp_path / "first.log").start()
    deadline = time.monotonic() + WAIT
    while counted(store)[1] < 40:  # some batches are recorded, most are not
        assert time.monotonic() < deadline, first.text()
        time.sleep(0.005)
    assert first.signal(signal.SIGKILL) == -signal.SIGKILL
    assert 0 < counted(store)[1] < last
    # Restarted, with a second worker on the same follower: one holds the lease.
    again = Worker(env, tmp_path / "again.log").start()
    again.wait_for("holding the lease")
    standby = Worker(env, tmp_path / "standby.log").start()
    standby.wait_for("standing by")
    last = write_async(env, dog_ids)
    wait_processed(store, last)
    assert counted(store) == (20 + 20 * 16, last)  # no notification processed twice
    # The active one stops; the standby takes over and goes on with what comes next.
    assert again.signal(signal.SIGTERM) == 0
    standby.wait_for("holding the lease")
    last = write_async(env, dog_ids)
    wait_processed(store, last)
    assert counted(store) == (20 + 20 * 17, last)
    assert standby.signal(signal.SIGTERM) == 0


def test_bad_input_and_unreachable_databases_exit_as_sync_workers_do(tmp_path: Path) -> None:
    env = {"PERSISTENCE_MODULE": "eventsourcing.sqlite", "SQLITE_DBNAME": str(tmp_path / "x")}
    cases = [
        (["--runner", "processes"], env, 2, "run one eventsourcing-runner per async follower"),
        ([], {"PERSISTENCE_MODULE": "eventsourcing.popo"}, 2, "can't reach"),
        (
            [],
            {"PERSISTENCE_MODULE": "eventsourcing.postgres", "POSTGRES_HOST": "127.0.0.1",
             "POSTGRES_PORT": "1", "POSTGRES_DBNAME": "x", "POSTGRES_USER": "x",
             "POSTGRES_PASSWORD": "x", "POSTGRES_CONNECT_TIMEOUT": "1"},
            4,
            "",
        ),
    ]  # fmt: skip
    for n, (extra, case_env, code, message) in enumerate(cases):
        worker = Worker(case_env, tmp_path / f"{n}.log", *extra).start()
        assert worker.process is not None
        assert worker.process.wait(60) == code, worker.text()
        assert message in worker.text()


def test_a_policy_error_exits_3_recording_nothing(tmp_path: Path) -> None:
    env = {"PERSISTENCE_MODULE": "eventsourcing.sqlite",
           "DOGSCHOOL_SQLITE_DBNAME": str(tmp_path / "dogschool.sqlite"),
           "BROKEN_SQLITE_DBNAME": str(tmp_path / "broken.sqlite")}  # fmt: skip
    write_sync(env, dogs=1, tricks=1)
    system = "test_async_worker:failing_system"
    worker = Worker(env, tmp_path / "broken.log", system=system, app="Broken").start()
    assert worker.process is not None
    assert worker.process.wait(60) == 3, worker.text()
    assert "The policy of 'Broken' failed on DogSchool notification 1" in worker.text()
    with sqlite3.connect(env["BROKEN_SQLITE_DBNAME"]) as conn:
        tracked = conn.execute("SELECT count(*) FROM tracking WHERE application_name = 'DogSchool'")
        assert tracked.fetchone()[0] == 0


def test_other_commands_refuse_an_async_system_with_a_hint(
    capsys: pytest.CaptureFixture[str],
) -> None:
    from runners.cli import main

    assert main(["status", SYSTEM]) == 2
    assert "is an AsyncSystem: name a System of sync classes" in capsys.readouterr().err


@pytest.mark.parametrize(("seconds", "signals", "code", "tracked"), [(1.5, 1, 0, 1), (60, 2, 5, 0)])
def test_sigterm_finishes_the_batch_in_hand_and_a_second_one_exits_5_at_once(
    tmp_path: Path, seconds: float, signals: int, code: int, tracked: int
) -> None:
    env = {"PERSISTENCE_MODULE": "eventsourcing.sqlite", "SLOW_POLICY_SECONDS": str(seconds),
           "DOGSCHOOL_SQLITE_DBNAME": str(tmp_path / "dogschool.sqlite"),
           "SLOW_SQLITE_DBNAME": str(tmp_path / "slow.sqlite")}  # fmt: skip
    write_sync(env, dogs=1, tricks=0)
    system = "test_async_worker:slow_system"
    worker = Worker(env, tmp_path / "slow.log", system=system, app="Slow").start()
    worker.wait_for("holding the lease")
    time.sleep(0.5)  # the policy is busy with notification 1
    assert worker.process is not None
    for _ in range(signals):
        worker.process.send_signal(signal.SIGTERM)
        time.sleep(0.3)
    assert worker.process.wait(30) == code, worker.text()
    with sqlite3.connect(env["SLOW_SQLITE_DBNAME"]) as conn:
        rows = conn.execute("SELECT count(*) FROM tracking WHERE application_name = 'DogSchool'")
        assert rows.fetchone()[0] == tracked
