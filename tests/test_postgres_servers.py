"""The server fixtures themselves: real servers, and a database of each test's own (the CI
rules are tested with the plugin, in test_testing_plugin.py)."""

from __future__ import annotations

import pytest

from runners.testing.postgres import PostgresDatabase, PostgresServer
from runners.testing.redis import RedisServer


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
