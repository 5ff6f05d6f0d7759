"""Faults under running workers, the way they happen: SIGKILL at random moments while a
producer process saves, the Redis server stopped and started, PostgreSQL restarted.
At the end every notification was processed exactly once.
"""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
import time
from pathlib import Path
from typing import Any
from uuid import UUID

import pytest
from runner_helpers import (
    ROOT,
    TESTS,
    Apps,
    assert_exactly_once,
    bulk_tricks,
    stoppable_redis,
    store_env,
    wait_settled,
    workers,
)
from system_model import Counters, DogSchool, Expected, run_workload

from runners.testing.fixtures import require_restartable
from runners.testing.redis import RedisServer

__all__ = ["stoppable_redis", "workers"]  # fixtures, imported for pytest

EVENTS = 5000
KILLS = 20


def test_sigkills_and_a_redis_outage_while_a_producer_saves(
    tmp_path: Path,
    request: pytest.FixtureRequest,
    workers: Any,
    stoppable_redis: RedisServer,
) -> None:
    env = {**store_env("postgres", tmp_path, request), "PROMPT_TRANSPORT": stoppable_redis.url}
    running = {name: workers(name, env) for name in ("Counters", "Totals")}
    for worker in running.values():
        worker.wait_for("holding the lease")
    out = tmp_path / "produced.json"
    producer_log = (tmp_path / "producer.log").open("wb")
    producer = subprocess.Popen(
        [sys.executable, str(TESTS / "runtime" / "producer.py"), str(EVENTS), str(out)],
        env={**os.environ, **env, "PYTHONPATH": f"{TESTS}{os.pathsep}{ROOT}"},
        stdout=producer_log,
        stderr=subprocess.STDOUT,
    )
    rng = random.Random(8)
    kills = 0
    redis_down_at: float | None = None
    redis_outages = 0
    # At least KILLS kills, and more while the producer saves, up to twice as many.
    while kills < KILLS or (producer.poll() is None and kills < 2 * KILLS):
        time.sleep(rng.uniform(0.05, 0.5))
        worker = running[rng.choice(list(running))]
        worker.kill()
        kills += 1
        worker.start()
        # A worker started while Redis is down exits 4 (can't reach it): start it again,
        # as a process manager would.
        for other in running.values():
            if other.process is not None and other.process.poll() is not None:
                other.start()
        if kills == 6:
            stoppable_redis.halt()
            redis_down_at = time.monotonic()
        if redis_down_at is not None and time.monotonic() - redis_down_at > 3:
            stoppable_redis.resume()
            redis_down_at = None
            redis_outages += 1
    if redis_down_at is not None:
        time.sleep(max(0.0, 3 - (time.monotonic() - redis_down_at)))
        stoppable_redis.resume()
        redis_outages += 1
    producer.wait(timeout=300)
    producer_log.close()
    assert producer.returncode == 0, (tmp_path / "producer.log").read_text()
    assert redis_outages == 1
    # Commands kept succeeding; the outage was logged once, not per save.
    assert (tmp_path / "producer.log").read_text().count("Can't publish prompts") == 1

    tricks = {UUID(k): v for k, v in json.loads(out.read_text()).items()}
    expected = Expected(list(tricks), tricks, 0)
    apps = Apps(env)
    try:
        wait_settled(apps, timeout=120)
        assert_exactly_once(apps, expected)
    finally:
        apps.close()
    print(f"\n{kills} SIGKILLs over {EVENTS} events, one Redis outage of 3s: exactly once")
    # After the outage the workers went back to prompts: a fresh save is processed at once.
    for worker in running.values():
        worker.wait_for("holding the lease", count=1)


def test_postgresql_restarted_under_running_workers(
    tmp_path: Path, request: pytest.FixtureRequest, workers: Any
) -> None:
    server = request.getfixturevalue("postgres_server")
    require_restartable(server)
    env = store_env("postgres", tmp_path, request)
    apps = Apps(env)
    try:
        backlog = bulk_tricks(apps.get(DogSchool), dogs=10, tricks_per_save=500, saves=10)
        running = [workers(name, env) for name in ("Counters", "Totals")]
        for worker in running:  # started: an outage at start-up is reported, not retried
            worker.wait_for("holding the lease")
        counters = apps.get(Counters)
        deadline = time.monotonic() + 30
        while (counters.recorder.max_tracking_id("DogSchool") or 0) < 300:
            assert time.monotonic() < deadline
            time.sleep(0.01)
        server.restart()
        more = run_workload(apps.get(DogSchool), dogs=5, rounds=3)
        wait_settled(apps, timeout=120)
        tricks = {**backlog.tricks, **more.tricks}
        expected = Expected(
            [*backlog.dog_ids, *more.dog_ids], tricks, backlog.renames + more.renames
        )
        assert_exactly_once(apps, expected)
        logs = "".join(w.text() for w in running)
        # Reconnected (within the datastore's retries, or the loop's backoff), without a
        # flood of lines: at most one per attempt.
        assert logs.count("WARNING") < 40, logs
        assert "error connecting" not in logs
        assert all(w.process is not None and w.process.poll() is None for w in running)
    finally:
        apps.close()
