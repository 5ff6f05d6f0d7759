"""A broker that is down never stops processing: workers started, or killed and started
again, while Redis, a kombu broker (on Redis, and RabbitMQ) or a PostgreSQL ``LISTEN``
connection is unreachable come up, poll their leaders' logs, and are woken by prompts
again once the broker is back, processing every notification exactly once.

Real servers and real worker processes (``python -m runners run ...``): each test stops
and starts a server of its own (Redis) or of the session's (RabbitMQ, PostgreSQL), so
these tests need servers the plugin started (``require_restartable``).
"""

from __future__ import annotations

import random
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from runner_helpers import (
    Apps,
    assert_exactly_once,
    stoppable_redis,
    store_env,
    wait_settled,
    workers,
)
from system_model import Counters, DogSchool, Expected, run_workload

from eventsourcing.application import Application
from runners.errors import TransportConnectionError
from runners.testing.fixtures import require_restartable
from runners.testing.rabbitmq import RabbitMQServer
from runners.testing.redis import RedisServer
from runners.testing.servers import LocalServer, Server
from runners.transports import open_transport

__all__ = ["stoppable_redis", "workers"]  # fixtures, imported for pytest

WAIT = 90.0  # seconds: generous, for a loaded machine; waits end as soon as they are met
# The worker's log lines (runners/worker.py) for a broker lost and found again.
OUTAGE = "Prompt transport unavailable"
BACK = "Prompt transport is back"
FOLLOWERS = ("Counters", "Totals")


@dataclass
class Broker:
    """A broker the test may stop and start, and the ``PROMPT_TRANSPORT`` that names it."""

    transport: str
    server: Server

    def halt(self) -> None:
        self.server.halt()

    def resume(self) -> None:
        self.server.resume()


@pytest.fixture(params=["redis", "kombu+redis", "kombu+amqp"])
def broker(request: pytest.FixtureRequest) -> Iterator[Broker]:
    """Redis Streams, kombu over Redis, and kombu over RabbitMQ (AMQP)."""
    if request.param == "kombu+amqp":
        rabbitmq: RabbitMQServer = request.getfixturevalue("rabbitmq_server")
        require_restartable(rabbitmq)
        yield Broker(f"kombu+{rabbitmq.url}", rabbitmq)
        # The session's node: left running for the next test.
        if isinstance(rabbitmq, LocalServer) and not rabbitmq.is_running:
            rabbitmq.resume()
        return
    redis: RedisServer = request.getfixturevalue("stoppable_redis")
    yield Broker(redis.url if request.param == "redis" else f"kombu+{redis.url}", redis)


def test_a_worker_started_while_its_broker_is_down_polls_then_is_woken_by_prompts(
    tmp_path: Path, broker: Broker, workers: Any
) -> None:
    # Given a broker that is down, and workers started meanwhile (a long poll interval, so
    # that being woken by a prompt shows in how soon an event is processed).
    poll = 4.0
    broker.halt()
    env = {**store_env("sqlite_file", tmp_path, None), "PROMPT_TRANSPORT": broker.transport}
    running = [workers(name, env, "--poll-interval", str(poll)) for name in FOLLOWERS]
    for worker in running:
        worker.wait_for("holding the lease", timeout=WAIT)
    apps = Apps(env)
    try:
        # When events are saved (their prompts can't be published), they are processed by
        # polling, and each worker says once that it polls.
        expected = run_workload(apps.get(DogSchool), dogs=4, rounds=3)
        wait_settled(apps, timeout=WAIT)
        assert_exactly_once(apps, expected)
        for worker in running:
            worker.wait_for(OUTAGE, timeout=WAIT)
            assert "polling every 4.0s" in worker.text()

        # When the broker is back, the workers say so, and are woken by prompts again:
        # events are processed much sooner than the poll interval would.
        broker.resume()
        for worker in running:
            worker.wait_for(BACK, timeout=WAIT)
        latencies = _processing_latencies(apps, expected, saves=8)
        assert sum(latencies) / len(latencies) < poll / 4, latencies
        wait_settled(apps, timeout=WAIT)
        assert_exactly_once(apps, expected)
    finally:
        apps.close()
    for worker in running:
        assert worker.process is not None and worker.process.poll() is None, worker.text()
        log = worker.text()
        assert log.count(BACK) == 1, log
        # Lines with a backoff between attempts (up to 8 s), never a line per poll.
        assert 1 <= log.count(OUTAGE) <= 10, log
        assert "Traceback" not in log, log


def test_workers_killed_and_started_again_during_an_outage_keep_processing(
    tmp_path: Path, broker: Broker, workers: Any
) -> None:
    # Given workers that run with their broker up, and have processed a workload.
    env = {**store_env("sqlite_file", tmp_path, None), "PROMPT_TRANSPORT": broker.transport}
    running = {name: workers(name, env) for name in FOLLOWERS}
    for worker in running.values():
        worker.wait_for("holding the lease", timeout=WAIT)
    apps = Apps(env)
    try:
        expected = run_workload(apps.get(DogSchool), dogs=4, rounds=2)
        wait_settled(apps, timeout=WAIT)

        # When the broker goes down for about 3 s (the running workers notice), and
        # meanwhile each worker is killed with SIGKILL and started again (as a process
        # manager would) while events are saved:
        broker.halt()
        down_at = time.monotonic()
        for worker in running.values():
            worker.wait_for(OUTAGE, timeout=WAIT)
        outages = {}
        for worker in running.values():
            worker.kill()
            outages[worker.log] = worker.text().count(OUTAGE)
            worker.start()
        _teach_tricks(apps.get(DogSchool), expected, count=10)
        # Then each comes up while the broker is down, meets the outage, and polls.
        for worker in running.values():
            worker.wait_for("holding the lease", count=2, timeout=WAIT)
            worker.wait_for(OUTAGE, count=outages[worker.log] + 1, timeout=WAIT)
        wait_settled(apps, timeout=WAIT)
        assert_exactly_once(apps, expected)
        time.sleep(max(0.0, 3.0 - (time.monotonic() - down_at)))

        # And once the broker is back, they reconnect and go on, exactly once.
        broker.resume()
        for worker in running.values():
            worker.wait_for(BACK, timeout=WAIT)
        _teach_tricks(apps.get(DogSchool), expected, count=10)
        wait_settled(apps, timeout=WAIT)
        assert_exactly_once(apps, expected)
    finally:
        apps.close()
    for worker in running.values():
        assert worker.process is not None and worker.process.poll() is None, worker.text()
        assert "Traceback" not in worker.text(), worker.text()


def test_the_postgres_transport_opens_while_its_database_is_down(
    request: pytest.FixtureRequest,
) -> None:
    # Given a leader on PostgreSQL, and its database server stopped.
    server = request.getfixturevalue("postgres_server")
    require_restartable(server)
    env = {"PERSISTENCE_MODULE": "eventsourcing.postgres",
           **request.getfixturevalue("postgres_database").env}  # fmt: skip
    school = DogSchool(env=env)
    server.halt()
    try:
        # When a listening transport is opened, it is opened all the same; waiting says
        # the server is unreachable (the worker polls meanwhile).
        transport = open_transport(
            "postgres", ["DogSchool"], recorders={"DogSchool": school.recorder}
        )
        with pytest.raises(TransportConnectionError, match="PostgreSQL LISTEN connection"):
            transport.wait(0.1)
    finally:
        server.resume()
    try:
        # Then, once the server is back, the next wait connects, and hears the leader's
        # NOTIFY of a new event.
        assert transport.wait(0.1) == []
        _save_when_it_answers(school)
        deadline = time.monotonic() + WAIT
        while "DogSchool" not in transport.wait(0.5):
            assert time.monotonic() < deadline, "no NOTIFY heard"
    finally:
        transport.close()
        school.close()


def _processing_latencies(apps: Apps, expected: Expected, saves: int) -> list[float]:
    """Save ``saves`` tricks one by one, at random moments of the poll cycle; return how
    long each took to be processed by ``Counters``."""
    school, counters = apps.get(DogSchool), apps.get(Counters)
    rng = random.Random(17)
    latencies = []
    for _ in range(saves):
        time.sleep(rng.uniform(0.2, 1.0))
        _teach_tricks(school, expected, count=1)
        last = school.recorder.max_notification_id()
        saved_at = time.monotonic()
        while (counters.recorder.max_tracking_id("DogSchool") or 0) < last:
            assert time.monotonic() - saved_at < WAIT, "not processed"
            time.sleep(0.005)
        latencies.append(time.monotonic() - saved_at)
    return latencies


def _teach_tricks(school: DogSchool, expected: Expected, count: int) -> None:
    """Teach ``count`` tricks to the expected dogs in turn, counting them in ``expected``."""
    for n in range(count):
        dog_id = expected.dog_ids[n % len(expected.dog_ids)]
        school.add_trick(dog_id, "sit")
        expected.tricks[dog_id] += 1


def _save_when_it_answers(app: Application[Any]) -> None:
    """Register a dog, trying again while the restarted database refuses connections."""
    deadline = time.monotonic() + WAIT
    while True:
        try:
            app.register("Rex")  # type: ignore[attr-defined]
            return
        except Exception:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)
