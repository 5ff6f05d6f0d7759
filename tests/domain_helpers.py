"""Small helpers shared by the domain tests."""

from __future__ import annotations

import dataclasses
from typing import Any

from eventsourcing.application import project_aggregate


def field_names(cls: Any) -> list[str]:
    """The names of an event class's dataclass fields, in order."""
    return [f.name for f in dataclasses.fields(cls)]


def replay(events: list[Any]) -> Any:
    """Rebuild an aggregate from its events, as a repository does."""
    return project_aggregate(None, events)
