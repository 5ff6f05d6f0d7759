"""What a follower does when its policy fails: the error policy, and parking.

=============================  ===========================================================
setting                        meaning
=============================  ===========================================================
``FOLLOWER_ERRORS``            after the retries: ``stop`` (raise; the default of the
                               in-process runners), ``park`` (the workers' default),
                               ``skip``, or ``retry`` (retry for ever)
``FOLLOWER_RETRIES``           how many times a failed notification is retried first
                               (default 0 in process, 3 in workers)
``FOLLOWER_RETRY_DELAY``       seconds before the first retry, doubled each time (0.5)
``FOLLOWER_RETRY_MAX_DELAY``   the longest delay between retries (30)
=============================  ===========================================================

A retry runs the failed batch again one notification per transaction from the failing one
on: the notifications before it are recorded, and only the failing one waits. ``park``
records a dead letter for it in the follower's database, in the transaction of the tracking
record that passes over it, and parks every later notification of the same originator behind
it (never processed out of order) while other originators go on. ``skip`` records the error
the same way, as ``skipped``, and goes on with the originator's later notifications.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from eventsourcing.deadletters import SKIPPED, DeadLetter, FollowerStateRecorder
from eventsourcing.persistence import PersistenceError, Recording
from eventsourcing.utils import Environment

__all__ = [
    "IN_PROCESS_DEFAULT",
    "WORKER_DEFAULT",
    "ErrorPolicy",
    "FeedObserver",
    "ParkedOriginators",
    "log_parked",
    "log_resolved",
    "log_retrying",
]

logger = logging.getLogger(__name__)

STOP, RETRY, PARK, SKIP = "stop", "retry", "park", "skip"
ACTIONS = (STOP, RETRY, PARK, SKIP)


@dataclass(frozen=True)
class ErrorPolicy:
    """What to do with a notification whose policy raised: retry it ``retries`` times, with
    a delay from ``delay`` doubling up to ``max_delay``, then ``action``."""

    action: str = STOP
    retries: int = 0
    delay: float = 0.5
    max_delay: float = 30.0

    ERRORS = "FOLLOWER_ERRORS"
    RETRIES = "FOLLOWER_RETRIES"
    RETRY_DELAY = "FOLLOWER_RETRY_DELAY"
    RETRY_MAX_DELAY = "FOLLOWER_RETRY_MAX_DELAY"

    def __post_init__(self) -> None:
        if self.action not in ACTIONS:
            msg = f"Unknown error action {self.action!r}: use one of {', '.join(ACTIONS)}"
            raise ValueError(msg)

    @property
    def stops_at_once(self) -> bool:
        """Whether an error simply reaches the caller (as in 9.5.6)."""
        return self.action == STOP and self.retries == 0

    @property
    def keeps_letters(self) -> bool:
        """Whether failures may leave dead letters (so parked originators are honoured)."""
        return self.action in (PARK, SKIP)

    def retry_delay(self, attempt: int) -> float:
        """How long to wait before retry number ``attempt`` (from 1)."""
        return float(min(self.max_delay, self.delay * 2 ** (attempt - 1)))

    @classmethod
    def from_env(cls, env: Environment | Any, default: ErrorPolicy) -> ErrorPolicy:
        """The policy the ``FOLLOWER_*`` settings of ``env`` give (``default`` where unset).

        Raises ValueError naming the setting, the value and the accepted values.
        """
        name = getattr(env, "name", "")
        action = (env.get(cls.ERRORS) or default.action).strip().lower()
        if action not in ACTIONS:
            msg = (
                f"Invalid {cls.ERRORS} value {action!r} for {name!r}: set one of "
                f"{', '.join(ACTIONS)} (what a follower does when its policy raises)"
            )
            raise ValueError(msg)
        return cls(
            action=action,
            retries=int(_number(env, cls.RETRIES, default.retries, integer=True)),
            delay=_number(env, cls.RETRY_DELAY, default.delay),
            max_delay=_number(env, cls.RETRY_MAX_DELAY, default.max_delay),
        )


IN_PROCESS_DEFAULT = ErrorPolicy(STOP)
WORKER_DEFAULT = ErrorPolicy(PARK, retries=3)


def _number(env: Any, key: str, default: Any, *, integer: bool = False) -> float:
    value = env.get(key)
    if value is None or not value.strip():
        return float(default)
    try:
        number = int(value) if integer else float(value)
    except ValueError:
        number = -1
    if number < 0:
        kind = "a whole number" if integer else "a number of seconds"
        name = getattr(env, "name", "")
        msg = f"Invalid {key} value {value!r} for {name!r}: set {kind}, 0 or more"
        raise ValueError(msg)
    return float(number)


class FeedObserver:
    """Told of what a feed records and of the failures it deals with; every method does
    nothing here.

    The feed logs the failures itself (see :func:`log_retrying` and the like); an observer
    adds what else should happen, as a worker's metrics do
    (:class:`runners.observer.WorkerObserver` extends this class).
    """

    def recorded(self, follower: str, leader: str, recordings: Sequence[Recording[Any]]) -> None:
        """The follower's policy recorded ``recordings`` while processing ``leader``'s
        notifications (not told of a follower that overrides ``process_event()``)."""

    def retrying(
        self,
        follower: str,
        leader: str,
        notification_id: int,
        attempt: int,
        delay: float,
        error: BaseException,
    ) -> None:
        """Notification ``notification_id`` failed; retry ``attempt`` comes in ``delay`` s."""

    def parked(self, follower: str, letter: DeadLetter) -> None:
        """``letter`` was recorded (parked, parked behind another, or skipped)."""

    def resolved(self, follower: str, letter: DeadLetter) -> None:
        """The retry of ``letter`` was processed and recorded."""


def log_retrying(
    follower: str, leader: str, notification_id: int, attempt: int, delay: float, error: Any
) -> None:
    """Log that notification ``notification_id`` failed and will be retried."""
    logger.warning(
        "%s: policy failed on %s notification %d (attempt %d), retrying in %.1fs: %s",
        follower,
        leader,
        notification_id,
        attempt,
        delay,
        _one_line(error),
    )


def log_parked(follower: str, letter: DeadLetter) -> None:
    """Log a letter recorded for a failure (parked or skipped); not one parked behind."""
    if letter.error_type:
        action = "skipped" if letter.status == SKIPPED else "parked"
        logger.error(
            "%s: %s %s notification %d after %d attempts: %s: %s",
            follower,
            action,
            letter.leader_name,
            letter.notification_id,
            letter.attempts,
            letter.error_type,
            _one_line(letter.error_message),
        )


def log_resolved(follower: str, letter: DeadLetter) -> None:
    """Log that the retry of ``letter`` was processed and recorded."""
    logger.info(
        "%s: processed the retry of %s notification %d",
        follower,
        letter.leader_name,
        letter.notification_id,
    )


class ParkedOriginators:
    """The originators of each leader with open dead letters, and the first such letter:
    their later notifications are parked behind it. Read from the follower's database
    when first asked for, per leader, and kept up to date by the follower's own parking."""

    def __init__(self, recorder: Any) -> None:
        self.recorder = recorder
        self._by_leader: dict[str, dict[str, int]] = {}

    @property
    def is_supported(self) -> bool:
        """Whether the follower's recorder keeps dead letters."""
        return isinstance(self.recorder, FollowerStateRecorder)

    def of(self, leader_name: str) -> dict[str, int]:
        """Originator id -> its first open letter's notification id, for ``leader_name``."""
        parked = self._by_leader.get(leader_name)
        if parked is None:
            parked = {}
            for letter in self.recorder.select_dead_letters(leader_name=leader_name):
                parked.setdefault(letter.originator_id, letter.notification_id)
            self._by_leader[leader_name] = parked
        return parked

    def any_open(self) -> bool:
        """Whether the follower has open dead letters (False if it can't keep any, or its
        tables are missing, as in a database 9.5.6 made with ``CREATE_TABLE`` off)."""
        if not self.is_supported:
            return False
        try:
            return bool(self.recorder.select_dead_letters())
        except PersistenceError:
            return False

    def forget(self, leader_name: str | None = None) -> None:
        """Read again from the database next time (another process may have changed it)."""
        if leader_name is None:
            self._by_leader.clear()
        else:
            self._by_leader.pop(leader_name, None)


def _one_line(error: BaseException | str) -> str:
    return " ".join(str(error).split())
