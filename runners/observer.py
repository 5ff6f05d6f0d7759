"""What a worker tells of its work: the observer its metrics and progress bars implement.

A :class:`~runners.worker.Worker` holds one :class:`WorkerObserver` and calls it at each
step, whatever it is; every method does nothing here, so an observer overrides only what
it wants to hear of. :class:`~runners.metrics.WorkerMetrics` is one (Prometheus metrics
and health), :class:`ProgressObserver` another (progress bars of a long catch-up), and
:class:`ObserverGroup` tells several. A worker's observer is its feeds' observer too
(:class:`~eventsourcing.system.failures.FeedObserver`: events recorded, retries, parked
letters, resolved retries).

Measures that cost a query (a follower's lag, the backlog at start) are handed over as
functions: an observer that doesn't call them costs the worker nothing.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from eventsourcing.deadletters import DeadLetter
from eventsourcing.persistence import Recording
from eventsourcing.system.failures import FeedObserver
from runners.lag import Lag

__all__ = [
    "PROGRESS_THRESHOLD",
    "ObserverGroup",
    "ProgressObserver",
    "WorkerObserver",
    "observer_of",
]

PROGRESS_THRESHOLD = 1000  # notifications behind at start that deserve a progress bar


class WorkerObserver(FeedObserver):
    """Told of a worker's loop, leases, batches, positions and database trouble (and, as a
    feed observer, of what its feeds record and the failures they deal with)."""

    def connected(self) -> None:
        """The worker's applications are open."""

    def beat(self) -> None:
        """The loop turned."""

    def lease(self, follower: str, held: bool) -> None:
        """Whether the worker holds ``follower``'s lease (and so processes it)."""

    def paused(self, follower: str, paused: bool) -> None:
        """Whether ``follower`` is paused (a follower setting: nothing is processed)."""

    def batch(self, follower: str, leader: str, processed: int, seconds: float) -> None:
        """A batch of ``processed`` notifications was committed in ``seconds``."""

    def positions(
        self,
        follower: str,
        leader: str,
        tracked: int,
        leader_last: int | None = None,
        lag: int | None = None,
    ) -> None:
        """The follower's position in the leader's log (after a batch); the log's last id
        and the notifications left to process, when they were measured."""

    def lag(self, follower: str, leader: str, measure: Callable[[], Lag]) -> None:
        """Once a poll, for an active follower: ``measure()`` reads how far behind it is
        (a query; it raises the persistence errors of an unreachable database)."""

    def catching_up(self, follower: str, leader: str, backlog: Callable[[], int] | None) -> None:
        """The worker starts processing ``leader``'s notifications; on the first time after
        taking the lease, ``backlog()`` reads how many are waiting (a query), else None."""

    def progress(self, follower: str, leader: str, done: int) -> None:
        """``done`` notifications were processed since :meth:`catching_up`."""

    def database_error(self, follower: str, source: str = "store") -> None:
        """The database failed (for ``source``: store or lease); the worker will retry."""

    def database_ok(self, follower: str, source: str = "store") -> None:
        """The database answered (for ``source``)."""


class ProgressObserver(WorkerObserver):
    """Calls ``report(follower, leader, done, total)`` while a follower catches up a backlog
    of ``threshold`` notifications or more, measured when it takes the lease."""

    def __init__(
        self, report: Callable[[str, str, int, int], None], threshold: int = PROGRESS_THRESHOLD
    ) -> None:
        """Report to ``report`` backlogs of at least ``threshold`` notifications."""
        self.report = report
        self.threshold = threshold
        self._totals: dict[tuple[str, str], int] = {}

    def catching_up(self, follower: str, leader: str, backlog: Callable[[], int] | None) -> None:
        """Measure the backlog (if given): reported on if it is long enough."""
        behind = backlog() if backlog is not None else 0
        if behind >= self.threshold:
            self._totals[(follower, leader)] = behind
        else:
            self._totals.pop((follower, leader), None)

    def progress(self, follower: str, leader: str, done: int) -> None:
        """Report ``done`` of the backlog measured last."""
        total = self._totals.get((follower, leader))
        if total:
            self.report(follower, leader, done, total)


class ObserverGroup(WorkerObserver):
    """Tells each of ``observers``, in order."""

    def __init__(self, *observers: WorkerObserver) -> None:
        """Tell each of ``observers``."""
        self.observers = observers

    def _each(self, hook: str, *args: Any) -> None:
        for observer in self.observers:
            getattr(observer, hook)(*args)

    def recorded(self, follower: str, leader: str, recordings: Sequence[Recording[Any]]) -> None:
        self._each("recorded", follower, leader, recordings)

    def retrying(
        self,
        follower: str,
        leader: str,
        notification_id: int,
        attempt: int,
        delay: float,
        error: BaseException,
    ) -> None:
        self._each("retrying", follower, leader, notification_id, attempt, delay, error)

    def parked(self, follower: str, letter: DeadLetter) -> None:
        self._each("parked", follower, letter)

    def resolved(self, follower: str, letter: DeadLetter) -> None:
        self._each("resolved", follower, letter)

    def connected(self) -> None:
        self._each("connected")

    def beat(self) -> None:
        self._each("beat")

    def lease(self, follower: str, held: bool) -> None:
        self._each("lease", follower, held)

    def paused(self, follower: str, paused: bool) -> None:
        self._each("paused", follower, paused)

    def batch(self, follower: str, leader: str, processed: int, seconds: float) -> None:
        self._each("batch", follower, leader, processed, seconds)

    def positions(
        self,
        follower: str,
        leader: str,
        tracked: int,
        leader_last: int | None = None,
        lag: int | None = None,
    ) -> None:
        self._each("positions", follower, leader, tracked, leader_last, lag)

    def lag(self, follower: str, leader: str, measure: Callable[[], Lag]) -> None:
        self._each("lag", follower, leader, measure)

    def catching_up(self, follower: str, leader: str, backlog: Callable[[], int] | None) -> None:
        self._each("catching_up", follower, leader, backlog)

    def progress(self, follower: str, leader: str, done: int) -> None:
        self._each("progress", follower, leader, done)

    def database_error(self, follower: str, source: str = "store") -> None:
        self._each("database_error", follower, source)

    def database_ok(self, follower: str, source: str = "store") -> None:
        self._each("database_ok", follower, source)


def observer_of(
    *observers: WorkerObserver | None,
    progress: Callable[[str, str, int, int], None] | None = None,
) -> WorkerObserver:
    """One observer for a worker's ``observers`` (None ones left out) and ``progress``
    callback (see :class:`ProgressObserver`); with none, an observer that does nothing."""
    chosen = [observer for observer in observers if observer is not None]
    if progress is not None:
        chosen.append(ProgressObserver(progress))
    if len(chosen) == 1:
        return chosen[0]
    return ObserverGroup(*chosen) if chosen else WorkerObserver()
