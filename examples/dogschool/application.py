"""The school: registers dogs, teaches them tricks, and answers questions about them."""

from __future__ import annotations

from typing import Any
from uuid import UUID

from eventsourcing.application import Application
from examples.dogschool.domainmodel import Dog


class DogSchool(Application[UUID]):
    """Commands and queries over the dogs of the school."""

    def register_dog(self, name: str) -> UUID:
        """Register a new dog; return its id."""
        dog = Dog(name)
        self.save(dog)
        return dog.id

    def add_trick(self, dog_id: UUID, trick: str) -> None:
        """Teach a registered dog a trick."""
        dog: Dog = self.repository.get(dog_id)
        dog.add_trick(trick)
        self.save(dog)

    def get_dog(self, dog_id: UUID) -> dict[str, Any]:
        """Return the dog's name and tricks."""
        dog: Dog = self.repository.get(dog_id)
        return {"name": dog.name, "tricks": tuple(dog.tricks)}
