"""What a leader tells its followers after recording new events, and who can be told."""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Generic

from eventsourcing.domain import TAggregateID
from eventsourcing.persistence import (
    Recording,
)


class RecordingEvent(Generic[TAggregateID]):
    """What a leader tells its followers after recording new events.

    ``recordings`` are the new events with their notifications, and
    ``previous_max_notification_id`` is the leader's last notified id before them, so a
    receiver can tell whether it has missed anything.
    """

    __slots__ = ("application_name", "previous_max_notification_id", "recordings")

    def __init__(
        self,
        application_name: str,
        recordings: list[Recording[TAggregateID]],
        previous_max_notification_id: int | None,
    ):
        """Describe ``recordings`` newly recorded by the application ``application_name``."""
        self.application_name = application_name
        self.recordings = recordings
        self.previous_max_notification_id = previous_max_notification_id


class RecordingEventReceiver(ABC, Generic[TAggregateID]):
    """Anything a leader can prompt: followers' runners and threads."""

    @abstractmethod
    def receive_recording_event(self, new_recording_event: RecordingEvent[TAggregateID]) -> None:
        """Take note of newly recorded events; must not block for long."""
