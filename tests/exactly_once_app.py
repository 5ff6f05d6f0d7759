"""Applications and worker processes for the multi-process exactly-once tests (no tests).

A dog school (``School``) teaches dogs tricks; ``Counters`` (a process application) counts
each trick; ``Totals`` (a follower of ``Counters``) counts what was counted. Every
application is configured from the environment, one database each (SQLite) or one
database for all (PostgreSQL). Only the public API of ``eventsourcing`` 9.x is used, so
the same file runs under this package and under ``eventsourcing`` 9.5.6::

    python tests/exactly_once_app.py produce EVENTS   # register dogs, then teach tricks
    python tests/exactly_once_app.py process NAME     # process follower NAME, forever
    python tests/exactly_once_app.py construct AT     # construct every app at time AT
"""

from __future__ import annotations

import os
import random
import sys
import time
from typing import Any
from uuid import NAMESPACE_URL, UUID, uuid5

from eventsourcing.application import AggregateNotFoundError, Application
from eventsourcing.domain import Aggregate, event
from eventsourcing.persistence import IntegrityError
from eventsourcing.system import Follower, ProcessApplication

TRICKS = [f"trick{i}" for i in range(8)]
DOGS = 16


class Dog(Aggregate):
    """A dog that learns tricks."""

    @event("Registered")
    def __init__(self, name: str) -> None:
        self.name = name

    @event("TrickAdded")
    def add_trick(self, trick: str) -> None:
        """Teach the dog a trick."""


class Counter(Aggregate):
    """How often one trick was taught (one counter per trick: contended on purpose)."""

    @staticmethod
    def create_id(trick: str) -> UUID:
        """One counter per trick."""
        return uuid5(NAMESPACE_URL, f"/counters/{trick}")

    @event("Started")
    def __init__(self, trick: str) -> None:
        self.trick = trick
        self.count = 0

    @event("Incremented")
    def increment(self) -> None:
        """Count one more."""
        self.count += 1


class Total(Aggregate):
    """How many increments were counted, over all counters."""

    @staticmethod
    def create_id() -> UUID:
        """The one total."""
        return uuid5(NAMESPACE_URL, "/totals/all")

    @event("Started")
    def __init__(self) -> None:
        self.count = 0

    @event("Added")
    def add(self) -> None:
        """Count one more increment."""
        self.count += 1


class School(Application):
    """Registers dogs and teaches them tricks."""


class Counters(ProcessApplication):
    """Counts each trick taught at the school."""

    def policy(self, domain_event: Any, processing_event: Any) -> None:
        """Increment the trick's counter (starting it the first time)."""
        if not isinstance(domain_event, Dog.TrickAdded):
            return
        try:
            counter = self.repository.get(Counter.create_id(domain_event.trick))
        except AggregateNotFoundError:
            counter = Counter(domain_event.trick)
        counter.increment()
        processing_event.collect_events(counter)


class Totals(Follower):
    """Counts the counters' increments."""

    def policy(self, domain_event: Any, processing_event: Any) -> None:
        """Add one to the total for each increment."""
        if not isinstance(domain_event, Counter.Incremented):
            return
        try:
            total = self.repository.get(Total.create_id())
        except AggregateNotFoundError:
            total = Total()
        total.add()
        processing_event.collect_events(total)


LEADERS = {"Counters": School, "Totals": Counters}
FOLLOWERS = {"Counters": Counters, "Totals": Totals}


def produce(events: int) -> None:
    """Register the dogs, then teach random dogs random tricks, one command each."""
    school = School()
    dogs = []
    for i in range(DOGS):
        dog = Dog(f"dog{i}")
        school.save(dog)
        dogs.append(dog.id)
    rng = random.Random(os.getpid())
    for _ in range(events):
        dog = school.repository.get(rng.choice(dogs))
        dog.add_trick(rng.choice(TRICKS))
        school.save(dog)
    school.close()


def process(name: str) -> None:
    """Process the follower ``name`` forever, pulling its leader's log (like a worker)."""
    follower = FOLLOWERS[name]()
    leader = LEADERS[name]()
    follower.follow(leader.name, leader.notification_log)
    refused = 0
    while True:
        try:
            follower.pull_and_process(leader.name)
        except IntegrityError:
            # eventsourcing 9.x raises when another process recorded the position first.
            refused += 1
        time.sleep(0.005)


def construct(at: float) -> None:
    """Construct every application at the time ``at`` (to race on creating tables)."""
    time.sleep(max(0.0, at - time.time()))
    for cls in (School, Counters, Totals):
        cls().close()
    print("constructed", flush=True)


def main(argv: list[str]) -> None:
    """Run one command: ``produce EVENTS``, ``process NAME`` or ``construct AT``."""
    command, argument = argv
    if command == "produce":
        produce(int(argument))
    elif command == "process":
        process(argument)
    elif command == "construct":
        construct(float(argument))
    else:
        sys.exit(f"unknown command {command!r}")


if __name__ == "__main__":
    # Run the module under its own name, so that event topics name it, not __main__.
    import exactly_once_app

    exactly_once_app.main(sys.argv[1:])
