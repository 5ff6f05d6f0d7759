"""``python -m examples.paxos``: help, the demo, and a client of a cluster of worker processes."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from paxos_cluster import ROOT, Cluster, replica_env

from examples.paxos.__main__ import EXIT_CONFIG, EXIT_NO, EXIT_OK, EXIT_TIMEOUT, main

pytestmark = pytest.mark.timeout(120)


def run_cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """Run the command line in a process of its own."""
    return subprocess.run(
        [sys.executable, "-m", "examples.paxos", *args],
        cwd=ROOT,
        env={**os.environ, **(env or {})},
        capture_output=True,
        text=True,
        timeout=90,
    )


def test_help_lists_the_commands_with_examples(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    for command in ("demo", "put", "get", "delete", "cas"):
        assert command in out
    assert "REPLICA0_SQLITE_DBNAME" in out and "python -m examples.paxos put" in out


def test_bad_arguments_are_named(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["get", "x", "--timeout", "-1"])
    assert exit_info.value.code == 2
    assert "positive number of seconds" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["get", "x", "--replica", "Replica9"])
    assert "Replica9" in capsys.readouterr().err


def test_a_client_without_a_database_is_told_what_to_set(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("PERSISTENCE_MODULE", raising=False)
    assert main(["put", "x", "1"]) == EXIT_CONFIG
    err = capsys.readouterr().err
    assert "PERSISTENCE_MODULE" in err and "REPLICA0_SQLITE_DBNAME" in err


def test_demo_shows_the_replicas_agree() -> None:
    result = run_cli("demo")
    assert result.returncode == EXIT_OK, result.stderr
    assert "The replicas agree." in result.stdout
    for title in ("Log: the command each replica has chosen", "Store: each replica's keys"):
        assert title in result.stdout


@pytest.fixture
def cluster_env(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[dict[str, str]]:
    """Three worker processes on SQLite files; the environment a client of them needs."""
    env = {**replica_env("sqlite_file", request, tmp_path), "PAXOS_POLL_INTERVAL": "0.01"}
    cluster = Cluster(env, tmp_path)
    try:
        for name in ("Replica0", "Replica1", "Replica2"):
            cluster.start(name)
        yield env
        cluster.stop()
    finally:
        for worker in cluster.workers.values():
            worker.kill()


def test_commands_against_a_running_cluster(cluster_env: dict[str, str]) -> None:
    assert run_cli("put", "colour", "red", env=cluster_env).stdout == "colour=red\n"
    got = run_cli("get", "colour", "--replica", "Replica2", env=cluster_env)
    assert (got.returncode, got.stdout) == (EXIT_OK, "red\n")
    refused = run_cli("cas", "colour", "green", "blue", "--replica", "Replica1", env=cluster_env)
    assert refused.returncode == EXIT_NO and "was not 'green'" in refused.stderr
    assert run_cli("cas", "colour", "red", "blue", env=cluster_env).returncode == EXIT_OK
    assert run_cli("cas", "owner", "-", "ann", "--absent", env=cluster_env).returncode == EXIT_OK
    assert run_cli("delete", "colour", env=cluster_env).returncode == EXIT_OK
    missing = run_cli("get", "colour", "--replica", "Replica1", env=cluster_env)
    assert missing.returncode == EXIT_NO and "not set" in missing.stderr
    assert run_cli("get", "owner", env=cluster_env).stdout == "ann\n"


def test_a_client_of_a_stopped_cluster_times_out(
    tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    env = replica_env("sqlite_file", request, tmp_path)
    result = run_cli("put", "x", "1", "--timeout", "0.5", env=env)
    assert result.returncode == EXIT_TIMEOUT
    assert "majority of the replicas running" in result.stderr
