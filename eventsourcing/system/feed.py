"""One follower's progress through one leader's log: the single implementation of every
runner.

A :class:`LeaderFeed` is what the in-process runners, the threads of the threaded runners
and the out-of-process workers (:mod:`runners.worker`) share: give it prompts
(:meth:`~LeaderFeed.receive`, :meth:`~LeaderFeed.request_catch_up`) from any thread, and
have one thread at a time :meth:`~LeaderFeed.process_pending`. Its ``observer`` (a
:class:`~eventsourcing.system.failures.FeedObserver`) is told of what it records and of the
failures it deals with.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, Generic, cast

from eventsourcing.deadletters import (
    DISCARDED,
    PARKED,
    RETRYING,
    SKIPPED,
    DeadLetter,
    FollowerStateRecorder,
    ParkingTracking,
    RetryTracking,
)
from eventsourcing.domain import TAggregateID
from eventsourcing.persistence import (
    IntegrityError,
    Notification,
    Recording,
    Tracking,
)
from eventsourcing.projection import ProcessingJob, processing_failure
from eventsourcing.system.failures import (
    RETRY,
    SKIP,
    STOP,
    FeedObserver,
    log_parked,
    log_resolved,
    log_retrying,
)
from eventsourcing.system.prompts import RecordingEvent
from eventsourcing.utils import get_topic

if TYPE_CHECKING:
    # Only annotated: roles.py imports this module (Follower.pull_and_process is a feed).
    from eventsourcing.system.roles import Follower

__all__ = ["CONVERT", "PROCESS", "PULL", "LeaderFeed"]

# The stages of processing, which the threaded runners report their errors by.
PULL, CONVERT, PROCESS = "pull", "convert", "process"


class LeaderFeed(Generic[TAggregateID]):
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
        self.calls_pull_and_process = as_read and follower.overrides_pull_and_process
        overrides_pull = follower.overrides_pull_notifications or self.calls_pull_and_process
        self.keep_recordings = keep_recordings and not (as_read and overrides_pull)
        self.as_read = as_read
        self.max_inbox = max_inbox
        self._lock = threading.Lock()
        self._must_read_log = False
        self._inbox: list[RecordingEvent[TAggregateID]] = []
        self._inbox_events = 0  # held in the inbox: at most about max_inbox
        self.parking = _Parking(self)
        #: Told of what is recorded, of retries, parked letters and resolved retries (the
        #: failures are logged whatever it does; a worker's observer keeps its metrics).
        self.observer = FeedObserver()
        #: Waits before a retry; returns True to give up waiting (the runner is stopping).
        self.wait: Callable[[float], bool] = _sleep

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

        Jobs of an originator with parked notifications are parked behind them, in the
        same transaction. Return False if the batch was refused because another process
        had recorded a later position meanwhile (which is then the feed's position), or
        if a retry of a failed notification was interrupted.
        """
        letters: list[DeadLetter] = []
        if self.parking.in_use:
            jobs, letters = self.parking.hold_back(jobs)
        return self._record_items(jobs, letters, last_id)

    def _record_items(
        self, jobs: list[ProcessingJob[TAggregateID]], letters: list[DeadLetter], last_id: int
    ) -> bool:
        self.stage = PROCESS
        try:
            self._process(jobs, letters, last_id)
        except IntegrityError as error:
            if self._resynchronise():
                return False
            if self.follower.error_policy.stops_at_once:
                raise
            # The policy's new events conflict with recorded ones: a failure like any.
            return self._recover(jobs, letters, last_id, error)
        except Exception as error:
            if self.follower.error_policy.stops_at_once:
                raise
            return self._recover(jobs, letters, last_id, error)
        # With no jobs (all of other topics), moving on needs no write: the
        # notifications would be passed over again.
        self.position = last_id
        return True

    def _process(
        self, jobs: list[ProcessingJob[TAggregateID]], letters: list[DeadLetter], last_id: int
    ) -> None:
        """Process ``jobs`` and park ``letters``, recording the position ``last_id``."""
        follower = self.follower
        if follower.processes_each_event:
            for item in _in_order(jobs, letters):
                number = _id_of(item)
                if isinstance(item, DeadLetter):
                    self.parking.park(item)
                else:
                    follower.process_event(*item)
                self.position = number
        elif letters:
            ids = tuple(_id_of(item) for item in _in_order(jobs, letters))
            tracking = ParkingTracking(self.leader_name, last_id, ids, tuple(letters))
            self.recorded(follower.process_events(jobs, tracking))
            self.parking.parked(letters)
        elif jobs:
            self.recorded(follower.process_events(jobs, Tracking(self.leader_name, last_id)))

    def _recover(
        self,
        jobs: list[ProcessingJob[TAggregateID]],
        letters: list[DeadLetter],
        last_id: int,
        error: Exception,
    ) -> bool:
        """After a failed batch: record what came before the failing notification as a
        batch, then the rest one notification per transaction, retrying, parking or
        skipping each failure as the error policy says."""
        failure = processing_failure(error)
        failed_id = failure.notification_id if failure is not None else 0
        head = [job for job in jobs if job[1].notification_id < failed_id]
        if head:
            head_letters = [d for d in letters if d.notification_id < failed_id]
            if not self._record_items(head, head_letters, head[-1][1].notification_id):
                return False
            letters = letters[len(head_letters) :]
        # The failing notification's first attempt was this one (unknown: try each again).
        first_error: Exception | None = error if failure is not None else None
        for item in _in_order(jobs[len(head) :], letters):
            number = _id_of(item)
            if isinstance(item, DeadLetter):
                recorded = self.parking.park(item)
            else:
                recorded = self._record_alone(item, first_error)
                first_error = None
            if not recorded:
                return False
            self.position = number
        self.position = max(self.position or 0, last_id)
        return True

    def _record_alone(self, job: ProcessingJob[TAggregateID], error: Exception | None) -> bool:
        """Record one notification in a transaction of its own, retrying it as the error
        policy says; then stop (raise), park or skip it. False if refused or stopped."""
        errors = self.follower.error_policy
        attempts = 0
        while True:
            if error is None:
                if self.parking.in_use:
                    _, letters = self.parking.hold_back([job])
                    if letters:
                        return self.parking.park(letters[0])
                try:
                    self._process([job], [], job[1].notification_id)
                    return True
                except IntegrityError as refused:
                    if self._resynchronise():
                        return False
                    error = refused
                except Exception as failed:
                    error = failed
            attempts += 1
            if attempts <= errors.retries or errors.action == RETRY:
                delay = errors.retry_delay(min(attempts, 32))
                self._retrying(job[1].notification_id, attempts, delay, error)
                if self.wait(delay):
                    return False  # stopping: the notification is processed next time
                error = None
                continue
            if errors.action == STOP:
                raise error
            return self.parking.park(self.parking.letter_of(job, error, attempts))

    def recorded(self, recordings: Sequence[Recording[TAggregateID]]) -> None:
        """Tell the observer of the events the follower's policy recorded."""
        if recordings:
            self.observer.recorded(self.follower.name, self.leader_name, recordings)

    def _retrying(self, notification_id: int, attempt: int, delay: float, error: Exception) -> None:
        args = (self.follower.name, self.leader_name, notification_id, attempt, delay, error)
        log_retrying(*args)
        self.observer.retrying(*args)

    def _job_of(self, notification_id: int) -> ProcessingJob[TAggregateID] | None:
        """The processing job of the leader's notification ``notification_id``, read from
        its log (None if it isn't there, or isn't of the follower's topics)."""
        follower = self.follower
        pages = follower.pull_notifications(
            self.leader_name, start=notification_id, stop=notification_id
        )
        for page in pages:
            selected = [n for n in page if n.id == notification_id]
            jobs = follower.convert_notifications(self.leader_name, selected)
            return jobs[0] if jobs else None
        return None

    def retry_dead_letters(self) -> int:
        """Process the dead letters of this leader whose retry was requested (see
        :meth:`_Parking.retry_requested`); return how many were resolved."""
        return self.parking.retry_requested()

    def _resynchronise(self) -> bool:
        """After a refused batch, adopt a position recorded by someone else, if any."""
        recorded = self.follower.recorder.max_tracking_id(self.leader_name)
        if recorded is not None and (self.position is None or recorded > self.position):
            self.position = recorded
            self.follower.forget_policy_cache()
            return True
        return False


class _Parking(Generic[TAggregateID]):
    """A feed's dead letters: holding back jobs of parked originators, parking, retrying."""

    def __init__(self, feed: LeaderFeed[TAggregateID]) -> None:
        self.feed = feed
        self.originators = feed.follower.parked_originators
        self._in_use: bool | None = None

    @property
    def in_use(self) -> bool:
        """Whether parked originators are honoured: where failures may be handled otherwise
        than by raising, or where letters are open (parked under another policy). Read
        once, so that the in-process runners' default (raise) costs one query."""
        if self._in_use is None:
            originators = self.originators
            stops = self.feed.follower.error_policy.stops_at_once
            self._in_use = originators.is_supported and (not stops or originators.any_open())
        return self._in_use

    def hold_back(
        self, jobs: list[ProcessingJob[TAggregateID]]
    ) -> tuple[list[ProcessingJob[TAggregateID]], list[DeadLetter]]:
        """Split ``jobs`` into those to process and letters for those of parked originators
        (an originator is parked from its first letter on)."""
        parked = self.originators.of(self.feed.leader_name)
        if not parked:
            return jobs, []
        kept: list[ProcessingJob[TAggregateID]] = []
        letters: list[DeadLetter] = []
        for job in jobs:
            event, tracking = job
            first = parked.get(str(event.originator_id))
            if first is None or first > tracking.notification_id:
                kept.append(job)
            else:
                topic = get_topic(type(event))
                leader, number = self.feed.leader_name, tracking.notification_id
                letters.append(DeadLetter.behind(leader, number, event, topic, first))
        return kept, letters

    def letter_of(
        self, job: ProcessingJob[TAggregateID], error: Exception, attempts: int
    ) -> DeadLetter:
        """The letter that parks (or skips) ``job`` after ``attempts`` failed attempts."""
        event, tracking = job
        status = SKIPPED if self.feed.follower.error_policy.action == SKIP else PARKED
        topic = get_topic(type(event))
        leader, number = self.feed.leader_name, tracking.notification_id
        return DeadLetter.of_failure(leader, number, event, topic, error, attempts, status=status)

    def park(self, letter: DeadLetter) -> bool:
        """Record ``letter`` with the tracking record of its notification; False if refused
        (another process recorded that position)."""
        feed = self.feed
        n = letter.notification_id
        try:
            feed.follower.process_events([], ParkingTracking(feed.leader_name, n, (n,), (letter,)))
        except IntegrityError:
            if feed._resynchronise():
                return False
            raise
        self.parked([letter])
        return True

    def parked(self, letters: Sequence[DeadLetter]) -> None:
        """Note letters just recorded: their originators' later notifications wait."""
        parked = self.originators.of(self.feed.leader_name)
        for letter in letters:
            if letter.is_open:
                parked.setdefault(letter.originator_id, letter.notification_id)
            self._tell_parked(letter)

    def _tell_parked(self, letter: DeadLetter) -> None:
        name = self.feed.follower.name
        log_parked(name, letter)
        self.feed.observer.parked(name, letter)

    def retry_requested(self) -> int:
        """Process the letters of this leader whose retry was requested, in order, each
        with the compare-and-set of :class:`RetryTracking`; return how many were resolved.

        A letter waits while an earlier letter of its originator is still parked.
        """
        feed = self.feed
        recorder = feed.follower.recorder
        if not self.originators.is_supported:
            return 0
        state = cast("FollowerStateRecorder", recorder)
        leader = feed.leader_name
        resolved = 0
        for letter in state.select_dead_letters(leader_name=leader, statuses=(RETRYING,)):
            originator = letter.originator_id
            first = state.select_dead_letters(leader_name=leader, originator_id=originator)
            if not first or first[0].notification_id != letter.notification_id:
                continue  # behind an earlier letter of its originator that still waits
            if self._retry(state, letter):
                resolved += 1
        return resolved

    def _retry(self, state: FollowerStateRecorder, letter: DeadLetter) -> bool:
        feed, follower = self.feed, self.feed.follower
        leader, number = letter.leader_name, letter.notification_id
        job = feed._job_of(number)
        if job is None:
            reason = (
                "the notification is no longer in the leader's log, or not of the follower's topics"
            )
            state.set_dead_letter_status(
                [(leader, number)], DISCARDED, from_statuses=(RETRYING,), reason=reason
            )
            self.originators.forget(leader)
            return False
        try:
            feed.recorded(follower.process_events([job], RetryTracking(leader, number)))
        except Exception as error:
            current = state.select_dead_letters(leader_name=leader, notification_id=number)
            if current and current[0].status == RETRYING:
                state.update_dead_letter(letter.failed_again(error))
                self._tell_parked(letter.failed_again(error))
            return False  # else another process resolved or discarded it
        finally:
            self.originators.forget(leader)
        log_resolved(follower.name, letter)
        feed.observer.resolved(follower.name, letter)
        return True


def _in_order(
    jobs: Sequence[ProcessingJob[Any]], letters: Sequence[DeadLetter]
) -> list[ProcessingJob[Any] | DeadLetter]:
    """Jobs and letters together, in the order of their notification ids."""
    return sorted([*jobs, *letters], key=_id_of)


def _id_of(item: ProcessingJob[Any] | DeadLetter) -> int:
    return item.notification_id if isinstance(item, DeadLetter) else item[1].notification_id


def _sleep(seconds: float) -> bool:
    time.sleep(seconds)
    return False


#: The name the feed had before it was public (``runners.control`` still uses it).
_LeaderFeed = LeaderFeed
