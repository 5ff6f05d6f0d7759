"""The errors the runners raise."""

from __future__ import annotations


class RunnerAlreadyStartedError(Exception):
    """Raised by ``start()`` when the runner is already started."""


class NotificationPullingError(Exception):
    """A follower failed to read a leader's notification log (in a runner's thread)."""


class NotificationConvertingError(Exception):
    """A follower failed to decode a leader's notifications (in a runner's thread)."""


class EventProcessingError(Exception):
    """A follower failed to process events (in a runner's thread)."""


class UnknownApplicationError(KeyError):
    """Raised by ``Runner.get()`` for an application the runner does not have."""

    def __str__(self) -> str:
        """Return the message without the quotes KeyError would add."""
        return str(self.args[0]) if self.args else ""
