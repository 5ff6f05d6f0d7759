"""The roles of applications in a system: followers, leaders, and process applications
that are both."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterable, Iterator, Sequence
from functools import partial
from typing import Any

from eventsourcing.application import (
    Application,
    NotificationLog,
    ProgrammingError,
)
from eventsourcing.domain import DomainEventProtocol, MutableOrImmutableAggregate, TAggregateID
from eventsourcing.persistence import (
    Mapper,
    Notification,
    Recording,
    Tracking,
)
from eventsourcing.projection import EventSourcedProjection, ProcessingJob
from eventsourcing.system.failures import IN_PROCESS_DEFAULT, ErrorPolicy, ParkedOriginators
from eventsourcing.system.feed import LeaderFeed
from eventsourcing.system.prompts import RecordingEvent, RecordingEventReceiver
from eventsourcing.system.reader import NotificationLogReader
from eventsourcing.utils import EnvType


class Follower(EventSourcedProjection[TAggregateID]):
    """An application that processes the events of the applications it follows.

    :meth:`follow` gives it a leader's notification log; :meth:`pull_and_process` then
    processes the leader's notifications after the recorded position, in batches of up to
    ``process_batch_size`` notifications (environment variable ``PROCESS_BATCH_SIZE``), each
    batch recorded in one transaction with one tracking record.

    A follower whose recorder extends ``_insert_events`` (to write rows of its own from the
    keyword arguments a policy collects) processes one notification per transaction.

    Within a batch the policy's ``repository.get()`` sees what the policy did earlier in
    the batch; other reads (the follower's own notification log, a query on its recorder)
    see only what is recorded, that is, not the rest of the batch. Set the batch size to 1
    where a policy depends on such reads. 9.5.6 difference: processing in batches.

    ``topics``, when set, restricts processing to events of those topics (the legacy class
    attribute ``follow_topics`` is accepted too).
    """

    pull_section_size = 10
    process_batch_size = 100
    PROCESS_BATCH_SIZE = "PROCESS_BATCH_SIZE"

    def __init_subclass__(cls, **kwargs: Any) -> None:
        """Accept the legacy ``follow_topics`` class attribute as ``topics``."""
        super().__init_subclass__(**kwargs)
        cls.topics = getattr(cls, "follow_topics", cls.topics)

    def __init__(self, env: EnvType | None = None) -> None:
        """Construct the application; it follows no leader until :meth:`follow` is called."""
        super().__init__(env)
        self.readers: dict[str, NotificationLogReader] = {}
        self.mappers: dict[str, Mapper[TAggregateID]] = {}
        self.is_threading_enabled = False
        self.process_batch_size = self._env_batch_size()
        if getattr(self.recorder, "_has_insert_hook", False):
            # A recorder that extends _insert_events reads the keyword arguments a policy
            # collects with its events, which are per notification (as in 9.x): batching
            # would merge them, so each notification gets a transaction of its own
            # (9.5.6 difference: one notification per transaction with an insert hook).
            self.process_batch_size = 1
        # A subclass that overrides process_event() gets it called for each event.
        self.processes_each_event = type(self).process_event is not Follower.process_event
        #: What to do when the policy raises (FOLLOWER_ERRORS and the like; by default,
        #: raise, as in 9.5.6). Workers have a default of their own.
        self.error_policy = ErrorPolicy.from_env(self.env, IN_PROCESS_DEFAULT)
        #: The originators whose notifications wait behind a dead letter.
        self.parked_originators = ParkedOriginators(self.recorder)

    def _env_batch_size(self) -> int:
        value = self.env.get(self.PROCESS_BATCH_SIZE)
        if not value:
            return type(self).process_batch_size
        try:
            size = int(value)
        except ValueError:
            size = 0
        if size < 1:
            msg = (
                f"Invalid {self.PROCESS_BATCH_SIZE} value {value!r} for {self.name!r}: set a "
                "positive integer (the most notifications processed in one transaction)"
            )
            raise ValueError(msg)
        return size

    def follow(self, name: str, log: NotificationLog) -> None:
        """Read the events of the leader ``name`` from its notification ``log`` from now on.

        The leader's events are decoded with a mapper configured from this application's
        environment under the leader's name, so ``LEADERNAME_CIPHER_KEY`` and the like apply.
        """
        self.readers[name] = NotificationLogReader(log, section_size=self.pull_section_size)
        factory = self.construct_factory(self.construct_env(name, self.env))
        try:
            self.mappers[name] = factory.mapper(
                self.construct_transcoder(), mapper_class=type(self.mapper)
            )
        finally:
            # Only the mapper is needed: release whatever the factory opened.
            factory.close()

    def pull_and_process(
        self, leader_name: str, start: int | None = None, stop: int | None = None
    ) -> None:
        """Process ``leader_name``'s notifications after ``start`` (up to ``stop``), in batches.

        ``start`` defaults to the position recorded for the leader.
        """
        if start is None:
            start = self.recorded_position(leader_name)
        LeaderFeed(self, leader_name, start).catch_up(stop=stop)

    @property
    def overrides_pull_and_process(self) -> bool:
        """Whether this class overrides :meth:`pull_and_process` (9.5.6's runners call it
        on every prompt, so a :class:`~eventsourcing.system.feed.LeaderFeed` does too)."""
        return type(self).pull_and_process is not Follower.pull_and_process

    @property
    def overrides_pull_notifications(self) -> bool:
        """Whether this class overrides :meth:`pull_notifications` (a feed then reads the
        log through it, rather than using the events a prompt delivers)."""
        return type(self).pull_notifications is not Follower.pull_notifications

    def process_event(
        self, domain_event: DomainEventProtocol[TAggregateID], tracking: Tracking
    ) -> None:
        """Process one event, under the processing lock, recording ``tracking`` with it."""
        self.process_events([(domain_event, tracking)])

    def pull_notifications(
        self,
        leader_name: str,
        start: int | None,
        stop: int | None = None,
        *,
        inclusive_of_start: bool = True,
    ) -> Iterator[Sequence[Notification]]:
        """Yield lists of ``leader_name``'s notifications of this follower's topics."""
        try:
            reader = self.readers[leader_name]
        except KeyError:
            msg = (
                f"{self.name!r} does not follow {leader_name!r}: call follow() with the "
                "leader's notification log first, or add the leader to a pipe of the System"
            )
            raise ProgrammingError(msg) from None
        return reader.select(
            start=start, stop=stop, topics=self.topics, inclusive_of_start=inclusive_of_start
        )

    def filter_received_notifications(
        self, notifications: Sequence[Notification]
    ) -> Sequence[Notification]:
        """Keep the notifications of this follower's topics (all, if it has none)."""
        topics = self.topics
        if topics:
            return [n for n in notifications if n.topic in topics]
        return notifications

    def convert_notifications(
        self, leader_name: str, notifications: Iterable[Notification]
    ) -> list[ProcessingJob[TAggregateID]]:
        """Decode notifications into ``(domain_event, tracking)`` pairs."""
        to_domain_event = self.mappers[leader_name].to_domain_event
        return [
            (to_domain_event(notification), Tracking(leader_name, notification.id))
            for notification in notifications
        ]


class Leader(Application[TAggregateID]):
    """An application that prompts its followers after recording new events.

    ``notify_topics``, when set, restricts the prompts to events of those topics.
    """

    def __init__(self, env: EnvType | None = None) -> None:
        """Construct the application, with no followers yet."""
        super().__init__(env)
        self.previous_max_notification_id: int | None = None
        self.followers: list[RecordingEventReceiver[TAggregateID]] = []
        # Keeps each prompt's previous id consistent with the prompt before it.
        self._prompt_lock = threading.Lock()
        # Saves started and ended, counted once a follower waits for the saves in flight
        # (until then a save pays nothing for it).
        self._counts_saves = False
        self._saves_started = 0
        self._saves_ended = 0
        self._saves_lock = threading.Lock()
        self._save_ended = threading.Condition(self._saves_lock)
        self._save_waiters = 0

    def lead(self, follower: RecordingEventReceiver[TAggregateID]) -> None:
        """Prompt ``follower`` after each recording of new events."""
        self.followers.append(follower)

    def save(
        self,
        *objs: MutableOrImmutableAggregate | DomainEventProtocol[TAggregateID] | None,
        **kwargs: Any,
    ) -> list[Recording[TAggregateID]]:
        """Record events as :meth:`Application.save` does, then prompt the followers."""
        if self.previous_max_notification_id is None:
            self.previous_max_notification_id = self.recorder.max_notification_id()
        if not self._counts_saves:  # read once: a save counts both its ends or neither
            return super().save(*objs, **kwargs)
        saves_lock = self._saves_lock
        with saves_lock:
            self._saves_started += 1
        try:
            return super().save(*objs, **kwargs)
        finally:
            with saves_lock:
                self._saves_ended += 1
                if self._save_waiters:
                    self._save_ended.notify_all()

    def wait_for_saves_in_flight(self, timeout: float, linger: float = 0.0) -> None:
        """Wait (up to ``timeout`` seconds) until the saves started by now have ended.

        A follower that does this before processing commits the events of those saves in
        one batch instead of one commit each; it waits only while saves are in flight.
        With ``linger``, it goes on waiting for the saves that start meanwhile, back to
        back, for up to ``linger`` seconds in all: when saves come without a pause, one
        batch then takes in several, where each would otherwise bring a commit of its own.
        """
        self._counts_saves = True  # from now on (saves already in flight aren't waited for)
        save_ended = self._save_ended
        deadline = time.monotonic() + linger
        with save_ended:
            while True:
                started = self._saves_started
                if self._saves_ended >= started:
                    return
                self._save_waiters += 1
                try:
                    ended = save_ended.wait_for(partial(self._have_ended, started), timeout)
                finally:
                    self._save_waiters -= 1
                if not ended or time.monotonic() >= deadline:
                    return

    def _have_ended(self, saves: int) -> bool:
        return self._saves_ended >= saves

    def _notify(self, recordings: list[Recording[TAggregateID]]) -> None:
        """Prompt every follower with the new recordings (of ``notify_topics``, if set)."""
        super()._notify(recordings)
        if self.notify_topics:
            notify_topics = self.notify_topics
            recordings = [r for r in recordings if r.notification.topic in notify_topics]
        if not recordings:
            return
        with self._prompt_lock:
            previous = self.previous_max_notification_id
            recording_event = RecordingEvent(self.name, recordings, previous)
            last_id = recordings[-1].notification.id
            # Concurrent saves may notify out of order: never move backwards.
            if previous is None or last_id > previous:
                self.previous_max_notification_id = last_id
        for follower in self.followers:
            follower.receive_recording_event(recording_event)


class ProcessApplication(Leader[TAggregateID], Follower[TAggregateID]):
    """Follows applications, and leads others with the events its policy records."""
