"""Domain model: events, aggregates, the @event decorator and snapshots. (Work in progress.)"""

from __future__ import annotations

from typing import Any, ClassVar, Generic, TypeVar
from uuid import UUID

TAggregateID = TypeVar("TAggregateID", bound=UUID | str)


class EventSourcingError(Exception):
    """Base class of the library's own errors."""


class ProgrammingError(EventSourcingError):
    """Raised when the domain model is used in a way it does not support."""


class HasOriginatorIDVersion(Generic[TAggregateID]):
    """Declares originator_id and originator_version; records the id type in a class var."""

    originator_id: TAggregateID
    originator_version: int
    originator_id_type: ClassVar[type[UUID] | type[str] | None] = None

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
