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
``workers``    :class:`WorkerProcesses`: ``python -m runners run SYSTEM --app NAME`` per
               follower, as in production; SYSTEM must be importable by a new process
=============  ==============================================================================

Backends: ``popo`` (in memory: ``single`` and ``threads`` only), ``sqlite`` (a database file
per application) and ``postgres``. Transports (``processes`` and ``workers`` only): ``None``
(multiprocessing queues for ``processes``, polling for ``workers``), ``redis``, ``kombu``
(over Redis) and ``postgres`` (LISTEN/NOTIFY, with the ``postgres`` backend).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from eventsourcing.application import Application, ProgrammingError, TApplication
from eventsourcing.system import (
    EventProcessingError,
    MultiThreadedRunner,
    Runner,
    SingleThreadedRunner,
    System,
    UnknownApplicationError,
)
from eventsourcing.system.failures import STOP, ErrorPolicy
from eventsourcing.utils import EnvType
from runners.cli import load_system
from runners.errors import ConfigurationError, RunnerError, did_you_mean
from runners.lag import Lag, follower_lag
from runners.multiprocess import MultiProcessRunner
from runners.worker import EXIT_PROCESSING_ERROR

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

RUNNERS = ("single", "threads", "processes", "workers")
BACKENDS = ("popo", "sqlite", "postgres")
TRANSPORTS = ("redis", "kombu", "postgres")
IN_PROCESS = ("single", "threads")
LOG_TAIL = 3000  # characters of a worker's log shown when it failed


def _check(kind: str, value: str, choices: Sequence[str]) -> None:
    if value not in choices:
        hint = did_you_mean(value, choices)
        raise ConfigurationError(f"Unknown {kind} {value!r}: choose from {choices}.{hint}")


def check_choices(runner: str, backend: str, transport: str | None) -> None:
    """Raise :class:`~runners.errors.ConfigurationError` for a combination that can't run."""
    _check("runner", runner, RUNNERS)
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


class WorkerProcesses(Runner[Any]):
    """Runs each follower as ``python -m runners run SYSTEM --app NAME``, as in production.

    The applications that :meth:`get` returns are constructed in this process over the same
    settings: their saves prompt the workers when ``PROMPT_TRANSPORT`` is set. Each worker
    writes its log to ``folder/worker-NAME.log``. The children can import whatever this
    process can (they get its ``sys.path`` as ``PYTHONPATH``).

    A failing policy stops its worker, so that the test sees the error at once, unless
    the settings choose another ``FOLLOWER_ERRORS`` policy (a worker's own default retries,
    then parks).
    """

    STOP_TIMEOUT = 15.0
    STOP_AT_ONCE = {ErrorPolicy.ERRORS: STOP, ErrorPolicy.RETRIES: "0"}

    def __init__(
        self,
        system: System,
        env: EnvType | None = None,
        *,
        folder: Path,
        poll_interval: float,
        topic: str | None = None,
    ) -> None:
        """Prepare to run the followers of ``system``, which new processes import by its
        ``topic`` (default: the module attribute the system is assigned to)."""
        super().__init__(system, env)
        self.topic = topic or _topic_of(system)
        self.folder = folder
        self.poll_interval = poll_interval
        self.apps: dict[str, Application[Any]] = {}
        self.processes: dict[str, subprocess.Popen[bytes]] = {}

    def start(self) -> None:
        """Construct the applications here, then start a worker per follower."""
        super().start()
        try:
            for name in self.system.nodes:
                self.apps[name] = self.system.get_app_cls(name)(env=self.env)
            for name in self.system.followers:
                self.processes[name] = self._spawn(name)
        except BaseException:
            self._halt()
            raise

    def _spawn(self, name: str) -> subprocess.Popen[bytes]:
        paths = [p for p in sys.path if p and os.path.isdir(p)]
        inherited = os.environ.get("PYTHONPATH")
        settings = {**os.environ, **dict(self.env or {})}
        env = {
            **({} if ErrorPolicy.ERRORS in settings else self.STOP_AT_ONCE),
            **settings,
            "PYTHONPATH": os.pathsep.join([*paths, *([inherited] if inherited else [])]),
        }
        self.folder.mkdir(parents=True, exist_ok=True)
        args = ["run", self.topic, "--app", name, "--poll-interval", str(self.poll_interval)]
        with self.log(name).open("ab") as log:
            return subprocess.Popen(
                [sys.executable, "-m", "runners", *args],
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=os.getcwd(),
            )

    def log(self, name: str) -> Path:
        """The file the worker for ``name`` writes its log to."""
        return self.folder / f"worker-{name}.log"

    def watch_for_errors(self, timeout: float | None = None) -> bool:
        """Wait up to ``timeout`` for a worker to exit; if one did, stop (which raises)."""
        deadline = time.monotonic() + (timeout or 0.0)
        while not any(p.poll() is not None for p in self.processes.values()):
            if time.monotonic() >= deadline:
                return False
            time.sleep(0.05)
        self.stop()
        return True  # pragma: no cover - stop() raised

    def stop(self) -> None:
        """SIGTERM every worker (each finishes its batch), close the applications, and raise
        if a worker had exited on its own or failed to stop cleanly."""
        if not self.is_started:
            return
        failed = {n: p.returncode for n, p in self.processes.items() if p.poll() is not None}
        codes = self._halt()
        failed.update({n: c for n, c in codes.items() if c not in (0, -signal.SIGTERM)})
        if failed:
            raise self._failure(*next(iter(failed.items())))

    def _halt(self) -> dict[str, int]:
        for process in self.processes.values():
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + self.STOP_TIMEOUT
        codes: dict[str, int] = {}
        for name, process in self.processes.items():
            try:
                codes[name] = process.wait(max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                process.kill()
                codes[name] = process.wait()
        for app in self.apps.values():
            app.close()
        self.apps = {}
        self.processes = {}
        super().stop()
        return codes

    def _failure(self, name: str, code: int) -> Exception:
        text = self.log(name).read_text(errors="replace")[-LOG_TAIL:]
        message = f"The worker for {name} exited with code {code}; its log ends:\n{text}"
        if code == EXIT_PROCESSING_ERROR:
            return EventProcessingError(message)
        return RunnerError(message)

    def get(self, cls: type[TApplication]) -> TApplication:
        """Return this process's instance of ``cls`` (its saves prompt the workers)."""
        app = self.apps.get(getattr(cls, "name", ""))
        if not isinstance(app, cls):
            msg = f"{cls} is not an application of this running system: {list(self.apps)}"
            raise UnknownApplicationError(msg)
        return app


def _topic_of(system: System) -> str:
    try:
        return system.topic
    except ProgrammingError as e:
        msg = (
            f"runner='workers' starts new processes, which import the system by its topic: "
            f"{e}, or pass the topic 'module:attribute' instead of the System"
        )
        raise ConfigurationError(msg) from None


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
    started: Runner[Any]
    if runner == "single":
        started = SingleThreadedRunner(system, env=settings)
    elif runner == "threads":
        started = MultiThreadedRunner(system, env=settings)
    elif runner == "processes":
        started = MultiProcessRunner(system, env=settings, poll_interval=poll_interval)
    else:
        started = WorkerProcesses(
            system, settings, folder=folder, poll_interval=poll_interval, topic=topic
        )
    started.start()
    return RunningSystem(started, settings)
