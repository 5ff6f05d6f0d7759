"""An async factory whose recorders are the sync factory's, run by an executor."""

from __future__ import annotations

import threading
from typing import Any

from eventsourcing.asyncio.factory import AsyncInfrastructureFactory
from eventsourcing.asyncio.threaded import (
    Executor,
    ThreadedAggregateRecorder,
    ThreadedApplicationRecorder,
    ThreadedProcessRecorder,
    ThreadedTrackingRecorder,
)
from eventsourcing.persistence import InfrastructureFactory
from eventsourcing.utils import Environment, EnvType


class SyncedFactory(AsyncInfrastructureFactory):
    """Makes the sync factory of ``sync_factory_class`` (in the executor) on first use."""

    sync_factory_class: type[InfrastructureFactory[Any]]

    def __init__(self, env: Environment | EnvType | None, executor: Executor) -> None:
        """Read settings from ``env``; run the sync recorders with ``executor``."""
        super().__init__(env)
        self.executor = executor
        self._sync_factory: InfrastructureFactory[Any] | None = None
        self._lock = threading.Lock()

    def sync_factory(self) -> InfrastructureFactory[Any]:
        """The sync factory (called in the executor: making it may open a database)."""
        with self._lock:
            if self._sync_factory is None:
                self._sync_factory = self.sync_factory_class(self.env)
            return self._sync_factory

    def aggregate_recorder(self, purpose: str = "events") -> ThreadedAggregateRecorder:
        """Return an aggregate recorder; ``purpose="snapshots"`` for the snapshot store."""
        return ThreadedAggregateRecorder(
            lambda: self.sync_factory().aggregate_recorder(purpose), self.executor
        )

    def application_recorder(self) -> ThreadedApplicationRecorder:
        """Return an application recorder."""
        return ThreadedApplicationRecorder(
            lambda: self.sync_factory().application_recorder(), self.executor
        )

    def tracking_recorder(self) -> ThreadedTrackingRecorder:
        """Return a tracking recorder."""
        return ThreadedTrackingRecorder(
            lambda: self.sync_factory().tracking_recorder(), self.executor
        )

    def process_recorder(self) -> ThreadedProcessRecorder:
        """Return a process recorder."""
        return ThreadedProcessRecorder(
            lambda: self.sync_factory().process_recorder(), self.executor
        )

    async def aclose(self) -> None:
        """Close the sync factory (in the executor), then the executor."""
        factory = self._sync_factory
        if factory is not None:
            await self.executor.run(factory.close)
        await self.executor.aclose()
