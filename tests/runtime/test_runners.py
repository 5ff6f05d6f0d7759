"""The distributed runtime: the system test model on MultiProcessRunner and on CLI workers,
prompted through Redis Streams, kombu and LISTEN/NOTIFY, over PostgreSQL and SQLite files;
the lease; a graceful stop; the CLI's status and its bad-input messages.

Every worker is a real process. Poll intervals are long (60 s) where a test checks that a
transport delivers prompts: the system settles in seconds only if prompts arrive.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from runner_helpers import (
    ROOT,
    SYSTEM_TOPIC,
    TESTS,
    Apps,
    assert_exactly_once,
    bulk_tricks,
    notification_ids,
    store_env,
    transport_env,
    wait_settled,
    workers,
)
from system_model import FAILING_NAME, SYSTEM, Counters, DogSchool, run_workload

from eventsourcing.application import Application
from eventsourcing.persistence import OperationalError
from eventsourcing.system import EventProcessingError
from runners import MultiProcessRunner, NotShareableError
from runners.cli import main
from runners.testing.servers import free_port
from runners.transports import open_transport

__all__ = ["workers"]  # the fixture, imported for pytest

PROMPTED_ONLY = "60"  # a poll interval no test waits out: settling needs prompts

CASES = [
    ("postgres", "redis"),
    ("postgres", "kombu"),
    ("postgres", "postgres"),
    ("sqlite_file", "redis"),
    ("sqlite_file", "kombu"),
]


# ---------------------------------------------------------------------------------------------
# Acceptance 1: same final state as the in-process runners, tracking at the leaders' last id


@pytest.mark.parametrize(("store", "transport"), CASES)
def test_cli_workers_reach_the_in_process_runners_state(
    store: str, transport: str, tmp_path: Path, request: pytest.FixtureRequest, workers: Any
) -> None:
    env = {**store_env(store, tmp_path, request), **transport_env(transport, request)}
    started = [
        workers(name, env, "--poll-interval", PROMPTED_ONLY) for name in ("Counters", "Totals")
    ]
    for worker in started:
        worker.wait_for("holding the lease")
    apps = Apps(env)
    try:
        expected = run_workload(apps.get(DogSchool), dogs=6, rounds=4)
        wait_settled(apps, timeout=20)
        assert_exactly_once(apps, expected)
    finally:
        apps.close()
    for worker in started:
        assert worker.terminate() == 0


@pytest.mark.parametrize(("store", "transport"), [*CASES, ("sqlite_file", "none")])
def test_multiprocess_runner_reaches_the_in_process_runners_state(
    store: str, transport: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    env = {**store_env(store, tmp_path, request), **transport_env(transport, request)}
    with MultiProcessRunner(SYSTEM, env, poll_interval=float(PROMPTED_ONLY)) as runner:
        school = runner.get(DogSchool)
        # The children catch up with nothing, then wait for prompts.
        expected = run_workload(school, dogs=6, rounds=4)
        wait_settled(runner, timeout=30)
        assert_exactly_once(runner, expected)
        # Stopped and started again, it goes on from the tracking records.
    with MultiProcessRunner(SYSTEM, env, poll_interval=float(PROMPTED_ONLY)) as runner:
        more = run_workload(runner.get(DogSchool), dogs=2, rounds=2)
        wait_settled(runner, timeout=30)
        assert runner.get(Counters).recorder.max_tracking_id("DogSchool") == (
            expected.school_events + more.school_events
        )


def test_multiprocess_runner_restarts_a_killed_child(tmp_path: Path, request: Any) -> None:
    env = store_env("sqlite_file", tmp_path, request)
    with MultiProcessRunner(SYSTEM, env, poll_interval=0.5) as runner:
        child = runner.children["Counters"]
        first_pid = child.process.pid
        os.kill(first_pid, 9)
        expected = run_workload(runner.get(DogSchool), dogs=3, rounds=2)
        wait_settled(runner, timeout=30)
        assert runner.children["Counters"].process.pid != first_pid
        assert_exactly_once(runner, expected)


def test_multiprocess_runner_reports_settings_a_child_cannot_use(
    tmp_path: Path, request: Any
) -> None:
    # LISTEN/NOTIFY needs the leaders on PostgreSQL: the child says so, once, and stays down.
    env = {**store_env("sqlite_file", tmp_path, request), "PROMPT_TRANSPORT": "postgres"}
    runner = MultiProcessRunner(SYSTEM, env)
    runner.start()
    assert runner.has_errored.wait(30)
    with pytest.raises(EventProcessingError, match="PROMPT_TRANSPORT=postgres needs the leader"):
        runner.stop()


def test_multiprocess_runner_refuses_in_memory_stores(tmp_path: Path) -> None:
    with pytest.raises(NotShareableError, match="in-memory stores cannot be shared") as info:
        MultiProcessRunner(SYSTEM, {"PERSISTENCE_MODULE": "eventsourcing.popo"})
    assert "eventsourcing.sqlite" in str(info.value)
    assert "eventsourcing.postgres" in str(info.value)
    with pytest.raises(NotShareableError, match="in-memory SQLite"):
        MultiProcessRunner(
            SYSTEM,
            {"PERSISTENCE_MODULE": "eventsourcing.sqlite", "SQLITE_DBNAME": ":memory:"},
        )


def test_multiprocess_runner_reports_a_policy_error(tmp_path: Path, request: Any) -> None:
    env = store_env("sqlite_file", tmp_path, request)
    runner = MultiProcessRunner(SYSTEM, env, poll_interval=0.5)
    runner.start()
    school = runner.get(DogSchool)
    school.register("ok")
    school.register(FAILING_NAME)  # the Counters policy refuses it
    assert runner.has_errored.wait(30)
    with pytest.raises(EventProcessingError, match="notification 2"):
        runner.stop()


# ---------------------------------------------------------------------------------------------
# Acceptance 4: two workers for one application


@pytest.mark.parametrize("lease", ["postgres", "sqlite_file", "redis"])
def test_two_workers_one_processes_and_the_other_takes_over_after_sigkill(
    lease: str, tmp_path: Path, request: pytest.FixtureRequest, workers: Any
) -> None:
    store = "sqlite_file" if lease == "redis" else lease
    env = store_env(store, tmp_path, request)
    if lease == "redis":
        env["WORKER_LEASE"] = request.getfixturevalue("redis_url")
        env["REDIS_LEASE_TTL"] = "2"
    apps = Apps(env)
    try:
        active = workers("Counters", env)
        active.wait_for("holding the lease")
        standby = workers("Counters", env)
        standby.wait_for("Running")
        expected = run_workload(apps.get(DogSchool), dogs=4, rounds=3)
        counters = apps.get(Counters)
        counters.recorder.wait("DogSchool", expected.school_events, timeout=20)
        assert "holding the lease" not in standby.text()

        active.kill()
        killed_at = time.monotonic()
        taken_at = standby.wait_for("holding the lease", timeout=30)
        takeover = taken_at - killed_at
        more = run_workload(apps.get(DogSchool), dogs=3, rounds=2)
        counters.recorder.wait(
            "DogSchool", expected.school_events + more.school_events, timeout=20
        )
        print(f"\ntakeover after SIGKILL with the {lease} lease: {takeover:.2f}s")
        assert takeover < 10
        # Nothing twice: one counter event per registration and per trick.
        # (Counted: a SIGKILL inside a transaction leaves a gap in PostgreSQL's ids.)
        assert len(notification_ids(counters.recorder)) == (
            expected.counter_events + more.counter_events
        )
        for dog_id, tricks in {**expected.tricks, **more.tricks}.items():
            assert counters.count(dog_id) == tricks
    finally:
        apps.close()


# ---------------------------------------------------------------------------------------------
# Acceptance 5: SIGTERM during a backlog


def test_sigterm_during_a_backlog_exits_0_within_2s_and_a_new_worker_resumes(
    tmp_path: Path, request: pytest.FixtureRequest, workers: Any
) -> None:
    env = store_env("postgres", tmp_path, request)
    apps = Apps(env)
    try:
        expected = bulk_tricks(apps.get(DogSchool), dogs=10, tricks_per_save=500, saves=40)
        counters = apps.get(Counters)
        total = apps.get(DogSchool).recorder.max_notification_id()
        worker = workers("Counters", env)
        deadline = time.monotonic() + 30
        while (counters.recorder.max_tracking_id("DogSchool") or 0) < 500:
            assert time.monotonic() < deadline, worker.text()
            time.sleep(0.01)
        sent = time.monotonic()
        code = worker.terminate()
        took = time.monotonic() - sent
        stopped_at = counters.recorder.max_tracking_id("DogSchool") or 0
        print(f"\nSIGTERM to exit: {took:.2f}s, at notification {stopped_at} of {total}")
        assert code == 0
        assert took < 2.0
        assert stopped_at < total, "the backlog was gone before SIGTERM: make it longer"

        workers("Counters", env)
        counters.recorder.wait("DogSchool", total, timeout=60)
        assert counters.recorder.max_notification_id() == expected.counter_events
        for dog_id, tricks in expected.tricks.items():
            assert counters.count(dog_id) == tricks
    finally:
        apps.close()


# ---------------------------------------------------------------------------------------------
# Acceptance 6: the CLI


def _status(capsys: pytest.CaptureFixture[str]) -> list[dict[str, Any]]:
    assert main(["status", SYSTEM_TOPIC, "--json"]) == 0
    rows: list[dict[str, Any]] = json.loads(capsys.readouterr().out)
    return rows


def test_status_shows_a_lag_that_falls_to_zero(
    tmp_path: Path,
    request: pytest.FixtureRequest,
    workers: Any,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    env = store_env("sqlite_file", tmp_path, request)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    monkeypatch.syspath_prepend(str(TESTS))
    apps = Apps(env)
    try:
        bulk_tricks(apps.get(DogSchool), dogs=5, tricks_per_save=400, saves=10)
    finally:
        apps.close()
    first = _status(capsys)
    assert [(r["follower"], r["leader"]) for r in first] == [
        ("Counters", "DogSchool"),
        ("Totals", "Counters"),
    ]
    assert first[0]["lag"] == first[0]["leader_last"] == 4005
    assert first[0]["tracked"] == 0
    started = [workers(name, env) for name in ("Counters", "Totals")]
    lags = [first[0]["lag"]]
    deadline = time.monotonic() + 60
    while True:
        rows = _status(capsys)
        lags.append(rows[0]["lag"])
        if all(r["lag"] == 0 for r in rows) and rows[1]["leader_last"] == 4005:
            break
        assert time.monotonic() < deadline, [w.text() for w in started]
        time.sleep(0.2)
    assert lags == sorted(lags, reverse=True)
    assert "Counters <- DogSchool" not in started[0].text()  # no progress bar in a file
    assert main(["status", SYSTEM_TOPIC]) == 0
    table = capsys.readouterr().out.splitlines()
    assert table[0].split() == [
        "FOLLOWER", "LEADER", "TRACKED", "LEADER_LAST", "LAG", "PARKED", "PAUSED"
    ]  # fmt: skip
    assert table[1].split() == ["Counters", "DogSchool", "4005", "4005", "0", "0", "no"]


def _bad(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    code = main(argv)
    err = capsys.readouterr().err.strip().splitlines()
    assert err, "no message"
    assert "Traceback" not in "\n".join(err)
    return code, err[-1]


@pytest.fixture
def importable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.syspath_prepend(str(TESTS))
    monkeypatch.setenv("PERSISTENCE_MODULE", "eventsourcing.popo")


@pytest.mark.usefixtures("importable")
def test_bad_input_gets_one_line_naming_the_fix(
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
    request: pytest.FixtureRequest,
) -> None:
    code, line = _bad(["run", "no_such_module:system", "--app", "Counters"], capsys)
    assert code == 2
    assert "No module named 'no_such_module'" in line
    assert "PYTHONPATH" in line

    code, line = _bad(["run", "system_model:NO_SUCH", "--app", "Counters"], capsys)
    assert code == 2
    assert "has no attribute 'NO_SUCH'" in line
    assert "system_model:SYSTEM" in line  # what it does have

    code, line = _bad(["status", "system_model:DogSchool"], capsys)
    assert code == 2
    assert "is a type, not a System" in line

    code, line = _bad(["run", "system_model", "--app", "Counters"], capsys)
    assert code == 2
    assert "'module:attribute'" in line

    code, line = _bad(["run", SYSTEM_TOPIC, "--app", "Countres"], capsys)
    assert code == 2
    assert "Did you mean 'Counters'?" in line

    code, line = _bad(["run", SYSTEM_TOPIC, "--app", "DogSchool"], capsys)
    assert code == 2
    assert "follows no application" in line

    code, line = _bad(["run", SYSTEM_TOPIC], capsys)
    assert code == 2
    assert "--app NAME" in line

    code, line = _bad(["run", SYSTEM_TOPIC, "--all", "--runner", "processes"], capsys)
    assert code == 2
    assert "in-memory stores cannot be shared" in line
    assert "eventsourcing.postgres" in line

    code, line = _bad(["run", SYSTEM_TOPIC, "--all", "--runner", "fibers"], capsys)
    assert code == 2
    assert "invalid choice: 'fibers'" in line

    code, line = _bad(["status", SYSTEM_TOPIC, "--watch", "--interval", "-1"], capsys)
    assert code == 2
    assert "positive number" in line

    # Stores and brokers: a SQLite file store from here on.
    for key, value in store_env("sqlite_file", tmp_path, request).items():
        monkeypatch.setenv(key, value)
    monkeypatch.setenv("PROMPT_TRANSPORT", "reddis://localhost:6379/0")
    code, line = _bad(["run", SYSTEM_TOPIC, "--app", "Counters"], capsys)
    assert code == 2
    assert "Invalid PROMPT_TRANSPORT value 'reddis://localhost:6379/0'" in line
    assert "Did you mean 'redis'?" in line
    assert "kombu+" in line

    # A malformed URL, or a kombu transport whose driver is not installed, is bad input;
    # a broker that is down is not (the worker polls until it is back, see
    # tests/runtime/test_broker_outage.py).
    monkeypatch.setenv("PROMPT_TRANSPORT", "redis://127.0.0.1:6379/zero")
    code, line = _bad(["run", SYSTEM_TOPIC, "--app", "Counters"], capsys)
    assert code == 2
    assert "must be a number, such as /0, not /zero" in line
    assert "Fix PROMPT_TRANSPORT" in line
    if importlib.util.find_spec("kazoo") is None:
        monkeypatch.setenv("PROMPT_TRANSPORT", "kombu+zookeeper://127.0.0.1:2181/")
        code, line = _bad(["run", SYSTEM_TOPIC, "--app", "Counters"], capsys)
        assert code == 2
        assert "The kazoo library is not installed" in line
        assert "pip install 'kombu[zookeeper]'" in line

    monkeypatch.delenv("PROMPT_TRANSPORT")
    monkeypatch.setenv("PERSISTENCE_MODULE", "eventsourcing.postgres")
    monkeypatch.setenv("POSTGRES_HOST", "127.0.0.1")
    monkeypatch.setenv("POSTGRES_PORT", str(free_port()))
    monkeypatch.setenv("POSTGRES_DBNAME", "nothing")
    monkeypatch.setenv("POSTGRES_USER", "nobody")
    monkeypatch.setenv("POSTGRES_PASSWORD", "x")
    monkeypatch.setenv("POSTGRES_CONNECT_TIMEOUT", "1")
    code, line = _bad(["run", SYSTEM_TOPIC, "--app", "Counters"], capsys)
    assert code == 4
    assert "Can't connect to PostgreSQL at 127.0.0.1" in line
    assert "POSTGRES_*" in line


def test_help_lists_examples_and_exit_codes() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "runners", "run", "--help"],
        capture_output=True,
        text=True,
        cwd=ROOT,
        check=True,
    )
    assert "eventsourcing-runner run myproject.system:system --app Counters" in result.stdout
    assert "3  a policy (or decoding) error" in result.stdout
    assert "EVENTSOURCING_RUNNER_" in result.stdout
    console = Path(sys.executable).with_name("eventsourcing-runner")
    assert subprocess.run([str(console), "--help"], capture_output=True, check=True).stdout


def test_status_watch_refreshes_until_interrupted(tmp_path: Path) -> None:
    env = store_env("sqlite_file", tmp_path, None)
    process = subprocess.Popen(
        [sys.executable, "-m", "runners", "status", SYSTEM_TOPIC, "--watch", "--json",
         "--interval", "0.2"],
        env={**os.environ, **env, "PYTHONPATH": f"{TESTS}{os.pathsep}{ROOT}"},
        stdout=subprocess.PIPE,
        cwd=ROOT,
    )  # fmt: skip
    assert process.stdout is not None
    lines = [json.loads(process.stdout.readline()) for _ in range(3)]
    process.send_signal(2)
    assert process.wait(10) == 0
    assert all(rows[0]["lag"] == 0 for rows in lines)


def test_options_come_from_the_environment(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.syspath_prepend(str(TESTS))
    monkeypatch.setenv("PERSISTENCE_MODULE", "eventsourcing.popo")
    monkeypatch.setenv("EVENTSOURCING_RUNNER_SYSTEM", SYSTEM_TOPIC)
    monkeypatch.setenv("EVENTSOURCING_RUNNER_JSON", "yes")
    assert main(["status"]) == 0
    assert json.loads(capsys.readouterr().out)[0]["follower"] == "Counters"
    # SYSTEM may name a function that returns the System.
    monkeypatch.syspath_prepend(str(TESTS / "runtime"))
    assert main(["status", "runner_helpers:system_factory"]) == 0
    assert json.loads(capsys.readouterr().out)[1]["follower"] == "Totals"


# ---------------------------------------------------------------------------------------------
# Prompts from any process, and quiet failures


def test_an_application_publishes_prompts_and_a_dead_broker_never_fails_a_save(
    redis_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    listener = open_transport(redis_url, ["DogSchool"])
    school = DogSchool(env={"PERSISTENCE_MODULE": "eventsourcing.popo",
                            "DOGSCHOOL_PROMPT_TRANSPORT": redis_url})  # fmt: skip
    school.register("Fido")
    assert listener.wait(2.0) == ["DogSchool"]
    listener.close()

    dead = f"redis://127.0.0.1:{free_port()}/0"
    school = DogSchool(env={"PERSISTENCE_MODULE": "eventsourcing.popo", "PROMPT_TRANSPORT": dead})
    with caplog.at_level(logging.WARNING):
        for i in range(20):
            school.register(f"dog{i}")
        assert school.recorder.max_notification_id() == 20
        school.close()  # sends what is pending (prompts go out from a thread of their own)
    warnings = [r for r in caplog.records if "Can't publish prompts" in r.getMessage()]
    assert len(warnings) == 1
    assert Application(env={"PERSISTENCE_MODULE": "eventsourcing.popo"}).prompt_publisher is None


def test_no_reconnection_warnings_from_a_refusing_postgresql(
    caplog: pytest.LogCaptureFixture,
) -> None:
    env = {
        "PERSISTENCE_MODULE": "eventsourcing.postgres",
        "POSTGRES_HOST": "127.0.0.1",
        "POSTGRES_PORT": str(free_port()),
        "POSTGRES_DBNAME": "x",
        "POSTGRES_USER": "x",
        "POSTGRES_PASSWORD": "x",
        "POSTGRES_CONNECT_TIMEOUT": "2",
    }
    with caplog.at_level(logging.DEBUG, logger="psycopg.pool"), pytest.raises(OperationalError):
        Application(env=env)
    assert not [r for r in caplog.records if "error connecting" in r.getMessage()]


# ---------------------------------------------------------------------------------------------
# The worker's contract: policy errors, a second signal, a progress bar on a terminal


def test_a_policy_error_stops_the_worker_with_exit_3_and_one_line(
    tmp_path: Path, request: pytest.FixtureRequest, workers: Any
) -> None:
    env = {**store_env("sqlite_file", tmp_path, request), "FOLLOWER_ERRORS": "stop"}
    worker = workers("Counters", env)
    worker.wait_for("holding the lease")
    apps = Apps(env)
    try:
        school = apps.get(DogSchool)
        school.register("Fido")
        apps.get(Counters).recorder.wait("DogSchool", 1, timeout=20)
        school.register(FAILING_NAME)
        assert worker.process is not None
        assert worker.process.wait(30) == 3
        lines = [line for line in worker.text().splitlines() if "ERROR" in line]
        assert len(lines) == 1, worker.text()
        assert "eventsourcing-runner: error: The policy of 'Counters' failed" in worker.text()
        assert "DogSchool notification 2" in lines[0]
        assert "system_model.Dog.Registered" in lines[0]
        assert "refused to count a dog named 'Refused'" in lines[0]
        # Nothing of the failed batch was recorded.
        assert apps.get(Counters).recorder.max_tracking_id("DogSchool") == 1
    finally:
        apps.close()


def test_a_second_signal_exits_at_once_with_code_5(
    tmp_path: Path, request: pytest.FixtureRequest, workers: Any
) -> None:
    env = store_env("sqlite_file", tmp_path, request)
    apps = Apps(env)
    try:
        bulk_tricks(apps.get(DogSchool), dogs=5, tricks_per_save=500, saves=20)
        worker = workers("Counters", env)
        worker.wait_for("holding the lease")
        assert worker.process is not None
        worker.process.send_signal(15)
        worker.process.send_signal(2)
        assert worker.process.wait(10) == 5
        assert "exiting at once" in worker.text()
    finally:
        apps.close()


def test_a_worker_on_a_terminal_shows_a_progress_bar_while_catching_up(
    tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    import fcntl
    import pty
    import select
    import struct
    import termios

    env = store_env("sqlite_file", tmp_path, request)
    apps = Apps(env)
    try:
        bulk_tricks(apps.get(DogSchool), dogs=5, tricks_per_save=500, saves=10)
    finally:
        apps.close()
    master, slave = pty.openpty()
    # A terminal of 100 columns (a pty starts with none, where tqdm draws nothing).
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 30, 100, 0, 0))
    process = subprocess.Popen(
        [sys.executable, "-m", "runners", "run", SYSTEM_TOPIC, "--app", "Counters"],
        env={**os.environ, **env, "PYTHONPATH": f"{TESTS}{os.pathsep}{ROOT}"},
        stdin=subprocess.DEVNULL,
        stdout=slave,
        stderr=slave,
        cwd=ROOT,
    )
    os.close(slave)
    seen = b""
    try:
        deadline = time.monotonic() + 30
        while b"Counters <- DogSchool" not in seen or b"/5005" not in seen:
            assert time.monotonic() < deadline, seen.decode(errors="replace")
            if select.select([master], [], [], 0.2)[0]:
                seen += os.read(master, 4096)
    finally:
        process.terminate()
        process.wait(10)
        os.close(master)


def test_workers_in_threads_prompted_through_kombu_memory_transport(tmp_path: Path) -> None:
    import threading

    from runners import Worker

    env = {**store_env("sqlite_file", tmp_path, None), "PROMPT_TRANSPORT": "kombu+memory://"}
    loops = [Worker(SYSTEM, [name], env, poll_interval=60) for name in ("Counters", "Totals")]
    for loop in loops:
        loop.open()  # listening before anything is saved: prompts alone must wake them
    threads = [threading.Thread(target=w.run) for w in loops]
    for thread in threads:
        thread.start()
    apps = Apps(env)
    try:
        expected = run_workload(apps.get(DogSchool), dogs=4, rounds=3)
        wait_settled(apps, timeout=20)
        assert_exactly_once(apps, expected)
    finally:
        apps.close()
        for loop in loops:
            loop.stop()
        for thread in threads:
            thread.join(10)
