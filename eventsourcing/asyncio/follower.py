"""Async followers: a policy that may be a coroutine, batches recorded exactly once.

:class:`AsyncProcessApplication` reads a leader's log after the position it recorded,
applies its policy to each event of a batch (awaiting it when it is a coroutine), and
records the new events with the batch's tracking record in one transaction, as the sync
``ProcessApplication`` does: the tracking record is the sync compare-and-set
(:class:`~eventsourcing.persistence.BatchTracking`), refused if any notification of the
batch is recorded already, so two processes on one follower never both record one. A
refused batch is not an error: the follower moves on to the position the other recorded.
"""

from __future__ import annotations

import inspect
from collections.abc import Sequence
from contextvars import ContextVar
from typing import Any

from eventsourcing.application import AggregateNotFoundError, ProcessingEvent, project_aggregate
from eventsourcing.asyncio.application import AsyncApplication
from eventsourcing.asyncio.recorders import AsyncApplicationRecorder, AsyncProcessRecorder
from eventsourcing.asyncio.repository import AsyncRepository
from eventsourcing.dispatch import singledispatchmethod
from eventsourcing.domain import DomainEventProtocol, TAggregateID
from eventsourcing.persistence import (
    IntegrityError,
    Mapper,
    Notification,
    ProgrammingError,
    Recording,
    Tracking,
)
from eventsourcing.projection import ProcessingFailure, ProcessingJob, _batch_tracking
from eventsourcing.utils import EnvType

__all__ = ["AsyncProcessApplication"]


class AsyncProcessApplication(AsyncApplication[TAggregateID]):
    """Follows applications with its ``policy``, and leads others with what it records.

    ``topics`` restricts processing to events of those topics (the others are passed
    over). ``PROCESS_BATCH_SIZE`` (default 100) is the most notifications processed in one
    transaction; within a batch the policy's ``repository.get()`` sees what the policy did
    earlier in the batch.
    """

    topics: Sequence[str] = ()
    process_batch_size = 100
    PROCESS_BATCH_SIZE = "PROCESS_BATCH_SIZE"

    def __init__(self, env: EnvType | None = None) -> None:
        """Construct the application; it follows no leader until :meth:`follow`."""
        self._batch_view: ContextVar[AsyncRepository[TAggregateID] | None] = ContextVar(
            f"{type(self).__name__}_batch_view", default=None
        )
        super().__init__(env)
        self.recorder: AsyncProcessRecorder
        self.readers: dict[str, AsyncApplicationRecorder] = {}
        self.mappers: dict[str, Mapper[TAggregateID]] = {}
        self.process_batch_size = self._env_batch_size()

    def _env_batch_size(self) -> int:
        value = self.env.get(self.PROCESS_BATCH_SIZE)
        if not value:
            return type(self).process_batch_size
        size = int(value) if value.strip().isdigit() else 0
        if size < 1:
            msg = (
                f"Invalid {self.PROCESS_BATCH_SIZE} value {value!r} for {self.name!r}: set a "
                "positive integer (the most notifications processed in one transaction)"
            )
            raise ValueError(msg)
        return size

    def construct_recorder(self) -> AsyncProcessRecorder:
        """Construct a process recorder: events and tracking in one transaction."""
        return self.factory.process_recorder()

    @property
    def repository(self) -> AsyncRepository[TAggregateID]:
        """The repository; inside a batch (in the processing task), one that also serves
        the batch's new aggregates."""
        view = self._batch_view.get()
        return self._repository if view is None else view

    def follow(self, leader_name: str, recorder: AsyncApplicationRecorder) -> None:
        """Read ``leader_name``'s events from its ``recorder`` from now on.

        They are decoded with a mapper configured from this application's environment
        under the leader's name (``LEADERNAME_CIPHER_KEY`` and the like), as the sync
        follower does.
        """
        self.readers[leader_name] = recorder
        factory = self.construct_factory(self.construct_env(leader_name, self.env))
        self.mappers[leader_name] = factory.mapper(self.construct_transcoder())

    async def recorded_position(self, leader_name: str) -> int | None:
        """The position recorded for ``leader_name`` (None if nothing is)."""
        return await self.recorder.max_tracking_id(leader_name)

    async def pull_and_process(
        self, leader_name: str, start: int | None = None, stop: int | None = None
    ) -> None:
        """Process ``leader_name``'s notifications after ``start`` (default: the recorded
        position), up to ``stop``, in batches."""
        reader = self._reader(leader_name)
        position = start if start is not None else await self.recorded_position(leader_name)
        batch_size = self.process_batch_size
        while True:
            notifications = await reader.select_notifications(
                start=position or 0, limit=batch_size, stop=stop, inclusive_of_start=False
            )
            if not notifications:
                return
            if await self.process_notifications(leader_name, notifications):
                position = notifications[-1].id
            else:
                position = await self.recorded_position(leader_name)
            if len(notifications) < batch_size:
                return

    def _reader(self, leader_name: str) -> AsyncApplicationRecorder:
        try:
            return self.readers[leader_name]
        except KeyError:
            msg = (
                f"{self.name!r} does not follow {leader_name!r}: call follow() with the "
                "leader's recorder first, or add the leader to a pipe of the AsyncSystem"
            )
            raise ProgrammingError(msg) from None

    async def process_notifications(
        self, leader_name: str, notifications: Sequence[Notification]
    ) -> bool:
        """Process a batch of ``leader_name``'s notifications and record it atomically.

        Return False if it was refused because another process recorded a position in
        or after it meanwhile (nothing of the batch is then recorded here).
        """
        if not notifications:
            return True
        mapper = self.mappers[leader_name]
        topics = self.topics
        jobs: list[ProcessingJob[TAggregateID]] = [
            (mapper.to_domain_event(n), Tracking(leader_name, n.id))
            for n in notifications
            if not topics or n.topic in topics
        ]
        if not jobs:
            return True  # passed over: nothing to record (as the sync follower)
        tracking = _batch_tracking(jobs, Tracking(leader_name, notifications[-1].id))
        try:
            await self.process_events(jobs, tracking)
        except IntegrityError:
            recorded = await self.recorded_position(leader_name)
            if recorded is not None and recorded >= tracking.first_notification_id():
                return False
            raise
        return True

    async def process_events(
        self, jobs: Sequence[ProcessingJob[TAggregateID]], tracking: Tracking
    ) -> list[Recording[TAggregateID]]:
        """Apply the policy to each job, then record the events with ``tracking``."""
        processing_event: ProcessingEvent[TAggregateID] = ProcessingEvent(tracking=tracking)
        view = _BatchRepository(self._repository, processing_event)
        token = self._batch_view.set(view)
        try:
            await self._apply_policy(jobs, processing_event)
        finally:
            self._batch_view.reset(token)
        processing_event.tracking = tracking
        recordings = await self._record(processing_event)
        await self._take_snapshots(processing_event)
        self._notify(recordings)
        return recordings

    async def _apply_policy(
        self,
        jobs: Sequence[ProcessingJob[TAggregateID]],
        processing_event: ProcessingEvent[TAggregateID],
    ) -> None:
        policy = self.policy
        for domain_event, tracking in jobs:
            processing_event.tracking = tracking  # policies may read their event's position
            try:
                result = policy(domain_event, processing_event)
                if inspect.isawaitable(result):
                    await result
            except Exception as error:
                ProcessingFailure.of(self.name, domain_event, tracking, jobs).attach(error)
                raise

    @singledispatchmethod
    def policy(
        self,
        domain_event: DomainEventProtocol[TAggregateID],
        processing_event: ProcessingEvent[TAggregateID],
    ) -> Any:
        """Turn a processed event into new events; this default ignores every event.

        Register handlers per event class, as plain or ``async def`` methods; collect new
        events with ``processing_event.collect_events(...)``, never with ``save()``.
        """


class _BatchRepository(AsyncRepository[TAggregateID]):
    """The repository as a policy sees it while a batch is processed: an aggregate the
    batch collected is served as the batch left it (its collected events applied)."""

    def __init__(
        self, repository: AsyncRepository[TAggregateID], batch: ProcessingEvent[TAggregateID]
    ) -> None:
        self.__dict__.update(vars(repository))  # the same stores, cache and settings
        self._repository = repository
        self._batch = batch
        self._lent: dict[TAggregateID, Any] = {}

    async def get(
        self,
        aggregate_id: TAggregateID,
        *,
        version: int | None = None,
        projector_func: Any = project_aggregate,
        deepcopy_from_cache: bool = True,
    ) -> Any:
        """Return the aggregate as the batch has left it, else as last recorded."""
        if version is not None or projector_func is not project_aggregate:
            return await self._repository.get(
                aggregate_id, version=version, projector_func=projector_func
            )
        batch_events = [e for e in self._batch.events if e.originator_id == aggregate_id]
        aggregate = self._batch.aggregates.get(aggregate_id) or self._lent.get(aggregate_id)
        if aggregate is None:
            try:
                aggregate = await self._repository.get(aggregate_id)
            except AggregateNotFoundError:
                if not batch_events:
                    raise
        current = 0 if aggregate is None else aggregate.version
        newer = [e for e in batch_events if e.originator_version > current]
        if newer:
            aggregate = project_aggregate(aggregate, newer)
        if aggregate is None:
            msg = f"Aggregate {aggregate_id!r} version None not found."
            raise AggregateNotFoundError(msg)
        self._lent[aggregate_id] = aggregate
        return aggregate
