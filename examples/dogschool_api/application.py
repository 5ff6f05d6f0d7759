"""The school and its projection, for asyncio: the Dog School's domain model, unchanged.

``DogSchool`` has the sync Dog School's name, so both read and write the same tables: a
script using ``examples.dogschool`` sees the dogs registered over HTTP, and the reverse.
"""

from __future__ import annotations

from collections.abc import Awaitable
from typing import Any
from uuid import NAMESPACE_URL, UUID, uuid5

from eventsourcing.application import AggregateNotFoundError, ProcessingEvent
from eventsourcing.asyncio import AsyncApplication, AsyncProcessApplication, AsyncSystem
from eventsourcing.dispatch import singledispatchmethod
from eventsourcing.domain import Aggregate, event
from examples.dogschool.domainmodel import Dog


class DogNotFoundError(LookupError):
    """No dog is registered with this id."""


class DogSchool(AsyncApplication[UUID]):
    """Commands and queries over the dogs of the school."""

    async def register_dog(self, name: str) -> UUID:
        """Register a new dog; return its id."""
        dog = Dog(name)
        await self.save(dog)
        return dog.id

    async def add_trick(self, dog_id: UUID, trick: str) -> None:
        """Teach a registered dog a trick."""
        dog = await self._dog(dog_id)
        dog.add_trick(trick)
        await self.save(dog)

    async def get_dog(self, dog_id: UUID) -> dict[str, Any]:
        """Return the dog's name and tricks."""
        dog = await self._dog(dog_id)
        return {"name": dog.name, "tricks": list(dog.tricks)}

    async def _dog(self, dog_id: UUID) -> Dog:
        try:
            dog: Dog = await self.repository.get(dog_id)
        except AggregateNotFoundError:
            raise DogNotFoundError(f"No dog with id {dog_id}") from None
        return dog


class TrickTally(Aggregate):
    """How many dogs have learned one trick."""

    def __init__(self, trick: str) -> None:
        self.trick = trick
        self.dogs = 0

    @staticmethod
    def create_id(trick: str) -> UUID:
        return uuid5(NAMESPACE_URL, f"/tricks/{trick}")

    @event("Counted")
    def count_dog(self) -> None:
        self.dogs += 1


class TrickTallies(AsyncProcessApplication[UUID]):
    """A projection of the school's log: how many dogs know each trick."""

    @singledispatchmethod
    def policy(
        self, domain_event: Any, processing_event: ProcessingEvent[UUID]
    ) -> Awaitable[None] | None:
        """Other events are tracked and otherwise ignored."""
        return None

    # (@event makes Dog.TrickAdded, which type checkers don't see.)
    @policy.register(Dog.TrickAdded)  # type: ignore[attr-defined]
    async def _(self, domain_event: Any, processing_event: ProcessingEvent[UUID]) -> None:
        trick = domain_event.trick
        try:
            tally: TrickTally = await self.repository.get(TrickTally.create_id(trick))
        except AggregateNotFoundError:
            tally = TrickTally(trick)
        tally.count_dog()
        processing_event.collect_events(tally)

    async def dogs_knowing(self, trick: str) -> int:
        """How many dogs have learned ``trick`` (as far as the projection has got)."""
        try:
            tally: TrickTally = await self.repository.get(TrickTally.create_id(trick))
        except AggregateNotFoundError:
            return 0
        return tally.dogs


system = AsyncSystem(pipes=[[DogSchool, TrickTallies]])
