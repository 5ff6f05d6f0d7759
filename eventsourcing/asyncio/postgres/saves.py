"""Concurrent saves of one recorder, committed together: the sync coalescer, for tasks.

The sync recorder commits the saves its threads make at the same moment in one
transaction (one table lock, one flush, one round trip); here the tasks of one event loop
do the same. The first save starts a committer task; saves made while it commits queue
up, and it commits them next, up to ``max_saves`` at a time.

The commit runs in the committer task, not in the saving task: a saving task that is
cancelled stops waiting, but a batch that was sent is committed or rolled back whole, on a
connection that goes back to the pool clean. A save cancelled before its batch was taken
is dropped and never sent.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

from eventsourcing.postgres.saves import _PendingSave

__all__ = ["AsyncSaveCoalescer"]


class AsyncSaveCoalescer:
    """Commits queued saves, batch by batch, in one committer task at a time."""

    def __init__(
        self, commit: Callable[[list[_PendingSave]], Awaitable[None]], max_saves: int
    ) -> None:
        """Commit batches with ``commit`` (which decides each save and never raises)."""
        self._commit = commit
        self.max_saves = max_saves
        self._queue: list[tuple[_PendingSave, asyncio.Future[None]]] = []
        self._committer: asyncio.Task[None] | None = None

    async def save(self, pending: _PendingSave) -> list[int]:
        """Queue ``pending``, wait until its batch is committed, return its ids."""
        done = asyncio.get_running_loop().create_future()
        entry = (pending, done)
        self._queue.append(entry)
        if self._committer is None:
            self._committer = asyncio.create_task(self._commit_queued())
        try:
            await done
        except asyncio.CancelledError:
            if entry in self._queue:  # not sent yet: never will be
                self._queue.remove(entry)
            raise
        return pending.result()

    async def _commit_queued(self) -> None:
        try:
            while self._queue:
                batch = self._queue[: self.max_saves]
                del self._queue[: self.max_saves]
                saves = [pending for pending, _ in batch]
                try:
                    await self._commit(saves)
                except BaseException as e:  # e.g. the loop shutting down: nobody waits forever
                    for pending in saves:
                        if pending.error is None and pending.ids is None:
                            pending.error = e
                    raise
                finally:
                    for _, done in batch:
                        if not done.done():
                            done.set_result(None)
        finally:
            self._committer = None
            if self._queue:  # queued while the last batch failed: commit them too
                self._committer = asyncio.create_task(self._commit_queued())

    async def drain(self) -> None:
        """Wait for the committer to finish the saves queued so far."""
        committer = self._committer
        if committer is not None:
            await asyncio.shield(committer)
