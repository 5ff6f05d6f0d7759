"""Health endpoints and Prometheus metrics of a worker (``eventsourcing-runner --metrics-port``).

The server answers:

- ``/healthz`` (liveness): 200 while the worker's loop turns, whether it holds its lease or
  stands by; 503 once its database has failed for longer than ``unhealthy_after`` seconds,
  or the loop has not turned for that long (so an orchestrator restarts it).
- ``/readyz`` (readiness): 200 once the worker has connected (its applications are open)
  and while its database answers; 503 before and during database trouble, and while a
  follower it holds the lease of is paused (alive, but not processing).
- ``/metrics``: the metrics below, in Prometheus' text format.

The ``metrics`` extra brings ``prometheus_client``.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Sequence
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from eventsourcing.deadletters import SKIPPED, DeadLetter
from eventsourcing.persistence import Recording
from runners.errors import ConfigurationError
from runners.lag import Lag
from runners.observer import WorkerObserver

__all__ = [
    "UNHEALTHY_AFTER",
    "MetricsServer",
    "WorkerMetrics",
    "require_prometheus",
    "serve_metrics",
]

UNHEALTHY_AFTER = 30.0  # seconds of database errors (or a stuck loop) before /healthz fails

INSTALL_HINT = "install the metrics extra: pip install 'eventsourcing[metrics]'"


def require_prometheus() -> Any:
    """The ``prometheus_client`` module, or a ConfigurationError saying which extra brings it."""
    try:
        import prometheus_client
    except ImportError:
        msg = f"--metrics-port needs prometheus_client: {INSTALL_HINT}"
        raise ConfigurationError(msg) from None
    return prometheus_client


class WorkerMetrics(WorkerObserver):
    """What a worker reports: its own registry of metrics, and its health.

    It is the worker's observer (see :mod:`runners.observer`): the worker's hooks below
    update the metrics.
    """

    def __init__(self, unhealthy_after: float = UNHEALTHY_AFTER) -> None:
        """Fail liveness after ``unhealthy_after`` seconds of database errors or no loop."""
        prom = require_prometheus()
        self.unhealthy_after = unhealthy_after
        self.registry = prom.CollectorRegistry()
        self._make_metrics(prom)
        self._lock = threading.Lock()
        self._connected = False
        self._failing_since: dict[tuple[str, str], float] = {}
        self._heartbeat = time.monotonic()
        self._leases: dict[str, bool] = {}
        self._paused: set[str] = set()
        self._leader_last: dict[tuple[str, str], int] = {}

    def _make_metrics(self, prom: Any) -> None:
        """The metrics, in this worker's own registry."""
        fl = ["follower", "leader"]
        f = ["follower"]
        counter, gauge = prom.Counter, prom.Gauge

        def make(kind: Any, name: str, doc: str, labels: list[str]) -> Any:
            return kind(name, doc, labels, registry=self.registry)

        self.notifications = make(
            counter,
            "eventsourcing_notifications_processed",
            "Notifications of a leader processed",
            fl,
        )
        self.events = make(
            counter, "eventsourcing_events_recorded", "Events recorded by a follower's policy", f
        )
        self.batches = make(
            prom.Histogram,
            "eventsourcing_batch_duration_seconds",
            "Time to process and record a batch",
            fl,
        )
        self.tracked = make(
            gauge,
            "eventsourcing_tracked_position",
            "Last notification id of the leader processed",
            fl,
        )
        self.leader_position = make(
            gauge, "eventsourcing_leader_position", "Last notification id in the leader's log", fl
        )
        self.lag_gauge = make(
            gauge, "eventsourcing_lag", "Notifications of the leader not yet processed", fl
        )
        self.last_batch = make(
            gauge,
            "eventsourcing_last_batch_timestamp_seconds",
            "Unix time the last batch was committed",
            f,
        )
        self.lease_held = make(
            gauge, "eventsourcing_lease_held", "1 if this worker holds the lease", f
        )
        self.db_errors = make(
            counter, "eventsourcing_database_errors", "Database errors the worker retried", f
        )
        self.retries = make(
            counter,
            "eventsourcing_policy_retries",
            "Retries of a notification whose policy raised",
            fl,
        )
        self.parked_count = make(
            counter,
            "eventsourcing_notifications_parked",
            "Notifications parked as dead letters",
            fl,
        )
        self.skipped = make(
            counter,
            "eventsourcing_notifications_skipped",
            "Notifications whose policy failed, passed over",
            fl,
        )
        self.resolved_count = make(
            counter,
            "eventsourcing_dead_letters_resolved",
            "Dead letters retried and processed",
            fl,
        )
        self.paused_gauge = make(gauge, "eventsourcing_paused", "1 if the follower is paused", f)

    # -- hooks called by the worker ------------------------------------------------------

    def connected(self) -> None:
        """The worker's applications are open."""
        self._connected = True
        self.beat()

    def beat(self) -> None:
        """The loop turned."""
        self._heartbeat = time.monotonic()

    def lease(self, follower: str, held: bool) -> None:
        """Whether the worker holds ``follower``'s lease (and so processes it)."""
        self._leases[follower] = held
        self.lease_held.labels(follower).set(1 if held else 0)

    def batch(self, follower: str, leader: str, processed: int, seconds: float) -> None:
        """A batch of ``processed`` notifications was committed in ``seconds``."""
        self.notifications.labels(follower, leader).inc(processed)
        self.batches.labels(follower, leader).observe(seconds)
        self.last_batch.labels(follower).set(time.time())

    def recorded(self, follower: str, leader: str, recordings: Sequence[Recording[Any]]) -> None:
        """The follower's policy recorded ``recordings``."""
        self.events.labels(follower).inc(len(recordings))

    def positions(
        self,
        follower: str,
        leader: str,
        tracked: int,
        leader_last: int | None = None,
        lag: int | None = None,
    ) -> None:
        """The follower's position in the leader's log, the log's last id (if read), and
        the notifications it has yet to process (if counted: see :mod:`runners.lag`)."""
        self.tracked.labels(follower, leader).set(tracked)
        if leader_last is not None:
            self.leader_position.labels(follower, leader).set(leader_last)
            self._leader_last[(follower, leader)] = leader_last
        if lag is None:
            lag = self._leader_last.get((follower, leader), tracked) - tracked
        self.lag_gauge.labels(follower, leader).set(max(0, lag))

    def lag(self, follower: str, leader: str, measure: Callable[[], Lag]) -> None:
        """Measure how far behind the follower is, and set the positions and the lag."""
        lag = measure()
        self.positions(follower, leader, lag.tracked, lag.leader_last, lag.lag)

    def retrying(
        self,
        follower: str,
        leader: str,
        notification_id: int,
        attempt: int,
        delay: float,
        error: BaseException,
    ) -> None:
        """A notification whose policy raised is to be retried."""
        self.retries.labels(follower, leader).inc()

    def parked(self, follower: str, letter: DeadLetter) -> None:
        """A notification was parked (or skipped: recorded and passed over)."""
        skipped = letter.status == SKIPPED
        counter = self.skipped if skipped else self.parked_count
        counter.labels(follower, letter.leader_name).inc()

    def resolved(self, follower: str, letter: DeadLetter) -> None:
        """A dead letter's retry was processed."""
        self.resolved_count.labels(follower, letter.leader_name).inc()

    def paused(self, follower: str, paused: bool) -> None:
        """Whether ``follower`` is paused (then the worker is not ready)."""
        self.paused_gauge.labels(follower).set(1 if paused else 0)
        with self._lock:
            (self._paused.add if paused else self._paused.discard)(follower)

    def database_error(self, follower: str, source: str = "store") -> None:
        """The database failed (for ``source``: store or lease); the worker will retry."""
        self.db_errors.labels(follower).inc()
        with self._lock:
            self._failing_since.setdefault((follower, source), time.monotonic())

    def database_ok(self, follower: str, source: str = "store") -> None:
        """The database answered (for ``source``)."""
        with self._lock:
            self._failing_since.pop((follower, source), None)

    # -- health --------------------------------------------------------------------------

    def health(self) -> tuple[bool, bool, dict[str, Any]]:
        """``(alive, ready, details)`` as /healthz and /readyz report them."""
        now = time.monotonic()
        with self._lock:
            failing = min(self._failing_since.values(), default=None)
            paused = sorted(self._paused)
        failing_for = 0.0 if failing is None else now - failing
        stalled_for = now - self._heartbeat
        alive = failing_for < self.unhealthy_after and stalled_for < self.unhealthy_after
        ready = alive and self._connected and failing is None and not paused
        details = {
            "alive": alive,
            "ready": ready,
            "connected": self._connected,
            "database_failing_for": round(failing_for, 1),
            "loop_stalled_for": round(stalled_for, 1),
            "leases": dict(self._leases),
            "paused": paused,
        }
        return alive, ready, details


class MetricsServer:
    """Serves ``/healthz``, ``/readyz`` and ``/metrics`` of ``metrics`` on a daemon thread."""

    def __init__(self, metrics: WorkerMetrics, port: int, host: str = "127.0.0.1") -> None:
        """Listen on ``host:port`` at once (port 0: any free port, see :attr:`port`)."""
        prom = require_prometheus()
        exposition = prom.generate_latest
        content_type = prom.CONTENT_TYPE_LATEST

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                path = self.path.split("?", 1)[0]
                if path == "/metrics":
                    self._send(200, exposition(metrics.registry), content_type)
                elif path in ("/healthz", "/readyz"):
                    alive, ready, details = metrics.health()
                    ok = alive if path == "/healthz" else ready
                    body = json.dumps(details).encode()
                    self._send(200 if ok else 503, body, "application/json")
                else:
                    self._send(404, b"try /healthz, /readyz or /metrics\n", "text/plain")

            def _send(self, code: int, body: bytes, kind: str) -> None:
                self.send_response(code)
                self.send_header("Content-Type", kind)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:
                pass  # probes every few seconds would flood the log

        self._server = ThreadingHTTPServer((host, port), Handler)
        self._server.daemon_threads = True
        self.port: int = self._server.server_address[1]
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()

    def close(self) -> None:
        """Stop serving."""
        self._server.shutdown()
        self._server.server_close()


def serve_metrics(
    port: int, host: str = "127.0.0.1", unhealthy_after: float = UNHEALTHY_AFTER
) -> tuple[WorkerMetrics, MetricsServer]:
    """New metrics for a worker, served on ``host:port``."""
    metrics = WorkerMetrics(unhealthy_after)
    return metrics, MetricsServer(metrics, port, host)
