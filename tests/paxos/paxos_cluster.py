"""Helpers of the Paxos tests (no tests): databases for replicas, clients, agreement checks."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from pathlib import Path

import pytest
from linearizability import History, Operation

from examples.paxos.application import CommandTimeoutError, Replica
from examples.paxos.domainmodel import Command
from examples.paxos.system import replica_names

ROOT = Path(__file__).resolve().parents[2]
WORKER = Path(__file__).with_name("paxos_worker.py")
WAIT = 60.0  # seconds: generous for a loaded machine; waits end as soon as they are met


def replica_env(
    backend: str, request: pytest.FixtureRequest, tmp_path: Path, size: int = 3
) -> dict[str, str]:
    """The environment giving each replica of a cluster its database on ``backend``."""
    if backend == "popo":
        return {"PERSISTENCE_MODULE": "eventsourcing.popo"}
    if backend == "postgres":
        # One database: each replica has tables of its own, named after it.
        database = request.getfixturevalue("postgres_database")
        return {"PERSISTENCE_MODULE": "eventsourcing.postgres", **database.env}
    assert backend == "sqlite_file", backend
    env = {"PERSISTENCE_MODULE": "eventsourcing.sqlite"}
    for name in replica_names(size):
        env[f"{name.upper()}_SQLITE_DBNAME"] = str(tmp_path / f"{name.lower()}.sqlite")
    return env


def applied_logs(replicas: Sequence[Replica]) -> list[list[Command]]:
    """Each replica's applied commands, by slot."""
    return [replica.applied_commands() for replica in replicas]


MODES = ["basic", "multi"]  # PAXOS_MODE: the tests of the store run in both


def wait_until_agreed(replicas: Sequence[Replica], at_least: int, timeout: float = WAIT) -> int:
    """Wait until every replica has applied as much (at least ``at_least``): slots in basic
    mode, requests in multi mode, where a slot holds a batch."""
    deadline = time.monotonic() + timeout
    while True:
        applied = [replica.applied_count() for replica in replicas]
        if len(set(applied)) == 1 and applied[0] >= at_least:
            return applied[0]
        if time.monotonic() > deadline:
            raise AssertionError(f"Replicas did not agree within {timeout} s: applied {applied}")
        time.sleep(0.02)


def assert_agreement(replicas: Sequence[Replica], request_ids: set[str]) -> list[Command]:
    """Same log slot for slot, same store, and each request chosen once, in one slot.

    Every one of ``request_ids`` was chosen, and every write chosen is one of them (a get
    may be in the log or not: with multi-Paxos, reads under a lease take no slot).
    """
    logs = applied_logs(replicas)
    for log in logs[1:]:
        assert log == logs[0]
    stores = [replica.store().data for replica in replicas]
    for store in stores[1:]:
        assert store == stores[0]
    chosen = [command.request_id for command in logs[0] if command.op != "noop"]
    assert len(chosen) == len(set(chosen)), "a request was chosen in more than one slot"
    assert request_ids <= set(chosen)
    assert {command.request_id for command in logs[0] if command.op not in ("noop", "get")} <= (
        request_ids
    )
    return logs[0]


def random_operation(
    rng: random.Random, keys: int, client: str, n: int, seen: dict[str, str | None]
) -> Operation:
    """A random put, get, delete or cas on one of ``keys`` keys, with a unique new value.

    A cas mostly expects the value the client last saw for the key (``seen``).
    """
    key = f"k{rng.randrange(keys)}"
    kind = rng.choices(["put", "get", "cas", "delete"], weights=[4, 4, 3, 1])[0]
    if kind in ("get", "delete"):
        return Operation(kind, key, client=client)
    value = f"{client}.{n}"
    if kind == "put":
        return Operation(kind, key, value, client=client)
    expected = seen.get(key) if rng.random() < 0.8 else f"{client}.{n - 1}"
    return Operation(kind, key, value, expected, client=client)


def run_clients(
    replicas: Sequence[Replica],
    history: History,
    *,
    commands_per_replica: int,
    clients_per_replica: int,
    keys: int,
    seed: int = 1,
) -> set[str]:
    """Have clients of every replica run random commands at the same time; record them.

    Returns the request ids of every write that completed (a get may take no slot).
    """
    request_ids: set[str] = set()
    lock = threading.Lock()
    errors: list[BaseException] = []
    start = threading.Barrier(len(replicas) * clients_per_replica)

    def client(replica: Replica, number: int) -> None:
        rng = random.Random(seed * 1000 + replica.index * 100 + number)
        name = f"{replica.index}"
        try:
            start.wait()
            seen: dict[str, str | None] = {}
            for n in range(commands_per_replica // clients_per_replica):
                operation = random_operation(rng, keys, name, number * 1000 + n, seen)
                command = _command_of(replica, operation)
                history.record(
                    lambda c=command: replica.execute(c),  # type: ignore[misc]
                    operation,
                    unknown_outcome=(CommandTimeoutError,),
                )
                _note_seen(seen, operation)
                if operation.op != "get":
                    with lock:
                        request_ids.add(command.request_id)
        except BaseException as error:
            errors.append(error)
            raise

    threads = [
        threading.Thread(target=client, args=(replica, number))
        for replica in replicas
        for number in range(clients_per_replica)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    if errors:
        raise errors[0]
    return request_ids


def _command_of(replica: Replica, operation: Operation) -> Command:
    """The replica's command for a recorded operation (with a new request id)."""
    if operation.op == "put":
        return replica.command("put", operation.key, value=operation.value)
    if operation.op == "cas":
        assert operation.value is not None
        return replica.command(
            "cas", operation.key, value=operation.value, expected=operation.expected
        )
    return replica.command(operation.op, operation.key)


def _note_seen(seen: dict[str, str | None], operation: Operation) -> None:
    """Remember the value a completed operation left (or found) for its key."""
    if operation.completed is None:
        return
    if operation.op == "get":
        seen[operation.key] = operation.result
    elif operation.op == "put" or (operation.op == "cas" and operation.result):
        seen[operation.key] = operation.value
    elif operation.op == "delete":
        seen[operation.key] = None


class Cluster:
    """Three worker processes, one per replica, that can be killed and restarted."""

    def __init__(self, env: dict[str, str], tmp_path: Path):
        """Prepare to run workers with ``env`` (logs of their errors go in ``tmp_path``)."""
        self.env = {**os.environ, **env, "PYTHONPATH": str(ROOT)}
        self.tmp_path = tmp_path
        self.workers: dict[str, subprocess.Popen[str]] = {}

    def start(self, name: str) -> None:
        """Start the worker of replica ``name``; return once it is following."""
        stderr = (self.tmp_path / f"{name}.stderr").open("a")
        worker = subprocess.Popen(
            [sys.executable, str(WORKER), name],
            env=self.env,
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=stderr,
            text=True,
        )
        stderr.close()
        assert worker.stdout is not None
        if worker.stdout.readline().strip() != "ready":
            worker.kill()
            raise AssertionError(f"{name} did not start: {self.errors(name)}")
        self.workers[name] = worker

    def kill(self, name: str) -> None:
        """SIGKILL the worker of ``name``."""
        worker = self.workers.pop(name)
        worker.send_signal(signal.SIGKILL)
        worker.wait()

    def pause(self, name: str) -> None:
        """SIGSTOP the worker of ``name``: it holds its state and does nothing."""
        self.workers[name].send_signal(signal.SIGSTOP)

    def resume(self, name: str) -> None:
        """SIGCONT the worker of ``name``."""
        self.workers[name].send_signal(signal.SIGCONT)

    def stop(self) -> None:
        """Stop every worker (SIGTERM); fail if one had died of an error."""
        for worker in self.workers.values():
            worker.terminate()
        for name, worker in self.workers.items():
            # Generous: a loaded machine (CI runs everything at once) can be slow to stop.
            try:
                code = worker.wait(timeout=90)
            except subprocess.TimeoutExpired:
                worker.send_signal(signal.SIGUSR1)  # the worker writes its threads' stacks
                time.sleep(1)
                worker.kill()
                worker.wait()
                msg = f"{name} did not stop within 90 s of SIGTERM; its stacks: {self.errors(name)}"
                raise AssertionError(msg) from None
            assert code == 0, self.errors(name)
        self.workers.clear()

    def errors(self, name: str) -> str:
        """What the worker of ``name`` wrote to stderr."""
        return (self.tmp_path / f"{name}.stderr").read_text()
