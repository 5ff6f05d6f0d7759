"""The Dog School, sync and async, over the same domain model."""

from __future__ import annotations

import asyncio
from typing import Any
from uuid import UUID

from async_domain import Dog

from eventsourcing.application import AggregateNotFoundError, Application, ProcessingEvent
from eventsourcing.asyncio import AsyncApplication, AsyncProcessApplication, AsyncSystem
from eventsourcing.dispatch import singledispatchmethod
from eventsourcing.domain import Aggregate, event


class DogSchool(AsyncApplication[UUID]):
    async def register_dog(self, name: str) -> UUID:
        dog = Dog(name)
        await self.save(dog)
        return dog.id

    async def add_trick(self, dog_id: UUID, trick: str) -> None:
        dog = await self.repository.get(dog_id)
        dog.add_trick(trick)
        await self.save(dog)

    async def get_dog(self, dog_id: UUID) -> dict[str, Any]:
        dog = await self.repository.get(dog_id)
        return {"name": dog.name, "tricks": tuple(dog.tricks)}


class SyncDogSchool(Application[UUID]):
    name = "DogSchool"  # the same tables as the async one

    def register_dog(self, name: str) -> UUID:
        dog = Dog(name)
        self.save(dog)
        return dog.id

    def add_trick(self, dog_id: UUID, trick: str) -> None:
        dog = self.repository.get(dog_id)
        dog.add_trick(trick)
        self.save(dog)

    def get_dog(self, dog_id: UUID) -> dict[str, Any]:
        dog = self.repository.get(dog_id)
        return {"name": dog.name, "tricks": tuple(dog.tricks)}


class TrickCounter(Aggregate):
    def __init__(self, dog_id: UUID) -> None:
        self.count = 0

    @staticmethod
    def create_id(dog_id: UUID) -> UUID:
        return dog_id

    @event("Incremented")
    def increment(self) -> None:
        self.count += 1


class Counters(AsyncProcessApplication[UUID]):
    """Counts each dog's tricks; its policy is a coroutine."""

    @singledispatchmethod
    def policy(self, domain_event: Any, processing_event: ProcessingEvent[UUID]) -> None:
        """Other events are tracked and otherwise ignored."""

    @policy.register(Dog.TrickAdded)
    async def _(self, domain_event: Any, processing_event: ProcessingEvent[UUID]) -> None:
        try:
            counter = await self.repository.get(domain_event.originator_id)
        except AggregateNotFoundError:
            counter = TrickCounter(domain_event.originator_id)
        await asyncio.sleep(0)  # a coroutine policy may await anything
        counter.increment()
        processing_event.collect_events(counter)

    async def count(self, dog_id: UUID) -> int:
        try:
            counter = await self.repository.get(dog_id)
        except AggregateNotFoundError:
            return 0
        return int(counter.count)


system = AsyncSystem(pipes=[[DogSchool, Counters]])


def per_app_env(env: dict[str, str], tmp: str) -> dict[str, str]:
    """Give each application of the system a SQLite file of its own (tables aren't named
    after applications on SQLite)."""
    if env["PERSISTENCE_MODULE"] != "eventsourcing.sqlite":
        return env
    return {
        **env,
        "DOGSCHOOL_SQLITE_DBNAME": f"{tmp}/dogschool.sqlite",
        "COUNTERS_SQLITE_DBNAME": f"{tmp}/counters.sqlite",
    }
