"""README.md's way from a clone to a running three-replica cluster, taken as a newcomer takes it.

The README's ```sh block that starts a worker per replica and uses the store runs unchanged
in bash, from the repository's root, with this virtual environment's ``bin`` first on the
PATH (as ``. .venv/bin/activate`` puts it) and its ``servers.env`` pointing at the plugin's
PostgreSQL and Redis. ``python -m runners.testing``, which writes that file on a machine
with no servers, is run for real by the other test here.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import psycopg
import pytest
import redis

ROOT = Path(__file__).resolve().parents[2]
README = ROOT / "README.md"
WAIT = 120.0
STATUS = "eventsourcing-runner status examples.paxos.system:system"


def fenced_block(language: str, containing: str) -> str:
    """The one ```language block of README.md that contains ``containing``."""
    blocks = re.findall(rf"^```{language}\n(.*?)^```", README.read_text(), re.M | re.S)
    (block,) = [b for b in blocks if containing in b]
    return str(block)


def exports(settings: dict[str, str]) -> str:
    """``servers.env`` as ``python -m runners.testing`` writes it."""
    return "".join(f"export {key}={value}\n" for key, value in settings.items())


def newcomer_env() -> dict[str, str]:
    """The environment of a shell with the virtual environment activated."""
    path = f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"
    return {**os.environ, "PATH": path}


def test_the_readme_cluster_commands_run_as_written(
    tmp_path: Path, postgres_database: Any, redis_url: str
) -> None:
    block = fenced_block("sh", "--app Replica0 &")
    assert block.startswith(". ./servers.env\n") and STATUS in block
    servers_env = tmp_path / "servers.env"
    settings = {"PERSISTENCE_MODULE": "eventsourcing.postgres", **postgres_database.env,
                "PROMPT_TRANSPORT": redis_url}  # fmt: skip
    servers_env.write_text(exports(settings))
    commands, kill = block.replace("./servers.env", str(servers_env), 1).split("kill ", 1)
    script = (
        f"{commands}"
        # The README says every lag falls to 0 a moment after the last command.
        f"for i in $(seq 300); do {STATUS} --json > {tmp_path}/status.json"
        f" && ! grep -q '\"lag\": [1-9]' {tmp_path}/status.json && break; sleep 0.2; done\n"
        f"workers=$(jobs -p)\nkill {kill}"
        'for pid in $workers; do wait $pid; echo "exit $?"; done\n'
    )
    result = subprocess.run(["bash", "-c", script], cwd=ROOT, env=newcomer_env(),
                            capture_output=True, text=True, timeout=WAIT)  # fmt: skip
    assert result.returncode == 0, result.stderr
    out = result.stdout.splitlines()
    assert out[:3] == ["colour=red", "red", "colour=blue"], result.stderr
    # The status table has the README's columns and rows, but for the numbers.
    shown = fenced_block("text", "Replica2  Replica2").splitlines()
    table = [line for line in out[3:-3] if line]
    assert [line.split()[:2] for line in table] == [line.split()[:2] for line in shown]
    assert re.sub(r"\d", "0", table[0]) == re.sub(r"\d", "0", shown[0])
    rows = json.loads((tmp_path / "status.json").read_text())
    assert len(rows) == 9 and {row["lag"] for row in rows} == {0}, rows
    assert out[-3:] == ["exit 0"] * 3, result.stderr  # SIGTERM: each worker exits 0


def test_python_m_runners_testing_serves_postgres_and_redis_until_interrupted(
    tmp_path: Path,
) -> None:
    server = subprocess.Popen([sys.executable, "-m", "runners.testing", "--env-file",
                               "servers.env"], cwd=tmp_path, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True)  # fmt: skip
    servers_env = tmp_path / "servers.env"
    try:
        deadline = time.monotonic() + WAIT
        while not servers_env.exists():
            assert server.poll() is None, server.communicate()
            assert time.monotonic() < deadline, "no servers.env"
            time.sleep(0.2)
        lines = servers_env.read_text().splitlines()
        settings = dict(line.removeprefix("export ").split("=", 1) for line in lines)
        assert settings["PERSISTENCE_MODULE"] == "eventsourcing.postgres"
        assert settings["POSTGRES_HOST"] == "127.0.0.1"
        assert settings["PROMPT_TRANSPORT"] == settings["REDIS_URL"]
        postgres = {k: v for k, v in settings.items() if k.startswith("POSTGRES_")}
        conninfo = " ".join(f"{k[9:].lower()}={v}" for k, v in postgres.items())  # POSTGRES_X
        with psycopg.connect(conninfo, connect_timeout=10) as connection:
            assert connection.execute("SELECT current_database()").fetchone() == (
                "eventsourcing",)  # fmt: skip
        client = redis.Redis.from_url(settings["REDIS_URL"])
        assert client.ping()
    finally:
        server.send_signal(signal.SIGINT)
        out, err = server.communicate(timeout=WAIT)
    assert server.returncode == 0, err
    assert out.startswith("export PERSISTENCE_MODULE=") and "Ctrl-C stops" in out, out
    assert not servers_env.exists()  # removed with the servers
    with pytest.raises(redis.ConnectionError):
        client.ping()
    with pytest.raises(psycopg.OperationalError):
        psycopg.connect(conninfo, connect_timeout=5)
