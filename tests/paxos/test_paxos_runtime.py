"""The replicated key-value store on the distributed runtime (acceptance 1, continued).

The same system as on the in-process runners: on ``MultiProcessRunner`` (one OS process per
replica), and on workers started with the runner CLI, woken through Redis Streams and
through kombu (its Redis transport), over SQLite files and PostgreSQL. Clients are replica
applications in the test's process, over the same databases, whose saves prompt the
workers. Every replica must end with the same log, slot for slot, and the same store.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from paxos_cluster import MODES, assert_agreement, replica_env, wait_until_agreed

from examples.paxos.application import Replica
from examples.paxos.demo import race
from examples.paxos.system import system
from runners import MultiProcessRunner

pytestmark = pytest.mark.timeout(300)

ROOT = Path(__file__).resolve().parents[2]
REPLICAS = ("Replica0", "Replica1", "Replica2")
CLIENT_SETTINGS = {"PAXOS_POLL_INTERVAL": "0.01", "PAXOS_TIMEOUT": "60"}


def exercise(replicas: list[Replica]) -> set[str]:
    """Commands through different replicas, some racing; return the request ids seen."""
    r0, r1, r2 = replicas
    r0.put("a", "1")
    assert r1.get("a") == "1"
    assert r2.cas("a", "1", "2") is True
    assert r0.cas("a", "1", "3") is False
    race(lambda: r0.put("b", "0"), lambda: r1.put("b", "1"), lambda: r2.put("b", "2"))
    won = race(*(lambda r=r: r.cas("c", None, r.name) for r in replicas))  # type: ignore[misc]
    assert sorted(won) == [False, False, True]
    values = race(lambda: r0.get("b"), lambda: r1.get("b"), lambda: r2.get("b"))
    assert len(set(values)) == 1
    return {c.request_id for r in replicas for c in r.applied_commands() if c.op != "noop"}


def assert_replicas_agree(replicas: list[Replica]) -> None:
    """Wait until every replica has applied every chosen slot; then compare them."""
    applied = wait_until_agreed(replicas, at_least=9)  # the writes; gets may take no slot
    request_ids = {c.request_id for r in replicas for c in r.applied_commands() if c.op != "noop"}
    log = assert_agreement(replicas, request_ids)
    assert len(log) == applied
    assert replicas[0].store().data["a"] == "2"


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("backend", ["sqlite_file", "postgres"])
def test_replicas_agree_on_the_multi_process_runner(
    backend: str, mode: str, request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    env = {**replica_env(backend, request, tmp_path), **CLIENT_SETTINGS, "PAXOS_MODE": mode}
    with MultiProcessRunner(system, env=env) as runner:
        replicas: list[Replica] = [runner.get(system.get_app_cls(n)) for n in REPLICAS]  # type: ignore[misc]
        exercise(replicas)
        assert_replicas_agree(replicas)


@pytest.fixture
def cli_workers(tmp_path: Path) -> Iterator[Any]:
    """Start a CLI worker per replica with ``cli_workers(env)``; all are stopped after."""
    started: list[subprocess.Popen[bytes]] = []

    def start(env: dict[str, str]) -> None:
        full_env = {**os.environ, **env, "PYTHONPATH": str(ROOT)}
        for name in REPLICAS:
            log = (tmp_path / f"{name}.log").open("ab")
            args = ["run", "examples.paxos.system:system", "--app", name]
            started.append(
                subprocess.Popen(
                    [sys.executable, "-m", "runners", *args],
                    env=full_env,
                    cwd=ROOT,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                )
            )

    yield start
    for process in started:
        process.terminate()
    codes = [process.wait(timeout=60) for process in started]
    logs = "\n".join(p.read_text(errors="replace") for p in tmp_path.glob("Replica*.log"))
    assert codes == [0, 0, 0], logs


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("transport", ["redis", "kombu"])
@pytest.mark.parametrize("backend", ["sqlite_file", "postgres"])
def test_replicas_agree_on_cli_workers(
    backend: str,
    transport: str,
    mode: str,
    request: pytest.FixtureRequest,
    tmp_path: Path,
    cli_workers: Any,
) -> None:
    url = request.getfixturevalue("redis_url")
    prompt = url if transport == "redis" else f"kombu+{url}"
    env = {
        **replica_env(backend, request, tmp_path),
        "PROMPT_TRANSPORT": prompt,
        "PAXOS_MODE": mode,
    }
    cli_workers(env)
    replicas = [system.get_app_cls(name)(env={**env, **CLIENT_SETTINGS}) for name in REPLICAS]
    try:
        exercise(replicas)  # type: ignore[arg-type]
        assert_replicas_agree(replicas)  # type: ignore[arg-type]
    finally:
        for replica in replicas:
            replica.close()
