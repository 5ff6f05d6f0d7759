"""The worker of async followers: the runner CLI's ``run`` for an ``AsyncSystem``.

``eventsourcing-runner run myproject.system:system --app Counters``, where ``system`` is an
:class:`~eventsourcing.asyncio.AsyncSystem`, runs :class:`AsyncWorker`: one event loop,
one task per follower and leader. Each task takes the follower's lease (the sync worker's,
from :func:`runners.lease.lease_for`: an advisory lock on PostgreSQL, a file lock beside a
SQLite file; its blocking calls run in a thread), subscribes to the leader's log after the
recorded position (woken by ``NOTIFY`` on PostgreSQL, by polling every ``--poll-interval``
elsewhere) and records each batch with its tracking record in one transaction, the
compare-and-set of :class:`~eventsourcing.asyncio.AsyncProcessApplication`: exactly once,
even with two workers on one follower.

Stopping and exit codes are the sync worker's: the first SIGTERM/SIGINT finishes the batch
in hand and exits 0, a second exits 5 at once; a policy error stops the worker with 3
(nothing of its batch recorded); a database unreachable at start-up exits 4. A database
lost later is retried with backoff, one log line per attempt.

Not provided (yet) for async followers: ``--runner processes``, ``--metrics-port``, progress
bars, ``FOLLOWER_ERRORS`` policies other than ``stop``, dead letters and pausing.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, cast

from eventsourcing.asyncio import AsyncApplication, AsyncProcessApplication, AsyncSystem
from eventsourcing.persistence import IntegrityError, Notification, PersistenceError
from eventsourcing.utils import Environment, EnvType
from runners.errors import ConfigurationError, PolicyError
from runners.exit_codes import EXIT_OK
from runners.lease import Lease, lease_for
from runners.worker import POLL_INTERVAL, Backoff, handle_stop_signals

__all__ = ["AsyncWorker", "run_async_workers"]

logger = logging.getLogger(__name__)


@dataclass(eq=False)
class _AsyncFollower:
    """A follower in the worker, with its leaders' read-side instances and its lease."""

    app: AsyncProcessApplication[Any]
    leaders: dict[str, AsyncApplication[Any]]
    lease: Lease | None = None
    active: bool = False
    standing_by: bool = False
    lease_lock: asyncio.Lock = field(default_factory=asyncio.Lock)


class AsyncWorker:
    """Processes async followers of an :class:`AsyncSystem` until stopped."""

    def __init__(
        self,
        system: AsyncSystem,
        names: list[str],
        env: EnvType | None = None,
        *,
        poll_interval: float = POLL_INTERVAL,
        use_lease: bool = True,
    ) -> None:
        """Prepare to process the followers ``names`` of ``system`` (nothing opens yet)."""
        self.system = system
        self.names = list(names)
        self.env = env
        self.poll_interval = poll_interval
        self.use_lease = use_lease
        self.followers: list[_AsyncFollower] = []
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stopping: asyncio.Event | None = None

    def stop(self) -> None:
        """Finish the batches in hand, then return from :meth:`run` (any thread, or a
        signal handler)."""
        if self._loop is not None and self._stopping is not None:
            self._loop.call_soon_threadsafe(self._stopping.set)

    @property
    def is_stopping(self) -> bool:
        """Whether :meth:`stop` was called."""
        return self._stopping is not None and self._stopping.is_set()

    async def run(self) -> int:
        """Open, process until stopped, close; return :data:`~runners.exit_codes.EXIT_OK`.

        Raises :class:`~runners.errors.PolicyError` when a policy fails, and the library's
        errors when a database can't be reached at start-up.
        """
        self._loop = asyncio.get_running_loop()
        self._stopping = asyncio.Event()
        try:
            await self.open()
            tasks = [
                asyncio.create_task(self._follow(entry, leader), name=f"{entry.app.name}<-{leader}")
                for entry in self.followers
                for leader in entry.leaders
            ]
            try:
                await _first_error(tasks)
            finally:
                for task in tasks:
                    task.cancel()
                await asyncio.gather(*tasks, return_exceptions=True)
        finally:
            await self.close()
        return EXIT_OK

    async def open(self) -> None:
        """Construct and open the followers, their leaders and their leases."""
        for name in self.names:
            app = cast("AsyncProcessApplication[Any]", self.system.async_cls(name)(env=self.env))
            entry = _AsyncFollower(app, {})
            self.followers.append(entry)
            for leader_name in self.system.follows[name]:
                entry.leaders[leader_name] = self.system.async_cls(leader_name)(env=self.env)
            for each in (app, *entry.leaders.values()):
                await each.open()
            for leader_name, leader in entry.leaders.items():
                app.follow(leader_name, leader.recorder)
            if self.use_lease:
                target = await _lease_target(app)
                entry.lease = lease_for(name, target, Environment(name, app.env))

    async def close(self) -> None:
        """Release the leases and close every application."""
        for entry in self.followers:
            if entry.lease is not None:
                await asyncio.to_thread(entry.lease.release)
            for each in (*entry.leaders.values(), entry.app):
                with contextlib.suppress(Exception):
                    await each.aclose()
        self.followers = []

    # -- one follower, one leader ---------------------------------------------------------

    async def _follow(self, entry: _AsyncFollower, leader_name: str) -> None:
        """Hold the lease and process the leader's log, until the worker stops."""
        backoff = Backoff()
        while not self.is_stopping:
            if not await self._hold_lease(entry):
                await self._sleep(self.poll_interval)
                continue
            try:
                await self._process(entry, leader_name)
                backoff.reset()
            except PersistenceError as error:
                delay = backoff.next_delay()
                reason = " ".join(str(error).split())
                logger.warning(
                    "%s: database error (attempt %d), retrying in %.1fs: %s",
                    entry.app.name,
                    backoff.attempt,
                    delay,
                    reason,
                )
                await self._sleep(delay)

    async def _process(self, entry: _AsyncFollower, leader_name: str) -> None:
        """Process batches from the recorded position while the lease is held; return
        when stopping, on losing the lease, or when a batch was refused (another worker
        recorded it: start again from its position)."""
        app = entry.app
        position = await app.recorded_position(leader_name)
        subscription = app.readers[leader_name].subscribe(gt=position, topics=app.topics)
        subscription.poll_interval = self.poll_interval
        assert self._stopping is not None
        stopping = asyncio.create_task(self._stopping.wait())
        pending: asyncio.Task[Any] | None = None
        try:
            async with subscription:
                while not self.is_stopping and await self._hold_lease(entry):
                    if pending is None:
                        limit = app.process_batch_size
                        pending = asyncio.create_task(subscription.next_batch(limit))
                    await asyncio.wait(
                        {pending, stopping},
                        timeout=self.poll_interval,
                        return_when=asyncio.FIRST_COMPLETED,
                    )
                    if not pending.done():
                        continue  # look at the lease and the stop flag again
                    batch, pending = pending.result(), None
                    # The batch in hand is finished even if a stop arrives meanwhile.
                    if not batch or not await self._record(entry, leader_name, batch):
                        return
        finally:
            for task in (pending, stopping):
                if task is not None:
                    task.cancel()
                    with contextlib.suppress(BaseException):
                        await task

    async def _record(
        self, entry: _AsyncFollower, leader_name: str, batch: Sequence[Notification]
    ) -> bool:
        """Process and record ``batch`` (False: refused, recorded by another worker)."""
        try:
            return await entry.app.process_notifications(leader_name, batch)
        except PersistenceError as error:
            if not isinstance(error, IntegrityError):
                raise  # the database: retried
            raise _policy_error(entry, leader_name, batch, error) from error
        except Exception as error:
            raise _policy_error(entry, leader_name, batch, error) from error

    async def _hold_lease(self, entry: _AsyncFollower) -> bool:
        """Whether the follower's lease is held (taking it if free), logging changes."""
        lease = entry.lease
        if lease is None:
            entry.active = True
            return True
        async with entry.lease_lock:  # one thread at a time asks the lease
            held = await asyncio.to_thread(lambda: lease.check() or lease.try_acquire())
            name = entry.app.name
            if held and not entry.active:
                logger.info("%s: holding the lease (%s); processing", name, lease.describe())
            elif not held and (entry.active or not entry.standing_by):
                logger.warning(
                    "%s: the lease is held elsewhere (%s); standing by", name, lease.describe()
                )
            entry.active, entry.standing_by = held, not held
        return held

    async def _sleep(self, seconds: float) -> None:
        """Sleep, waking early when the worker stops."""
        assert self._stopping is not None
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._stopping.wait(), seconds)


async def _first_error(tasks: list[asyncio.Task[None]]) -> None:
    """Wait for every task; raise the first error as soon as one fails."""
    pending: set[asyncio.Task[None]] = set(tasks)
    while pending:
        done, pending = await asyncio.wait(pending, return_when=asyncio.FIRST_EXCEPTION)
        for task in done:
            if not task.cancelled() and task.exception() is not None:
                raise cast("BaseException", task.exception())


async def _lease_target(app: AsyncProcessApplication[Any]) -> Any:
    """What :func:`~runners.lease.lease_for` needs of the follower's store: a sync recorder
    over the same database (PostgreSQL: the statements' recorder; SQLite: the one the
    dedicated thread calls), or the async recorder itself (POPO: refused, not shareable)."""
    recorder: Any = app.recorder
    if hasattr(recorder, "sql"):
        return recorder.sql
    if hasattr(recorder, "sync_recorder"):
        return await recorder.sync_recorder()
    return recorder


def _policy_error(
    entry: _AsyncFollower, leader_name: str, batch: Sequence[Notification], error: Exception
) -> PolicyError:
    """The error that stops the worker (logged): where the policy failed (or, if it wasn't
    the policy that raised, which batch), and the policy's note."""
    where = f"in the batch {batch[0].id}-{batch[-1].id}"
    name = entry.app.name
    failed = PolicyError.from_error(name, leader_name, error, unknown_id=batch[0].id, unknown=where)
    logger.error("%s stopped: %s %s", name, failed, " ".join(failed.notes))
    return failed


def run_async_workers(system: AsyncSystem, names: list[str], args: argparse.Namespace) -> int:
    """The CLI's ``run`` for async followers: one event loop for all of ``names``."""
    if args.runner == "processes":
        msg = (
            "--runner processes runs sync followers only: run one eventsourcing-runner per "
            f"async follower instead (--app NAME, one of {system.followers})"
        )
        raise ConfigurationError(msg)
    if args.metrics_port is not None:
        msg = "--metrics-port is not available for async followers yet: leave it out"
        raise ConfigurationError(msg)
    worker = AsyncWorker(
        system, names, poll_interval=args.poll_interval, use_lease=not args.no_lease
    )
    handle_stop_signals(worker.stop)
    logger.info("Running %s (async)", ", ".join(names))
    return asyncio.run(worker.run())
