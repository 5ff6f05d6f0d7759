"""A system whose follower's policy can be made to fail, across processes (no tests).

``Shop`` opens accounts and takes deposits. ``Ledger`` follows it and records one line per
event of an account in a ``Book`` with the account's id, so its events table holds exactly
one row per event of ``Shop`` it processed (counted with SQL, without the library).
``Audit`` follows ``Ledger`` (so that ``Ledger`` is a process application with followers).

The ``Ledger`` policy raises for the accounts listed in the file ``POISON_FILE`` (always),
and for those listed in ``FLAKY_FILE`` for their first ``FLAKY_FAILURES`` attempts (counted
in ``FLAKY_FILE.attempts``): editing the files stands for deploying a fixed policy.
"""

from __future__ import annotations

import os
from pathlib import Path
from uuid import UUID

from eventsourcing.application import AggregateNotFoundError, Application, ProcessingEvent
from eventsourcing.dispatch import singledispatchmethod
from eventsourcing.domain import Aggregate, DomainEventProtocol, event
from eventsourcing.system import ProcessApplication, System


class Account(Aggregate):
    """An account of the shop."""

    @event("Opened")
    def __init__(self, owner: str) -> None:
        self.owner = owner
        self.balance = 0

    @event("Deposited")
    def deposit(self, amount: int) -> None:
        """Add ``amount`` to the balance."""
        self.balance += amount


class Shop(Application[UUID]):
    """Opens accounts and takes deposits."""

    def open_accounts(self, count: int) -> list[UUID]:
        """Open ``count`` accounts in one save."""
        accounts = [Account(f"owner{i}") for i in range(count)]
        self.save(*accounts)
        return [a.id for a in accounts]

    def deposit_round(self, account_ids: list[UUID], amount: int = 1) -> None:
        """One deposit into each account, in one save."""
        accounts = [self.repository.get(i) for i in account_ids]
        for account in accounts:
            account.deposit(amount)
        self.save(*accounts)


class Book(Aggregate):
    """The ledger's lines of one account (the book has the account's id)."""

    @event("Started")
    def __init__(self, id: UUID) -> None:  # the account's id
        self.notification_ids: list[int] = []

    @event("Line")
    def add_line(self, notification_id: int) -> None:
        """Record that the shop's notification ``notification_id`` was processed."""
        self.notification_ids.append(notification_id)


class PoisonError(Exception):
    """The policy refused an account (on purpose)."""


class Ledger(ProcessApplication[UUID]):
    """A book per account, a line per event of the account."""

    @singledispatchmethod
    def policy(
        self, domain_event: DomainEventProtocol[UUID], processing_event: ProcessingEvent[UUID]
    ) -> None:
        """Record a line for every event of an account."""
        assert processing_event.tracking is not None
        account_id = domain_event.originator_id
        _check_poison(str(account_id))
        try:
            book: Book = self.repository.get(account_id)
        except AggregateNotFoundError:
            book = Book(account_id)
        book.add_line(processing_event.tracking.notification_id)
        processing_event.collect_events(book)

    def lines(self, account_id: UUID) -> list[int]:
        """The notification ids recorded for ``account_id`` (none: no book)."""
        try:
            book: Book = self.repository.get(account_id)
        except AggregateNotFoundError:
            return []
        return book.notification_ids


class Audit(ProcessApplication[UUID]):
    """Follows the ledger (and does nothing with it but track it)."""

    @singledispatchmethod
    def policy(
        self, domain_event: DomainEventProtocol[UUID], processing_event: ProcessingEvent[UUID]
    ) -> None:
        """Nothing to record."""


def _listed(path: str | None, account_id: str) -> bool:
    return bool(path) and Path(path).exists() and account_id in Path(path).read_text().split()


def _check_poison(account_id: str) -> None:
    if _listed(os.environ.get("POISON_FILE"), account_id):
        raise PoisonError(f"account {account_id} is poisoned")
    flaky = os.environ.get("FLAKY_FILE")
    if flaky and _listed(flaky, account_id):
        attempts = Path(flaky + ".attempts")
        with attempts.open("a") as f:
            f.write(account_id + "\n")
        if attempts.read_text().split().count(account_id) <= int(
            os.environ.get("FLAKY_FAILURES", "3")
        ):
            raise PoisonError(f"account {account_id} fails for now")


SYSTEM = System(pipes=[[Shop, Ledger, Audit]])
APPS = ("Shop", "Ledger", "Audit")
SYSTEM_TOPIC = "ledger_model:SYSTEM"
