"""Exactly-once processing when several OS processes work on one follower at once.

Real processes (``tests/exactly_once_app.py``) share SQLite files or a PostgreSQL database:
a producer saves commands to ``School`` while three processes process ``Counters`` and two
process ``Totals``, and workers are killed with SIGKILL at random and started again. At the
end every notification must have been processed exactly once: the counts per trick, the
number of events of each follower, and each follower's tracking equal to its leader's
last notification id. A batch's tracking record is a compare-and-set on the batch's first
notification, so a batch overlapping one that another process recorded is refused whole.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from collections import Counter as Tally
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from anchor import anchor_python
from exactly_once_app import TRICKS, Counter, Counters, Dog, School, Total, Totals

from eventsourcing.application import Application
from eventsourcing.persistence import IntegrityError

SCRIPT = Path(__file__).with_name("exactly_once_app.py")
EVENTS = 2_000
CATCH_UP = 180.0  # seconds: generous for a loaded 2-core machine; ends as soon as met


@dataclass
class Cluster:
    """The worker processes of one test, started from one environment."""

    env: dict[str, str]
    log_dir: Path
    python: dict[str, str] = field(default_factory=dict)  # follower -> interpreter
    workers: list[tuple[str, subprocess.Popen[bytes]]] = field(default_factory=list)
    kills: int = 0

    def start(
        self, command: str, argument: str, python: str | None = None, **settings: str
    ) -> subprocess.Popen[bytes]:
        """Start ``exactly_once_app.py command argument`` in a new process."""
        log = (self.log_dir / f"{command}-{argument}-{time.monotonic_ns()}.log").open("wb")
        return subprocess.Popen(
            [python or sys.executable, str(SCRIPT), command, argument],
            env={**self.env, **settings},
            stdout=log,
            stderr=subprocess.STDOUT,
        )

    def start_worker(self, name: str, python: str | None = None) -> None:
        """Start a worker process for the follower ``name``, with a batch size of its own.

        Different batch sizes make the processes' batches overlap in every way.
        """
        batch_size = str(random.choice([1, 7, 25, 40]))
        # The tables exist: 9.5.6 processes starting together would race on creating its
        # insert function (a race of 9.5.6's own, not what is tested here).
        create_table = "yes" if python in (None, sys.executable) else "no"
        process = self.start(
            "process", name, python, PROCESS_BATCH_SIZE=batch_size, CREATE_TABLE=create_table
        )
        self.workers.append((name, process))

    def kill_one(self, rng: random.Random, python: str | None = None) -> None:
        """SIGKILL a random worker (of ``python``, if given) and start another in its place."""
        candidates = [
            i for i, (_, p) in enumerate(self.workers) if python in (None, self._python_of(p))
        ]
        name, process = self.workers.pop(rng.choice(candidates))
        process.kill()
        process.wait()
        self.kills += 1
        self.start_worker(name, self._python_of(process))

    @staticmethod
    def _python_of(process: subprocess.Popen[bytes]) -> str:
        args = process.args
        assert isinstance(args, list)
        return str(args[0])

    def check_alive(self) -> None:
        """Fail if a worker exited by itself (its log says why)."""
        for name, process in self.workers:
            if process.poll() is not None:
                logs = "\n".join(p.read_text()[-3000:] for p in self.log_dir.glob("process-*"))
                pytest.fail(f"a {name} worker exited with {process.returncode}:\n{logs}")

    def stop(self) -> None:
        """Kill every worker."""
        for _, process in self.workers:
            if process.poll() is None:
                process.send_signal(signal.SIGCONT)
                process.kill()
            process.wait()


@pytest.fixture(params=["sqlite_file", "postgres"])
def store_env(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[dict[str, str]]:
    """An environment giving each application a database of the parametrised kind."""
    if request.param == "postgres":
        database = request.getfixturevalue("postgres_database")
        yield {"PERSISTENCE_MODULE": "eventsourcing.postgres", **database.env}
        return
    env = {"PERSISTENCE_MODULE": "eventsourcing.sqlite"}
    for name in ("School", "Counters", "Totals"):
        env[f"{name.upper()}_SQLITE_DBNAME"] = str(tmp_path / f"{name}.sqlite3")
    yield env


def _cluster(store_env: dict[str, str], tmp_path: Path, **settings: str) -> Cluster:
    env = {**os.environ, **store_env, **settings}
    env.pop("PYTHONPATH", None)  # the anchor's interpreter must import its own package
    log_dir = tmp_path / "logs"
    log_dir.mkdir(exist_ok=True)
    # Create the tables before the race, so the workers' start-up is not what is tested.
    for cls in (School, Counters, Totals):
        cls(env=store_env).close()
    return Cluster(env, log_dir)


def _run_with_chaos(cluster: Cluster, rng: random.Random, *, kills: bool, pauses: bool) -> None:
    """Run the producer to the end while killing (and pausing) workers at random."""
    producer = cluster.start("produce", str(EVENTS))
    paused: subprocess.Popen[bytes] | None = None
    try:
        while producer.poll() is None:
            time.sleep(rng.uniform(0.05, 0.4))
            cluster.check_alive()
            if pauses:
                # Freeze one Counters worker with its policy cache full, then thaw it after
                # the others have changed those aggregates and moved the position on.
                if paused is None:
                    paused = next(p for name, p in cluster.workers if name == "Counters")
                    paused.send_signal(signal.SIGSTOP)
                else:
                    paused.send_signal(signal.SIGCONT)
                    paused = None
            elif kills:
                cluster.kill_one(rng)
    finally:
        if paused is not None:
            paused.send_signal(signal.SIGCONT)
    assert producer.wait() == 0, (cluster.log_dir / "produce").as_posix()


def _wait_until_caught_up(cluster: Cluster, store_env: dict[str, str]) -> None:
    deadline = time.monotonic() + CATCH_UP
    apps = {cls.__name__: cls(env=store_env) for cls in (School, Counters, Totals)}
    try:
        while True:
            cluster.check_alive()
            school_max = apps["School"].recorder.max_notification_id()
            counters_max = apps["Counters"].recorder.max_notification_id()
            counters = apps["Counters"].recorder.max_tracking_id("School")
            totals = apps["Totals"].recorder.max_tracking_id("Counters")
            if counters == school_max and totals == counters_max:
                return
            if time.monotonic() > deadline:
                pytest.fail(
                    f"not caught up after {CATCH_UP}s: Counters at {counters} of {school_max}, "
                    f"Totals at {totals} of {counters_max}"
                )
            time.sleep(0.2)
    finally:
        for app in apps.values():
            app.close()


def _all_events(app: Application) -> list[Any]:
    notifications = app.recorder.select_notifications(start=None, limit=10**9)
    return [app.mapper.to_domain_event(n) for n in notifications]


def _assert_processed_exactly_once(store_env: dict[str, str]) -> None:
    school, counters, totals = (cls(env=store_env) for cls in (School, Counters, Totals))
    try:
        taught = Tally(e.trick for e in _all_events(school) if isinstance(e, Dog.TrickAdded))
        assert sum(taught.values()) == EVENTS

        counter_events = _all_events(counters)
        increments = [e for e in counter_events if isinstance(e, Counter.Incremented)]
        # One Started per trick and one Incremented per trick taught: nothing twice.
        assert len(increments) == EVENTS
        assert len(counter_events) == len(taught) + EVENTS
        for trick, count in taught.items():
            counter: Counter = counters.repository.get(Counter.create_id(trick))
            assert counter.count == count, trick

        total_events = _all_events(totals)
        assert len(total_events) == 1 + EVENTS
        total: Total = totals.repository.get(Total.create_id())
        assert total.count == EVENTS

        school_max = school.recorder.max_notification_id()
        counters_max = counters.recorder.max_notification_id()
        assert counters.recorder.max_tracking_id("School") == school_max
        assert totals.recorder.max_tracking_id("Counters") == counters_max
    finally:
        for app in (school, counters, totals):
            app.close()


@pytest.mark.timeout(600)
@pytest.mark.parametrize("chaos", ["kills", "stale_cache"])
def test_three_processes_on_one_follower_process_each_notification_once(
    store_env: dict[str, str], tmp_path: Path, chaos: str
) -> None:
    # Given three processes on Counters and two on Totals, with policy caches on;
    rng = random.Random()
    cluster = _cluster(store_env, tmp_path, POLICY_CACHE_MAXSIZE="10000")
    try:
        for name in ("Counters", "Counters", "Counters", "Totals", "Totals"):
            cluster.start_worker(name)
        # when a producer saves while workers are SIGKILLed and restarted at random (or
        # one is frozen and thawed with a cache of aggregates the others have since changed),
        _run_with_chaos(cluster, rng, kills=chaos == "kills", pauses=chaos == "stale_cache")
        if chaos == "kills":
            assert cluster.kills >= 10
        _wait_until_caught_up(cluster, store_env)
    finally:
        cluster.stop()
    # then every notification was processed exactly once.
    _assert_processed_exactly_once(store_env)


@pytest.mark.timeout(600)
def test_a_9_5_6_process_and_ours_on_one_follower_process_each_notification_once(
    store_env: dict[str, str], tmp_path: Path
) -> None:
    # Given eventsourcing 9.5.6 and this package each processing Counters and Totals
    anchor = str(anchor_python())
    cluster = _cluster(store_env, tmp_path)
    try:
        for name in ("Counters", "Totals"):
            cluster.start_worker(name, anchor)
            cluster.start_worker(name)
        # when a producer saves, with ours killed and restarted at random,
        rng = random.Random()
        producer = cluster.start("produce", str(EVENTS))
        while producer.poll() is None:
            time.sleep(rng.uniform(0.2, 0.6))
            cluster.check_alive()
            cluster.kill_one(rng, python=sys.executable)
        assert producer.wait() == 0
        _wait_until_caught_up(cluster, store_env)
    finally:
        cluster.stop()
    # then every notification was processed once, by one or the other.
    _assert_processed_exactly_once(store_env)


@pytest.mark.timeout(300)
def test_ten_processes_create_the_tables_of_a_fresh_database_at_once(
    store_env: dict[str, str], tmp_path: Path
) -> None:
    # Given a fresh database (nothing created yet) and ten processes
    env = {**os.environ, **store_env}
    cluster = Cluster(env, tmp_path)
    at = time.time() + 3.0  # time enough for every process to start and import
    # when each constructs every application at the same moment,
    processes = [cluster.start("construct", str(at)) for _ in range(10)]
    codes = [p.wait(timeout=120) for p in processes]
    # then all succeed, and the applications work.
    logs = "\n".join(p.read_text() for p in tmp_path.glob("construct-*"))
    assert codes == [0] * 10, logs
    assert logs.count("constructed") == 10
    school = School(env=store_env)
    try:
        school.save(Dog("Fido"))
        assert school.recorder.max_notification_id() == 1
    finally:
        school.close()


@pytest.mark.parametrize("batch_size", ["25", "1"])
def test_a_batch_refused_for_a_position_inside_it_is_processed_again_from_there(
    store_env: dict[str, str], batch_size: str
) -> None:
    # Given 32 notifications, and two instances of one follower over the same database,
    env = {**store_env, "PROCESS_BATCH_SIZE": batch_size}
    school = School(env=env)
    dog = Dog("Fido")
    for i in range(31):
        dog.add_trick(f"trick{i % 3}")
    school.save(dog)
    mine, other = Counters(env=env), Counters(env=env)
    for counters in (mine, other):
        counters.follow(school.name, school.notification_log)
    try:
        # when the other records notifications 1 to 5 after mine read position 0,
        other.pull_and_process(school.name, stop=5)
        mine.pull_and_process(school.name, start=0)
        # then mine's overlapping batch was refused, and it went on from position 5:
        # each trick was counted once.
        assert mine.recorder.max_tracking_id(school.name) == 32
        increments = [e for e in _all_events(mine) if isinstance(e, Counter.Incremented)]
        assert len(increments) == 31
        counts = {t: mine.repository.get(Counter.create_id(t)).count for t in TRICKS[:3]}
        assert counts == {"trick0": 11, "trick1": 10, "trick2": 10}
    finally:
        for app in (school, mine, other):
            app.close()


def test_an_error_creating_tables_says_so_without_the_version_conflict_hint(
    store_env: dict[str, str],
) -> None:
    # Given a recorder whose tables can't be created: a unique index over duplicate rows
    school = School(env=store_env)
    recorder: Any = school.recorder
    try:
        if store_env["PERSISTENCE_MODULE"] == "eventsourcing.sqlite":
            recorder.create_table_statements = [
                "CREATE TABLE dup (x INTEGER)",
                "INSERT INTO dup VALUES (1), (1)",
                "CREATE UNIQUE INDEX dup_x ON dup (x)",
            ]
        else:
            from psycopg.sql import SQL

            recorder.sql_create_statements = [
                SQL("CREATE TABLE dup (x INTEGER)"),
                SQL("INSERT INTO dup VALUES (1), (1)"),
                SQL("CREATE UNIQUE INDEX dup_x ON dup (x)"),
            ]
        # when the tables are created, then the error names the failure, with no hint of
        # a version conflict.
        with pytest.raises(IntegrityError) as caught:
            recorder.create_table()
        message = str(caught.value)
        assert message.startswith("Failed to create the tables of ")
        assert "version conflict" not in message
    finally:
        school.close()
