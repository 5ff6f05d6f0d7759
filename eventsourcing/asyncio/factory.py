"""The async infrastructure factory: the sync factory's settings, async recorders.

``PERSISTENCE_MODULE`` takes the values it takes for the sync API (``eventsourcing.popo``,
``eventsourcing.sqlite``, ``eventsourcing.postgres``) and picks the async backend of the
same name, configured by the same environment variables: one environment serves both APIs.
The module's async factory may also be named directly (``eventsourcing.asyncio.sqlite``).
"""

from __future__ import annotations

import typing
from abc import abstractmethod
from importlib import import_module
from typing import TYPE_CHECKING, Any

from eventsourcing.persistence import (
    BaseInfrastructureFactory,
    InfrastructureFactory,
    InfrastructureFactoryError,
    Mapper,
    Transcoder,
)
from eventsourcing.utils import Environment, EnvType, resolve_topic, strtobool

if TYPE_CHECKING:
    from eventsourcing.asyncio.recorders import (
        AsyncAggregateRecorder,
        AsyncApplicationRecorder,
        AsyncProcessRecorder,
        AsyncTrackingRecorder,
    )

__all__ = ["ASYNC_BACKENDS", "AsyncInfrastructureFactory"]

#: The async backend of each sync persistence module (module: its async factory's module).
ASYNC_BACKENDS = {
    "eventsourcing.popo": "eventsourcing.asyncio.popo",
    "eventsourcing.sqlite": "eventsourcing.asyncio.sqlite",
    "eventsourcing.postgres": "eventsourcing.asyncio.postgres",
}


class AsyncInfrastructureFactory(BaseInfrastructureFactory[Any]):
    """Builds a mapper and async recorders from an application's environment."""

    MAPPER_TOPIC = InfrastructureFactory.MAPPER_TOPIC
    IS_SNAPSHOTTING_ENABLED = InfrastructureFactory.IS_SNAPSHOTTING_ENABLED

    @classmethod
    def construct(cls, env: Environment | EnvType | None = None) -> AsyncInfrastructureFactory:
        """Return the async factory for ``PERSISTENCE_MODULE`` (default: POPO)."""
        if not isinstance(env, Environment):
            env = Environment(env=env)
        topic = env.get(cls.PERSISTENCE_MODULE, "") or "eventsourcing.popo"
        module_name = ASYNC_BACKENDS.get(topic, topic)
        if module_name not in ASYNC_BACKENDS.values():
            choices = ", ".join(sorted([*ASYNC_BACKENDS, *ASYNC_BACKENDS.values()]))
            msg = (
                f"No async backend for persistence module '{topic}' (from environment variable "
                f"'{cls.PERSISTENCE_MODULE}'): set one of {choices}"
            )
            raise InfrastructureFactoryError(msg)
        factory_cls: type[AsyncInfrastructureFactory] = import_module(module_name).Factory
        return factory_cls(env)

    def mapper(self, transcoder: Transcoder | None = None) -> Mapper[Any]:
        """Return the mapper the sync factory would (``MAPPER_TOPIC``, cipher, compressor)."""
        topic = self.env.get(self.MAPPER_TOPIC)
        mapper_class = _resolve_mapper_class(topic) if topic else Mapper
        return mapper_class(
            transcoder=transcoder or self.transcoder(),
            cipher=self.cipher(),
            compressor=self.compressor(),
        )

    def is_snapshotting_enabled(self) -> bool:
        """Return the truth value of ``IS_SNAPSHOTTING_ENABLED`` (default no)."""
        return strtobool(self.env.get(self.IS_SNAPSHOTTING_ENABLED, "no"))

    @abstractmethod
    def aggregate_recorder(self, purpose: str = "events") -> AsyncAggregateRecorder:
        """Return an aggregate recorder; ``purpose="snapshots"`` for the snapshot store."""

    @abstractmethod
    def application_recorder(self) -> AsyncApplicationRecorder:
        """Return an application recorder."""

    @abstractmethod
    def tracking_recorder(self) -> AsyncTrackingRecorder:
        """Return a tracking recorder."""

    @abstractmethod
    def process_recorder(self) -> AsyncProcessRecorder:
        """Return a process recorder (events and tracking in one transaction)."""

    async def aclose(self) -> None:
        """Release connections and threads (idempotent)."""


def _resolve_mapper_class(topic: str) -> type[Mapper[Any]]:
    mapper_class = resolve_topic(topic)
    origin = typing.get_origin(mapper_class) or mapper_class
    if not (isinstance(origin, type) and issubclass(origin, Mapper)):
        msg = (
            f"Mapper class {mapper_class!r} (from environment variable "
            f"'{InfrastructureFactory.MAPPER_TOPIC}') is not a subclass of {Mapper}"
        )
        raise InfrastructureFactoryError(msg)
    return typing.cast("type[Mapper[Any]]", mapper_class)
