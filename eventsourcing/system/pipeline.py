"""Pipeline threads: the building blocks of 9.x's NewMultiThreadedRunner, for code that
assembles its own pipeline (our runners use the feeds of :mod:`eventsourcing.system.feed`)."""

from __future__ import annotations

import threading
from abc import abstractmethod
from collections.abc import Sequence
from queue import Full, Queue
from typing import Any, ClassVar, Generic

from eventsourcing.domain import TAggregateID
from eventsourcing.persistence import (
    Notification,
    Recording,
    Tracking,
)
from eventsourcing.projection import ProcessingJob
from eventsourcing.system.errors import (
    EventProcessingError,
    NotificationConvertingError,
    NotificationPullingError,
)
from eventsourcing.system.prompts import RecordingEvent
from eventsourcing.system.roles import Follower

#: What a :class:`PullingThread` passes on: new events as a leader delivered them, a list
#: of notifications read from its log, or None to stop.
ConvertingJob = RecordingEvent[TAggregateID] | Sequence[Notification] | None


class _PipelineThread(threading.Thread):
    """A daemon thread that takes jobs from a queue until it is stopped or fails.

    A failure is kept in ``error``, wrapped in ``error_class`` with the original as its
    cause, and ``has_errored`` is set.
    """

    error_class: ClassVar[type[Exception]] = EventProcessingError

    def __init__(self, has_errored: threading.Event, name: str) -> None:
        super().__init__(daemon=True, name=name)
        self.error: Exception | None = None
        self.has_errored = has_errored
        self.is_stopping = threading.Event()
        self.has_started = threading.Event()

    def run(self) -> None:
        """Do the work until stopped; keep the first error and signal it."""
        self.has_started.set()
        try:
            self._work()
        except Exception as error:
            self.error = self.error_class(str(error))
            self.error.__cause__ = error
            self.has_errored.set()

    @abstractmethod
    def _work(self) -> None:
        """Take and do jobs until told to stop."""


class PullingThread(_PipelineThread, Generic[TAggregateID]):
    """Passes one leader's new events on to a converting queue, in notification id order.

    The leader prompts it (:meth:`receive_recording_event`) with the events it recorded.
    Events at or before the last notification id passed on are dropped as seen; anything
    before a prompt's first event that no prompt delivered is read from the leader's log
    first and passed on as lists of notifications. Ids decide, not the order in which
    prompts arrive, so an out-of-order prompt is never lost (9.5.6 difference: prompts
    judged by notification id). At most 100
    prompts wait; more set ``overflow_event`` and are dropped, to be read from the log.
    Errors are :class:`NotificationPullingError`.
    """

    error_class = NotificationPullingError

    def __init__(
        self,
        converting_queue: Queue[ConvertingJob[TAggregateID]],
        follower: Follower[Any],
        leader_name: str,
        has_errored: threading.Event,
    ):
        """Pass ``leader_name``'s events for ``follower`` on to ``converting_queue``."""
        super().__init__(has_errored, name=f"{follower.name} pulling {leader_name}")
        self.converting_queue = converting_queue
        self.follower = follower
        self.leader_name = leader_name
        self.overflow_event = threading.Event()
        self.recording_event_queue: Queue[RecordingEvent[TAggregateID] | None] = Queue(100)
        self.mapper = follower.mappers[leader_name]
        self.previous_max_notification_id = follower.recorder.max_tracking_id(leader_name)

    def _work(self) -> None:
        while not self.is_stopping.is_set():
            recording_event = self.recording_event_queue.get()
            if recording_event is None:
                return
            self._pass_on(recording_event)

    def _pass_on(self, recording_event: RecordingEvent[TAggregateID]) -> None:
        recordings = self._unseen(recording_event.recordings)
        if not recordings:
            return
        first_id = recordings[0].notification.id
        previous = recording_event.previous_max_notification_id
        position = self.previous_max_notification_id or 0
        if previous is None or previous > position or first_id > position + 1:
            self._pull(stop=first_id - 1)
            recordings = self._unseen(recordings)
        self.converting_queue.put(RecordingEvent(self.leader_name, recordings, position))
        self.previous_max_notification_id = recordings[-1].notification.id

    def _unseen(self, recordings: list[Recording[TAggregateID]]) -> list[Recording[TAggregateID]]:
        position = self.previous_max_notification_id or 0
        return [r for r in recordings if r.notification.id > position]

    def _pull(self, stop: int) -> None:
        """Pass on what the leader's log holds after the position, up to ``stop``."""
        for notifications in self.follower.pull_notifications(
            self.leader_name,
            start=self.previous_max_notification_id,
            stop=stop,
            inclusive_of_start=False,
        ):
            self.converting_queue.put(notifications)
            self.previous_max_notification_id = notifications[-1].id

    def receive_recording_event(self, recording_event: RecordingEvent[TAggregateID]) -> None:
        """Queue a prompt of the leader without blocking (see ``overflow_event``)."""
        try:
            self.recording_event_queue.put(recording_event, timeout=0)
        except Full:
            self.overflow_event.set()

    def stop(self) -> None:
        """Ask the thread to finish."""
        self.is_stopping.set()
        self.recording_event_queue.put(None)


class ConvertingThread(_PipelineThread, Generic[TAggregateID]):
    """Turns what a :class:`PullingThread` passes on into processing jobs for the follower.

    Each job is a ``(domain_event, tracking)`` pair; events of topics the follower does not
    follow are left out. Errors are :class:`NotificationConvertingError`.
    """

    error_class = NotificationConvertingError

    def __init__(
        self,
        converting_queue: Queue[ConvertingJob[TAggregateID]],
        processing_queue: Queue[list[ProcessingJob[TAggregateID]] | None],
        follower: Follower[Any],
        leader_name: str,
        has_errored: threading.Event,
    ):
        """Convert ``leader_name``'s events from ``converting_queue`` to ``processing_queue``."""
        super().__init__(has_errored, name=f"{follower.name} converting {leader_name}")
        self.converting_queue = converting_queue
        self.processing_queue = processing_queue
        self.follower = follower
        self.leader_name = leader_name
        self.mapper = follower.mappers[leader_name]

    def _work(self) -> None:
        while True:
            job = self.converting_queue.get()
            if job is None or self.is_stopping.is_set():
                return
            processing_jobs = self._convert(job)
            if processing_jobs:
                self.processing_queue.put(processing_jobs)

    def _convert(
        self, job: RecordingEvent[TAggregateID] | Sequence[Notification]
    ) -> list[ProcessingJob[TAggregateID]]:
        if not isinstance(job, RecordingEvent):
            return self.follower.convert_notifications(self.leader_name, job)
        topics = self.follower.topics
        return [
            (r.domain_event, Tracking(job.application_name, r.notification.id))
            for r in job.recordings
            if not topics or r.notification.topic in topics
        ]

    def stop(self) -> None:
        """Ask the thread to finish."""
        self.is_stopping.set()
        self.converting_queue.put(None)


class ProcessingThread(_PipelineThread, Generic[TAggregateID]):
    """Has the follower process each job from a processing queue, one event at a time.

    Errors are :class:`EventProcessingError`.
    """

    def __init__(
        self,
        processing_queue: Queue[list[ProcessingJob[TAggregateID]] | None],
        follower: Follower[Any],
        has_errored: threading.Event,
    ):
        """Process ``follower``'s jobs from ``processing_queue``."""
        super().__init__(has_errored, name=f"{follower.name} processing")
        self.processing_queue = processing_queue
        self.follower = follower

    def _work(self) -> None:
        while True:
            jobs = self.processing_queue.get()
            if jobs is None or self.is_stopping.is_set():
                return
            for domain_event, tracking in jobs:
                self.follower.process_event(domain_event, tracking)

    def stop(self) -> None:
        """Ask the thread to finish."""
        self.is_stopping.set()
        self.processing_queue.put(None)
