"""Acceptance 4: replicas in OS processes of their own, killed with SIGKILL and restarted.

Each replica runs in a worker process (``paxos_worker.py``) over its own SQLite file, or its
own tables in PostgreSQL; clients in this process record requests in a replica's database
and wait for its result, as a client of a running cluster does. One replica is killed at a
random moment of a run and restarted: it catches up and agrees, and the history is
linearizable. With two of three replicas killed, nothing is chosen; when one comes back,
the request waiting on the third is chosen and applied, once.

In multi-Paxos mode the replica killed is the leader, and the leader is also stopped with
SIGSTOP (past ``PAXOS_NUDGE_AFTER``, after which followers campaign): another replica is
elected and serves meanwhile, and the stopped leader, resumed, follows.
"""

from __future__ import annotations

import random
import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from linearizability import History, assert_linearizable
from paxos_cluster import (
    MODES,
    Cluster,
    assert_agreement,
    replica_env,
    run_clients,
    wait_until_agreed,
)

from examples.paxos.application import CommandTimeoutError, Replica
from examples.paxos.system import Replica0, Replica1, Replica2

pytestmark = pytest.mark.timeout(240)

CLASSES = (Replica0, Replica1, Replica2)


@pytest.fixture(params=MODES)
def mode(request: pytest.FixtureRequest) -> str:
    """Basic Paxos and multi-Paxos (PAXOS_MODE)."""
    return request.param  # type: ignore[no-any-return]


@pytest.fixture(params=["sqlite_file", "postgres"])
def env(request: pytest.FixtureRequest, tmp_path: Path, mode: str) -> dict[str, str]:
    """Each persistent back end, with quick nudges and polling for the clients."""
    return {
        **replica_env(request.param, request, tmp_path),
        "PAXOS_MODE": mode,
        "SQLITE_LOCK_TIMEOUT": "20",
        "PAXOS_NUDGE_AFTER": "0.5",
        "PAXOS_POLL_INTERVAL": "0.01",
    }


@pytest.fixture
def cluster(env: dict[str, str], tmp_path: Path) -> Iterator[Cluster]:
    """The three workers, started."""
    cluster = Cluster(env, tmp_path)
    try:
        for cls in CLASSES:
            cluster.start(cls.name)
        yield cluster
    finally:
        for worker in cluster.workers.values():
            worker.kill()
            worker.wait()


@pytest.fixture
def clients(env: dict[str, str]) -> Iterator[list[Replica]]:
    """Client-side instances of the three replicas (nothing processes in this process)."""
    replicas = [cls(env=env) for cls in CLASSES]
    yield replicas
    for replica in replicas:
        replica.close()


def test_a_replica_killed_mid_run_catches_up_and_agrees(
    cluster: Cluster, clients: list[Replica], mode: str
) -> None:
    history = History()
    rng = random.Random()

    killed_at: list[float] = []
    victim = "Replica1"

    def kill_and_restart() -> None:
        # A random moment while the clients run: after some of their 90 commands returned
        # (a moment in seconds may fall after the last of them on a fast machine).
        completed_before_kill = rng.randint(3, 30)
        deadline = time.monotonic() + 60
        while len(history.operations) < completed_before_kill:
            assert time.monotonic() < deadline, "the clients made no progress"
            time.sleep(0.01)
        nonlocal victim
        if mode == "multi":  # the worst moment to lose a replica is when it leads
            victim = leader_of(clients)
        cluster.kill(victim)
        killed_at.append(history.now())
        time.sleep(rng.uniform(0.5, 1.5))
        cluster.start(victim)

    killer = threading.Thread(target=kill_and_restart)
    killer.start()
    request_ids = run_clients(
        clients, history, commands_per_replica=30, clients_per_replica=3, keys=4, seed=5
    )
    killer.join()
    # Every command returned (those through the victim once it was back), some of them
    # invoked before the kill and completed after it.
    assert all(op.completed is not None for op in history.operations)
    assert any(op.invoked < killed_at[0] < (op.completed or 0) for op in history.operations)
    wait_until_agreed(clients, at_least=len(request_ids))
    assert_agreement(clients, request_ids)
    assert_linearizable(history.operations)
    cluster.stop()


def test_no_progress_without_a_majority_and_none_chosen_twice(
    cluster: Cluster, clients: list[Replica], mode: str
) -> None:
    if mode == "multi":
        return no_progress_without_a_majority_multi(cluster, clients)
    r0, r1, _ = clients
    r0.put("x", "1")
    r1.put("x", "2")
    wait_until_agreed(clients, at_least=2)

    cluster.kill("Replica1")
    cluster.kill("Replica2")
    command = r0.command("put", "x", value="3")
    with pytest.raises(CommandTimeoutError):
        r0.execute(command, timeout=3)  # nudged several times meanwhile
    # Nothing chosen anywhere since the kills; replica 0 has tried, in one slot at least.
    assert chosen_commands(clients) == [2, 2, 2]
    attempts = r0.slot(2)
    assert attempts is not None and attempts.ballot is not None and attempts.chosen is None

    cluster.start("Replica1")
    assert r0.wait_for(command.request_id, timeout=30).result is None
    assert r0.get("x") == "3"
    cluster.start("Replica2")
    wait_until_agreed(clients, at_least=4)
    applied = {c.request_id for c in r0.applied_commands() if c.op != "noop"}
    log = assert_agreement(clients, applied)
    assert [c.value for c in log if c.op == "put"] == ["1", "2", "3"]
    cluster.stop()


def chosen_commands(replicas: list[Replica]) -> list[int]:
    """How many slots each replica knows to be chosen (looking a little past the last)."""
    counts = []
    for replica in replicas:
        number, chosen, misses = 0, 0, 0
        while misses < 20:
            slot = replica.slot(number)
            misses = misses + 1 if slot is None else 0
            chosen += slot is not None and slot.chosen is not None
            number += 1
        counts.append(chosen)
    return counts


def leader_of(replicas: list[Replica]) -> str:
    """The replica that leads, as its own ledger says (the first of them, after a change)."""
    deadline = time.monotonic() + 60
    while True:
        for replica in replicas:
            if replica.ledger().is_leader:
                return replica.name
        assert time.monotonic() < deadline, "no replica leads"
        time.sleep(0.01)


def no_progress_without_a_majority_multi(cluster: Cluster, clients: list[Replica]) -> None:
    """With multi-Paxos: two of three stopped, nothing is chosen; one back, it is, once."""
    r0, r1, r2 = clients
    r0.put("x", "1")
    r1.put("x", "2")
    wait_until_agreed(clients, at_least=2)
    leader = leader_of(clients)
    survivor = next(r for r in clients if r.name != leader)
    others = [r.name for r in clients if r.name != survivor.name]
    for name in others:
        cluster.kill(name)
    command = survivor.command("put", "x", value="3")
    with pytest.raises(CommandTimeoutError):
        survivor.execute(command, timeout=3)  # reminded, and campaigned, meanwhile
    assert survivor.applied_count() == 2 and survivor.store().data == {"x": "2"}

    cluster.start(others[0])
    assert survivor.wait_for(command.request_id, timeout=30).result is None
    assert survivor.get("x") == "3"
    cluster.start(others[1])
    wait_until_agreed(clients, at_least=3)  # 4 if the get went through the log
    applied = {c.request_id for c in r0.applied_commands() if c.op != "noop"}
    log = assert_agreement(clients, applied)
    assert [c.value for c in log if c.op == "put"] == ["1", "2", "3"]
    assert r2.get("x") == "3"
    cluster.stop()


@pytest.mark.parametrize("mode", ["multi"])  # basic Paxos has no leader
def test_multi_paxos_leader_stopped_past_its_term_is_replaced_and_follows(
    env: dict[str, str], tmp_path: Path
) -> None:
    cluster = Cluster(env, tmp_path)
    clients = [cls(env=env) for cls in CLASSES]
    try:
        for cls in CLASSES:
            cluster.start(cls.name)
        leader_stopped_mid_run(cluster, clients)
    finally:
        for worker in cluster.workers.values():
            worker.send_signal(signal.SIGCONT)
            worker.kill()
            worker.wait()
        for replica in clients:
            replica.close()


def leader_stopped_mid_run(cluster: Cluster, clients: list[Replica]) -> None:
    """SIGSTOP the leader at a random moment of a run, until the others served more
    requests without it; then SIGCONT it. It catches up, and the history is linearizable."""
    history = History()
    rng = random.Random()
    clients[0].put("warm-up", "1")  # elects a leader (a key the clients leave alone)
    stopped = leader_of(clients)
    others = [r for r in clients if r.name != stopped]
    served_while_stopped: list[int] = []
    leaders: list[str] = []  # who led while the leader was stopped

    def stop_and_resume() -> None:
        completed_before = rng.randint(3, 20)
        deadline = time.monotonic() + 60
        while len(history.operations) < completed_before:
            assert time.monotonic() < deadline, "the clients made no progress"
            time.sleep(0.01)
        cluster.pause(stopped)
        paused_at = history.now()
        # Until the others' clients have had requests chosen with the leader stopped.
        while True:
            done = [
                op
                for op in history.operations
                if op.completed is not None and op.invoked > paused_at
            ]
            if len(done) >= 5 or time.monotonic() > deadline + 120:
                break
            time.sleep(0.05)
        served_while_stopped.append(len(done))
        leaders.extend(r.name for r in others if r.ledger().is_leader)
        time.sleep(rng.uniform(0, 0.5))
        cluster.resume(stopped)

    thread = threading.Thread(target=stop_and_resume)
    thread.start()
    request_ids = run_clients(
        others, history, commands_per_replica=30, clients_per_replica=3, keys=4, seed=7
    )
    thread.join()
    assert served_while_stopped[0] >= 5 and leaders, "nobody else was elected"
    everyone = clients
    request_ids |= {c.request_id for c in clients[0].applied_commands() if c.op != "noop"}
    wait_until_agreed(everyone, at_least=len(request_ids))
    assert_agreement(everyone, request_ids)
    assert_linearizable(history.operations)
    cluster.stop()
