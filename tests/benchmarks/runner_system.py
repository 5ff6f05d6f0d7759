"""The system the runner benchmarks run: ``Source`` -> ``Sink`` (one event each way)."""

from __future__ import annotations

from typing import Any

from eventsourcing.application import Application, ProcessingEvent
from eventsourcing.domain import Aggregate, event
from eventsourcing.system import Follower, System


class Item(Aggregate):
    """One thing recorded by the source."""

    @event("Recorded")
    def __init__(self, n: int) -> None:
        self.n = n


class Copy(Aggregate):
    """The sink's record of one item."""

    @event("Copied")
    def __init__(self, n: int) -> None:
        self.n = n


class Source(Application[Any]):
    """Records items, one per save (one durable commit each)."""

    def record(self, n: int) -> int:
        """Record item ``n``; return its notification id."""
        return self.save(Item(n))[-1].notification.id


class Sink(Follower[Any]):
    """Copies every item: one new event and the tracking record per notification."""

    def policy(self, domain_event: Any, processing_event: ProcessingEvent[Any]) -> None:
        """Copy the item."""
        processing_event.collect_events(Copy(domain_event.n))


SYSTEM = System(pipes=[[Source, Sink]])
