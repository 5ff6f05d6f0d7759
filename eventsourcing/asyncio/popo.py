"""In-memory async recorders (``PERSISTENCE_MODULE=eventsourcing.popo``, the default).

The sync POPO recorders, called on the event loop: their work is in memory and takes
microseconds. Guarantees are theirs; nothing outlives the process.
"""

from __future__ import annotations

from eventsourcing.asyncio._synced import SyncedFactory
from eventsourcing.asyncio.threaded import InlineExecutor
from eventsourcing.popo import POPOFactory
from eventsourcing.utils import Environment, EnvType

__all__ = ["AsyncPOPOFactory", "Factory"]


class AsyncPOPOFactory(SyncedFactory):
    """Async recorders over the sync in-memory ones."""

    sync_factory_class = POPOFactory

    def __init__(self, env: Environment | EnvType | None) -> None:
        """Run the in-memory recorders on the loop."""
        super().__init__(env, InlineExecutor())


Factory = AsyncPOPOFactory
