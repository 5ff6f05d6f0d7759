"""Dead letters: the notifications a follower's policy could not process, kept for later.

A follower that *parks* a notification records a :class:`DeadLetter` for it in its own
database, in the same transaction as the tracking record that passes over it
(:class:`ParkingTracking`): parked and tracked together, or neither. Every later notification
of the same originator is parked behind it, so an aggregate's events are never processed out
of order, while other aggregates go on. Retrying a dead letter records the policy's new
events together with the letter's change from ``retrying`` to ``resolved``
(:class:`RetryTracking`), a compare-and-set: two processes never both resolve one letter.

The life of a dead letter::

    parked ──retry requested──> retrying ──processed──> resolved
       │  <──────failed again──────┘
       └──discarded (with a reason)──> discarded
    skipped   (recorded under FOLLOWER_ERRORS=skip; the follower went on past it)

The same database keeps the follower's settings that must outlive its processes (whether
it is paused) and is where its position is reset: see :class:`FollowerStateRecorder`,
which the tracking recorders of every persistence module implement.
"""

from __future__ import annotations

import traceback
from abc import ABC, abstractmethod
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import Any

from eventsourcing.persistence import BatchTracking, Tracking

__all__ = [
    "DISCARDED",
    "OPEN_STATUSES",
    "PARKED",
    "RESOLVED",
    "RETRYING",
    "SKIPPED",
    "STATUSES",
    "DeadLetter",
    "FollowerStateRecorder",
    "ParkingTracking",
    "RetryTracking",
]

PARKED = "parked"
RETRYING = "retrying"
RESOLVED = "resolved"
DISCARDED = "discarded"
SKIPPED = "skipped"
STATUSES = (PARKED, RETRYING, RESOLVED, DISCARDED, SKIPPED)
#: Letters that hold back their originator's later notifications.
OPEN_STATUSES = (PARKED, RETRYING)

#: The follower setting that says it is paused ("yes"), and the one its worker sets once it
#: has stopped processing (a description of the worker).
PAUSED = "paused"
PAUSE_ACKNOWLEDGED = "pause_acknowledged"


@dataclass(frozen=True)
class DeadLetter:
    """A notification of ``leader_name`` that the follower did not process, and why.

    ``error_type`` is empty for a notification parked behind an earlier one of the same
    originator (its policy was never called); ``reason`` is then what it waits behind, and
    for a discarded letter why it was discarded.
    """

    leader_name: str
    notification_id: int
    originator_id: str
    originator_version: int
    topic: str
    error_type: str
    error_message: str
    traceback: str
    attempts: int
    first_failed_at: datetime
    last_failed_at: datetime
    status: str = PARKED
    reason: str = ""

    @property
    def is_open(self) -> bool:
        """Whether it still holds back its originator's later notifications."""
        return self.status in OPEN_STATUSES

    @classmethod
    def of_failure(
        cls,
        leader_name: str,
        notification_id: int,
        domain_event: Any,
        topic: str,
        error: BaseException,
        attempts: int,
        first_failed_at: datetime | None = None,
        status: str = PARKED,
    ) -> DeadLetter:
        """The letter of a notification whose policy raised ``error`` ``attempts`` times."""
        now = _now()
        return cls(
            leader_name=leader_name,
            notification_id=notification_id,
            originator_id=str(domain_event.originator_id),
            originator_version=int(domain_event.originator_version),
            topic=topic,
            error_type=_qualified_name(type(error)),
            error_message=str(error),
            traceback="".join(traceback.format_exception(error)),
            attempts=attempts,
            first_failed_at=first_failed_at or now,
            last_failed_at=now,
            status=status,
        )

    @classmethod
    def behind(
        cls, leader_name: str, notification_id: int, domain_event: Any, topic: str, first: int
    ) -> DeadLetter:
        """The letter of a notification parked behind notification ``first`` of its
        originator."""
        now = _now()
        return cls(
            leader_name=leader_name,
            notification_id=notification_id,
            originator_id=str(domain_event.originator_id),
            originator_version=int(domain_event.originator_version),
            topic=topic,
            error_type="",
            error_message="",
            traceback="",
            attempts=0,
            first_failed_at=now,
            last_failed_at=now,
            reason=f"parked behind notification {first} of the same originator",
        )

    def failed_again(self, error: BaseException) -> DeadLetter:
        """This letter after a retry that raised ``error``: parked again, one more attempt."""
        again = DeadLetter.of_failure(
            self.leader_name,
            self.notification_id,
            _Originator(self.originator_id, self.originator_version),
            self.topic,
            error,
            self.attempts + 1,
            first_failed_at=self.first_failed_at,
        )
        return replace(again, reason="")


@dataclass(frozen=True, slots=True)
class ParkingTracking(BatchTracking):
    """A batch's tracking record that also parks (or records as skipped) ``dead_letters``.

    The recorders write the letters in the transaction of the tracking record, and only if
    the record is accepted.
    """

    dead_letters: tuple[DeadLetter, ...] = ()


@dataclass(frozen=True, slots=True)
class RetryTracking(Tracking):
    """The outcome of retrying the dead letter of ``application_name``'s notification
    ``notification_id``: recorded only if that letter is still ``retrying``, which then
    becomes ``resolved``. The follower's position is not moved (it is past the letter
    already)."""


class FollowerStateRecorder(ABC):
    """What a follower's database keeps besides its positions: dead letters, settings that
    outlive its processes (pause), and the operations that move or clear its positions.

    Implemented by the tracking recorders of POPO, SQLite and PostgreSQL.
    """

    @abstractmethod
    def select_dead_letters(
        self,
        *,
        leader_name: str | None = None,
        statuses: Sequence[str] = OPEN_STATUSES,
        originator_id: str | None = None,
        notification_id: int | None = None,
    ) -> list[DeadLetter]:
        """The dead letters that match, in order of leader name and notification id."""

    @abstractmethod
    def count_dead_letters(self) -> dict[tuple[str, str], int]:
        """How many dead letters there are, by leader name and status."""

    @abstractmethod
    def set_dead_letter_status(
        self,
        letters: Iterable[tuple[str, int]],
        status: str,
        *,
        from_statuses: Sequence[str],
        reason: str | None = None,
    ) -> int:
        """Move the letters ``(leader name, notification id)`` that have one of
        ``from_statuses`` to ``status`` (and ``reason``, if given); return how many moved."""

    @abstractmethod
    def update_dead_letter(self, letter: DeadLetter) -> None:
        """Write ``letter`` over the recorded letter of the same notification."""

    @abstractmethod
    def get_follower_setting(self, name: str) -> str | None:
        """The value of the follower setting ``name``, or None if it isn't set."""

    @abstractmethod
    def set_follower_setting(self, name: str, value: str | None) -> None:
        """Set (or, with None, remove) the follower setting ``name``."""

    @abstractmethod
    def reset_tracking(self, application_name: str, notification_id: int | None) -> None:
        """Make ``notification_id`` (None: nothing) the position for ``application_name``,
        backwards as well as forwards, and remove the dead letters after it."""

    @property
    def is_paused(self) -> bool:
        """Whether the follower is paused (its workers hold their leases, idle)."""
        return self.get_follower_setting(PAUSED) == "yes"


# -- for the SQL recorders -------------------------------------------------------------

DEAD_LETTER_COLUMNS = (
    "leader_name, notification_id, originator_id, originator_version, topic, error_type, "
    "error_message, traceback, attempts, first_failed_at, last_failed_at, status, reason"
)


def dead_letter_row(letter: DeadLetter) -> tuple[Any, ...]:
    """The values of ``letter`` in the order of :data:`DEAD_LETTER_COLUMNS`."""
    return (
        letter.leader_name,
        letter.notification_id,
        letter.originator_id,
        letter.originator_version,
        letter.topic,
        letter.error_type,
        letter.error_message,
        letter.traceback,
        letter.attempts,
        letter.first_failed_at,
        letter.last_failed_at,
        letter.status,
        letter.reason,
    )


def dead_letter_filter(
    mark: str,
    statuses: Sequence[str],
    leader_name: str | None,
    originator_id: str | None,
    notification_id: int | None,
) -> tuple[str, list[Any]]:
    """The WHERE clause (with the placeholder ``mark``) and parameters that select letters."""
    clauses = [f"status IN ({','.join([mark] * len(statuses))})"]
    params: list[Any] = list(statuses)
    for column, value in (
        ("leader_name", leader_name),
        ("originator_id", originator_id),
        ("notification_id", notification_id),
    ):
        if value is not None:
            clauses.append(f"{column}={mark}")
            params.append(value)
    return " AND ".join(clauses), params


@dataclass(frozen=True)
class _Originator:
    """Stands for a domain event where only its originator is known."""

    originator_id: str
    originator_version: int


def _now() -> datetime:
    return datetime.now(UTC)


def _qualified_name(cls: type) -> str:
    module = cls.__module__
    return cls.__qualname__ if module == "builtins" else f"{module}.{cls.__qualname__}"
