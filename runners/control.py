"""Operating a follower from outside its workers: dead letters, pause, positions, rebuild.

What the ``dead-letters``, ``retry``, ``discard``, ``pause``, ``resume``, ``reset`` and
``rebuild`` commands do, for Python code too. Everything is written in the follower's own
database, which its workers read once a poll interval (:mod:`runners.worker`): a retry is
made by the worker holding the follower's lease, exactly once (see
:mod:`eventsourcing.deadletters`); a pause is kept across restarts and failovers.

Operations that move positions (``reset``, ``rebuild``) are made while nobody processes the
follower: holding its lease when no worker does, else, if asked, after the active worker has
acknowledged a pause (and then resumed). They are refused, changing nothing, otherwise.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

from eventsourcing.deadletters import (
    DISCARDED,
    OPEN_STATUSES,
    PARKED,
    PAUSE_ACKNOWLEDGED,
    PAUSED,
    RETRYING,
    DeadLetter,
    FollowerStateRecorder,
)
from eventsourcing.utils import Environment, EnvType
from runners.errors import ConfigurationError, NotShareableError, RefusedError
from runners.lease import Lease, lease_for
from runners.worker import check_follower_name

if TYPE_CHECKING:
    from eventsourcing.system import Follower, System

__all__ = ["PAUSE_WAIT", "FollowerControl", "LetterKey", "parse_position"]

#: Seconds to wait for the active worker to acknowledge a pause.
PAUSE_WAIT = 30.0

#: A dead letter's key: the leader's name and the notification id.
LetterKey = tuple[str, int]


class FollowerControl:
    """Operates the follower ``name`` of ``system``, through its database.

    Constructs the follower application from ``env`` (as its workers do), or uses ``app``.
    Use it as a context manager, or call :meth:`close`.
    """

    def __init__(
        self,
        system: System,
        name: str,
        env: EnvType | None = None,
        *,
        app: Follower[Any] | None = None,
    ) -> None:
        """Open the follower's database; raise ConfigurationError if it keeps no state."""
        check_follower_name(system, name)
        self.system = system
        self.name = name
        self.env = dict(env or {})
        self._owns_app = app is None
        self.app: Follower[Any] = app if app is not None else system.follower_cls(name)(env=env)
        recorder = self.app.recorder
        if not isinstance(recorder, FollowerStateRecorder):
            self.close()
            msg = (
                f"{name!r} is recorded by {type(recorder).__name__}, which keeps no dead "
                "letters or follower settings: use the recorders of eventsourcing.sqlite, "
                "eventsourcing.postgres or eventsourcing.popo"
            )
            raise ConfigurationError(msg)
        self.state: FollowerStateRecorder = recorder

    def close(self) -> None:
        """Close the follower application (if this made it)."""
        if self._owns_app:
            self.app.close()

    def __enter__(self) -> FollowerControl:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- dead letters -------------------------------------------------------------------

    def dead_letters(
        self,
        *,
        leader: str | None = None,
        statuses: Iterable[str] = OPEN_STATUSES,
        originator: str | None = None,
    ) -> list[DeadLetter]:
        """The follower's dead letters (by default the open ones), in notification order."""
        return self.state.select_dead_letters(
            leader_name=leader, statuses=tuple(statuses), originator_id=originator
        )

    def counts(self) -> dict[tuple[str, str], int]:
        """How many dead letters there are, by leader and status."""
        return self.state.count_dead_letters()

    def retry(
        self,
        letters: Iterable[LetterKey] = (),
        *,
        originator: str | None = None,
        everything: bool = False,
    ) -> int:
        """Ask for parked letters to be retried: ``letters``, every open letter of
        ``originator``, or (``everything``) all; return how many were parked.

        The active worker retries them in order on its next poll, each exactly once; a
        letter waits for the earlier letters of its originator. Raises ValueError for a
        letter that isn't parked.
        """
        chosen = self._chosen(letters, originator, everything, statuses=(PARKED,))
        return self.state.set_dead_letter_status(chosen, RETRYING, from_statuses=(PARKED,))

    def discard(
        self,
        letters: Iterable[LetterKey] = (),
        *,
        reason: str,
        originator: str | None = None,
        everything: bool = False,
    ) -> int:
        """Give up on open letters for ``reason`` (kept with them); return how many.

        An originator's later letters stay parked (retry them to go on with it).
        """
        if not reason.strip():
            raise ValueError("Say why the dead letters are discarded: give a reason")
        chosen = self._chosen(letters, originator, everything, statuses=OPEN_STATUSES)
        return self.state.set_dead_letter_status(
            chosen, DISCARDED, from_statuses=OPEN_STATUSES, reason=reason.strip()
        )

    def process_retries(self) -> int:
        """Process, here and now, the letters whose retry was requested (as a worker does
        on its poll), each exactly once; return how many were resolved. For followers run
        in this process (the in-process runners), where no worker polls."""
        from eventsourcing.system.feed import _LeaderFeed

        resolved = 0
        for leader in self.system.follows[self.name]:
            position = self.state.max_tracking_id(leader)  # type: ignore[attr-defined]
            resolved += _LeaderFeed(self.app, leader, position).retry_dead_letters()
        return resolved

    def _chosen(
        self,
        letters: Iterable[LetterKey],
        originator: str | None,
        everything: bool,
        statuses: tuple[str, ...],
    ) -> list[LetterKey]:
        keys = list(letters)
        if sum((bool(keys), originator is not None, everything)) != 1:
            raise ValueError("Choose the dead letters: by notification, by originator, or all")
        if keys:
            for leader, number in keys:
                found = self.state.select_dead_letters(
                    leader_name=leader, notification_id=number, statuses=statuses
                )
                if not found:
                    msg = (
                        f"{self.name!r} has no {' or '.join(statuses)} dead letter of {leader} "
                        f"notification {number}: see the dead-letters command"
                    )
                    raise ValueError(msg)
            return keys
        chosen = self.state.select_dead_letters(originator_id=originator, statuses=statuses)
        return [(d.leader_name, d.notification_id) for d in chosen]

    # -- pause ----------------------------------------------------------------------------

    @property
    def is_paused(self) -> bool:
        """Whether the follower is paused."""
        return self.state.is_paused

    @property
    def pause_acknowledged_by(self) -> str | None:
        """The worker (``host:pid``) that has stopped processing for the pause, if any."""
        return self.state.get_follower_setting(PAUSE_ACKNOWLEDGED)

    def pause(self, wait: float | None = PAUSE_WAIT) -> str | None:
        """Pause the follower; return the worker that acknowledged it (None: none runs).

        With ``wait``, waits that long for the worker holding the lease to stop
        processing; raises :class:`~runners.errors.RefusedError` (the pause stays) if it
        doesn't.
        """
        self.state.set_follower_setting(PAUSE_ACKNOWLEDGED, None)
        self.state.set_follower_setting(PAUSED, "yes")
        if wait is None:
            return None
        return self._wait_for_acknowledgement(wait)

    def resume(self) -> None:
        """Let the follower's workers process it again, from its recorded positions."""
        self.state.set_follower_setting(PAUSED, None)
        self.state.set_follower_setting(PAUSE_ACKNOWLEDGED, None)

    def _wait_for_acknowledgement(self, wait: float) -> str | None:
        deadline = time.monotonic() + wait
        while True:
            acknowledged = self.pause_acknowledged_by
            if acknowledged is not None:
                return acknowledged
            if not self.worker_is_running():
                return None
            if time.monotonic() >= deadline:
                msg = (
                    f"The worker holding the lease of {self.name!r} did not acknowledge the "
                    f"pause within {wait:g} s: it stays paused; check the worker's log, or "
                    "resume"
                )
                raise RefusedError(msg)
            time.sleep(0.1)

    # -- leases -----------------------------------------------------------------------

    def _lease(self) -> Lease | None:
        """The follower's lease, or None where no other process can share the store."""
        try:
            return lease_for(self.name, self.state, Environment(self.name, self.app.env))
        except NotShareableError:
            return None

    def worker_is_running(self) -> bool:
        """Whether a worker holds the follower's lease now."""
        lease = self._lease()
        if lease is None:
            return False
        try:
            return not lease.try_acquire()
        finally:
            lease.release()

    @contextmanager
    def _alone(self, pause: bool, wait: float) -> Iterator[None]:
        """Hold the follower still: its lease when no worker holds it, else a pause
        acknowledged by the worker (with ``pause``), resumed after (unless it was paused
        before); else refuse."""
        lease = self._lease()
        if lease is None or lease.try_acquire():
            try:
                yield
            finally:
                if lease is not None:
                    lease.release()
            return
        lease.release()
        if not pause:
            msg = (
                f"A worker holds the lease of {self.name!r} ({lease.describe()}), so it may "
                "be processing: give --pause (pause=True) to have it pause while this is "
                "done, or stop its workers first; nothing was changed"
            )
            raise RefusedError(msg)
        was_paused = self.is_paused
        try:
            self.pause(wait)
            yield
        finally:
            if not was_paused:
                self.resume()

    # -- positions --------------------------------------------------------------------

    def positions(self) -> dict[str, int | None]:
        """The follower's position in each of its leaders' logs."""
        return {
            leader: self.state.max_tracking_id(leader)  # type: ignore[attr-defined]
            for leader in self.system.follows[self.name]
        }

    def reset(
        self, leader: str, to: int | str, *, pause: bool = False, wait: float = PAUSE_WAIT
    ) -> int | None:
        """Make ``to`` (a notification id, ``"start"`` or ``"end"``) the follower's position
        in ``leader``'s log; return the new position (None: the start).

        The follower processes what comes after it, once (dead letters after it are
        removed). Refused while a worker holds the lease, unless ``pause``.
        """
        leaders = self.system.follows[self.name]
        if leader not in leaders:
            msg = f"{self.name!r} follows {leaders}, not {leader!r}: give one of those"
            raise ValueError(msg)
        last = self._leader_last(leader)
        position = parse_position(to, last, leader)
        with self._alone(pause, wait):
            self.state.reset_tracking(leader, position)
        return position

    def _leader_last(self, leader: str) -> int:
        app = self.system.get_app_cls(leader)(env=self.env)
        try:
            return app.recorder.max_notification_id() or 0
        finally:
            app.close()

    # -- rebuild ------------------------------------------------------------------------

    def downstream(self) -> list[str]:
        """The applications that follow this one, directly or not, in processing order."""
        found: list[str] = []
        todo = list(self.system.leads.get(self.name, []))
        while todo:
            name = todo.pop(0)
            if name not in found:
                found.append(name)
                todo.extend(self.system.leads.get(name, []))
        return found

    def rebuild(
        self,
        *,
        with_followers: bool = False,
        pause: bool = False,
        wait: float = PAUSE_WAIT,
        erased: Callable[[str], None] | None = None,
    ) -> list[str]:
        """Erase what the follower derived (its events, snapshots, positions and dead
        letters) so that it processes its leaders from the start; return the names rebuilt.

        Refused for a follower that others follow (they would get its new events as well
        as the old ones), unless ``with_followers``: then they are rebuilt too.
        ``erased`` is told of each application as it is erased.
        """
        others = self.downstream()
        if others and not with_followers:
            msg = (
                f"{self.name!r} is followed by {others}: replaying it would give them its "
                "events again, as new ones. Rebuild them as well (--with-followers), or "
                "reset positions instead; nothing was changed"
            )
            raise RefusedError(msg)
        names = [self.name, *others]
        controls = [self, *(FollowerControl(self.system, n, self.env) for n in others)]
        try:
            with _all_alone(controls, pause, wait):
                for control in controls:
                    control._erase()
                    if erased is not None:
                        erased(control.name)
        finally:
            for control in controls[1:]:
                control.close()
        return names

    def _erase(self) -> None:
        erase = getattr(self.state, "erase", None)
        if erase is None:
            msg = f"{type(self.state).__name__} can't erase what {self.name!r} derived"
            raise ConfigurationError(msg)
        erase()
        snapshots = self.app.snapshots
        if snapshots is not None:
            snapshots.recorder.erase()  # type: ignore[attr-defined]


@contextmanager
def _all_alone(controls: list[FollowerControl], pause: bool, wait: float) -> Iterator[None]:
    """Hold every one of ``controls`` still (see :meth:`FollowerControl._alone`)."""
    if not controls:
        yield
        return
    with controls[0]._alone(pause, wait), _all_alone(controls[1:], pause, wait):
        yield


def parse_position(to: int | str, last: int, leader: str) -> int | None:
    """The position ``to`` names in a log whose last id is ``last`` (None: the start)."""
    text = str(to).strip().lower()
    if text == "start":
        return None
    if text == "end":
        return last or None
    if not text.isdigit():
        msg = f"Invalid position {to!r}: give a notification id, 'start' or 'end'"
        raise ValueError(msg)
    number = int(text)
    if number > last:
        msg = f"{leader}'s log ends at notification {last}: give {last} or less ('end')"
        raise ValueError(msg)
    return number or None
