"""The Dog School, sync and async, over the same domain model."""

from __future__ import annotations

from typing import Any
from uuid import UUID

from async_domain import Dog

from eventsourcing.application import Application
from eventsourcing.asyncio import AsyncApplication


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
