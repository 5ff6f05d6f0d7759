"""MultiProcessRunner: one OS process per follower application, supervised by the parent.

Children are spawned (never forked with open connections) and each runs the worker loop
(:mod:`runners.worker`) for one follower. The parent constructs every application too:
:meth:`MultiProcessRunner.get` returns one over the same databases, whose saves prompt the
children. Prompts travel through ``PROMPT_TRANSPORT`` when it is set, else through
``multiprocessing`` queues (:mod:`runners.transports.multiprocess`).

A child that dies is reported with its exit code and started again, after 0.1 s doubling up
to 5 s (reset once it has run for a minute). A child stopped by a policy error, or by
settings it can't use, is not restarted: the runner's ``has_errored`` is set, and
:meth:`~MultiProcessRunner.stop` raises :class:`~eventsourcing.system.EventProcessingError`
with the child's message.
"""

from __future__ import annotations

import logging
import multiprocessing
import multiprocessing.connection
import os
import sys
import threading
import time
import traceback
from dataclasses import dataclass, field
from typing import Any, ClassVar

from eventsourcing.application import Application, TApplication
from eventsourcing.system import (
    EventProcessingError,
    Runner,
    RunnerState,
    System,
    UnknownApplicationError,
)
from eventsourcing.system.failures import IN_PROCESS_DEFAULT
from eventsourcing.utils import Environment, EnvType, get_topic, resolve_topic
from runners.errors import ConfigurationError, NotShareableError, PolicyError
from runners.exit_codes import EXIT_BAD_SETTINGS, EXIT_ERROR, EXIT_PROCESSING_ERROR
from runners.metrics import UNHEALTHY_AFTER, require_prometheus, serve_metrics
from runners.transports import prompt_transport_in
from runners.transports.multiprocess import QueueTransport
from runners.transports.publisher import PromptPublisher
from runners.worker import (
    POLL_INTERVAL,
    Backoff,
    Worker,
    handle_stop_signals,
)

__all__ = ["MultiProcessRunner"]

logger = logging.getLogger(__name__)

SHAREABLE = "eventsourcing.sqlite (with a database file) or eventsourcing.postgres"


@dataclass
class _Child:
    """One follower's process, and when to start it again."""

    name: str
    inbox: Any
    process: Any = None
    started_at: float = 0.0
    restart_at: float | None = None
    backoff: Backoff = field(default_factory=Backoff)


class MultiProcessRunner(Runner[Any]):
    """Runs each follower of a system in a process of its own (spawned).

    ``followers`` restricts the processes to some followers (default: all). The start
    method is ``spawn`` unless ``start_method`` says ``forkserver``. With ``metrics_port``,
    the i-th follower's process serves its health and metrics on ``metrics_port + i``
    (see :mod:`runners.metrics`).
    """

    STOP_TIMEOUT: ClassVar[float] = 10.0
    RESTART_AFTER_STABLE: ClassVar[float] = 60.0

    def __init__(
        self,
        system: System,
        env: EnvType | None = None,
        *,
        followers: list[str] | None = None,
        poll_interval: float = POLL_INTERVAL,
        start_method: str = "spawn",
        metrics_port: int | None = None,
        metrics_host: str = "127.0.0.1",
        unhealthy_after: float = UNHEALTHY_AFTER,
    ) -> None:
        """Check that every application's store can be shared between processes."""
        super().__init__(system, env)
        self.followers = list(system.followers if followers is None else followers)
        self.poll_interval = poll_interval
        self._metrics = (metrics_host, metrics_port, unhealthy_after)
        if metrics_port is not None:
            require_prometheus()
        self._context: Any = multiprocessing.get_context(start_method)
        self._merged = {**os.environ, **dict(env or {})}
        for name in system.nodes:
            _check_shareable(name, Environment(name, self._merged))
        self.apps: dict[str, Application[Any]] = {}
        self.children: dict[str, _Child] = {}
        self.has_errored = threading.Event()
        self.errors: list[EventProcessingError] = []
        self._error_queue: Any = None
        self._supervisor: threading.Thread | None = None
        self._stopping = threading.Event()

    # -- lifecycle --------------------------------------------------------------------

    def start(self) -> None:
        """Construct the parent's applications and spawn a process per follower."""
        super().start()
        try:
            self._start()
        except BaseException:
            self._halt()
            raise

    def _start(self) -> None:
        self._stopping.clear()
        self.has_errored.clear()
        self.errors = []
        uses_queues = not any(
            prompt_transport_in(Environment(n, self._merged)) for n in self.system.nodes
        )
        self._error_queue = self._context.Queue()
        self.children = {
            name: _Child(name, self._context.Queue() if uses_queues else None)
            for name in self.followers
        }
        self._routes = (
            {
                leader: [self.children[f].inbox for f in followers if f in self.children]
                for leader, followers in self.system.leads.items()
            }
            if uses_queues
            else {}
        )
        for name in self.system.nodes:
            app = self.system.get_app_cls(name)(env=self.env)
            self.apps[name] = app
            if uses_queues:
                app.prompt_publisher = PromptPublisher(QueueTransport(None, self._routes))
        for child in self.children.values():
            self._spawn(child)
        self._supervisor = threading.Thread(
            target=self._supervise, name="MultiProcessRunner supervisor", daemon=True
        )
        self._supervisor.start()

    def _spawn(self, child: _Child) -> None:
        edges = [
            (get_topic(self.system.get_app_cls(a)), get_topic(self.system.get_app_cls(b)))
            for a, b in self.system.edges
        ]
        host, port, unhealthy_after = self._metrics
        serve = None
        if port is not None:
            serve = (host, port + self.followers.index(child.name), unhealthy_after)
        args = (edges, child.name, self.env, self.poll_interval, child.inbox, self._routes, serve)
        process = self._context.Process(
            target=_child_main, args=(*args, self._error_queue), name=f"worker {child.name}"
        )
        process.start()
        child.process = process
        child.started_at = time.monotonic()
        child.restart_at = None

    def _supervise(self) -> None:
        """Report children that die and start them again, with backoff."""
        while not self._stopping.is_set():
            alive = [c.process.sentinel for c in self.children.values() if c.restart_at is None]
            multiprocessing.connection.wait(alive, timeout=0.2)
            if self._stopping.is_set():
                return
            self._collect_errors()
            now = time.monotonic()
            for child in self.children.values():
                if child.restart_at is None and not child.process.is_alive():
                    self._child_died(child, now)
                elif child.restart_at is not None and now >= child.restart_at:
                    self._spawn(child)

    def _child_died(self, child: _Child, now: float) -> None:
        code = child.process.exitcode
        if code in (EXIT_PROCESSING_ERROR, EXIT_BAD_SETTINGS):
            child.restart_at = float("inf")  # fix the code, data or settings, then start again
            time.sleep(0.1)  # the child's message is on its way through the queue
            self._collect_errors()
            if not any(child.name in str(e) for e in self.errors):
                self.errors.append(EventProcessingError(f"{child.name} worker stopped ({code})"))
            self.has_errored.set()
            return
        if now - child.started_at > self.RESTART_AFTER_STABLE:
            child.backoff.reset()
        delay = child.backoff.next_delay()
        child.restart_at = now + delay
        logger.error(
            "Worker process for %s exited with code %s; restarting it in %.1fs",
            child.name,
            code,
            delay,
        )

    def _collect_errors(self) -> None:
        while True:
            try:
                message = self._error_queue.get_nowait()
            except Exception:
                return
            self.errors.append(EventProcessingError(message))

    def watch_for_errors(self, timeout: float | None = None) -> bool:
        """Wait up to ``timeout`` for a child to fail; if one did, stop (which raises)."""
        if self.has_errored.wait(timeout=timeout):
            self.stop()
        return self.has_errored.is_set()

    def stop(self) -> None:
        """Stop every child gracefully (SIGTERM), close the applications, re-raise errors."""
        if self.state is RunnerState.STOPPED:
            return
        self._halt()
        if self.errors:
            raise self.errors[0]

    def _halt(self) -> None:
        self._stopping.set()
        if self._supervisor is not None:
            self._supervisor.join(timeout=5)
        processes = [c.process for c in self.children.values() if c.process is not None]
        for process in processes:
            if process.is_alive():
                process.terminate()  # SIGTERM: the child finishes its batch and exits 0
        deadline = time.monotonic() + self.STOP_TIMEOUT
        for process in processes:
            process.join(max(0.0, deadline - time.monotonic()))
            if process.is_alive():
                logger.error("Worker process %s did not stop in time: killing it", process.name)
                process.kill()
                process.join()
        if self._error_queue is not None:
            self._collect_errors()
        for app in self.apps.values():
            app.close()
        self.apps = {}
        super().stop()

    def get(self, cls: type[TApplication]) -> TApplication:
        """Return the parent's instance of ``cls`` (its saves prompt the children)."""
        name = getattr(cls, "name", None)
        app = self.apps.get(name) if isinstance(name, str) else None
        if app is None:
            if self.state is not RunnerState.STARTED:
                msg = f"Can't get {cls}: MultiProcessRunner is not started; start() it first"
            else:
                msg = (
                    f"Application class {cls} is not in this runner's system, which has "
                    f"{list(self.system.nodes)}; add it to a pipe of the System"
                )
            raise UnknownApplicationError(msg)
        if not isinstance(app, cls):
            msg = f"The application named {name!r} is {type(app)}, not an instance of {cls}"
            raise TypeError(msg)
        return app


def _check_shareable(name: str, env: Environment) -> None:
    module = (env.get("PERSISTENCE_MODULE") or "eventsourcing.popo").strip()
    memory_sqlite = module.endswith("sqlite") and any(
        marker in (env.get("SQLITE_DBNAME") or "") for marker in (":memory:", "mode=memory")
    )
    if module.endswith("popo") or memory_sqlite:
        store = "in-memory SQLite" if memory_sqlite else f"POPO ({module})"
        msg = (
            f"MultiProcessRunner can't run {name!r} on {store}: in-memory stores cannot be "
            f"shared between processes. Set PERSISTENCE_MODULE to {SHAREABLE}"
        )
        raise NotShareableError(msg)


def _child_main(
    edges: list[tuple[str, str]],
    name: str,
    env: EnvType | None,
    poll_interval: float,
    inbox: Any,
    routes: dict[str, list[Any]],
    serve: tuple[str, int, float] | None,
    errors: Any,
) -> None:
    """A child's life: rebuild the system, run the worker for ``name``, exit with its code."""
    logging.basicConfig(
        level=logging.INFO,
        format=f"%(asctime)s %(levelname)s [{name} {os.getpid()}] %(name)s: %(message)s",
    )
    system = System(pipes=[[resolve_topic(a), resolve_topic(b)] for a, b in edges])
    transport = None
    if inbox is not None:
        transport = QueueTransport(inbox, routes, system.follows[name])
    metrics = None
    if serve is not None:
        host, port, unhealthy_after = serve
        metrics = serve_metrics(port, host, unhealthy_after)[0]
    # A runner, like the in-process ones: an error stops it unless FOLLOWER_ERRORS says else.
    worker = Worker(
        system,
        [name],
        env,
        poll_interval=poll_interval,
        transport=transport,
        metrics=metrics,
        errors=IN_PROCESS_DEFAULT,
    )
    handle_stop_signals(worker.stop)
    try:
        worker.run()
    except (PolicyError, ConfigurationError) as error:
        errors.put(str(error))
        errors.close()
        errors.join_thread()
        sys.exit(EXIT_PROCESSING_ERROR if isinstance(error, PolicyError) else EXIT_BAD_SETTINGS)
    except Exception:
        traceback.print_exc()
        sys.exit(EXIT_ERROR)
