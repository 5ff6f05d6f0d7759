"""A real RabbitMQ server for tests, found or started once.

:func:`resolve_rabbitmq` tries each source of :mod:`runners.testing.servers` in order:

1. ``AMQP_URL`` or ``RABBITMQ_URL`` (``amqp://USER:PASSWORD@HOST:PORT/VHOST``); a server
   named there that doesn't answer is an error, never a reason to fall back;
2. testcontainers (``rabbitmq:3-alpine``), when a Docker daemon answers;
3. (no wheel ships RabbitMQ: the ``pip`` source has none to offer);
4. ``rabbitmq-server`` on the PATH (``apt-get install rabbitmq-server``), started as a
   throwaway node of this session's own.

A node started here has everything in a temporary folder (``RABBITMQ_MNESIA_BASE``,
``RABBITMQ_LOG_BASE``, its Erlang cookie, no config or plugins from ``/etc/rabbitmq``), its
own node name, and free ports for AMQP, Erlang distribution and epmd, all bound to
127.0.0.1. It can be halted (a clean shutdown, as ``rabbitmqctl stop`` does) and resumed on
the same port; :meth:`LocalRabbitMQ.stop` also ends its epmd. The Debian package's service
is never used: its ``/usr/sbin/rabbitmq-server`` wrapper switches to the ``rabbitmq`` user
and writes to ``/var/log``, so the node is started from the script beside the package's
own binaries (``/usr/lib/rabbitmq/bin``) when there is one.
"""

from __future__ import annotations

import importlib
import os
import shutil
import signal
import subprocess
import time
from collections.abc import Callable, Sequence
from contextlib import suppress
from pathlib import Path
from typing import Any
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

__all__ = ["LocalRabbitMQ", "RabbitMQServer", "resolve_rabbitmq"]

STARTUP_TIMEOUT = 90.0
STOP_TIMEOUT = 30.0
# The Debian package's own copy of the script, which runs as the calling user.
DEBIAN_SCRIPT = Path("/usr/lib/rabbitmq/bin/rabbitmq-server")
FIX = (
    "Install RabbitMQ (apt-get install rabbitmq-server, or brew install rabbitmq) so that "
    "rabbitmq-server is on the PATH, or set AMQP_URL to a running broker"
)


class RabbitMQServer(Server):
    """A RabbitMQ server for the test session, however it was obtained."""

    def __init__(self, url: str, source: str, stop: Callable[[], None] | None = None) -> None:
        """Use the broker at ``url`` (``amqp://...``); ``stop`` ends it, if this session
        started it."""
        self.url = url
        self.source = source
        self._stop = stop

    @property
    def host(self) -> str:
        """The broker's host name or address."""
        return urlparse(self.url).hostname or "127.0.0.1"

    @property
    def port(self) -> int:
        """The broker's AMQP port."""
        return urlparse(self.url).port or 5672

    def stop(self) -> None:
        """Stop the broker if this session started it."""
        if self._stop is not None:
            self._stop()

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.source} at {self.host}:{self.port}>"


class LocalRabbitMQ(LocalServer, RabbitMQServer):
    """A throwaway RabbitMQ node on 127.0.0.1, which can be halted and resumed."""

    def __init__(self, executable: Path, source: str) -> None:
        """Start ``executable`` (a ``rabbitmq-server`` script) as a node of its own."""
        super().__init__(f"amqp://guest:guest@127.0.0.1:{free_port()}//", source)
        self.executable = executable
        self.dist_port = free_port()
        self.epmd_port = free_port()
        self._process: subprocess.Popen[bytes] | None = None
        self._launch("eventsourcing-test-rabbitmq-", self.resume)

    @property
    def is_running(self) -> bool:
        """True between a start and a :meth:`halt`."""
        return self._process is not None

    @property
    def log(self) -> Path:
        """The node's standard output and error, appended to by each start."""
        return self.folder / "server.log"

    def environment(self) -> dict[str, str]:
        """The variables that make the node this folder's own, bound to 127.0.0.1."""
        folder = self.folder
        return {
            **os.environ,
            "HOME": str(folder),  # the Erlang cookie
            "RABBITMQ_NODENAME": f"eventsourcing-test-{self.port}@localhost",
            "RABBITMQ_NODE_IP_ADDRESS": "127.0.0.1",
            "RABBITMQ_NODE_PORT": str(self.port),
            "RABBITMQ_DIST_PORT": str(self.dist_port),
            "RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS": "-kernel inet_dist_use_interface {127,0,0,1}",
            "ERL_EPMD_ADDRESS": "127.0.0.1",
            "ERL_EPMD_PORT": str(self.epmd_port),
            "RABBITMQ_MNESIA_BASE": str(folder / "mnesia"),
            "RABBITMQ_LOG_BASE": str(folder / "log"),
            "RABBITMQ_CONF_ENV_FILE": str(folder / "rabbitmq-env.conf"),
            "RABBITMQ_CONFIG_FILE": str(folder / "rabbitmq"),
            "RABBITMQ_ADVANCED_CONFIG_FILE": str(folder / "advanced.config"),
            "RABBITMQ_ENABLED_PLUGINS_FILE": str(folder / "enabled_plugins"),
        }

    def resume(self) -> None:
        """Start the node (again) and wait until it accepts AMQP connections."""
        with self.log.open("ab") as out:
            self._process = subprocess.Popen(
                [str(self.executable)],
                env=self.environment(),
                cwd=self.folder,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # its Erlang processes, stopped together
            )
        self._wait_until_listening()

    def _wait_until_listening(self) -> None:
        deadline = time.monotonic() + STARTUP_TIMEOUT
        while True:
            with suppress(ServerUnavailableError):
                wait_for_port("127.0.0.1", self.port, timeout=0.5)
                return
            process = self._process
            if process is not None and process.poll() is not None:
                tail = self.log.read_text(errors="replace")[-2000:]
                self._process = None
                msg = f"rabbitmq-server exited with code {process.returncode}: {tail}"
                raise ServerUnavailableError(msg)
            if time.monotonic() > deadline:
                msg = f"RabbitMQ did not listen on 127.0.0.1:{self.port} in {STARTUP_TIMEOUT}s"
                raise ServerUnavailableError(msg)

    def halt(self) -> None:
        """Stop the node cleanly (SIGTERM: it closes its clients' connections and exits),
        killing it if it takes longer than :data:`STOP_TIMEOUT`."""
        process, self._process = self._process, None
        if process is None:
            return
        process.terminate()
        with suppress(subprocess.TimeoutExpired):  # then killed, below
            process.wait(STOP_TIMEOUT)
        with suppress(ProcessLookupError):  # whatever of the node is left
            os.killpg(process.pid, signal.SIGKILL)
        process.wait()

    def stop(self) -> None:
        """Stop the node, its epmd, and delete its folder."""
        try:
            super().stop()
        finally:
            self._stop_epmd()

    def _stop_epmd(self) -> None:
        epmd = shutil.which("epmd")
        if epmd is not None:
            env = {**os.environ, "ERL_EPMD_PORT": str(self.epmd_port)}
            subprocess.run([epmd, "-kill"], env=env, capture_output=True, timeout=10, check=False)


def wait_until_ready(url: str, timeout: float) -> None:
    """Wait until the broker at ``url`` accepts an AMQP connection (a port that is open is
    not enough: Docker opens it before the broker starts)."""
    # kombu has no type hints: treat it as Any rather than scatter ignores.
    kombu: Any = importlib.import_module("kombu")
    deadline = time.monotonic() + timeout
    while True:
        try:
            with kombu.Connection(url, connect_timeout=2) as connection:
                connection.ensure_connection(max_retries=0)
            return
        except Exception as e:
            if time.monotonic() > deadline:
                raise ServerUnavailableError(f"RabbitMQ at {url} not ready: {e}") from None
            time.sleep(0.25)


def _from_environment() -> RabbitMQServer:
    name = "AMQP_URL" if os.environ.get("AMQP_URL") else "RABBITMQ_URL"
    url = os.environ.get(name)
    if not url:
        raise NotHereError("neither AMQP_URL nor RABBITMQ_URL is set")
    parsed = urlparse(url)
    try:
        wait_for_port(parsed.hostname or "127.0.0.1", parsed.port or 5672, timeout=3)
    except ServerUnavailableError as e:
        raise ServerUnavailableError(f"{name} is set but {e}; fix it or unset it") from None
    return RabbitMQServer(url, f"the environment ({name})")


def _from_testcontainers() -> RabbitMQServer:
    docker_answers()
    from testcontainers.core.container import DockerContainer

    container = DockerContainer("rabbitmq:3-alpine").with_exposed_ports(5672)
    container.start()
    try:
        host = container.get_container_host_ip()
        url = f"amqp://guest:guest@{host}:{container.get_exposed_port(5672)}//"
        wait_until_ready(url, STARTUP_TIMEOUT)
    except BaseException:
        container.stop()
        raise
    return RabbitMQServer(url, "testcontainers", container.stop)


def _from_pip() -> RabbitMQServer:
    raise NotHereError("no wheel ships RabbitMQ")


def _from_path() -> RabbitMQServer:
    # The Debian package's script first: its /usr/sbin wrapper needs root, and /usr/sbin
    # may not be on a user's PATH at all.
    found = DEBIAN_SCRIPT if DEBIAN_SCRIPT.is_file() else shutil.which("rabbitmq-server")
    if not found:
        raise NotHereError("no rabbitmq-server on the PATH")
    return LocalRabbitMQ(Path(found), "rabbitmq-server on the PATH")


def resolve_rabbitmq(sources: Sequence[str] = SOURCES) -> RabbitMQServer:
    """Return a RabbitMQ server from the first of ``sources`` that has one.

    Raises :class:`~runners.testing.servers.ServerUnavailableError`, saying what each source
    lacked, when none has. ``resolve_rabbitmq(["path"])`` always starts a node of the
    caller's own, which can be halted and resumed.
    """
    attempts = [
        ("environment", _from_environment),
        ("docker", _from_testcontainers),
        ("pip", _from_pip),
        ("path", _from_path),
    ]
    return first_that_works("RabbitMQ", attempts, sources, FIX)
