"""Health and metrics of CLI workers (``--metrics-port``), scraped over HTTP while they run."""

from __future__ import annotations

import os
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families
from runner_helpers import (
    ROOT,
    SYSTEM_TOPIC,
    TESTS,
    WAIT,
    Apps,
    WorkerProcess,
    bulk_tricks,
    store_env,
    workers,
)
from system_model import Counters, DogSchool

from runners.testing.fixtures import require_restartable
from runners.testing.servers import free_port

TOPICS_SYSTEM = "system_model:SYSTEM_WITH_TOPICS"

__all__ = ["workers"]  # a fixture, imported for pytest


def get(port: int, path: str) -> tuple[int, str]:
    """Status and body of ``GET path`` (0 if nothing listens yet)."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as error:
        return error.code, error.read().decode()
    except OSError:
        return 0, ""


def samples(port: int) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """The metrics as ``{(sample name, labels): value}``."""
    status, text = get(port, "/metrics")
    assert status == 200, text
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def value(port: int, name: str, **labels: str) -> float | None:
    return samples(port).get((name, tuple(sorted(labels.items()))))


def wait_status(port: int, path: str, status: int, timeout: float = WAIT) -> str:
    deadline = time.monotonic() + timeout
    while True:
        code, body = get(port, path)
        if code == status:
            return body
        assert time.monotonic() < deadline, f"{path} answered {code} {body}, not {status}"
        time.sleep(0.05)


def test_lag_falls_to_zero_and_one_of_two_workers_holds_the_lease(
    tmp_path: Path, request: pytest.FixtureRequest, workers: Any
) -> None:
    env = {**store_env("postgres", tmp_path, request),
           "PROMPT_TRANSPORT": request.getfixturevalue("redis_url")}  # fmt: skip
    apps = Apps(env)
    try:
        bulk_tricks(apps.get(DogSchool), dogs=10, tricks_per_save=500, saves=10)
        last = apps.get(DogSchool).recorder.max_notification_id()
        ports = [free_port(), free_port()]
        for port in ports:
            workers("Counters", env, "--metrics-port", str(port))
        for port in ports:
            wait_status(port, "/readyz", 200)
        lag = ("eventsourcing_lag", {"follower": "Counters", "leader": "DogSchool"})
        seen: list[float] = []
        deadline = time.monotonic() + WAIT
        while not seen or seen[-1] > 0:
            assert time.monotonic() < deadline, seen
            lags = [value(p, lag[0], **lag[1]) for p in ports]
            seen.extend(v for v in lags if v is not None)
            time.sleep(0.05)
        assert max(seen) > 0, seen  # it was behind, and caught up
        held = [value(p, "eventsourcing_lease_held", follower="Counters") for p in ports]
        assert sorted(held) == [0.0, 1.0], held
        active = ports[held.index(1.0)]
        fl = {"follower": "Counters", "leader": "DogSchool"}
        assert value(active, "eventsourcing_tracked_position", **fl) == last
        assert value(active, "eventsourcing_leader_position", **fl) == last
        assert value(active, "eventsourcing_notifications_processed_total", **fl) == last
        assert (value(active, "eventsourcing_batch_duration_seconds_count", **fl) or 0) > 1
        assert value(active, "eventsourcing_last_batch_timestamp_seconds",
                     follower="Counters") == pytest.approx(time.time(), abs=WAIT)  # fmt: skip
        # One counter per dog, created by the policy: its events were recorded here.
        recorded = apps.get(Counters).recorder.max_notification_id()
        assert value(active, "eventsourcing_events_recorded_total", follower="Counters") == recorded
        for port in ports:  # both alive: one active, one standing by
            assert '"alive": true' in wait_status(port, "/healthz", 200)
    finally:
        apps.close()


def test_healthz_fails_when_the_database_is_gone_past_the_window(
    tmp_path: Path, request: pytest.FixtureRequest, workers: Any
) -> None:
    server = request.getfixturevalue("postgres_server")
    require_restartable(server)
    env = store_env("postgres", tmp_path, request)
    port = free_port()
    worker = workers("Counters", env, "--metrics-port", str(port), "--unhealthy-after", "2")
    wait_status(port, "/readyz", 200)
    worker.wait_for("holding the lease")
    server.halt()
    try:
        body = wait_status(port, "/healthz", 503)
        assert '"alive": false' in body
        assert get(port, "/readyz")[0] == 503
        assert worker.process is not None and worker.process.poll() is None
    finally:
        server.resume()
    # The database is back: the worker recovers without a restart.
    wait_status(port, "/healthz", 200)
    wait_status(port, "/readyz", 200)


def test_metrics_port_without_prometheus_client_names_the_extra(tmp_path: Path) -> None:
    import subprocess
    import sys

    blocker = tmp_path / "prometheus_client.py"
    blocker.write_text("raise ImportError('not installed')\n")
    result = subprocess.run(
        [sys.executable, "-m", "runners", "run", "examples.paxos.system:system",
         "--app", "Replica0", "--metrics-port", "0"],
        env={"PYTHONPATH": str(tmp_path), "PATH": "/usr/bin:/bin",
             "PERSISTENCE_MODULE": "eventsourcing.sqlite",
             "SQLITE_DBNAME": str(tmp_path / "db.sqlite3")},
        capture_output=True, text=True, timeout=60, cwd=Path(__file__).parents[2],
    )  # fmt: skip
    assert result.returncode == 2, result.stderr
    assert "pip install 'eventsourcing[metrics]'" in result.stderr


def test_each_process_of_a_multiprocess_runner_serves_its_own_metrics(
    tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    env = store_env("postgres", tmp_path, request)
    port = free_port()
    full_env = {**os.environ, **env, "PYTHONPATH": f"{TESTS}{os.pathsep}{ROOT}"}
    args = ["run", SYSTEM_TOPIC, "--app", "Counters", "--app", "Totals",
            "--runner", "processes", "--metrics-port", str(port)]  # fmt: skip
    runner = WorkerProcess(args, full_env, tmp_path / "runner.log").start()
    try:
        for offset, name in enumerate(("Counters", "Totals")):
            wait_status(port + offset, "/readyz", 200)
            deadline = time.monotonic() + WAIT
            while value(port + offset, "eventsourcing_lease_held", follower=name) != 1.0:
                assert time.monotonic() < deadline, runner.text()
                time.sleep(0.05)
        assert runner.terminate() == 0
    finally:
        if runner.process is not None and runner.process.poll() is None:
            runner.kill()


def test_lag_of_a_follower_with_topics_falls_to_zero_behind_a_log_of_other_events(
    tmp_path: Path, request: pytest.FixtureRequest, workers: Any
) -> None:
    env = store_env("postgres", tmp_path, request)
    apps = Apps(env)
    try:
        school = apps.get(DogSchool)
        bulk_tricks(school, dogs=5, tricks_per_save=20, saves=5)  # ends with tricks
        last = school.recorder.max_notification_id()
        port = free_port()
        workers("Registrations", env, "--metrics-port", str(port), system=TOPICS_SYSTEM)
        wait_status(port, "/readyz", 200)
        fl = {"follower": "Registrations", "leader": "DogSchool"}
        deadline = time.monotonic() + WAIT
        while value(port, "eventsourcing_lag", **fl) != 0:
            assert time.monotonic() < deadline, value(port, "eventsourcing_lag", **fl)
            time.sleep(0.1)
        tracked = value(port, "eventsourcing_tracked_position", **fl)
        assert tracked is not None and 0 < tracked < last  # the tricks after it are passed over
        assert value(port, "eventsourcing_leader_position", **fl) == last
    finally:
        apps.close()
