"""A user's System running for an end-to-end test, on any runner, over any backend.

:func:`start_system` (behind the plugin's ``run_system`` fixture) starts a System and
returns a :class:`RunningSystem`: ``get(cls)`` gives an application to call,
``wait_until_caught_up(timeout)`` waits until every follower has processed everything its
leaders recorded, and ``stop()`` ends it all.

=============  ==============================================================================
runner         how the followers run
=============  ==============================================================================
``single``     :class:`~eventsourcing.system.SingleThreadedRunner`: inside each ``save()``
``threads``    :class:`~eventsourcing.system.MultiThreadedRunner`: a thread per follower
``processes``  :class:`~runners.MultiProcessRunner`: an OS process per follower
``workers``    :class:`~runners.WorkerProcesses`: ``python -m runners run SYSTEM --app NAME``
               per follower, as in production; SYSTEM must be importable by a new process
=============  ==============================================================================

These are names of the one table of runners, :data:`runners.RUNNERS`.

Backends: ``popo`` (in memory: ``single`` and ``threads`` only), ``sqlite`` (a database file
per application) and ``postgres``. Transports (``processes`` and ``workers`` only): ``None``
(multiprocessing queues for ``processes``, polling for ``workers``), ``redis``, ``kombu``
(over Redis) and ``postgres`` (LISTEN/NOTIFY, with the ``postgres`` backend).
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from eventsourcing.application import Application, TApplication
from eventsourcing.system import Runner, System
from runners.cli import load_system
from runners.errors import ConfigurationError, did_you_mean
from runners.lag import Lag, follower_lag
from runners.multiprocess import MultiProcessRunner
from runners.subprocesses import WorkerProcesses
from runners.table import IN_PROCESS, PLUGIN_RUNNERS, runner_class

__all__ = [
    "BACKENDS",
    "RUNNERS",
    "TRANSPORTS",
    "RunningSystem",
    "WorkerProcesses",
    "backend_env",
    "check_choices",
    "start_system",
    "transport_env",
]

RUNNERS = PLUGIN_RUNNERS  # the names of runners.table.RUNNERS that run_system starts
BACKENDS = ("popo", "sqlite", "postgres")
TRANSPORTS = ("redis", "kombu", "postgres")


def _check(kind: str, value: str, choices: Sequence[str]) -> None:
    if value not in choices:
        hint = did_you_mean(value, choices)
        raise ConfigurationError(f"Unknown {kind} {value!r}: choose from {choices}.{hint}")


def check_choices(runner: str, backend: str, transport: str | None) -> None:
    """Raise :class:`~runners.errors.ConfigurationError` for a combination that can't run."""
    runner_class(runner, RUNNERS)
    _check("backend", backend, BACKENDS)
    if transport is not None:
        _check("transport", transport, TRANSPORTS)
    if backend == "popo" and runner not in IN_PROCESS:
        msg = (
            f"runner={runner!r} can't use backend='popo': other processes can't share "
            "in-memory stores. Use backend='sqlite' or backend='postgres'"
        )
        raise ConfigurationError(msg)
    if transport is not None and runner in IN_PROCESS:
        msg = (
            f"runner={runner!r} prompts its followers in-process: transport={transport!r} "
            "is for runner='processes' or runner='workers'"
        )
        raise ConfigurationError(msg)
    if transport == "postgres" and backend != "postgres":
        msg = "transport='postgres' (LISTEN/NOTIFY) needs backend='postgres'"
        raise ConfigurationError(msg)


def backend_env(
    backend: str, system: System, folder: Path, postgres: Mapping[str, str] | None = None
) -> dict[str, str]:
    """Settings that put every application of ``system`` on ``backend``.

    SQLite gets a file per application in ``folder``; PostgreSQL gets the ``POSTGRES_*``
    settings in ``postgres`` (one database: each application has tables of its own).
    """
    if backend == "popo":
        return {"PERSISTENCE_MODULE": "eventsourcing.popo"}
    if backend == "sqlite":
        folder.mkdir(parents=True, exist_ok=True)
        env = {"PERSISTENCE_MODULE": "eventsourcing.sqlite"}
        for name in system.nodes:
            env[f"{name.upper()}_SQLITE_DBNAME"] = str(folder / f"{name}.sqlite3")
        return env
    if postgres is None:
        raise ConfigurationError("backend='postgres' needs the POSTGRES_* settings of a database")
    return {"PERSISTENCE_MODULE": "eventsourcing.postgres", **postgres}


def transport_env(transport: str | None, redis_url: str | None = None) -> dict[str, str]:
    """``PROMPT_TRANSPORT`` for ``transport`` (``redis`` and ``kombu`` over ``redis_url``)."""
    if transport is None:
        return {}
    if transport == "postgres":
        return {"PROMPT_TRANSPORT": "postgres"}
    if redis_url is None:
        raise ConfigurationError(f"transport={transport!r} needs the URL of a Redis database")
    return {"PROMPT_TRANSPORT": redis_url if transport == "redis" else f"kombu+{redis_url}"}


class RunningSystem:
    """A System started by :func:`start_system` (or the ``run_system`` fixture)."""

    def __init__(self, runner: Runner[Any], env: Mapping[str, str]) -> None:
        """Wrap a started ``runner``; ``env`` are the applications' settings."""
        self.runner = runner
        self.system = runner.system
        self.env = dict(env)

    def get(self, cls: type[TApplication]) -> TApplication:
        """Return the running system's instance of the application class ``cls``."""
        return self.runner.get(cls)

    def lags(self) -> dict[tuple[str, str], int]:
        """How many notifications each follower has yet to process, per ``(leader, follower)``."""
        return {edge: lag for edge, (lag, _, _) in self._positions().items()}

    def wait_until_caught_up(self, timeout: float = 30.0) -> None:
        """Wait until every follower has processed every notification of its leaders.

        Raises the runner's error at once if a follower failed, and :class:`TimeoutError`,
        saying who is how far behind, after ``timeout`` seconds.
        """
        deadline = time.monotonic() + timeout
        while True:
            self._raise_errors()
            before = self._leader_positions()
            positions = self._positions()
            # Caught up, and nothing new recorded meanwhile (followers of followers too).
            caught_up = not any(lag for lag, _, _ in positions.values())
            if caught_up and self._leader_positions() == before:
                return
            if time.monotonic() > deadline:
                behind = "; ".join(
                    f"{follower} is {lag} behind {leader} (tracked {tracked} of {last})"
                    for (leader, follower), (lag, tracked, last) in positions.items()
                    if lag
                )
                raise TimeoutError(f"Not caught up after {timeout}s: {behind or 'still busy'}")
            time.sleep(0.02)

    def stop(self) -> None:
        """Stop the runner (raising a follower's error, if one failed)."""
        self.runner.stop()

    def _app(self, name: str) -> Application[Any]:
        return self.runner.get(self.system.get_app_cls(name))

    def _leader_positions(self) -> dict[str, int]:
        return {
            name: self._app(name).recorder.max_notification_id() or 0
            for name in self.system.leaders
        }

    def _positions(self) -> dict[tuple[str, str], Lag]:
        return {
            (leader, follower): follower_lag(
                self.runner.get(self.system.follower_cls(follower)), leader, self._app(leader)
            )
            for leader, follower in self.system.edges
        }

    def _raise_errors(self) -> None:
        watch = getattr(self.runner, "watch_for_errors", None)
        if watch is not None:
            watch(0)


def start_system(
    system: System | str,
    runner: str = "single",
    backend: str = "popo",
    transport: str | None = None,
    *,
    env: Mapping[str, str] | None = None,
    folder: Path,
    postgres: Mapping[str, str] | None = None,
    redis_url: str | None = None,
    poll_interval: float = 0.2,
) -> RunningSystem:
    """Start ``system`` (or the System a topic ``module:attribute`` names) on ``runner``.

    ``postgres`` (``POSTGRES_*`` settings) and ``redis_url`` say where the servers are, when
    ``backend`` or ``transport`` need them; ``env`` adds settings of the user's own;
    ``folder`` holds SQLite files and worker logs.
    """
    check_choices(runner, backend, transport)
    topic = system if isinstance(system, str) else None
    if isinstance(system, str):
        system = load_system(system)
    settings = {
        **backend_env(backend, system, folder, postgres),
        **transport_env(transport, redis_url),
        **dict(env or {}),
    }
    runner_cls = runner_class(runner, RUNNERS)
    started: Runner[Any]
    if issubclass(runner_cls, WorkerProcesses):
        started = runner_cls(
            system, settings, folder=folder, poll_interval=poll_interval, topic=topic
        )
    elif issubclass(runner_cls, MultiProcessRunner):
        started = runner_cls(system, env=settings, poll_interval=poll_interval)
    else:
        started = runner_cls(system, env=settings)
    started.start()
    return RunningSystem(started, settings)
