"""The domain model, system and persistence back ends shared by the system tests (no tests).

The system: ``DogSchool`` (a plain application) registers dogs and their tricks;
``Counters`` (a process application) follows it and keeps one ``TrickCounter`` per dog;
``Totals`` follows ``Counters`` and keeps one ``Total`` of all counters and tricks.
``DogSchool`` also records ``Dog.Renamed`` events, which the ``Counters`` policy ignores:
they must be tracked all the same.

:class:`Backend` gives each application its own database (an environment per back end) and
keeps in-memory SQLite databases alive between runners, so that a new runner finds the
databases that an earlier one left.
"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from uuid import NAMESPACE_URL, UUID, uuid5

import pytest

from eventsourcing.application import AggregateNotFoundError, Application, ProcessingEvent
from eventsourcing.dispatch import singledispatchmethod
from eventsourcing.domain import Aggregate, DomainEventProtocol, event
from eventsourcing.system import (
    Follower,
    MultiThreadedRunner,
    NewMultiThreadedRunner,
    NewSingleThreadedRunner,
    ProcessApplication,
    Runner,
    SingleThreadedRunner,
    System,
)
from eventsourcing.utils import get_topic

RUNNERS: list[type[Runner[Any]]] = [
    SingleThreadedRunner,
    NewSingleThreadedRunner,
    MultiThreadedRunner,
    NewMultiThreadedRunner,
]
THREADED = (MultiThreadedRunner, NewMultiThreadedRunner)
SYNCHRONOUS = [cls for cls in RUNNERS if not issubclass(cls, THREADED)]
BACKENDS = ["popo", "sqlite_file", "sqlite_memory", "postgres"]
PERSISTENT_BACKENDS = ["sqlite_file", "sqlite_memory", "postgres"]
WAIT = 20.0  # seconds: generous, for a loaded machine; waits end as soon as they are met


class Dog(Aggregate):
    """A dog of the dog school."""

    @event("Registered")
    def __init__(self, name: str) -> None:
        self.name = name
        self.tricks: list[str] = []

    @event("TrickAdded")
    def add_trick(self, trick: str) -> None:
        """Teach the dog a trick."""
        self.tricks.append(trick)

    @event("Renamed")
    def rename(self, name: str) -> None:
        """Change the dog's name (an event the counters ignore)."""
        self.name = name


class TrickCounter(Aggregate):
    """How many tricks one dog has learned."""

    @staticmethod
    def create_id(dog_id: UUID) -> UUID:
        """One counter per dog."""
        return uuid5(NAMESPACE_URL, f"/trick-counters/{dog_id}")

    @event("Started")
    def __init__(self, dog_id: UUID) -> None:
        self.dog_id = dog_id
        self.count = 0

    @event("Incremented")
    def increment(self) -> None:
        """Count one more trick."""
        self.count += 1


class Total(Aggregate):
    """The number of counters and of counted tricks (there is one total)."""

    @staticmethod
    def create_id() -> UUID:
        """The one total."""
        return uuid5(NAMESPACE_URL, "/totals/all")

    @event("Started")
    def __init__(self) -> None:
        self.counters = 0
        self.tricks = 0

    @event("CounterAdded")
    def add_counter(self) -> None:
        """Count a new counter."""
        self.counters += 1

    @event("TrickCounted")
    def add_trick(self) -> None:
        """Count a counted trick."""
        self.tricks += 1


class DogSchool(Application[UUID]):
    """Registers dogs and teaches them tricks."""

    def register(self, name: str) -> UUID:
        """Register a new dog."""
        dog = Dog(name)
        self.save(dog)
        return dog.id

    def add_trick(self, dog_id: UUID, trick: str) -> None:
        """Teach a dog a trick."""
        dog: Dog = self.repository.get(dog_id)
        dog.add_trick(trick)
        self.save(dog)

    def rename(self, dog_id: UUID, name: str) -> None:
        """Rename a dog."""
        dog: Dog = self.repository.get(dog_id)
        dog.rename(name)
        self.save(dog)


class Failures:
    """Makes the Counters policy fail at chosen notification ids, each a number of times."""

    def __init__(self) -> None:
        self.remaining: dict[int, int] = {}
        self.lock = threading.Lock()
        self.failed = 0

    def check(self, notification_id: int) -> None:
        """Raise PolicyFailure if a failure is due at ``notification_id``."""
        with self.lock:
            if self.remaining.get(notification_id, 0) > 0:
                self.remaining[notification_id] -= 1
                self.failed += 1
                raise PolicyFailureError(f"deliberate failure at notification {notification_id}")


class PolicyFailureError(Exception):
    """A deliberate failure of the Counters policy."""


FAILURES = Failures()
FAILING_NAME = "Refused"  # the Counters policy fails on a dog registered with this name


class Counters(ProcessApplication[UUID]):
    """Counts each dog's tricks (ignoring renames)."""

    @singledispatchmethod
    def policy(
        self, domain_event: DomainEventProtocol[UUID], processing_event: ProcessingEvent[UUID]
    ) -> None:
        """Ignore other events."""

    @policy.register
    def _registered(
        self, domain_event: Dog.Registered, processing_event: ProcessingEvent[UUID]
    ) -> None:
        self._check_failure(processing_event)
        if domain_event.name == FAILING_NAME:  # a failure that crosses process boundaries
            raise PolicyFailureError(f"refused to count a dog named {FAILING_NAME!r}")
        processing_event.collect_events(TrickCounter(domain_event.originator_id))

    @policy.register
    def _trick_added(
        self, domain_event: Dog.TrickAdded, processing_event: ProcessingEvent[UUID]
    ) -> None:
        self._check_failure(processing_event)
        counter: TrickCounter = self.repository.get(
            TrickCounter.create_id(domain_event.originator_id)
        )
        counter.increment()
        processing_event.collect_events(counter)

    @staticmethod
    def _check_failure(processing_event: ProcessingEvent[UUID]) -> None:
        assert processing_event.tracking is not None
        FAILURES.check(processing_event.tracking.notification_id)

    def count(self, dog_id: UUID) -> int:
        """Return how many tricks the dog has learned."""
        try:
            counter: TrickCounter = self.repository.get(TrickCounter.create_id(dog_id))
        except AggregateNotFoundError:
            return 0
        return counter.count


class Totals(Follower[UUID]):
    """Totals the counters."""

    @singledispatchmethod
    def policy(
        self, domain_event: DomainEventProtocol[UUID], processing_event: ProcessingEvent[UUID]
    ) -> None:
        """Ignore other events."""

    @policy.register
    def _started(
        self, domain_event: TrickCounter.Started, processing_event: ProcessingEvent[UUID]
    ) -> None:
        total = self._total()
        total.add_counter()
        processing_event.collect_events(total)

    @policy.register
    def _incremented(
        self, domain_event: TrickCounter.Incremented, processing_event: ProcessingEvent[UUID]
    ) -> None:
        total = self._total()
        total.add_trick()
        processing_event.collect_events(total)

    def _total(self) -> Total:
        try:
            total: Total = self.repository.get(Total.create_id())
        except AggregateNotFoundError:
            total = Total()
        return total

    def totals(self) -> tuple[int, int]:
        """Return (counters, tricks)."""
        try:
            total: Total = self.repository.get(Total.create_id())
        except AggregateNotFoundError:
            return 0, 0
        return total.counters, total.tricks


class Auditor(Follower[UUID]):
    """Counts every event of the dog school it is given (a follower added later)."""

    def __init__(self, env: Any = None) -> None:
        super().__init__(env)
        self.seen: list[int] = []

    def policy(
        self, domain_event: DomainEventProtocol[UUID], processing_event: ProcessingEvent[UUID]
    ) -> None:
        """Note the notification id (the same id twice would be a duplicate)."""
        assert processing_event.tracking is not None
        self.seen.append(processing_event.tracking.notification_id)


class Registrations(Follower[UUID]):
    """Follows only registrations (``topics``): the dog school's other events are passed
    over, so its tracked position stays behind a log that ends with tricks."""

    topics = (get_topic(Dog.Registered),)

    def policy(
        self, domain_event: DomainEventProtocol[UUID], processing_event: ProcessingEvent[UUID]
    ) -> None:
        """Nothing to record: the tracking record is the point."""


SYSTEM = System(pipes=[[DogSchool, Counters, Totals]])
SYSTEM_WITH_TOPICS = System(pipes=[[DogSchool, Registrations]])
SYSTEM_WITH_AUDITOR = System(pipes=[[DogSchool, Counters, Totals], [DogSchool, Auditor]])
APP_NAMES = ("DogSchool", "Counters", "Totals", "Auditor")


@dataclass
class Backend:
    """A persistence back end for a test: an environment giving each application a database."""

    name: str
    env: dict[str, str]
    keepers: list[sqlite3.Connection] = field(default_factory=list)

    @property
    def is_persistent(self) -> bool:
        """Whether databases outlive the applications (POPO's do not)."""
        return self.name != "popo"

    def close(self) -> None:
        """Release the in-memory SQLite databases."""
        for keeper in self.keepers:
            keeper.close()


def make_backend(name: str, request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Backend]:
    """Yield a :class:`Backend` of ``name`` with databases for every application name."""
    if name == "popo":
        yield Backend(name, {"PERSISTENCE_MODULE": "eventsourcing.popo"})
        return
    if name == "postgres":
        database = request.getfixturevalue("postgres_database")
        yield Backend(name, {"PERSISTENCE_MODULE": "eventsourcing.postgres", **database.env})
        return
    env = {"PERSISTENCE_MODULE": "eventsourcing.sqlite"}
    backend = Backend(name, env)
    for app_name in APP_NAMES:
        if name == "sqlite_file":
            db = str(tmp_path / f"{app_name}.sqlite3")
        else:
            db = f"file:{tmp_path.name}_{app_name}?mode=memory&cache=shared"
            # A shared in-memory database lives while a connection to it is open.
            backend.keepers.append(sqlite3.connect(db, uri=True))
        env[f"{app_name.upper()}_SQLITE_DBNAME"] = db
    try:
        yield backend
    finally:
        backend.close()


@dataclass
class Expected:
    """What the system should end up with after :func:`run_workload`."""

    dog_ids: list[UUID]
    tricks: dict[UUID, int]
    renames: int

    @property
    def school_events(self) -> int:
        """How many events the dog school recorded."""
        return len(self.dog_ids) + sum(self.tricks.values()) + self.renames

    @property
    def counter_events(self) -> int:
        """How many events the counters should have recorded (no duplicates)."""
        return len(self.dog_ids) + sum(self.tricks.values())


def run_workload(school: DogSchool, dogs: int = 6, rounds: int = 4) -> Expected:
    """Register dogs, teach them tricks and rename some; return what to expect."""
    dog_ids = [school.register(f"dog{i}") for i in range(dogs)]
    tricks = dict.fromkeys(dog_ids, 0)
    renames = 0
    for r in range(rounds):
        for i, dog_id in enumerate(dog_ids):
            if (i + r) % 3:
                school.add_trick(dog_id, f"trick{r}")
                tricks[dog_id] += 1
            else:
                school.rename(dog_id, f"dog{i}-{r}")
                renames += 1
    return Expected(dog_ids, tricks, renames)


def wait_until_settled(runner: Runner[Any], school: DogSchool, timeout: float = WAIT) -> None:
    """Wait until Counters has processed the school's log and Totals the counters' log."""
    counters = runner.get(Counters)
    counters.recorder.wait("DogSchool", school.recorder.max_notification_id(), timeout=timeout)
    totals = runner.get(Totals)
    totals.recorder.wait("Counters", counters.recorder.max_notification_id(), timeout=timeout)


def assert_settled_state(runner: Runner[Any], expected: Expected) -> None:
    """Check every count, every tracking position, and that no event was recorded twice."""
    school = runner.get(DogSchool)
    counters = runner.get(Counters)
    totals = runner.get(Totals)
    assert school.recorder.max_notification_id() == expected.school_events
    # Tracking reaches the leader's last notification, ignored renames included.
    assert counters.recorder.max_tracking_id("DogSchool") == expected.school_events
    assert counters.recorder.max_notification_id() == expected.counter_events
    assert totals.recorder.max_tracking_id("Counters") == expected.counter_events
    assert {d: counters.count(d) for d in expected.dog_ids} == expected.tricks
    assert totals.totals() == (len(expected.dog_ids), sum(expected.tricks.values()))
