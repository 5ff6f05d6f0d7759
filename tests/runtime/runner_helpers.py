"""Helpers and fixtures for the runner tests: stores, worker processes, a Redis to stop.

Workers are real processes (``python -m runners run ...``) with their log in a file, so a
test can wait for a line ("holding the lease") and kill them with SIGKILL.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from system_model import Counters, DogSchool, Expected, Totals

from runners.testing.redis import RedisServer, resolve_redis

ROOT = Path(__file__).resolve().parents[2]
TESTS = ROOT / "tests"
SYSTEM_TOPIC = "system_model:SYSTEM"
APPS = ("DogSchool", "Counters", "Totals")
WAIT = 60.0


def store_env(
    kind: str, tmp_path: Path, request: pytest.FixtureRequest | None
) -> dict[str, str]:
    """An environment giving each application a shareable store of ``kind``."""
    if kind == "postgres":
        assert request is not None
        database = request.getfixturevalue("postgres_database")
        return {"PERSISTENCE_MODULE": "eventsourcing.postgres", **database.env}
    env = {"PERSISTENCE_MODULE": "eventsourcing.sqlite"}
    for name in APPS:
        env[f"{name.upper()}_SQLITE_DBNAME"] = str(tmp_path / f"{name}.sqlite3")
    return env


def transport_env(kind: str, request: pytest.FixtureRequest) -> dict[str, str]:
    """``PROMPT_TRANSPORT`` for ``kind`` (redis, kombu, postgres, none)."""
    if kind == "none":
        return {}
    if kind == "postgres":
        return {"PROMPT_TRANSPORT": "postgres"}
    url = request.getfixturevalue("redis_url")
    return {"PROMPT_TRANSPORT": url if kind == "redis" else f"kombu+{url}"}


@dataclass
class WorkerProcess:
    """A worker started through the CLI, its log in a file."""

    args: list[str]
    env: dict[str, str]
    log: Path
    process: subprocess.Popen[bytes] | None = None
    started: list[float] = field(default_factory=list)

    def start(self) -> WorkerProcess:
        """Start (or start again) the process, appending to its log."""
        with self.log.open("ab") as out:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "runners", *self.args],
                env=self.env,
                stdout=out,
                stderr=subprocess.STDOUT,
                cwd=ROOT,
            )
        self.started.append(time.monotonic())
        return self

    def text(self) -> str:
        """The log so far."""
        return self.log.read_text(errors="replace")

    def wait_for(self, line: str, count: int = 1, timeout: float = WAIT) -> float:
        """Wait until ``line`` appears ``count`` times in the log; return when it did."""
        deadline = time.monotonic() + timeout
        while self.text().count(line) < count:
            if self.process is not None and self.process.poll() is not None:
                raise AssertionError(f"worker exited {self.process.returncode}:\n{self.text()}")
            if time.monotonic() > deadline:
                raise AssertionError(f"no {line!r} in the worker's log:\n{self.text()}")
            time.sleep(0.02)
        return time.monotonic()

    def kill(self) -> None:
        """SIGKILL the process and reap it."""
        assert self.process is not None
        self.process.send_signal(signal.SIGKILL)
        self.process.wait()

    def terminate(self, timeout: float = 15.0) -> int:
        """SIGTERM the process; return its exit code."""
        assert self.process is not None
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        return self.process.wait(timeout)


@pytest.fixture
def workers(tmp_path: Path) -> Iterator[Any]:
    """Start CLI workers with ``workers(app, env, *extra_args, system=topic)``; all are
    killed after."""
    made: list[WorkerProcess] = []

    def start(
        app: str, env: dict[str, str], *extra: str, system: str = SYSTEM_TOPIC
    ) -> WorkerProcess:
        full_env = {**os.environ, **env, "PYTHONPATH": f"{TESTS}{os.pathsep}{ROOT}"}
        args = ["run", system, "--app", app, "--poll-interval", "0.5", *extra]
        log = tmp_path / f"worker-{app}-{len(made)}.log"
        worker = WorkerProcess(args, full_env, log).start()
        made.append(worker)
        return worker

    yield start
    for worker in made:
        if worker.process is not None and worker.process.poll() is None:
            worker.kill()


class Apps:
    """The applications of the test system over one environment (the runners' ``get``)."""

    def __init__(self, env: dict[str, str]) -> None:
        self.apps = {cls: cls(env=env) for cls in (DogSchool, Counters, Totals)}

    def get(self, cls: type[Any]) -> Any:
        return self.apps[cls]

    def close(self) -> None:
        for app in self.apps.values():
            app.close()


def wait_settled(apps: Any, timeout: float = WAIT) -> None:
    """Wait until the followers' tracking reaches their leaders' last notification."""
    school, counters, totals = apps.get(DogSchool), apps.get(Counters), apps.get(Totals)
    counters.recorder.wait("DogSchool", school.recorder.max_notification_id(), timeout=timeout)
    totals.recorder.wait("Counters", counters.recorder.max_notification_id(), timeout=timeout)


def notification_ids(recorder: Any) -> list[int]:
    ids: list[int] = []
    start = 1
    while page := recorder.select_notifications(start=start, limit=10_000):
        ids.extend(n.id for n in page)
        start = page[-1].id + 1
    return ids


def assert_exactly_once(apps: Any, expected: Expected) -> None:
    """Counts, positions and totals as if each notification was processed once.

    Events are counted, not inferred from the last notification id: a worker killed inside
    its transaction on PostgreSQL leaves a gap in the sequence (ids taken, rolled back).
    """
    school, counters, totals = apps.get(DogSchool), apps.get(Counters), apps.get(Totals)
    school_ids = notification_ids(school.recorder)
    counter_ids = notification_ids(counters.recorder)
    assert len(school_ids) == expected.school_events
    assert counters.recorder.max_tracking_id("DogSchool") == school_ids[-1]
    assert len(counter_ids) == expected.counter_events  # no notification processed twice
    assert totals.recorder.max_tracking_id("Counters") == counter_ids[-1]
    assert {d: counters.count(d) for d in expected.dog_ids} == expected.tricks
    assert totals.totals() == (len(expected.dog_ids), sum(expected.tricks.values()))


def bulk_tricks(school: DogSchool, dogs: int, tricks_per_save: int, saves: int) -> Expected:
    """Record many events quickly: each save adds ``tricks_per_save`` tricks to one dog."""
    dog_ids = [school.register(f"dog{i}") for i in range(dogs)]
    tricks = dict.fromkeys(dog_ids, 0)
    for n in range(saves):
        dog_id = dog_ids[n % dogs]
        dog = school.repository.get(dog_id)
        for _ in range(tricks_per_save):
            dog.add_trick("roll")
        school.save(dog)
        tricks[dog_id] += tricks_per_save
    return Expected(dog_ids, tricks, 0)


@pytest.fixture
def stoppable_redis() -> Iterator[RedisServer]:
    """A Redis server of the test's own, which it may halt and resume on the same port."""
    server = resolve_redis(["pip", "path"])
    try:
        yield server
    finally:
        server.stop()


def system_factory() -> Any:
    """A function returning the test system (SYSTEM topics may name one)."""
    from system_model import SYSTEM

    return SYSTEM
