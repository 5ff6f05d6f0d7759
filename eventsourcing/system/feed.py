"""One follower's progress through one leader's log: the single implementation of every
runner."""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from typing import Generic

from eventsourcing.domain import TAggregateID
from eventsourcing.persistence import (
    IntegrityError,
    Notification,
    Recording,
    Tracking,
)
from eventsourcing.projection import ProcessingJob
from eventsourcing.system.prompts import RecordingEvent
from eventsourcing.system.roles import Follower

# The stages of processing, which the threaded runners report their errors by.
PULL, CONVERT, PROCESS = "pull", "convert", "process"


class _LeaderFeed(Generic[TAggregateID]):
    """One follower's progress through one leader's log, and how it is advanced.

    ``position`` is the last notification id processed (or passed over as not of the
    follower's topics). Prompts are received from any thread; the work is done by one
    thread at a time. A prompt either asks the feed to read the leader's log after
    ``position`` or, with ``keep_recordings``, delivers the new events to process directly.

    With ``as_read`` as well, what is delivered is processed exactly as a read of the log
    would be: the delivered notifications (the bytes the leader wrote) are decoded with the
    follower's mapper, and any id a prompt doesn't carry (of a topic the leader doesn't
    notify, written by another process, or left by a rolled-back transaction) is read from
    the log first. So only the read itself is skipped (9.5.6 difference: delivered
    notifications processed without reading them back).

    A batch is recorded only if nothing of it was recorded meanwhile (the tracking record
    is a compare-and-set, see :class:`~eventsourcing.persistence.BatchTracking`). A batch
    refused because another process recorded a later position is not an error: the feed
    moves on to that position, and the policy's cached aggregates, which the other process
    may have changed, are dropped (9.5.6 difference: refused batches are not errors).
    """

    def __init__(
        self,
        follower: Follower[TAggregateID],
        leader_name: str,
        position: int | None,
        *,
        keep_recordings: bool = False,
        as_read: bool = False,
        max_inbox: int = 10_000,
    ):
        self.follower = follower
        self.leader_name = leader_name
        self.position = position
        self.stage = PULL
        # 9.5.6's runners have the follower pull_and_process() on every prompt: an
        # override of it is called so (and an override of pull_notifications() for every
        # event), with nothing delivered kept.
        follower_cls = type(follower)
        self.calls_pull_and_process = (
            as_read and follower_cls.pull_and_process is not Follower.pull_and_process
        )
        overrides_pull = (
            follower_cls.pull_notifications is not Follower.pull_notifications
            or self.calls_pull_and_process
        )
        self.keep_recordings = keep_recordings and not (as_read and overrides_pull)
        self.as_read = as_read
        self.max_inbox = max_inbox
        self._lock = threading.Lock()
        self._must_read_log = False
        self._inbox: list[RecordingEvent[TAggregateID]] = []
        self._inbox_events = 0  # held in the inbox: at most about max_inbox

    # -- receiving (any thread) ------------------------------------------------------

    def receive(self, recording_event: RecordingEvent[TAggregateID]) -> None:
        """Note newly recorded events of the leader."""
        with self._lock:
            if not self.keep_recordings:
                self._must_read_log = True
            elif self._inbox_events < self.max_inbox:
                self._inbox.append(recording_event)
                self._inbox_events += len(recording_event.recordings)
            else:
                # Too far behind to hold the events: they are all in the log anyway.
                self._inbox.clear()
                self._inbox_events = 0
                self._must_read_log = True

    def request_catch_up(self) -> None:
        """Ask for everything after ``position`` to be read from the log."""
        with self._lock:
            self._must_read_log = True

    @property
    def has_work(self) -> bool:
        """Whether anything has been received and not yet processed."""
        return self._must_read_log or bool(self._inbox)

    # -- working (one thread at a time) -----------------------------------------------

    def process_pending(self, should_stop: Callable[[], bool] = bool) -> None:
        """Process what has been received, in batches, checking ``should_stop`` between."""
        with self._lock:
            must_read_log, self._must_read_log = self._must_read_log, False
            recording_events, self._inbox = self._inbox, []
            self._inbox_events = 0
        if must_read_log:
            self.catch_up(should_stop=should_stop)
        if recording_events:
            self._process_recording_events(recording_events, should_stop)

    def catch_up(self, stop: int | None = None, should_stop: Callable[[], bool] = bool) -> None:
        """Read and process the log after ``position`` (up to ``stop``), batch by batch."""
        if self.calls_pull_and_process:
            self.stage = PROCESS
            self.follower.pull_and_process(self.leader_name)
            self.position = self.follower.recorder.max_tracking_id(self.leader_name)
            return
        batch_size = self.follower.process_batch_size
        while True:
            self.stage = PULL
            notifications, exhausted = self._pull(stop, batch_size)
            for i in range(0, len(notifications), batch_size):
                if not self._process_notifications(notifications[i : i + batch_size]):
                    # Refused: another process recorded a position, perhaps inside this
                    # batch. What it didn't process must be read again from there.
                    exhausted = False
                    break
            if exhausted or should_stop():
                return

    def _pull(self, stop: int | None, batch_size: int) -> tuple[list[Notification], bool]:
        """Read about a batch of notifications; also say whether the log was exhausted."""
        follower = self.follower
        pages = follower.pull_notifications(
            self.leader_name, start=self.position, stop=stop, inclusive_of_start=False
        )
        reader = follower.readers.get(self.leader_name)
        page_size = reader.section_size if reader is not None else 1
        pulled: list[Notification] = []
        for page in pages:
            pulled.extend(page)
            # A short page is the end of the log: don't ask again just to get nothing.
            if len(page) < page_size:
                return pulled, True
            if len(pulled) >= batch_size:
                return pulled, False
        return pulled, True

    def _process_notifications(self, notifications: Sequence[Notification]) -> bool:
        """Process and record a batch; say whether it was recorded (not refused)."""
        follower = self.follower
        self.stage = CONVERT
        selected = follower.filter_received_notifications(notifications)
        jobs = follower.convert_notifications(self.leader_name, selected)
        return self._record(jobs, notifications[-1].id)

    def _process_recording_events(
        self,
        recording_events: list[RecordingEvent[TAggregateID]],
        should_stop: Callable[[], bool],
    ) -> None:
        """Process delivered events, reading gaps from the log; batch across prompts.

        Ids decide, not the order prompts arrive in (concurrent saves can notify out of
        order): events at or before the position are passed over as processed, and
        anything missing before a prompt's first event (with ``as_read``, before any of
        its events) is read from the log.
        """
        topics = self.follower.topics
        batch_size = self.follower.process_batch_size
        as_read = self.as_read
        taken: list[Recording[TAggregateID]] = []
        horizon = self.position or 0  # the last id taken into the batch (or processed)
        for recording_event in recording_events:
            recordings = recording_event.recordings
            if not recordings or recordings[-1].notification.id <= horizon:
                continue  # stale: seen already
            previous = recording_event.previous_max_notification_id
            first_id = recordings[0].notification.id
            if previous is None or previous > horizon or first_id > horizon + 1:
                # Something was recorded that no prompt delivered: read it from the log.
                horizon = self._read_gap(taken, horizon, first_id, should_stop)
            for recording in recordings:
                notification = recording.notification
                notification_id = notification.id
                if notification_id <= horizon:
                    continue
                if as_read and notification_id > horizon + 1:
                    horizon = self._read_gap(taken, horizon, notification_id, should_stop)
                    if notification_id <= horizon:
                        continue
                horizon = notification_id
                if not topics or notification.topic in topics:
                    taken.append(recording)
            if len(taken) >= batch_size:
                horizon = self._flush(taken, horizon)
            if should_stop():
                break
        self._flush(taken, horizon)

    def _read_gap(
        self,
        taken: list[Recording[TAggregateID]],
        horizon: int,
        next_id: int,
        should_stop: Callable[[], bool],
    ) -> int:
        """Record what is taken, then read the log up to ``next_id``; return the position."""
        self._flush(taken, horizon)
        self.catch_up(stop=next_id - 1, should_stop=should_stop)
        return self.position or 0

    def _flush(self, taken: list[Recording[TAggregateID]], horizon: int) -> int:
        """Record the events taken so far, up to ``horizon``; return the new position."""
        if horizon > (self.position or 0):
            if not self._record(self._jobs(taken), horizon):
                # Refused: what another process left undone is read from the log.
                self.request_catch_up()
            taken.clear()
        return self.position or 0

    def _jobs(self, taken: list[Recording[TAggregateID]]) -> list[ProcessingJob[TAggregateID]]:
        """The processing jobs of delivered events (decoded afresh, with ``as_read``)."""
        leader_name = self.leader_name
        if self.as_read:
            self.stage = CONVERT
            follower = self.follower
            notifications = [recording.notification for recording in taken]
            selected = follower.filter_received_notifications(notifications)
            return follower.convert_notifications(leader_name, selected)
        return [
            (recording.domain_event, Tracking(leader_name, recording.notification.id))
            for recording in taken
        ]

    def _record(self, jobs: list[ProcessingJob[TAggregateID]], last_id: int) -> bool:
        """Process ``jobs`` and record them with the position ``last_id``, atomically.

        Return False if the batch was refused because another process had recorded a
        later position meanwhile (which is then the feed's position).
        """
        follower = self.follower
        self.stage = PROCESS
        try:
            if follower.processes_each_event:
                for domain_event, tracking in jobs:
                    follower.process_event(domain_event, tracking)
                    self.position = tracking.notification_id
            elif jobs:
                follower.process_events(jobs, Tracking(self.leader_name, last_id))
        except IntegrityError:
            if not self._resynchronise():
                raise
            return False
        # With no jobs (all of other topics), moving on needs no write: the
        # notifications would be passed over again.
        self.position = last_id
        return True

    def _resynchronise(self) -> bool:
        """After a refused batch, adopt a position recorded by someone else, if any."""
        recorded = self.follower.recorder.max_tracking_id(self.leader_name)
        if recorded is not None and (self.position is None or recorded > self.position):
            self.position = recorded
            self.follower.forget_policy_cache()
            return True
        return False
