"""A dog, and the tricks it learns: each command method records an event."""

from __future__ import annotations

from eventsourcing.domain import Aggregate, event


class Dog(Aggregate):
    """A dog registered with the school."""

    @event("Registered")
    def __init__(self, name: str) -> None:
        self.name = name
        self.tricks: list[str] = []

    @event("TrickAdded")
    def add_trick(self, trick: str) -> None:
        """Teach the dog a trick."""
        self.tricks.append(trick)
