"""The Dog School's domain model: no import but eventsourcing.domain, so that
eventsourcing 9.5.6 can import it too (tests/asyncio/test_async_compat.py)."""

from __future__ import annotations

from eventsourcing.domain import Aggregate, event


class Dog(Aggregate):
    @event("Registered")
    def __init__(self, name: str) -> None:
        self.name = name
        self.tricks: list[str] = []

    @event("TrickAdded")
    def add_trick(self, trick: str) -> None:
        self.tricks.append(trick)
