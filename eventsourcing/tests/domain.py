"""An example domain model for reusable tests: a bank account with a balance.

Other test suites (persistence, application, system) build their events and aggregates
from :class:`BankAccount`, so its shape is part of the public test API: explicit nested
event classes, one of them a frozen dataclass, a nested "created" event, and a value object
(:class:`EmailAddress`) that needs a custom transcoding to be stored.
"""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal
from typing import cast
from uuid import uuid4

from eventsourcing.domain import Aggregate, AggregateCreated, AggregateEvent

__all__ = ["AccountClosedError", "BankAccount", "EmailAddress", "InsufficientFundsError"]


@dataclass(frozen=True)
class EmailAddress:
    """An email address, as a value object."""

    address: str


class AccountClosedError(Exception):
    """Raised when a transaction or limit change is attempted on a closed account."""


class InsufficientFundsError(Exception):
    """Raised when a debit would take the balance below the overdraft limit."""


class BankAccount(Aggregate):
    """A bank account: opened for a named holder, credited and debited, then closed."""

    def __init__(self, full_name: str, email_address: EmailAddress):
        """Initialise a new account with a zero balance and no overdraft."""
        self.full_name = full_name
        self.email_address = email_address
        self.balance = Decimal("0.00")
        self.overdraft_limit = Decimal("0.00")
        self.is_closed = False

    class Opened(AggregateCreated):
        """The account was opened."""

        full_name: str
        email_address: str

    @classmethod
    def open(cls, full_name: str, email_address: str) -> BankAccount:
        """Open a new account for ``full_name``, reachable at ``email_address``."""
        return cls._create(
            cls.Opened,
            id=uuid4(),
            full_name=full_name,
            email_address=EmailAddress(email_address),
        )

    @dataclass(frozen=True)
    class TransactionAppended(AggregateEvent):
        """An amount was credited (positive) or debited (negative)."""

        amount: Decimal

        def apply(self, aggregate: Aggregate) -> None:
            """Add the amount to the balance."""
            cast("BankAccount", aggregate).balance += self.amount

    class OverdraftLimitSet(AggregateEvent):
        """The overdraft limit was changed."""

        overdraft_limit: Decimal

        def apply(self, aggregate: Aggregate) -> None:
            """Record the new limit."""
            cast("BankAccount", aggregate).overdraft_limit = self.overdraft_limit

    class Closed(AggregateEvent):
        """The account was closed."""

        def apply(self, aggregate: Aggregate) -> None:
            """Mark the account closed."""
            cast("BankAccount", aggregate).is_closed = True

    def append_transaction(self, amount: Decimal) -> None:
        """Credit (positive) or debit (negative) the account."""
        self.check_account_is_not_closed()
        self.check_has_sufficient_funds(amount)
        self.trigger_event(self.TransactionAppended, amount=amount)

    def set_overdraft_limit(self, overdraft_limit: Decimal) -> None:
        """Allow the balance to go as low as minus ``overdraft_limit``."""
        assert overdraft_limit >= Decimal("0.00"), "overdraft limit must not be negative"
        self.check_account_is_not_closed()
        self.trigger_event(self.OverdraftLimitSet, overdraft_limit=overdraft_limit)

    def close(self) -> None:
        """Close the account to further transactions."""
        self.trigger_event(self.Closed)

    def check_account_is_not_closed(self) -> None:
        """Raise :class:`AccountClosedError` if the account is closed."""
        if self.is_closed:
            raise AccountClosedError({"account_id": self.id})

    def check_has_sufficient_funds(self, amount: Decimal) -> None:
        """Raise :class:`InsufficientFundsError` if ``amount`` would exceed the overdraft."""
        if self.balance + amount < -self.overdraft_limit:
            raise InsufficientFundsError({"account_id": self.id})
