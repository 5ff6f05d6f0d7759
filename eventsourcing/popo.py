"""In-memory recorders ("plain old Python objects"): the default persistence module.

Data sheet:

* Configuration: ``PERSISTENCE_MODULE=eventsourcing.popo`` (the default). No other settings;
  ``TRACKING_RECORDER_TOPIC`` may name a subclass of :class:`POPOTrackingRecorder`.
* Each recorder instance is its own database: nothing is shared between instances and
  nothing survives the process.
* Guarantees: inserts are atomic and serialised by one lock per recorder; notification ids
  are contiguous from 1 (an event's position in the log); tracking is single-row (only the
  highest id per upstream application is kept, and it must increase).
* Originator ids are compared by ``str()``, so a UUID and its string form name the same
  aggregate (their events collide).
"""

from __future__ import annotations

from bisect import bisect_left, bisect_right
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import replace
from functools import lru_cache
from threading import Event, RLock
from typing import Any
from uuid import UUID

from eventsourcing.deadletters import (
    OPEN_STATUSES,
    RESOLVED,
    RETRYING,
    DeadLetter,
    FollowerStateRecorder,
    RetryTracking,
)
from eventsourcing.persistence import (
    AggregateRecorder,
    ApplicationRecorder,
    InfrastructureFactory,
    IntegrityError,
    ListenNotifySubscription,
    Notification,
    ProcessRecorder,
    StoredEvent,
    Subscription,
    Tracking,
    TrackingRecorder,
)

__all__ = [
    "Factory",
    "POPOAggregateRecorder",
    "POPOApplicationRecorder",
    "POPOFactory",
    "POPOProcessRecorder",
    "POPORecorder",
    "POPOSubscription",
    "POPOTrackingRecorder",
]


def _position_key(originator_id: UUID | str) -> UUID | str:
    """Return the key under which an aggregate's events are indexed.

    Ids are compared as ``str(originator_id)`` would compare them, but a UUID is its own
    key: hashing a UUID is ten times cheaper than formatting it as a string.
    """
    if type(originator_id) is UUID:
        return originator_id
    return _str_key(str(originator_id))


@lru_cache(maxsize=4096)
def _str_key(originator_id: str) -> UUID | str:
    # A string in the canonical form of a UUID names the same aggregate as that UUID.
    if len(originator_id) == 36:
        try:
            as_uuid = UUID(originator_id)
        except ValueError:
            return originator_id
        if str(as_uuid) == originator_id:
            return as_uuid
    return originator_id


class POPORecorder:
    """Base of the in-memory recorders: one re-entrant lock guards all of a recorder's data."""

    def __init__(self) -> None:
        self._database_lock = RLock()

    def erase(self) -> None:
        """Forget every event and position this recorder keeps (and a follower's dead
        letters; its settings stay): for a rebuild."""


class _Stream:
    """One aggregate's events, kept sorted by version (with a parallel list of versions)."""

    __slots__ = ("events", "versions")

    def __init__(self) -> None:
        self.versions: list[int] = []
        self.events: list[StoredEvent] = []

    def has_version(self, version: int) -> bool:
        """Return True if an event with ``version`` is stored."""
        versions = self.versions
        if not versions or version > versions[-1]:
            return False  # the usual case: a new version after the last one
        i = bisect_left(versions, version)
        return versions[i] == version

    def add(self, event: StoredEvent) -> None:
        """Insert ``event`` in version order (9.5.6 difference: POPO events in version order)."""
        version = event.originator_version
        versions = self.versions
        if not versions or version > versions[-1]:
            versions.append(version)
            self.events.append(event)
        else:  # out of order: rare, so inserting in the middle is fine
            i = bisect_left(versions, version)
            versions.insert(i, version)
            self.events.insert(i, event)


class POPOAggregateRecorder(POPORecorder, AggregateRecorder):
    """Keeps aggregate events in memory, indexed by originator id and version."""

    def __init__(self) -> None:
        super().__init__()
        self._stored_events: list[StoredEvent] = []
        self._streams: dict[UUID | str, _Stream] = {}

    def erase(self) -> None:
        """Forget every event (and position) this recorder keeps."""
        with self._database_lock:
            super().erase()
            self._stored_events.clear()
            self._streams.clear()

    def insert_events(
        self, stored_events: Sequence[StoredEvent], **kwargs: Any
    ) -> Sequence[int] | None:
        """Store all of ``stored_events`` or, on any version conflict, none of them."""
        keys = [_position_key(e.originator_id) for e in stored_events]
        with self._database_lock:
            self._check_insert(stored_events, keys, **kwargs)
            self._write(stored_events, keys, **kwargs)
        return None

    def _check_insert(
        self, stored_events: Sequence[StoredEvent], keys: list[UUID | str], **kwargs: Any
    ) -> None:
        """Raise IntegrityError if any event's position is taken (in store or in batch).

        ``keys`` are the events' originator ids as :func:`_position_key` makes them.
        """
        streams = self._streams
        # A batch is usually one run of increasing versions per aggregate, with the same id
        # object throughout a run: then looking up each run once is enough, and the batch
        # can't repeat a position. (Hashing a UUID runs Python code, so this matters.)
        run_keys: set[UUID | str] = set()
        well_formed = True
        prev_key: object = None
        prev_version = 0
        stream: _Stream | None = None
        for key, event in zip(keys, stored_events, strict=True):
            version = event.originator_version
            if key is not prev_key:
                if key in run_keys:
                    well_formed = False
                run_keys.add(key)
                stream = streams.get(key)
                prev_key = key
            elif version <= prev_version:
                well_formed = False
            prev_version = version
            if stream is not None and stream.has_version(version):
                raise IntegrityError(
                    f"Event already stored at position: originator_id '{key}', "
                    f"originator_version {version} (reload the aggregate and retry)"
                )
        if not well_formed:
            self._check_batch_positions(stored_events, keys)

    @staticmethod
    def _check_batch_positions(
        stored_events: Sequence[StoredEvent], keys: list[UUID | str]
    ) -> None:
        positions = {(k, e.originator_version) for k, e in zip(keys, stored_events, strict=True)}
        if len(positions) < len(stored_events):
            raise IntegrityError(
                f"Batch of {len(stored_events)} events repeats a position "
                "(originator_id, originator_version): each event needs its own version"
            )

    def _write(
        self, stored_events: Sequence[StoredEvent], keys: list[UUID | str], **kwargs: Any
    ) -> None:
        streams = self._streams
        prev_key: object = None
        stream: _Stream | None = None
        for key, event in zip(keys, stored_events, strict=True):
            if key is not prev_key or stream is None:
                stream = streams.get(key)
                if stream is None:
                    stream = streams[key] = _Stream()
                prev_key = key
            stream.add(event)
        self._stored_events.extend(stored_events)

    def select_events(
        self,
        originator_id: UUID | str,
        *,
        gt: int | None = None,
        lte: int | None = None,
        desc: bool = False,
        limit: int | None = None,
    ) -> Sequence[StoredEvent]:
        """Return one aggregate's events with ``gt < version <= lte``, ordered by version."""
        with self._database_lock:
            stream = self._streams.get(_position_key(originator_id))
            if stream is None:
                return []
            versions = stream.versions
            lo = 0 if gt is None else bisect_right(versions, gt)
            hi = len(versions) if lte is None else bisect_right(versions, lte)
            if not desc:
                if limit is not None:
                    hi = min(hi, lo + max(limit, 0))
                return stream.events[lo:hi]
            if limit is not None:
                lo = max(lo, hi - max(limit, 0))
            return stream.events[lo:hi][::-1]


class POPOApplicationRecorder(POPOAggregateRecorder, ApplicationRecorder):
    """Also numbers events in insertion order (ids from 1) and wakes subscriptions."""

    def __init__(self) -> None:
        super().__init__()
        self._notifications: list[Notification] = []
        self._listeners: set[Event] = set()

    def erase(self) -> None:
        """Forget every event (and position) this recorder keeps."""
        with self._database_lock:
            super().erase()
            self._notifications.clear()

    def insert_events(
        self, stored_events: Sequence[StoredEvent], **kwargs: Any
    ) -> Sequence[int] | None:
        """Store ``stored_events`` atomically and return their new notification ids."""
        keys = [_position_key(e.originator_id) for e in stored_events]
        with self._database_lock:
            self._check_insert(stored_events, keys, **kwargs)
            first = len(self._stored_events) + 1
            self._write(stored_events, keys, **kwargs)
            ids = list(range(first, first + len(stored_events)))
        if ids and self._listeners:
            self._notify_listeners()
        return ids

    def select_notifications(
        self,
        start: int | None,
        limit: int,
        stop: int | None = None,
        topics: Sequence[str] = (),
        *,
        inclusive_of_start: bool = True,
    ) -> Sequence[Notification]:
        """Return up to ``limit`` notifications from ``start`` to ``stop`` (ids from 1)."""
        # Index i of the log holds notification id i + 1.
        lo = 0 if start is None else max(start - 1 if inclusive_of_start else start, 0)
        with self._database_lock:
            count = len(self._stored_events)
            hi = count if stop is None else min(count, max(stop, 0))
            if not topics:
                hi = min(hi, lo + max(limit, 0))
                return self._notifications_up_to(hi)[lo:hi]
            wanted = set(topics)
            matching: list[Notification] = []
            for notification in self._notifications_up_to(hi)[lo:hi]:
                if len(matching) >= limit:
                    break
                if notification.topic in wanted:
                    matching.append(notification)
            return matching

    def _notifications_up_to(self, hi: int) -> list[Notification]:
        """Return the cached notifications, made for at least the first ``hi`` events.

        Notifications are made when first selected rather than when inserted: saving stays
        cheap, and pages read again (by each follower, or each pass) are plain list slices.
        """
        cache = self._notifications
        made = len(cache)
        if made < hi:
            cache.extend(
                Notification(e.originator_id, e.originator_version, e.topic, e.state, i)
                for i, e in enumerate(self._stored_events[made:hi], start=made + 1)
            )
        return cache

    def max_notification_id(self) -> int | None:
        """Return the number of stored events, or None if there are none."""
        with self._database_lock:
            return len(self._stored_events) or None

    def subscribe(
        self, gt: int | None = None, topics: Sequence[str] = ()
    ) -> Subscription[ApplicationRecorder]:
        """Return a subscription to notifications after ``gt``, woken by inserts."""
        return POPOSubscription(recorder=self, gt=gt, topics=topics)

    def listen(self, event: Event) -> None:
        """Set ``event`` after each insert, until :meth:`unlisten`."""
        with self._database_lock:
            self._listeners.add(event)

    def unlisten(self, event: Event) -> None:
        """Stop setting ``event`` after inserts."""
        with self._database_lock:
            self._listeners.discard(event)

    def _notify_listeners(self) -> None:
        with self._database_lock:
            listeners = list(self._listeners)
        for event in listeners:
            event.set()


class POPOSubscription(ListenNotifySubscription[POPOApplicationRecorder]):
    """A subscription to a :class:`POPOApplicationRecorder`, woken by its inserts."""

    def __init__(
        self,
        recorder: POPOApplicationRecorder,
        gt: int | None = None,
        topics: Sequence[str] = (),
    ) -> None:
        super().__init__(recorder=recorder, gt=gt, topics=topics)

    def _listen(self) -> None:
        self._recorder.listen(self._has_been_notified)

    def stop(self) -> None:
        """End the iteration and stop listening to the recorder."""
        super().stop()
        self._recorder.unlisten(self._has_been_notified)


class POPOTrackingRecorder(POPORecorder, TrackingRecorder, FollowerStateRecorder):
    """Keeps the highest processed notification id of each upstream application, and the
    follower's dead letters and settings."""

    def __init__(self) -> None:
        super().__init__()
        self._max_tracking_ids: dict[str, int] = {}
        self._dead_letters: dict[tuple[str, int], DeadLetter] = {}
        self._settings: dict[str, str] = {}

    def erase(self) -> None:
        """Forget every position (and event) and dead letter; the settings stay."""
        with self._database_lock:
            super().erase()
            self._max_tracking_ids.clear()
            self._dead_letters.clear()

    def insert_tracking(self, tracking: Tracking) -> None:
        """Record ``tracking``; raise IntegrityError unless it is beyond the recorded one."""
        with self._database_lock:
            self._assert_tracking_uniqueness(tracking)
            self._insert_tracking(tracking)

    def _assert_tracking_uniqueness(self, tracking: Tracking) -> None:
        """Raise IntegrityError unless nothing ``tracking`` covers is recorded yet.

        Call it holding ``_database_lock``, then :meth:`_insert_tracking`, as custom
        views do (the names and use of ``eventsourcing`` 9.x).
        """
        if isinstance(tracking, RetryTracking):
            letter = self._dead_letters.get(_letter_key(tracking))
            if letter is None or letter.status != RETRYING:
                raise IntegrityError(_retry_refused(tracking))
            return
        current = self._max_tracking_ids.get(tracking.application_name)
        if current is not None and current >= tracking.first_notification_id():
            raise IntegrityError(
                f"Tracking for application '{tracking.application_name}' is already at "
                f"notification {current}, so can't record {tracking.notification_id} "
                "(each notification is processed once, in order)"
            )

    def _insert_tracking(self, tracking: Tracking) -> None:
        """Record ``tracking`` (checked first with :meth:`_assert_tracking_uniqueness`)."""
        if isinstance(tracking, RetryTracking):
            key = _letter_key(tracking)
            self._dead_letters[key] = replace(self._dead_letters[key], status=RESOLVED)
            return
        self._max_tracking_ids[tracking.application_name] = tracking.notification_id
        for letter in getattr(tracking, "dead_letters", ()):
            self._dead_letters[letter.leader_name, letter.notification_id] = letter

    def max_tracking_id(self, application_name: str) -> int | None:
        """Return the highest recorded notification id of ``application_name``, or None."""
        with self._database_lock:
            return self._max_tracking_ids.get(application_name)

    # -- follower state (see eventsourcing.deadletters) ---------------------------------

    def select_dead_letters(
        self,
        *,
        leader_name: str | None = None,
        statuses: Sequence[str] = OPEN_STATUSES,
        originator_id: str | None = None,
        notification_id: int | None = None,
    ) -> list[DeadLetter]:
        """The dead letters that match, in order of leader name and notification id."""
        with self._database_lock:
            letters = sorted(self._dead_letters.items())
        return [
            letter
            for _, letter in letters
            if letter.status in statuses
            and leader_name in (None, letter.leader_name)
            and originator_id in (None, letter.originator_id)
            and notification_id in (None, letter.notification_id)
        ]

    def count_dead_letters(self) -> dict[tuple[str, str], int]:
        """How many dead letters there are, by leader name and status."""
        with self._database_lock:
            return dict(Counter((d.leader_name, d.status) for d in self._dead_letters.values()))

    def set_dead_letter_status(
        self,
        letters: Iterable[tuple[str, int]],
        status: str,
        *,
        from_statuses: Sequence[str],
        reason: str | None = None,
    ) -> int:
        """Move the matching letters to ``status``; return how many moved."""
        moved = 0
        with self._database_lock:
            for key in letters:
                letter = self._dead_letters.get(key)
                if letter is not None and letter.status in from_statuses:
                    new_reason = letter.reason if reason is None else reason
                    self._dead_letters[key] = replace(letter, status=status, reason=new_reason)
                    moved += 1
        return moved

    def update_dead_letter(self, letter: DeadLetter) -> None:
        """Write ``letter`` over the recorded letter of the same notification."""
        with self._database_lock:
            self._dead_letters[letter.leader_name, letter.notification_id] = letter

    def get_follower_setting(self, name: str) -> str | None:
        """The value of the follower setting ``name``, or None."""
        with self._database_lock:
            return self._settings.get(name)

    def set_follower_setting(self, name: str, value: str | None) -> None:
        """Set (or, with None, remove) the follower setting ``name``."""
        with self._database_lock:
            if value is None:
                self._settings.pop(name, None)
            else:
                self._settings[name] = value

    def reset_tracking(self, application_name: str, notification_id: int | None) -> None:
        """Make ``notification_id`` the position; remove the dead letters after it."""
        with self._database_lock:
            if notification_id is None:
                self._max_tracking_ids.pop(application_name, None)
            else:
                self._max_tracking_ids[application_name] = notification_id
            after = notification_id or 0
            for leader, number in list(self._dead_letters):
                if leader == application_name and number > after:
                    del self._dead_letters[leader, number]


class POPOProcessRecorder(POPOTrackingRecorder, POPOApplicationRecorder, ProcessRecorder):
    """Records new events and the tracking position together, atomically."""

    def _check_insert(
        self, stored_events: Sequence[StoredEvent], keys: list[UUID | str], **kwargs: Any
    ) -> None:
        super()._check_insert(stored_events, keys, **kwargs)
        tracking: Tracking | None = kwargs.get("tracking")
        if tracking is not None:
            self._assert_tracking_uniqueness(tracking)

    def _write(
        self, stored_events: Sequence[StoredEvent], keys: list[UUID | str], **kwargs: Any
    ) -> None:
        super()._write(stored_events, keys, **kwargs)
        tracking: Tracking | None = kwargs.get("tracking")
        if tracking is not None:
            self._insert_tracking(tracking)


def _letter_key(tracking: Tracking) -> tuple[str, int]:
    return tracking.application_name, tracking.notification_id


def _retry_refused(tracking: Tracking) -> str:
    return (
        f"Failed to record the retry of {tracking.application_name} notification "
        f"{tracking.notification_id}: its dead letter is no longer waiting for a retry "
        "(another process retried or discarded it)"
    )


class POPOFactory(InfrastructureFactory[POPOTrackingRecorder]):
    """Builds in-memory recorders; each call returns a new, empty recorder."""

    def aggregate_recorder(self, purpose: str = "events") -> AggregateRecorder:
        """Return a new aggregate recorder (``purpose`` needs no table name here)."""
        return POPOAggregateRecorder()

    def application_recorder(self) -> ApplicationRecorder:
        """Return a new application recorder."""
        return POPOApplicationRecorder()

    def tracking_recorder(
        self, tracking_recorder_class: type[POPOTrackingRecorder] | None = None
    ) -> POPOTrackingRecorder:
        """Return a new tracking recorder: the given class, ``TRACKING_RECORDER_TOPIC``'s, or
        :class:`POPOTrackingRecorder`.

        Any other class raises ``InfrastructureFactoryError`` (9.5.6 difference: POPO
        factory errors).
        """
        cls = self._recorder_class(
            self.TRACKING_RECORDER_TOPIC,
            POPOTrackingRecorder,
            POPOTrackingRecorder,
            given=tracking_recorder_class,
        )
        return cls()

    def process_recorder(self) -> ProcessRecorder:
        """Return a new process recorder."""
        return POPOProcessRecorder()


Factory = POPOFactory
