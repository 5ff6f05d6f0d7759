"""The server fixtures themselves: real servers, a database of each test's own, and CI rules."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import PostgresDatabase
from servers import PostgresServer, RedisServer


def test_postgres_database_is_fresh_and_own(postgres_database: PostgresDatabase) -> None:
    with postgres_database.connect() as conn:
        row = conn.execute(
            "SELECT current_database(), count(*) FROM pg_tables WHERE schemaname = 'public'"
        ).fetchone()
    assert row == (postgres_database.name, 0)
    assert postgres_database.env["POSTGRES_DBNAME"] == postgres_database.name


def test_postgres_server_listens_on_loopback(postgres_server: PostgresServer) -> None:
    if postgres_server.source.startswith("the environment"):
        pytest.skip("a server from the environment may listen anywhere")
    assert postgres_server.settings.host == "127.0.0.1"
    assert postgres_server.settings.password not in repr(postgres_server.settings)


def test_redis_url_is_an_empty_database_of_its_own(redis_url: str) -> None:
    import redis

    client = redis.Redis.from_url(redis_url)
    try:
        assert client.ping()
        assert client.dbsize() == 0
        client.set("key", "value")
        assert client.get("key") == b"value"
    finally:
        client.close()


def test_redis_server_is_a_real_server(redis_server: RedisServer) -> None:
    import redis

    client = redis.Redis.from_url(redis_server.url)
    try:
        assert client.info("server")["redis_version"]
    finally:
        client.close()


PROBE = """
def test_needs_postgres(postgres_database):
    pass
"""


@pytest.mark.parametrize(("ci", "outcome"), [("true", "error"), ("", "skipped")])
def test_missing_server_fails_under_ci_and_skips_locally(
    tmp_path: Path, ci: str, outcome: str
) -> None:
    """With POSTGRES_HOST naming no server, CI=true fails the run; locally it skips."""
    tests = Path(__file__).parent
    (tmp_path / "test_probe.py").write_text(PROBE)
    (tmp_path / "conftest.py").write_text((tests / "conftest.py").read_text())
    env = {
        **os.environ,
        "CI": ci,
        "POSTGRES_HOST": "127.0.0.1",
        "POSTGRES_PORT": "1",  # nothing listens there
        "PYTHONPATH": os.pathsep.join([str(tests), str(tests.parent)]),
    }
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-rs", str(tmp_path)],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
    )
    assert f"1 {outcome}" in result.stdout, result.stdout
    assert "POSTGRES_HOST is set but the server at 127.0.0.1:1 can't be used" in result.stdout
