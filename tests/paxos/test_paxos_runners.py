"""The replicated key-value store on every in-process runner and back end.

Acceptance 1: the same commands through different replicas, some racing for the same slot,
leave every replica with the same log, slot for slot, and the same store. Acceptance 2 and
3: three replicas each take 100 commands at once from concurrent clients; every command is
chosen exactly once, in one slot, all replicas agree, and the clients' history is
linearizable.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from linearizability import History, assert_linearizable
from paxos_cluster import MODES, assert_agreement, replica_env, run_clients, wait_until_agreed
from system_model import RUNNERS

from eventsourcing.system import (
    MultiThreadedRunner,
    NewMultiThreadedRunner,
    NewSingleThreadedRunner,
    Runner,
    SingleThreadedRunner,
)
from examples.paxos.application import Replica
from examples.paxos.demo import race
from examples.paxos.system import Replica0, Replica1, Replica2, build_system, system

pytestmark = pytest.mark.timeout(180)

BACKENDS = ["popo", "sqlite_file", "postgres"]


@pytest.fixture(params=RUNNERS, ids=lambda cls: cls.__name__)
def runner_cls(request: pytest.FixtureRequest) -> type[Runner[Any]]:
    """Each of the four in-process runners."""
    return request.param  # type: ignore[no-any-return]


@pytest.fixture(params=MODES)
def mode(request: pytest.FixtureRequest) -> str:
    """Basic Paxos and multi-Paxos (PAXOS_MODE)."""
    return request.param  # type: ignore[no-any-return]


@pytest.fixture(params=BACKENDS)
def env(request: pytest.FixtureRequest, tmp_path: Path, mode: str) -> dict[str, str]:
    """Each back end, a database per replica, in each mode."""
    return {**replica_env(request.param, request, tmp_path), "PAXOS_MODE": mode}


def replicas_of(runner: Runner[Any]) -> list[Replica]:
    """The three replicas of the runner."""
    return [runner.get(cls) for cls in (Replica0, Replica1, Replica2)]


# ---------------------------------------------------------------------------------------------
# Acceptance 1: same log, same store, on every runner and back end


def test_replicas_agree(runner_cls: type[Runner[Any]], env: dict[str, str]) -> None:
    with runner_cls(system, env=env) as runner:
        r0, r1, r2 = replicas_of(runner)
        # One after another, through different replicas: each sees the one before.
        r0.put("a", "1")
        assert r1.get("a") == "1"
        assert r2.cas("a", "1", "2") is True
        assert r0.cas("a", "1", "3") is False
        assert r1.get("a") == "2"
        r2.delete("a")
        assert r0.get("a") is None
        assert r1.cas("a", None, "4") is True
        # Racing for the same slots: all three propose at once.
        race(lambda: r0.put("b", "0"), lambda: r1.put("b", "1"), lambda: r2.put("b", "2"))
        won = race(*(lambda r=r: r.cas("c", None, r.name) for r in (r0, r1, r2)))  # type: ignore[misc]
        assert sorted(won) == [False, False, True]
        values = race(lambda: r0.get("b"), lambda: r1.get("b"), lambda: r2.get("b"))
        assert len(set(values)) == 1 and values[0] in ("0", "1", "2")

        replicas = [r0, r1, r2]
        wait_until_agreed(replicas, at_least=11)  # the writes; gets may take no slot
        log = assert_agreement(replicas, request_ids=requests_in_logs(replicas))
        assert [c.op for c in log if c.op not in ("noop", "get")][:5] == [
            "put", "cas", "cas", "delete", "cas"
        ]  # fmt: skip
        store = r0.store().data
        assert store["a"] == "4" and store["b"] == values[0]
        assert store["c"] == (r0, r1, r2)[won.index(True)].name


def requests_in_logs(replicas: list[Replica]) -> set[str]:
    """Every request id applied by the first replica (agreement checks the others)."""
    return {c.request_id for c in replicas[0].applied_commands() if c.op != "noop"}


def test_a_cluster_of_one_and_of_five(mode: str) -> None:
    for size in (1, 5):
        cluster = build_system(size)
        with SingleThreadedRunner(cluster, env={"PAXOS_MODE": mode}) as runner:
            replicas = [runner.get(cluster.get_app_cls(name)) for name in cluster.nodes]
            assert all(isinstance(r, Replica) for r in replicas)
            replicas[0].put("x", "1")
            assert replicas[-1].cas("x", "1", "2") is True
            assert replicas[size // 2].get("x") == "2"
            wait_until_agreed(replicas, at_least=2)  # type: ignore[arg-type]


# ---------------------------------------------------------------------------------------------
# Acceptance 2 and 3: contention, exactly once, linearizable

CONTENTION = [
    *[("popo", runner) for runner in RUNNERS],
    ("sqlite_file", MultiThreadedRunner),
    ("sqlite_file", NewSingleThreadedRunner),
    ("postgres", NewMultiThreadedRunner),
    ("postgres", SingleThreadedRunner),
]


@pytest.mark.parametrize(
    ("backend", "contended_runner"), CONTENTION, ids=lambda p: getattr(p, "__name__", p)
)
def test_contention_chosen_exactly_once_and_linearizable(
    backend: str,
    contended_runner: type[Runner[Any]],
    mode: str,
    request: pytest.FixtureRequest,
    tmp_path: Path,
) -> None:
    env = {**replica_env(backend, request, tmp_path), "PAXOS_MODE": mode}
    history = History()
    with contended_runner(system, env=env) as runner:
        replicas = replicas_of(runner)
        request_ids = run_clients(
            replicas, history, commands_per_replica=100, clients_per_replica=10, keys=10
        )
        assert len(history.operations) == 300
        assert all(op.completed is not None for op in history.operations)
        wait_until_agreed(replicas, at_least=len(request_ids))
        log = assert_agreement(replicas, request_ids)
    assert len(log) >= len(request_ids)
    assert_linearizable(history.operations)
