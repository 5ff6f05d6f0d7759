"""Every error the runners raise, in one tree.

::

    RunnerError
     ├── ConfigurationError          bad input: the fix is in the message
     │    ├── SystemTopicError        SYSTEM names no module, attribute or System
     │    ├── UnknownApplicationNameError
     │    ├── PromptTransportError    a bad PROMPT_TRANSPORT value
     │    └── NotShareableError       a store other processes can't reach (POPO, :memory:)
     ├── TransportConnectionError     the broker can't be reached (retried, never fatal)
     ├── PolicyError                  a follower's policy raised; names leader, id and event
     └── RefusedError                 an operation on a follower that is unsafe now

Transports translate their driver's errors (``redis.*``, ``kombu``'s connection errors,
``psycopg.*``) into :class:`TransportConnectionError` at the seam, so the worker loop only
ever sees the errors above and the persistence errors of ``eventsourcing.persistence``.
"""

from __future__ import annotations

import difflib
from collections.abc import Sequence
from typing import Any

from eventsourcing.projection import processing_failure

__all__ = [
    "ConfigurationError",
    "NotShareableError",
    "PolicyError",
    "PromptTransportError",
    "RefusedError",
    "RunnerError",
    "SystemTopicError",
    "TransportConnectionError",
    "UnknownApplicationNameError",
    "did_you_mean",
]


def did_you_mean(word: str, choices: Sequence[str]) -> str:
    """``" Did you mean 'x'?"`` for the choice closest to a mistyped ``word``, else ``""``."""
    close = difflib.get_close_matches(word, choices, n=1)
    return f" Did you mean {close[0]!r}?" if close else ""


class RunnerError(Exception):
    """The base of every error of the runners."""


class ConfigurationError(RunnerError, ValueError):
    """Bad input: an option, an environment variable or a topic; the message says the fix."""


class SystemTopicError(ConfigurationError):
    """The SYSTEM topic names no importable module, no attribute, or not a System."""


class UnknownApplicationNameError(ConfigurationError):
    """An application name the system does not have."""


class PromptTransportError(ConfigurationError):
    """``PROMPT_TRANSPORT`` has a value no transport accepts."""


class NotShareableError(ConfigurationError):
    """The applications' stores can't be shared between processes (POPO, in-memory SQLite)."""


class TransportConnectionError(RunnerError):
    """The prompt transport's server can't be reached; workers poll until it is back."""


class PolicyError(RunnerError):
    """A follower's policy raised while processing a leader's notification.

    Nothing of the batch was recorded; the worker stops, since processing it again would
    fail again until the code or the data is fixed. The facts are attributes:
    ``follower``, ``leader_name`` (also ``leader``), ``notification_id``, ``event`` (the
    event's class name, or where in the log it failed when the event isn't known),
    ``domain_event``, ``originator_id`` and ``originator_version`` (None when not known),
    and ``notes``, the notes of the error the policy raised, in words.
    """

    def __init__(
        self,
        follower: str,
        leader: str,
        notification_id: int,
        event: str,
        cause: str,
        *,
        domain_event: Any = None,
        notes: Sequence[str] = (),
    ):
        """Describe the failure of ``follower``'s policy on ``leader``'s notification."""
        self.follower = follower
        self.leader = self.leader_name = leader
        self.notification_id = notification_id
        self.event = event
        self.domain_event = domain_event
        self.originator_id = getattr(domain_event, "originator_id", None)
        self.originator_version = getattr(domain_event, "originator_version", None)
        self.notes = tuple(notes)
        super().__init__(
            f"The policy of {follower!r} failed on {leader} notification {notification_id} "
            f"({event}): {cause}"
        )

    @classmethod
    def from_error(
        cls, follower: str, leader: str, error: BaseException, *, unknown_id: int, unknown: str
    ) -> PolicyError:
        """The PolicyError of ``error``, raised processing ``leader``'s notifications: where
        the policy says it failed or, for an error not raised by the policy (decoding, a
        conflict of its new events), notification ``unknown_id`` and ``unknown`` event."""
        failure = processing_failure(error)
        if failure is None:
            notification_id, event, domain_event = unknown_id, unknown, None
        else:
            notification_id, event = failure.notification_id, failure.event_name
            domain_event = failure.domain_event
        cause = f"{type(error).__name__}: {error}"
        notes = getattr(error, "__notes__", ())
        return cls(
            follower, leader, notification_id, event, cause, domain_event=domain_event, notes=notes
        )


class RefusedError(RunnerError):
    """An operation on a follower was refused, changing nothing: the message says why and
    what to do (for example, a reset while a worker holds the follower's lease)."""
