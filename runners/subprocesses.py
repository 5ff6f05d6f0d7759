"""``WorkerProcesses``: each follower as ``python -m runners run SYSTEM --app NAME``.

The runner of the pytest plugin's ``runner="workers"``: the workers run as in production,
in processes of their own, while the test calls the applications in its own process
(their saves prompt the workers when ``PROMPT_TRANSPORT`` is set, else the workers poll).
SYSTEM must be importable by a new process, by its topic.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from eventsourcing.application import Application, ProgrammingError, TApplication
from eventsourcing.system import (
    EventProcessingError,
    Runner,
    System,
    UnknownApplicationError,
)
from eventsourcing.system.failures import STOP, ErrorPolicy
from eventsourcing.utils import EnvType
from runners.errors import ConfigurationError, RunnerError
from runners.exit_codes import EXIT_PROCESSING_ERROR

__all__ = ["WorkerProcesses"]

LOG_TAIL = 3000  # characters of a worker's log shown when it failed


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
