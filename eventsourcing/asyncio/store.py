"""The async event store: the sync mapper, an async recorder."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any, Generic

from eventsourcing.asyncio.recorders import AsyncAggregateRecorder
from eventsourcing.domain import TAggregateID
from eventsourcing.persistence import DomainEventType, Mapper, Recording, _SavedRecording

__all__ = ["AsyncEventStore"]


class AsyncEventStore(Generic[TAggregateID]):
    """Stores and retrieves domain events through a mapper and an async recorder.

    Encoding and decoding (transcode, compress, encrypt) are the sync mapper's, so the
    stored bytes are the sync API's.
    """

    def __init__(self, mapper: Mapper[TAggregateID], recorder: AsyncAggregateRecorder) -> None:
        """Encode with ``mapper``, store with ``recorder``."""
        self.mapper = mapper
        self.recorder = recorder

    async def put(
        self, domain_events: Sequence[DomainEventType], **kwargs: Any
    ) -> list[Recording[TAggregateID]]:
        """Store ``domain_events`` atomically; return their recordings (if ids were issued)."""
        mapper = self.mapper
        if isinstance(mapper, Mapper):
            stored_events = mapper._to_stored_events(domain_events)
        else:  # any object with the mapper's methods will do
            stored_events = [mapper.to_stored_event(e) for e in domain_events]
        ids = await self.recorder.insert_events(stored_events, **kwargs)
        if ids is None:
            return []
        return list(map(_SavedRecording, domain_events, stored_events, ids))

    async def get(
        self,
        originator_id: TAggregateID,
        *,
        gt: int | None = None,
        lte: int | None = None,
        desc: bool = False,
        limit: int | None = None,
    ) -> Iterator[DomainEventType]:
        """Return the events of ``originator_id`` (read now, decoded as iterated)."""
        stored_events = await self.recorder.select_events(
            originator_id, gt=gt, lte=lte, desc=desc, limit=limit
        )
        return map(self.mapper.to_domain_event, stored_events)
