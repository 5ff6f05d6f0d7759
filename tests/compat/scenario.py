"""Write or read an event store with whichever ``eventsourcing`` package is importable.

Run by the compatibility tests under both our package and ``eventsourcing`` 9.5.6 (each in
its own interpreter), so that what one writes the other must read identically::

    python scenario.py write|read VARIANT   (settings from the environment: PERSISTENCE_MODULE...)

``read`` prints a canonical JSON dump of the aggregates, snapshots and notifications.
Only API that both packages share is used here.
"""

from __future__ import annotations

import json
import sys
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any
from uuid import NAMESPACE_URL, UUID, uuid5

from eventsourcing.application import Application
from eventsourcing.domain import Aggregate, event
from eventsourcing.persistence import Transcoding

OWNERS = ["Alice", "Bob", "Chloé 🐈"]
KEY = "QUJDREVGR0hJSktMTU5PUFFSU1RVVldYWVphYmNkZWY="  # 32 bytes, fixed so both sides agree

VARIANTS: dict[str, dict[str, str]] = {
    "plain": {},
    "compressed": {"COMPRESSOR_TOPIC": "eventsourcing.compressor:ZlibCompressor"},
    "encrypted": {"CIPHER_TOPIC": "eventsourcing.cipher:AESCipher", "CIPHER_KEY": KEY},
    "compressed-encrypted": {
        "COMPRESSOR_TOPIC": "eventsourcing.compressor:ZlibCompressor",
        "CIPHER_TOPIC": "eventsourcing.cipher:AESCipher",
        "CIPHER_KEY": KEY,
    },
}


class Money:
    """A custom value type, stored through a custom transcoding."""

    def __init__(self, amount: Decimal, currency: str) -> None:
        self.amount = amount
        self.currency = currency

    def __repr__(self) -> str:
        return f"Money({self.amount}, {self.currency})"


class MoneyAsDict(Transcoding):
    """Stores Money as a dict whose amount is itself transcoded (as a Decimal)."""

    type = Money
    name = "money"

    def encode(self, obj: Money) -> dict[str, Any]:
        return {"amount": obj.amount, "currency": obj.currency}

    def decode(self, data: dict[str, Any]) -> Money:
        return Money(data["amount"], data["currency"])


class Account(Aggregate):
    """An account with deposits of money."""

    @event("Opened")
    def __init__(self, owner: str, opened_on: datetime) -> None:
        self.owner = owner
        self.opened_on = opened_on
        self.deposits: list[Money] = []
        self.tags: dict[str, Any] = {}

    @staticmethod
    def create_id(owner: str) -> UUID:
        return uuid5(NAMESPACE_URL, f"/accounts/{owner}")

    @event("Deposited")
    def deposit(self, amount: Money, note: str, ref: UUID) -> None:
        self.deposits.append(amount)
        self.tags[note] = [str(ref), 1.5, None, True]


class Bank(Application):
    """Opens accounts and takes deposits; snapshots every third event."""

    snapshotting_intervals = {Account: 3}
    log_section_size = 100

    def register_transcodings(self, transcoder: Any) -> None:
        super().register_transcodings(transcoder)
        transcoder.register(MoneyAsDict())


def write(bank: Bank) -> None:
    for i, owner in enumerate(OWNERS):
        account = Account(owner, datetime(2024, 1, 2, 3, 4, 5, 678901, tzinfo=UTC))
        for j in range(i + 3):
            ref = uuid5(NAMESPACE_URL, f"/ref/{i}/{j}")
            account.deposit(Money(Decimal(f"{j}.{i}5"), "EUR"), f"note {j} ✓", ref)
        bank.save(account)
    bank.take_snapshot(Account.create_id(OWNERS[0]))


def canonical(value: Any) -> Any:
    """Turn a value into JSON-able data that keeps its type visible."""
    if isinstance(value, dict):
        return {str(k): canonical(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [canonical(v) for v in value]
    if isinstance(value, Money):
        return {"Money": [str(value.amount), value.currency]}
    if isinstance(value, bytes):
        return value.hex()
    if isinstance(value, datetime | UUID | Decimal):
        return {type(value).__name__: str(value)}
    return value


def read(bank: Bank) -> dict[str, Any]:
    accounts = {}
    for owner in OWNERS:
        account = bank.repository.get(Account.create_id(owner))
        accounts[owner] = canonical(dict(vars(account)))
    snapshots = {
        owner: [
            canonical(dict(vars(s)))
            for s in bank.snapshots.get(Account.create_id(owner))  # type: ignore[union-attr]
        ]
        for owner in OWNERS
    }
    notifications = []
    for n in bank.notification_log.select(start=1, limit=100):
        domain_event = bank.mapper.to_domain_event(n)
        notifications.append(
            {
                "id": n.id,
                "originator_id": str(n.originator_id),
                "originator_version": n.originator_version,
                "topic": n.topic,
                "state": n.state.hex(),
                "event": canonical(dict(vars(domain_event))),
                "event_type": type(domain_event).__qualname__,
            }
        )
    return {"accounts": accounts, "snapshots": snapshots, "notifications": notifications}


def main(mode: str, variant: str) -> None:
    env = dict(VARIANTS[variant])
    bank = Bank(env=env)
    if mode == "write":
        write(bank)
    else:
        json.dump(read(bank), sys.stdout, sort_keys=True, ensure_ascii=False)
    bank.close()


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
