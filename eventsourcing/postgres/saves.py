"""Saves, and the coalescing of concurrent saves into one transaction."""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence

from psycopg import Connection
from psycopg.rows import DictRow

from eventsourcing.persistence import InternalError, StoredEvent, Tracking


class _PendingSave:
    """One call of ``insert_events``: its events and tracking, and then its outcome."""

    __slots__ = ("done", "error", "ids", "is_leader", "stored_events", "tracking")

    def __init__(self, stored_events: Sequence[StoredEvent], tracking: Tracking | None) -> None:
        self.stored_events = stored_events
        self.tracking = tracking
        self.ids: list[int] | None = None
        self.error: BaseException | None = None
        self.done = threading.Event()
        self.is_leader = False

    def result(self) -> list[int]:
        """Return the notification ids, or raise the save's error."""
        if self.error is not None:
            raise self.error
        if self.ids is None:  # pragma: no cover (every path decides each save)
            raise InternalError("a save was left undecided")
        return self.ids


class _SaveCoalescer:
    """Lets one thread commit the saves that other threads make meanwhile, as one transaction.

    The first thread to save becomes the leader: it takes every save queued so far (up to
    ``max_saves``) and commits them together, while threads arriving meanwhile queue up and
    wait. When the leader is done it wakes them; if more saves queued up during its commit,
    the first of them becomes the next leader. One thread saving alone commits straight away.
    """

    def __init__(self, commit: Callable[[list[_PendingSave]], None], max_saves: int) -> None:
        self._commit = commit
        self.max_saves = max_saves
        self._lock = threading.Lock()
        self._queue: list[_PendingSave] = []
        self._busy = False

    def save(self, pending: _PendingSave) -> list[int]:
        """Queue ``pending``, commit it (as leader or follower) and return its ids."""
        with self._lock:
            self._queue.append(pending)
            leads = not self._busy
            self._busy = True
        if not leads:
            pending.done.wait()
            if not pending.is_leader:
                return pending.result()
        self._lead()
        return pending.result()

    def _lead(self) -> None:
        with self._lock:
            batch = self._queue[: self.max_saves]
            del self._queue[: self.max_saves]
        try:
            self._commit(batch)
        except BaseException as e:  # e.g. KeyboardInterrupt: no save may wait forever
            for pending in batch:
                if pending.error is None and pending.ids is None:
                    pending.error = e
            raise
        finally:
            with self._lock:
                if self._queue:
                    successor = self._queue[0]
                    successor.is_leader = True
                    successor.done.set()
                else:
                    self._busy = False
            for pending in batch:
                pending.done.set()


def _bind(
    attempt: Callable[[Connection[DictRow], list[_PendingSave]], None],
    saves: list[_PendingSave],
) -> Callable[[Connection[DictRow]], None]:
    return lambda conn: attempt(conn, saves)
