"""Reading an application's notification log in sections."""

from __future__ import annotations

from collections.abc import Iterator, Sequence

from eventsourcing.application import (
    NotificationLog,
    Section,
)
from eventsourcing.persistence import (
    Notification,
)


class NotificationLogReader:
    """Reads a notification log in sections or in selections of ``section_size``."""

    DEFAULT_SECTION_SIZE = 10

    def __init__(self, notification_log: NotificationLog, section_size: int = DEFAULT_SECTION_SIZE):
        """Read ``notification_log``, ``section_size`` notifications at a time."""
        self.notification_log = notification_log
        self.section_size = section_size

    def read(self, *, start: int) -> Iterator[Notification]:
        """Yield every notification from ``start`` on, following the sections' links."""
        section_id: str | None = f"{start},{start + self.section_size - 1}"
        while section_id is not None:
            section: Section = self.notification_log[section_id]
            yield from section.items
            section_id = section.next_id

    def select(
        self,
        *,
        start: int | None,
        stop: int | None = None,
        topics: Sequence[str] = (),
        inclusive_of_start: bool = True,
    ) -> Iterator[Sequence[Notification]]:
        """Yield lists of notifications from ``start`` (up to ``stop``), until one is empty."""
        while True:
            notifications = self.notification_log.select(
                start=start,
                limit=self.section_size,
                stop=stop,
                topics=topics,
                inclusive_of_start=inclusive_of_start,
            )
            if not notifications:
                return
            start = notifications[-1].id + 1 if inclusive_of_start else notifications[-1].id
            yield notifications
