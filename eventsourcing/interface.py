"""A notification log served as JSON text, and a client that reads it back.

:class:`NotificationLogJSONService` wraps an application and turns sections and selections
of its notification log into JSON strings; :class:`NotificationLogJSONClient` is a
:class:`~eventsourcing.application.NotificationLog` that calls any
:class:`NotificationLogInterface` (in process, or through a transport of your choosing) and
rebuilds the :class:`~eventsourcing.persistence.Notification` objects.

Wire format of one notification: ``{"id": int, "originator_id": str (UUID hex),
"originator_version": int, "topic": str, "state": str (base64)}``. A section is
``{"id": str|null, "next_id": str|null, "items": [notification, ...]}``.
"""

from __future__ import annotations

import json
from abc import ABC, abstractmethod
from base64 import b64decode, b64encode
from collections.abc import Sequence
from typing import Any, Generic
from uuid import UUID

from eventsourcing.application import NotificationLog, Section, TApplication
from eventsourcing.persistence import Notification

__all__ = [
    "NotificationLogInterface",
    "NotificationLogJSONClient",
    "NotificationLogJSONService",
]


class NotificationLogInterface(ABC):
    """Serialised access to a notification log: what a remote reader calls."""

    @abstractmethod
    def get_log_section(self, section_id: str) -> str:
        """Return the section ``"first,last"`` of the log, serialised."""

    @abstractmethod
    def get_notifications(
        self,
        start: int | None,
        limit: int,
        topics: Sequence[str] = (),
        *,
        inclusive_of_start: bool = True,
    ) -> str:
        """Return up to ``limit`` notifications from ``start``, serialised."""


class NotificationLogJSONService(NotificationLogInterface, Generic[TApplication]):
    """Serves an application's notification log as JSON text."""

    def __init__(self, app: TApplication):
        """Serve the notification log of ``app``."""
        self.app = app

    def get_log_section(self, section_id: str) -> str:
        """Return the section ``"first,last"`` as JSON: ``id``, ``next_id`` and ``items``."""
        section = self.app.notification_log[section_id]
        return json.dumps(
            {
                "id": section.id,
                "next_id": section.next_id,
                "items": [_encode_notification(n) for n in section.items],
            }
        )

    def get_notifications(
        self,
        start: int | None,
        limit: int,
        topics: Sequence[str] = (),
        *,
        inclusive_of_start: bool = True,
    ) -> str:
        """Return up to ``limit`` notifications from ``start`` as a JSON list."""
        notifications = self.app.notification_log.select(
            start=start, limit=limit, topics=topics, inclusive_of_start=inclusive_of_start
        )
        return json.dumps([_encode_notification(n) for n in notifications])


class NotificationLogJSONClient(NotificationLog):
    """A notification log read through a :class:`NotificationLogInterface` that speaks JSON."""

    def __init__(self, interface: NotificationLogInterface):
        """Read the log through ``interface``."""
        self.interface = interface

    def __getitem__(self, section_id: str) -> Section:
        """Return the section ``"first,last"``, decoded."""
        body = json.loads(self.interface.get_log_section(section_id))
        return Section(
            id=body["id"],
            next_id=body["next_id"],
            items=[_decode_notification(item) for item in body["items"]],
        )

    def select(
        self,
        start: int | None,
        limit: int,
        stop: int | None = None,
        topics: Sequence[str] = (),
        *,
        inclusive_of_start: bool = True,
    ) -> list[Notification]:
        """Return up to ``limit`` notifications from ``start``, decoded.

        ``stop`` is not part of the interface: the service does not receive it.
        """
        body = self.interface.get_notifications(
            start=start, limit=limit, topics=topics, inclusive_of_start=inclusive_of_start
        )
        return [_decode_notification(item) for item in json.loads(body)]


def _encode_notification(notification: Notification) -> dict[str, Any]:
    originator_id = notification.originator_id
    return {
        "id": notification.id,
        "originator_id": originator_id.hex if isinstance(originator_id, UUID) else originator_id,
        "originator_version": notification.originator_version,
        "topic": notification.topic,
        "state": b64encode(notification.state).decode("utf8"),
    }


def _decode_notification(item: dict[str, Any]) -> Notification:
    return Notification(
        id=item["id"],
        originator_id=_decode_originator_id(item["originator_id"]),
        originator_version=item["originator_version"],
        topic=item["topic"],
        state=b64decode(item["state"].encode("utf8")),
    )


def _decode_originator_id(value: str) -> UUID | str:
    """UUID ids travel as hex; any other string id (``Application[str]``) is kept as it is."""
    try:
        return UUID(value)
    except ValueError:
        return value
