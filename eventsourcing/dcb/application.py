"""The DCB application and its repository of perspectives.

A :class:`DCBApplication` is configured from its environment like any application:
``PERSISTENCE_MODULE`` (default ``eventsourcing.dcb.popo``) names the DCB persistence
module, and ``MAPPER_TOPIC`` a :class:`~eventsourcing.dcb.persistence.DCBMapper`, which
turns on the event store (``events``) and the repository (``repository``). Without a
mapper the application has only its ``recorder``.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any, Generic

from eventsourcing.dcb.domain import (
    EnduringObject,
    InitialDecision,
    Perspective,
    Selector,
    TDecision,
    TGroup,
    TPerspective,
    TSlice,
)
from eventsourcing.dcb.persistence import (
    DCBEventStore,
    DCBInfrastructureFactory,
    DCBMapper,
    NotFoundError,
)
from eventsourcing.utils import Environment, EnvType, resolve_topic

if TYPE_CHECKING:
    from collections.abc import Mapping
    from types import TracebackType
    from typing import Self

__all__ = ["DCBApplication", "DCBRepository"]


class DCBApplication:
    """An application over a DCB recorder; subclasses are named after themselves."""

    name = "DCBApplication"
    env: Mapping[str, str] = {"PERSISTENCE_MODULE": "eventsourcing.dcb.popo"}

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if "name" not in cls.__dict__:
            cls.name = cls.__name__

    def __init__(self, env: EnvType | None = None):
        self.env = self.construct_env(self.name, env)
        self.factory = DCBInfrastructureFactory.construct(self.env)
        self.recorder = self.factory.dcb_recorder()
        if "MAPPER_TOPIC" in self.env:
            # The event store and repository need a mapper: only then are they made.
            mapper_class = resolve_topic(self.env["MAPPER_TOPIC"])
            if not (isinstance(mapper_class, type) and issubclass(mapper_class, DCBMapper)):
                msg = (
                    f"MAPPER_TOPIC {self.env['MAPPER_TOPIC']!r} names {mapper_class!r}, which "
                    "is not a DCBMapper: name a DCBMapper subclass, such as "
                    "eventsourcing.dcb.msgpack:MessagePackMapper"
                )
                raise TypeError(msg)
            self.mapper: DCBMapper[Any] = mapper_class()
            self.events = DCBEventStore(self.mapper, self.recorder)
            self.repository = DCBRepository(self.events)

    def construct_env(self, name: str, env: EnvType | None = None) -> Environment:
        """The class's ``env``, then ``os.environ``, then ``env``: later ones win.

        A class ``env`` without ``PERSISTENCE_MODULE`` still gets the in-memory module;
        9.5.6 then looks for a factory in ``eventsourcing.popo`` and fails (9.5.6
        difference: DCB persistence default kept).
        """
        merged = dict(DCBApplication.env)
        merged.update(type(self).env)
        merged.update(os.environ)
        if env is not None:
            merged.update(env)
        return Environment(name, merged)

    def do(self, s: TSlice) -> TSlice:
        """Bring a slice up to date (if it applies decisions), execute it, save what it decided."""
        if type(s).do_projection:
            s = self.repository.advance(s)
        s.execute()
        if s.new_decisions:
            self.repository.save(s)
        return s

    def close(self) -> None:
        """Close the factory (and so the recorder's connections)."""
        self.factory.close()

    def __enter__(self) -> Self:
        self.factory.__enter__()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc_val: BaseException | None,
        exc_tb: TracebackType | None,
    ) -> None:
        self.close()
        self.factory.__exit__(exc_type, exc_val, exc_tb)


class DCBRepository(Generic[TDecision]):
    """Saves perspectives' new decisions and builds perspectives from recorded ones."""

    def __init__(self, eventstore: DCBEventStore[TDecision]):
        self.eventstore = eventstore

    def save(self, p: Perspective[TDecision]) -> int:
        """Append ``p``'s new decisions, failing if its boundary changed since it was built.

        Raises ``IntegrityError`` (and appends nothing) if a decision selected by
        ``p.consistency_boundary()`` was recorded after ``p.last_known_position``.
        Returns the position of the last decision appended (0 if there were none).
        """
        return self.eventstore.append(
            events=p.collect_events(),
            cb=p.consistency_boundary(),
            after=p.last_known_position,
        )

    def get(self, enduring_object_id: str) -> EnduringObject[TDecision]:
        """Rebuild the enduring object from the decisions tagged with its id.

        Raises :class:`NotFoundError` if there are none.
        """
        events = self.eventstore.read(Selector(tags=[enduring_object_id]))
        obj: EnduringObject[TDecision] | None = None
        for tagged in events:
            obj = tagged.decision.mutate(obj)
        if obj is None:
            msg = f"No decisions are tagged with {enduring_object_id!r}"
            raise NotFoundError(msg)
        obj.last_known_position = events.head
        return obj

    def get_many(self, *enduring_object_ids: str) -> list[EnduringObject[TDecision] | None]:
        """Rebuild several enduring objects with one read; None for an id with no decisions.

        A decision tagged with several of the ids is applied to each of those objects.
        """
        events = self.eventstore.read([Selector(tags=[i]) for i in enduring_object_ids])
        objs: dict[str, EnduringObject[TDecision] | None] = dict.fromkeys(enduring_object_ids)
        for tagged in events:
            for tag in tagged.tags:
                if tag not in objs:
                    continue
                obj = objs[tag]
                if obj is None and not isinstance(tagged.decision, InitialDecision):
                    continue
                objs[tag] = tagged.decision.mutate(obj)
        for obj in objs.values():
            if obj is not None:
                obj.last_known_position = events.head
        return list(objs.values())

    def get_group(self, cls: type[TGroup], *enduring_object_ids: str) -> TGroup:
        """Construct a group of ``cls`` from the enduring objects with these ids."""
        enduring_objects = self.get_many(*enduring_object_ids)
        group = cls(*enduring_objects)
        positions = [o.last_known_position for o in enduring_objects if o and o.last_known_position]
        group.last_known_position = max(positions) if positions else None
        return group

    def advance(self, p: TPerspective) -> TPerspective:
        """Apply to ``p`` the decisions in its boundary recorded since it was last built."""
        events = self.eventstore.read(cb=p.consistency_boundary(), after=p.last_known_position)
        for tagged in events:
            tagged.decision.mutate(p)
        p.last_known_position = events.head
        return p
