"""The worker loop that every out-of-process runner shares.

For each follower application it runs: take the lease (or wait as a standby), pull each
leader's notifications after the tracked position, process them in batches with the
system's batched processing (one transaction per batch: new events and one tracking
record), let the follower prompt its own followers (its ``PROMPT_TRANSPORT`` publisher does
that after each commit), then wait for a prompt or the poll interval, whichever comes first.

Leaders are read through read-side instances of the leader applications, constructed from
the same environment (``LEADERNAME_``-prefixed keys select each one's database).

Failures: a lost database connection is retried with backoff (one log line per attempt); a
broker that is down is retried with backoff while the worker polls. A policy error is dealt
with as the follower's error policy says (``FOLLOWER_ERRORS``; by default in a worker,
three retries with backoff, then the notification is parked as a dead letter and the worker
goes on: see :mod:`eventsourcing.system.failures`); with ``stop``, it stops the worker with
:data:`EXIT_PROCESSING_ERROR` and one log line naming the leader, the notification id and
the event (nothing of the batch is recorded). :meth:`Worker.stop` (SIGTERM, SIGINT)
finishes the batch in hand and returns :data:`EXIT_OK`.

Control: once a poll interval, an active worker reads its followers' settings: a paused
follower is not processed (the worker keeps its lease, and says it has stopped by writing
``pause_acknowledged``); on resume, the positions are read again (they may have been
reset). Dead letters whose retry was requested are processed then too.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import partial
from types import FrameType
from typing import Any

from eventsourcing.application import Application, PromptPublisher
from eventsourcing.deadletters import PAUSE_ACKNOWLEDGED, RETRYING, FollowerStateRecorder
from eventsourcing.persistence import IntegrityError, PersistenceError
from eventsourcing.system import Follower, LeaderFeed, System
from eventsourcing.system.failures import WORKER_DEFAULT, ErrorPolicy
from eventsourcing.utils import Environment, EnvType
from runners.errors import (
    ConfigurationError,
    PolicyError,
    PromptTransportError,
    TransportConnectionError,
    UnknownApplicationNameError,
    did_you_mean,
)
from runners.exit_codes import EXIT_FORCED, EXIT_OK, EXIT_PROCESSING_ERROR
from runners.lag import Lag, follower_lag
from runners.lease import Lease, lease_for
from runners.observer import PROGRESS_THRESHOLD as PROGRESS_THRESHOLD
from runners.observer import WorkerObserver, observer_of
from runners.transports import PromptTransport, open_transport

__all__ = [
    "EXIT_FORCED",
    "EXIT_OK",
    "EXIT_PROCESSING_ERROR",
    "Backoff",
    "Worker",
    "handle_stop_signals",
]

logger = logging.getLogger(__name__)

POLL_INTERVAL = 1.0  # seconds between reads of the leaders' logs without a prompt
METRICS_SCAN_LIMIT = 1000  # notifications of its topics a lag metric counts, at most


class Backoff:
    """Delays between attempts: 0.1 s doubling up to ``maximum``; ``reset`` after success."""

    def __init__(self, maximum: float = 5.0) -> None:
        """Wait at most ``maximum`` seconds between attempts."""
        self.maximum = maximum
        self.attempt = 0

    def next_delay(self) -> float:
        """Count an attempt and return how long to wait before the next."""
        self.attempt += 1
        return float(min(self.maximum, 0.1 * 2 ** (self.attempt - 1)))

    def reset(self) -> None:
        """Start again from the shortest delay."""
        self.attempt = 0


@dataclass
class _Follower:
    """One follower application in a worker, with its leaders, feeds and lease."""

    app: Follower[Any]
    leaders: dict[str, Application[Any]]
    feeds: dict[str, LeaderFeed[Any]] = field(default_factory=dict)
    lease: Lease | None = None
    active: bool = False
    # Leaders whose backlog is measured (for a progress bar) on the next catch-up.
    measure_backlog: set[str] = field(default_factory=set)
    # Paused (a follower setting): the lease is kept, nothing is processed.
    paused: bool = False

    @property
    def state(self) -> FollowerStateRecorder | None:
        """The follower's dead letters and settings (None for a recorder without them)."""
        recorder = self.app.recorder
        return recorder if isinstance(recorder, FollowerStateRecorder) else None

    @property
    def name(self) -> str:
        return self.app.name


class Worker:
    """Processes follower applications of a system until stopped.

    ``names`` are the followers to process in this loop (one thread). ``transport``
    overrides the one ``PROMPT_TRANSPORT`` names; ``use_lease=False`` skips the lease (for a
    runner that is sure to be alone). ``progress`` is called with ``(follower, leader,
    done, total)`` while catching up a backlog of over a thousand notifications.
    ``metrics`` (a :class:`~runners.metrics.WorkerMetrics`) and ``observer`` are told of
    batches, positions, leases, database errors and failures: the worker holds one
    :class:`~runners.observer.WorkerObserver` for all of them (one that does nothing
    without any). ``errors`` is the error policy of followers that set no
    ``FOLLOWER_ERRORS``.
    """

    def __init__(
        self,
        system: System,
        names: Sequence[str],
        env: EnvType | None = None,
        *,
        poll_interval: float = POLL_INTERVAL,
        transport: PromptTransport | None = None,
        use_lease: bool = True,
        progress: Callable[[str, str, int, int], None] | None = None,
        metrics: WorkerObserver | None = None,
        errors: ErrorPolicy = WORKER_DEFAULT,
        observer: WorkerObserver | None = None,
    ) -> None:
        """Prepare to process the followers ``names`` of ``system`` (nothing opens yet)."""
        self.system = system
        self.names = list(names)
        self.env = dict(env or {})
        self.poll_interval = poll_interval
        self.transport = transport
        self.use_lease = use_lease
        #: Told of everything the worker does (its metrics, its progress bars).
        self.observer = observer_of(metrics, observer, progress=progress)
        self.errors = errors
        self.followers: list[_Follower] = []
        self._stopping = threading.Event()
        self._db_backoff = Backoff()
        self._transport_backoff = Backoff(maximum=8.0)
        self._transport_retry_at = 0.0
        for name in self.names:
            check_follower_name(system, name)

    # -- lifecycle --------------------------------------------------------------------

    def open(self) -> None:
        """Construct the followers, their leaders' read-side instances, and the transport.

        Raises the library's errors for unreachable databases and
        :class:`~runners.errors.ConfigurationError` for bad settings.
        """
        try:
            for name in self.names:
                self.followers.append(self._open_follower(name))
            if self.transport is None:
                self.transport = self._open_transport()
            else:
                # A transport given to the worker carries the followers' own prompts too.
                for entry in self.followers:
                    if entry.app.prompt_publisher is None:
                        entry.app.prompt_publisher = PromptPublisher(self.transport)
            self.observer.connected()
        except BaseException:
            self.close()
            raise

    def _open_follower(self, name: str) -> _Follower:
        system = self.system
        leaders: dict[str, Application[Any]] = {}
        app = system.follower_cls(name)(env=self.env)
        try:
            app.error_policy = ErrorPolicy.from_env(app.env, self.errors)
            for leader_name in system.follows[name]:
                leader = system.get_app_cls(leader_name)(env=self.env)
                leaders[leader_name] = leader
                app.follow(leader_name, leader.notification_log)
            entry = _Follower(app, leaders)
            if self.use_lease:
                entry.lease = lease_for(name, app.recorder, Environment(name, app.env))
        except BaseException:
            for leader in leaders.values():
                leader.close()
            app.close()
            raise
        return entry

    def _open_transport(self) -> PromptTransport | None:
        urls = {f.app.env.get("PROMPT_TRANSPORT", "").strip() for f in self.followers}
        urls.discard("")
        if not urls:
            return None
        if len(urls) > 1:
            msg = (
                f"The followers {self.names} name different PROMPT_TRANSPORT values "
                f"{sorted(urls)}: run them in separate workers, or give them one transport"
            )
            raise PromptTransportError(msg)
        recorders = {n: a.recorder for f in self.followers for n, a in f.leaders.items()}
        return open_transport(urls.pop(), recorders, recorders=recorders)

    def close(self) -> None:
        """Release the leases, the transport and every application."""
        for entry in self.followers:
            if entry.lease is not None:
                entry.lease.release()
            for leader in entry.leaders.values():
                leader.close()
            entry.app.close()
        self.followers = []
        if self.transport is not None:
            self.transport.close()
            self.transport = None

    def stop(self) -> None:
        """Ask the loop to finish the batch in hand and return (any thread, or a handler)."""
        self._stopping.set()

    @property
    def is_stopping(self) -> bool:
        """Whether :meth:`stop` was called."""
        return self._stopping.is_set()

    def run(self) -> int:
        """Open (if need be), loop until stopped, close; return an exit code.

        Raises :class:`~runners.errors.PolicyError` after logging it, when a policy fails.
        """
        if not self.followers:
            self.open()
        try:
            self._loop()
        finally:
            self.close()
        return EXIT_OK

    def catch_up(self) -> bool:
        """Open, process the followers' backlogs to the ends of their leaders' logs once,
        and close. False (nothing done) if another worker holds a lease."""
        if not self.followers:
            self.open()
        try:
            self._take_leases()
            if not all(entry.active for entry in self.followers):
                return False
            while self._process_all() and not self.is_stopping:
                self._take_leases()
        finally:
            self.close()
        return True

    # -- the loop ---------------------------------------------------------------------

    def _loop(self) -> None:
        next_poll = 0.0
        while not self.is_stopping:
            self.observer.beat()
            if time.monotonic() >= next_poll:
                next_poll = time.monotonic() + self.poll_interval
                for entry in self.followers:
                    for feed in entry.feeds.values():
                        feed.request_catch_up()
                    self._measure_positions(entry)
                    self._read_control(entry)
            self._take_leases()
            if self._process_all():
                continue  # stopped part-way (lease lost, or a retry is due): look again
            self._wait_for_prompts(next_poll)

    def _take_leases(self) -> None:
        for entry in self.followers:
            lease = entry.lease
            held = lease is None or lease.check() or lease.try_acquire()
            self._measure_lease(entry, held)
            if held and not entry.active:
                self._activate(entry)
            elif not held and entry.active:
                entry.active = False
                logger.warning("%s: lost the lease (%s); standing by", entry.name, _d(lease))

    def _activate(self, entry: _Follower) -> None:
        """Start processing from the recorded positions (someone else may have moved them)."""
        try:
            entry.feeds = {leader: self._new_feed(entry, leader) for leader in entry.leaders}
        except PersistenceError as error:
            self._database_trouble(entry, error)
            return
        entry.active = True
        entry.app.parked_originators.forget()
        entry.app.forget_policy_cache()
        self._measure_positions(entry)
        if entry.lease is not None:
            logger.info("%s: holding the lease (%s); processing", entry.name, _d(entry.lease))
        entry.measure_backlog = set(entry.feeds)
        self._read_control(entry)

    def _new_feed(self, entry: _Follower, leader: str) -> LeaderFeed[Any]:
        position = entry.app.recorder.max_tracking_id(leader)
        feed: LeaderFeed[Any] = LeaderFeed(entry.app, leader, position)
        feed.wait = self._stopping.wait  # a retry's delay ends when the worker stops
        feed.observer = self.observer
        feed.request_catch_up()
        return feed

    def _read_control(self, entry: _Follower) -> None:
        """Read an active follower's settings and requested retries (once a poll)."""
        state = entry.state
        if not entry.active or state is None:
            return
        try:
            self._follow_pause(entry, state)
            if not entry.paused:
                self._retry_requested(entry, state)
        except PersistenceError as error:
            self._database_trouble(entry, error)

    def _follow_pause(self, entry: _Follower, state: FollowerStateRecorder) -> None:
        paused = state.is_paused
        if paused:
            if not entry.paused:
                logger.warning("%s: paused (holding the lease; resume to go on)", entry.name)
            entry.paused = True
            if state.get_follower_setting(PAUSE_ACKNOWLEDGED) is None:
                state.set_follower_setting(PAUSE_ACKNOWLEDGED, worker_description())
        elif entry.paused:
            logger.warning("%s: resumed; reading the positions again", entry.name)
            entry.paused = False
            entry.active = False  # positions may have been reset meanwhile: activate again
        self.observer.paused(entry.name, entry.paused)

    def _retry_requested(self, entry: _Follower, state: FollowerStateRecorder) -> None:
        """Process the dead letters whose retry was requested, leader by leader."""
        entry.app.parked_originators.forget()  # another process may have changed them
        leaders = {d.leader_name for d in state.select_dead_letters(statuses=(RETRYING,))}
        for leader in sorted(leaders):
            feed = entry.feeds.get(leader)
            if feed is not None and not self.is_stopping:
                feed.retry_dead_letters()

    def _process_all(self) -> bool:
        """Process every active follower's pending work; True if some was left undone."""
        left = False
        for entry in self.followers:
            if not entry.active or entry.paused:
                continue
            for feed in entry.feeds.values():
                if self.is_stopping:
                    return True
                if feed.has_work and not self._process_feed(entry, feed):
                    left = True
        return left

    def _process_feed(self, entry: _Follower, feed: LeaderFeed[Any]) -> bool:
        """Catch ``feed`` up, batch by batch; False if it stopped before the end."""
        interrupted = False
        done_before = feed.position or 0
        self._catching_up(entry, feed)
        clock = _BatchClock(feed.position)

        def between_batches() -> bool:
            nonlocal interrupted
            self._measure_batch(entry, feed, clock)
            self.observer.progress(entry.name, feed.leader_name, (feed.position or 0) - done_before)
            interrupted = self.is_stopping or (entry.lease is not None and not entry.lease.check())
            return interrupted

        try:
            feed.process_pending(between_batches)
            # The last batch (an exhausted log asks nothing).
            self._measure_batch(entry, feed, clock)
        except IntegrityError as error:
            # Not a batch refused because another worker got there first (the feed moves on
            # from those): the policy's new events conflict with recorded ones.
            raise self._processing_failed(entry, feed, error) from error
        except PersistenceError as error:
            self._database_trouble(entry, error)
            return False
        except Exception as error:
            raise self._processing_failed(entry, feed, error) from error
        self._db_backoff.reset()
        self.observer.database_ok(entry.name)
        if entry.lease is not None and not entry.lease.held:
            entry.active = False
            logger.warning("%s: lost the lease (%s); standing by", entry.name, _d(entry.lease))
        return not interrupted

    def _catching_up(self, entry: _Follower, feed: LeaderFeed[Any]) -> None:
        """Tell the observer; with the backlog to measure, the first time after activation."""
        leader_name = feed.leader_name
        backlog: Callable[[], int] | None = None
        if leader_name in entry.measure_backlog:
            entry.measure_backlog.discard(leader_name)
            backlog = partial(_backlog, entry.leaders[leader_name], feed)
        self.observer.catching_up(entry.name, leader_name, backlog)

    def _measure_batch(self, entry: _Follower, feed: LeaderFeed[Any], clock: _BatchClock) -> None:
        """Tell the observer of the batch recorded since ``clock`` last ticked, if any."""
        position = feed.position or 0
        processed, seconds = clock.tick(position)
        if processed > 0:
            self.observer.batch(entry.name, feed.leader_name, processed, seconds)
            self.observer.beat()
            self.observer.positions(entry.name, feed.leader_name, position)

    def _database_trouble(self, entry: _Follower, error: PersistenceError) -> None:
        """Log one line, wait (interruptibly), and make the feeds start again from the DB."""
        delay = self._db_backoff.next_delay()
        self.observer.database_error(entry.name)
        logger.warning(
            "%s: database error (attempt %d), retrying in %.1fs: %s",
            entry.name,
            self._db_backoff.attempt,
            delay,
            _one_line(error),
        )
        self._stopping.wait(delay)
        entry.active = False  # re-read positions when it resumes

    def _processing_failed(
        self, entry: _Follower, feed: LeaderFeed[Any], error: Exception
    ) -> PolicyError:
        # The next notification, if the policy didn't raise (decoding, or a conflict of
        # its new events).
        next_id = (feed.position or 0) + 1
        failed = PolicyError.from_error(
            entry.name, feed.leader_name, error, unknown_id=next_id, unknown="unknown event"
        )
        logger.error("%s stopped: %s %s", entry.name, failed, " ".join(failed.notes))
        return failed

    def _measure_positions(self, entry: _Follower) -> None:
        """Let the observer measure how far behind an active follower is."""
        if not entry.active:
            return
        for leader_name, feed in entry.feeds.items():
            leader = entry.leaders[leader_name]
            # Counted every poll: a short scan, exact near zero, which is what matters.
            measure: Callable[[], Lag] = partial(
                follower_lag,
                entry.app,
                leader_name,
                leader,
                feed.position or 0,
                limit=METRICS_SCAN_LIMIT,
            )
            try:
                self.observer.lag(entry.name, leader_name, measure)
            except PersistenceError:
                return  # the loop meets the same error and retries

    def _measure_lease(self, entry: _Follower, held: bool) -> None:
        """Tell the observer whether the lease is held, and whether its database answers."""
        self.observer.lease(entry.name, held)
        if entry.lease is not None and entry.lease.error is not None:
            self.observer.database_error(entry.name, "lease")
        else:
            self.observer.database_ok(entry.name, "lease")

    def _wait_for_prompts(self, next_poll: float) -> None:
        timeout = max(0.0, next_poll - time.monotonic())
        transport = self.transport
        if transport is None or time.monotonic() < self._transport_retry_at:
            self._stopping.wait(min(timeout, 1.0))
            return
        try:
            prompted = transport.wait(min(timeout, 1.0))
        except TransportConnectionError as error:
            delay = self._transport_backoff.next_delay()
            self._transport_retry_at = time.monotonic() + delay
            logger.warning(
                "Prompt transport unavailable (attempt %d), polling every %.1fs and trying "
                "again in %.1fs: %s",
                self._transport_backoff.attempt,
                self.poll_interval,
                delay,
                _one_line(error),
            )
            return
        if self._transport_backoff.attempt:
            logger.warning("Prompt transport is back after %d attempts",
                           self._transport_backoff.attempt)  # fmt: skip
            self._transport_backoff.reset()
        for leader in prompted:
            for entry in self.followers:
                feed = entry.feeds.get(leader)
                if feed is not None:
                    feed.request_catch_up()


def _backlog(leader: Application[Any], feed: LeaderFeed[Any]) -> int:
    """How many notifications of ``leader`` come after ``feed``'s position."""
    return (leader.recorder.max_notification_id() or 0) - (feed.position or 0)


class _BatchClock:
    """When the batch in hand started, and the position it started from."""

    def __init__(self, position: int | None) -> None:
        self.start, self.position = time.monotonic(), position or 0

    def tick(self, position: int) -> tuple[int, float]:
        """Start the next batch at ``position``: return the last's size and duration."""
        now = time.monotonic()
        done = (position - self.position, now - self.start)
        self.start, self.position = now, position
        return done


def worker_description() -> str:
    """Which process this is, for the settings a worker writes (``host:pid``)."""
    return f"{socket.gethostname()}:{os.getpid()}"


def check_follower_name(system: System, name: str) -> None:
    """Raise :class:`UnknownApplicationNameError` unless ``name`` follows in ``system``."""

    if name in system.follows:
        return
    if name in system.nodes:
        msg = (
            f"{name!r} follows no application in the system, so it has nothing to process: "
            f"run workers for its followers {system.leads.get(name, [])} (its saves prompt "
            "them when PROMPT_TRANSPORT is set)"
        )
        raise ConfigurationError(msg)
    hint = did_you_mean(name, list(system.nodes))
    msg = (
        f"No application named {name!r} in the system.{hint} Its applications are "
        f"{list(system.nodes)}; workers run {system.followers}"
    )
    raise UnknownApplicationNameError(msg)


def handle_stop_signals(stop: Callable[[], None]) -> None:
    """First SIGTERM/SIGINT: ``stop()`` (finish the batch); second: exit :data:`EXIT_FORCED`."""
    received = 0

    def handler(signum: int, frame: FrameType | None) -> None:
        nonlocal received
        received += 1
        if received > 1:
            logger.warning("Second %s: exiting at once", signal.Signals(signum).name)
            os._exit(EXIT_FORCED)
        logger.info("%s: finishing the batch in hand, then exiting", signal.Signals(signum).name)
        stop()

    signal.signal(signal.SIGTERM, handler)
    signal.signal(signal.SIGINT, handler)


def _d(lease: Lease | None) -> str:
    return lease.describe() if lease is not None else "no lease"


def _one_line(error: BaseException) -> str:
    return " ".join(str(error).split())
