"""The async application: the sync one's configuration, saves and reads awaited.

An :class:`AsyncApplication` subclass is written as an ``Application`` subclass is, with
``async def`` command and query methods that ``await self.save(...)`` and
``await self.repository.get(...)``. Aggregates and events are the sync domain's
(``eventsourcing.domain``); the environment, the mapper and the stored bytes are the sync
application's, so the two can share a database.

Constructing one does no I/O: tables are created and connections opened on first use
(or by ``await app.open()``); ``await app.aclose()`` (or ``async with``) releases them.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, ClassVar, Generic

from eventsourcing.application import (
    Application,
    ProcessingEvent,
    ProgrammingError,
    ProjectorFunction,
    project_aggregate,
    prompt_publisher_for,
)
from eventsourcing.asyncio.factory import AsyncInfrastructureFactory
from eventsourcing.asyncio.recorders import AsyncApplicationRecorder
from eventsourcing.asyncio.repository import AsyncNotificationLog, AsyncRepository
from eventsourcing.asyncio.store import AsyncEventStore
from eventsourcing.domain import (
    DomainEventProtocol,
    MutableOrImmutableAggregate,
    SnapshotProtocol,
    TAggregateID,
)
from eventsourcing.persistence import JSONTranscoder, Mapper, Recording, Transcoder
from eventsourcing.utils import Environment, EnvType, strtobool

if TYPE_CHECKING:
    from typing import Self

__all__ = ["AsyncApplication"]


class AsyncApplication(Generic[TAggregateID]):
    """Base class of event-sourced applications for asyncio code.

    The class attributes mean what they mean on the sync ``Application``.
    """

    name = "AsyncApplication"
    env: ClassVar[dict[str, str]] = {}
    is_snapshotting_enabled: bool = False
    snapshotting_intervals: ClassVar[dict[type[MutableOrImmutableAggregate], int]] = {}
    snapshotting_projectors: ClassVar[
        dict[type[MutableOrImmutableAggregate], ProjectorFunction[Any, Any]]
    ] = {}
    snapshot_class: type[SnapshotProtocol] | None = None
    log_section_size = 10

    AGGREGATE_CACHE_MAXSIZE = Application.AGGREGATE_CACHE_MAXSIZE
    AGGREGATE_CACHE_FASTFORWARD = Application.AGGREGATE_CACHE_FASTFORWARD
    DEEPCOPY_FROM_AGGREGATE_CACHE = Application.DEEPCOPY_FROM_AGGREGATE_CACHE

    def __init_subclass__(cls, **kwargs: Any) -> None:
        """Name each subclass after itself, unless its body sets ``name``."""
        super().__init_subclass__(**kwargs)
        if "name" not in cls.__dict__:
            cls.name = cls.__name__

    def __init__(self, env: EnvType | None = None) -> None:
        """Configure the infrastructure from the environment (no I/O until first use)."""
        self.env = self.construct_env(self.name, env)  # type: ignore[misc]
        self.factory = self.construct_factory(self.env)
        self.mapper: Mapper[TAggregateID] = self.construct_mapper()
        self.recorder = self.construct_recorder()
        self.events: AsyncEventStore[TAggregateID] = AsyncEventStore(self.mapper, self.recorder)
        self.snapshots: AsyncEventStore[TAggregateID] | None = None
        if self.factory.is_snapshotting_enabled():
            recorder = self.factory.aggregate_recorder(purpose="snapshots")
            self.snapshots = AsyncEventStore(self.mapper, recorder)
        self._repository = self.construct_repository()
        self.notification_log = AsyncNotificationLog(self.recorder, self.log_section_size)
        #: Prompts workers of other processes after each save (None: PROMPT_TRANSPORT unset).
        self.prompt_publisher = prompt_publisher_for(self.env)

    @property
    def repository(self) -> AsyncRepository[TAggregateID]:
        """The repository that rebuilds this application's aggregates."""
        return self._repository

    # -- construction hooks ---------------------------------------------------

    def construct_env(self, name: str, env: EnvType | None = None) -> Environment:
        """Merge the configuration: class ``env`` < ``os.environ`` < the ``env`` argument."""
        merged = dict(type(self).env)
        if type(self).is_snapshotting_enabled or type(self).snapshotting_intervals:
            merged["IS_SNAPSHOTTING_ENABLED"] = "y"
        merged.update(os.environ)
        if env is not None:
            merged.update(env)
        return Environment(name, merged)

    def construct_factory(self, env: Environment) -> AsyncInfrastructureFactory:
        """Construct the async factory of the persistence module ``PERSISTENCE_MODULE``."""
        return AsyncInfrastructureFactory.construct(env)

    def construct_mapper(self) -> Mapper[TAggregateID]:
        """Construct the mapper between domain events and stored events."""
        return self.factory.mapper(transcoder=self.construct_transcoder())

    def construct_transcoder(self) -> Transcoder:
        """Construct the transcoder, registering this application's transcodings on it."""
        transcoder = self.factory.transcoder()
        if isinstance(transcoder, JSONTranscoder):
            self.register_transcodings(transcoder)
        return transcoder

    def register_transcodings(self, transcoder: JSONTranscoder) -> None:
        """Register the sync application's transcodings (UUID, Decimal, datetime).

        Override to add your own, and call super.
        """
        Application.register_transcodings(self, transcoder)  # type: ignore[arg-type]

    def construct_recorder(self) -> AsyncApplicationRecorder:
        """Construct the recorder that stores this application's events."""
        return self.factory.application_recorder()

    def construct_repository(self) -> AsyncRepository[TAggregateID]:
        """Construct the repository, with the cache settings read from the environment."""
        return AsyncRepository(
            self.events,
            snapshot_store=self.snapshots,
            cache_maxsize=self._env_cache_maxsize(),
            fastforward=self._env_flag(self.AGGREGATE_CACHE_FASTFORWARD, "y"),
            deepcopy_from_cache=self._env_flag(self.DEEPCOPY_FROM_AGGREGATE_CACHE, "y"),
        )

    def _env_cache_maxsize(self) -> int | None:
        value = self.env.get(self.AGGREGATE_CACHE_MAXSIZE)
        if not value:
            return None
        try:
            return int(value)
        except ValueError:
            msg = (
                f"Invalid {self.AGGREGATE_CACHE_MAXSIZE} value {value!r}: set an integer "
                "(<= 0 for an unbounded cache), or leave it unset for no cache"
            )
            raise ValueError(msg) from None

    def _env_flag(self, key: str, default: str) -> bool:
        value = self.env.get(key, default)
        try:
            return strtobool(value)
        except ValueError:
            msg = f"Invalid {key} value {value!r}: set a truth value such as 'y' or 'n'"
            raise ValueError(msg) from None

    # -- recording ------------------------------------------------------------

    async def save(
        self,
        *objs: MutableOrImmutableAggregate | DomainEventProtocol[TAggregateID] | None,
        **kwargs: Any,
    ) -> list[Recording[TAggregateID]]:
        """Record the pending events of aggregates, and bare events, atomically.

        Returns one recording per event, with its notification id. A version conflict
        raises ``IntegrityError`` and records nothing. If the saving task is cancelled,
        the save is either recorded whole or not at all (as when a connection is lost).
        """
        processing_event: ProcessingEvent[TAggregateID] = ProcessingEvent()
        processing_event.collect_events(*objs, **kwargs)
        recordings = await self._record(processing_event)
        await self._take_snapshots(processing_event)
        self._notify(recordings)
        return recordings

    async def _record(
        self, processing_event: ProcessingEvent[TAggregateID]
    ) -> list[Recording[TAggregateID]]:
        """Store the collected events, with the tracking record, in one transaction."""
        recordings = await self.events.put(
            processing_event.events,
            tracking=processing_event.tracking,
            **processing_event.saved_kwargs,
        )
        cache = self._repository.cache
        if cache is not None and not self._repository.fastforward:
            for aggregate_id, aggregate in processing_event.aggregates.items():
                cache.put(aggregate_id, aggregate)
        return recordings

    def _notify(self, recordings: Sequence[Recording[TAggregateID]]) -> None:
        """Prompt workers in other processes (when ``PROMPT_TRANSPORT`` is set)."""
        if self.prompt_publisher is not None and recordings:
            self.prompt_publisher.publish(self.name, recordings[-1].notification.id)

    async def _take_snapshots(self, processing_event: ProcessingEvent[TAggregateID]) -> None:
        """Snapshot saved aggregates whose new version is a multiple of their interval."""
        intervals = self.snapshotting_intervals
        if not intervals or self.snapshots is None:
            return
        for event in processing_event.events:
            aggregate = processing_event.aggregates.get(event.originator_id)
            if aggregate is None:
                continue
            interval = intervals.get(type(aggregate))
            if interval is None or event.originator_version % interval:
                continue
            projector = self.snapshotting_projectors.get(type(aggregate), project_aggregate)
            await self.take_snapshot(
                event.originator_id, version=event.originator_version, projector_func=projector
            )

    async def take_snapshot(
        self,
        aggregate_id: TAggregateID,
        version: int | None = None,
        projector_func: ProjectorFunction[Any, Any] = project_aggregate,
    ) -> None:
        """Snapshot the aggregate at ``version`` (default: latest) into the snapshot store."""
        if self.snapshots is None:
            msg = (
                f"Can't take a snapshot: {self.name!r} has no snapshot store. Set "
                "IS_SNAPSHOTTING_ENABLED=y, or 'is_snapshotting_enabled' or "
                "'snapshotting_intervals' on the application class"
            )
            raise ProgrammingError(msg)
        aggregate = await self.repository.get(
            aggregate_id, version=version, projector_func=projector_func
        )
        snapshot_class = getattr(type(aggregate), "Snapshot", type(self).snapshot_class)
        if snapshot_class is None:
            msg = (
                "Neither application nor aggregate have a snapshot class. Define a nested "
                f"'Snapshot' class on {type(aggregate)}, or set 'snapshot_class' on "
                f"{type(self)}."
            )
            raise ProgrammingError(msg)
        await self.snapshots.put([snapshot_class.take(aggregate)])

    # -- lifecycle --------------------------------------------------------------

    async def open(self) -> None:
        """Create the tables and open connections now, rather than on first use."""
        await self.recorder.open()
        if self.snapshots is not None:
            await self.snapshots.recorder.open()

    async def aclose(self) -> None:
        """Release connections and threads; the application can't be used after."""
        if self.prompt_publisher is not None:
            self.prompt_publisher.close()
        await self.factory.aclose()

    async def __aenter__(self) -> Self:
        """Open the application (see :meth:`open`)."""
        await self.open()
        return self

    async def __aexit__(self, *args: object) -> None:
        """Close the application."""
        await self.aclose()
