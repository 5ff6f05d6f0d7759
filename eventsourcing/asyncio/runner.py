"""Running a system of async applications in one event loop.

:class:`AsyncSystem` is a :class:`~eventsourcing.system.System` of async application
classes (its pipes, names, ``follows`` and ``topic`` are the sync system's).
:class:`AsyncRunner` constructs the applications, and runs a task per follower and leader
that catches up on the leader's log from the recorded position and then processes what a
subscription to the log delivers (woken by ``NOTIFY`` on PostgreSQL, by the writes of this
process and by polling elsewhere), batch by batch, each batch recorded exactly once.

``AsyncRunner(system, env, only=["Counters"])`` runs only the followers named, with the
others constructed as read-side instances of their leaders: one worker process per
follower, as the runner CLI runs sync followers.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sys
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, Any, TypeVar, cast

from eventsourcing.asyncio.application import AsyncApplication
from eventsourcing.asyncio.follower import AsyncProcessApplication
from eventsourcing.persistence import ProgrammingError
from eventsourcing.system import System
from eventsourcing.utils import EnvType

if TYPE_CHECKING:
    from typing import Self

__all__ = ["AsyncRunner", "AsyncSystem"]

logger = logging.getLogger(__name__)

_A = TypeVar("_A", bound=AsyncApplication[Any])


class AsyncSystem(System):
    """The async applications of a system, and which follows which."""

    def __init__(self, pipes: Iterable[Iterable[type[AsyncApplication[Any]]]]) -> None:
        """Define the system; TypeError if a follower isn't an AsyncProcessApplication."""
        super().__init__(cast("Any", pipes))
        # Where the system was defined (for `topic`): our caller, not this method.
        self._module_name = sys._getframe(1).f_globals.get("__name__", "")

    def _check_roles(self) -> None:
        for cls in self._classes.values():
            if not issubclass(cast("type", cls), AsyncApplication):
                msg = f"Not an async application class: {cls} (subclass AsyncApplication)"
                raise TypeError(msg)
        for name in self.follows:
            if not issubclass(cast("type", self._classes[name]), AsyncProcessApplication):
                msg = (
                    f"Not an async follower class: {self._classes[name]} (subclass "
                    "AsyncProcessApplication)"
                )
                raise TypeError(msg)

    def async_cls(self, name: str) -> type[AsyncApplication[Any]]:
        """Return the application class named ``name``."""
        return cast("type[AsyncApplication[Any]]", self.get_app_cls(name))


class AsyncRunner:
    """Runs an :class:`AsyncSystem` in the running event loop (``async with`` it)."""

    def __init__(
        self, system: AsyncSystem, env: EnvType | None = None, only: Sequence[str] = ()
    ) -> None:
        """Run ``system`` with ``env``; only the followers named in ``only``, if given."""
        self.system = system
        self.env = env
        unknown = [name for name in only if name not in system.followers]
        if unknown:
            msg = f"Not followers of this system: {unknown}; its followers: {system.followers}"
            raise ValueError(msg)
        self.only = list(only) or system.followers
        self.apps: dict[str, AsyncApplication[Any]] = {}
        self._tasks: list[asyncio.Task[None]] = []
        self.error: BaseException | None = None
        self._state = "new"  # new -> started -> stopped

    async def start(self) -> None:
        """Construct the applications and start a task per follower and leader."""
        if self._state != "new":
            msg = f"This runner is {self._state}: construct a new one to run the system again"
            raise ProgrammingError(msg)
        self._state = "started"
        for name in self.system.nodes:
            self.apps[name] = self.system.async_cls(name)(env=self.env)
        for app in self.apps.values():
            await app.open()
        for name in self.only:
            follower = cast("AsyncProcessApplication[Any]", self.apps[name])
            for leader_name in self.system.follows[name]:
                follower.follow(leader_name, self.apps[leader_name].recorder)
                task = asyncio.create_task(self._follow(follower, leader_name))
                task.add_done_callback(self._task_done)
                self._tasks.append(task)

    def get(self, cls: type[_A]) -> _A:
        """Return the running instance of ``cls``."""
        return cast(_A, self.apps[cls.name])

    async def _follow(self, follower: AsyncProcessApplication[Any], leader_name: str) -> None:
        """Catch up, then process what the leader's log delivers, for ever."""
        leader = follower.readers[leader_name]
        while True:
            await follower.pull_and_process(leader_name)
            position = await follower.recorded_position(leader_name)
            async with leader.subscribe(gt=position) as subscription:
                while batch := await subscription.next_batch(follower.process_batch_size):
                    if not await follower.process_notifications(leader_name, batch):
                        break  # refused: another process moved on; start from its position

    def _task_done(self, task: asyncio.Task[None]) -> None:
        if not task.cancelled() and task.exception() is not None and self.error is None:
            self.error = task.exception()
            logger.error("a follower of the async runner failed", exc_info=self.error)

    async def run_forever(self) -> None:
        """Run until cancelled, or until a follower fails (its error is raised)."""
        if self._state == "new":
            await self.start()
        try:
            await asyncio.gather(*self._tasks)
        finally:
            await self.stop()

    async def wait(
        self, follower: str, leader: str, notification_id: int | None, timeout: float = 5.0
    ) -> None:
        """Wait until ``follower`` has processed ``leader``'s ``notification_id``."""
        app = cast("AsyncProcessApplication[Any]", self.apps[follower])
        await app.recorder.wait(leader, notification_id, timeout)
        if self.error is not None:
            raise self.error

    async def stop(self) -> None:
        """Cancel the follower tasks and close the applications (idempotent)."""
        if self._state == "stopped":
            return
        self._state = "stopped"
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(BaseException):
                await task
        for app in self.apps.values():
            await app.aclose()

    async def __aenter__(self) -> Self:
        """Start the runner."""
        await self.start()
        return self

    async def __aexit__(self, *args: object) -> None:
        """Stop the runner; raise a follower's error, if one failed."""
        await self.stop()
        if self.error is not None and args[0] is None:
            raise self.error
