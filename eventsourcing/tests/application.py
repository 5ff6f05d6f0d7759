"""Reusable application tests, to be subclassed once per persistence module.

* :class:`ExampleApplicationTestCase` runs the :class:`BankAccounts` example end to end:
  subclasses set ``expected_factory_topic`` and configure the persistence module through
  ``os.environ`` in ``setUp`` (and restore it in ``tearDown``).
* :class:`ApplicationTestCase` checks the behaviour of :class:`Application` itself: naming,
  persistence-module resolution, recordings, snapshots and the aggregate cache.

:class:`EmailAddressAsStr` and :class:`BankAccounts` are importable on their own, for tests
that need a transcoding or an application with a custom value type.
"""

from __future__ import annotations

import threading
import warnings
from decimal import Decimal
from typing import Any, ClassVar
from unittest import TestCase
from uuid import UUID, uuid4

from eventsourcing.application import AggregateNotFoundError, Application
from eventsourcing.domain import Aggregate
from eventsourcing.persistence import (
    InfrastructureFactory,
    InfrastructureFactoryError,
    IntegrityError,
    JSONTranscoder,
    Transcoding,
)
from eventsourcing.tests.domain import BankAccount, EmailAddress
from eventsourcing.utils import EnvType, get_topic

__all__ = [
    "ApplicationTestCase",
    "BankAccounts",
    "EmailAddressAsStr",
    "ExampleApplicationTestCase",
]


class EmailAddressAsStr(Transcoding):
    """Stores an :class:`EmailAddress` as its address string."""

    type = EmailAddress
    name = "email_address_as_str"

    def encode(self, obj: EmailAddress) -> str:
        """Return the address string."""
        return obj.address

    def decode(self, data: str) -> EmailAddress:
        """Rebuild the value object from the address string."""
        return EmailAddress(data)


class BankAccounts(Application[UUID]):
    """An example application: open bank accounts, credit them, read their balances."""

    is_snapshotting_enabled = True

    class AccountNotFoundError(Exception):
        """Raised when no account has the given id."""

    def register_transcodings(self, transcoder: JSONTranscoder) -> None:
        """Add the transcoding for email addresses to the defaults."""
        super().register_transcodings(transcoder)
        transcoder.register(EmailAddressAsStr())

    def open_account(self, full_name: str, email_address: str) -> UUID:
        """Open an account and return its id."""
        account = BankAccount.open(full_name=full_name, email_address=email_address)
        self.save(account)
        return account.id

    def credit_account(self, account_id: UUID, amount: Decimal) -> None:
        """Add ``amount`` to the account's balance."""
        account = self.get_account(account_id)
        account.append_transaction(amount)
        self.save(account)

    def get_balance(self, account_id: UUID) -> Decimal:
        """Return the account's current balance."""
        return self.get_account(account_id).balance

    def get_account(self, account_id: UUID) -> BankAccount:
        """Return the account, or raise :class:`BankAccounts.AccountNotFoundError`."""
        try:
            account: BankAccount = self.repository.get(account_id)
        except AggregateNotFoundError:
            raise self.AccountNotFoundError(account_id) from None
        return account


class ExampleApplicationTestCase(TestCase):
    """Runs the bank-accounts example against the persistence module in ``os.environ``."""

    started_ats: ClassVar[dict[type[TestCase], Any]] = {}
    counts: ClassVar[dict[type[TestCase], int]] = {}
    expected_factory_topic: str

    def test_example_application(self) -> None:
        """Open, credit, snapshot and rebuild an account, and read the notification log."""
        app = BankAccounts(env={"IS_SNAPSHOTTING_ENABLED": "y"})
        try:
            self._check_example_application(app)
        finally:
            app.close()

    def _check_example_application(self, app: BankAccounts) -> None:
        self.assertEqual(get_topic(type(app.factory)), self.expected_factory_topic)
        with self.assertRaises(BankAccounts.AccountNotFoundError):
            app.get_account(uuid4())

        # Given an account credited three times.
        account_id = app.open_account(full_name="Alice", email_address="alice@example.com")
        self.assertEqual(app.get_balance(account_id), Decimal("0.00"))
        for amount in ("10.00", "25.00", "30.00"):
            app.credit_account(account_id, Decimal(amount))
        self.assertEqual(app.get_balance(account_id), Decimal("65.00"))
        self.assertEqual(
            app.get_account(account_id).email_address, EmailAddress("alice@example.com")
        )

        # Then the notification log has its four events.
        self.assertEqual(len(app.notification_log["1,10"].items), 4)

        # When a snapshot is taken at version 2, a rebuild at version 3 starts from it.
        initial = Aggregate.INITIAL_VERSION
        app.take_snapshot(account_id, version=initial + 1)
        assert app.snapshots is not None
        self.assertEqual(
            [s.originator_version for s in app.snapshots.get(account_id)], [initial + 1]
        )
        at_v3: BankAccount = app.repository.get(account_id, version=initial + 2)
        self.assertIsInstance(at_v3, BankAccount)
        self.assertEqual(at_v3.version, initial + 2)
        self.assertEqual(at_v3.balance, Decimal("35.00"))

        # When a snapshot is taken without a version, it is of the latest version.
        app.take_snapshot(account_id)
        versions = [s.originator_version for s in app.snapshots.get(account_id)]
        self.assertEqual(versions, [initial + 1, initial + 3])
        latest: BankAccount = app.repository.get(account_id)
        self.assertEqual(latest.version, initial + 3)
        self.assertEqual(latest.balance, Decimal("65.00"))


class ApplicationTestCase(TestCase):
    """Behaviour of :class:`Application`, against the persistence module in ``os.environ``."""

    def test_name(self) -> None:
        """A subclass is named after itself unless its body sets ``name``."""
        self.assertEqual(Application.name, "Application")

        class Shop(Application[UUID]):
            pass

        class Renamed(Application[UUID]):
            name = "Warehouse"

        self.assertEqual(Shop.name, "Shop")
        self.assertEqual(Renamed.name, "Warehouse")
        self.assertEqual(Application[UUID]().name, "Application")

    def test_as_context_manager(self) -> None:
        """The application closes when its context exits."""
        with Application[UUID]() as app:
            self.assertFalse(app.closing.is_set())
        self.assertTrue(app.closing.is_set())

    def test_resolve_persistence_topics(self) -> None:
        """The persistence module comes from PERSISTENCE_MODULE or its legacy names."""
        self.assertIsInstance(Application[UUID]().factory, InfrastructureFactory)
        for key, topic in [
            ("INFRASTRUCTURE_FACTORY", "eventsourcing.popo:Factory"),
            ("FACTORY_TOPIC", "eventsourcing.popo:Factory"),
            ("PERSISTENCE_MODULE", "eventsourcing.popo"),
        ]:
            self.assertIsInstance(
                Application[UUID](env={key: topic}).factory, InfrastructureFactory
            )

        with self.assertRaises(InfrastructureFactoryError) as cm:
            Application[UUID](env={"PERSISTENCE_MODULE": "eventsourcing.application"})
        self.assertEqual(
            cm.exception.args[0],
            "Found 0 infrastructure factory classes in 'eventsourcing.application', expected 1.",
        )
        with self.assertRaises(InfrastructureFactoryError) as cm:
            Application[UUID](env={"PERSISTENCE_MODULE": "eventsourcing.application:Application"})
        self.assertEqual(
            cm.exception.args[0],
            "Topic 'eventsourcing.application:Application' didn't resolve to a persistence "
            "module or infrastructure factory class: <class "
            "'eventsourcing.application.Application'>",
        )

    def test_save_returns_recording_event(self) -> None:
        """Each saved event gives one recording, carrying its notification id."""
        app = Application[UUID]()
        self.assertEqual(app.save(), [])
        self.assertEqual(app.save(None), [])
        self.assertEqual([r.notification.id for r in app.save(Aggregate())], [1])
        self.assertEqual([r.notification.id for r in app.save(Aggregate())], [2])
        recordings = app.save(Aggregate(), Aggregate())
        self.assertEqual([r.notification.id for r in recordings], [3, 4])

    def test_take_snapshot_raises_assertion_error_if_snapshotting_not_enabled(self) -> None:
        """Without a snapshot store, take_snapshot() says how to enable one."""
        app = Application[UUID]()
        with self.assertRaises(AssertionError) as cm:
            app.take_snapshot(uuid4())
        self.assertEqual(
            cm.exception.args[0],
            "Can't take snapshot without snapshots store. Please set environment variable "
            "IS_SNAPSHOTTING_ENABLED to a true value (e.g. 'y'), or set "
            "'is_snapshotting_enabled' on application class, or set 'snapshotting_intervals' "
            "on application class.",
        )

    def test_application_with_cached_aggregates_and_fastforward(self) -> None:
        """With fast-forward, get() fills the cache and brings it up to date; save() does not."""
        app = Application[UUID](env={"AGGREGATE_CACHE_MAXSIZE": "10"})
        cache = app.repository.cache
        assert cache is not None
        aggregate = Aggregate()
        app.save(aggregate)
        with self.assertRaises(KeyError):
            cache.get(aggregate.id)

        app.repository.get(aggregate.id)
        self.assertEqual(cache.get(aggregate.id), aggregate)

        aggregate.trigger_event(Aggregate.Event)
        app.save(aggregate)
        self.assertEqual(cache.get(aggregate.id).version, aggregate.version - 1)

        app.repository.get(aggregate.id)
        self.assertEqual(cache.get(aggregate.id), aggregate)

    def test_check_aggregate_fastforwarding_nonblocking(self) -> None:
        """Concurrent commands on one cached aggregate, with fast-forward skipping."""
        self._check_aggregate_fastforwarding_during_contention(
            env={"AGGREGATE_CACHE_MAXSIZE": "10", "AGGREGATE_CACHE_FASTFORWARD_SKIPPING": "y"}
        )

    def test_check_aggregate_fastforwarding_blocking(self) -> None:
        """Concurrent commands on one cached aggregate, fast-forwarding under a lock."""
        self._check_aggregate_fastforwarding_during_contention(
            env={"AGGREGATE_CACHE_MAXSIZE": "10"}
        )

    def _check_aggregate_fastforwarding_during_contention(self, env: EnvType) -> None:
        app = Application[UUID](env=env)
        try:
            self.assertEqual(len(app.repository._fastforward_locks_inuse), 0)
            aggregate = Aggregate()
            app.save(aggregate)
            app.repository.get(aggregate.id)  # primes the cache
            contention = _CacheContention(app, aggregate.id, target_version=25)
            contention.run(num_threads=20, timeout=10)

            if contention.errors:
                raise contention.errors[0]
            self.assertEqual(len(contention.cached_object_ids), 1, "cached object replaced")
            self.assertGreaterEqual(len(contention.successful_threads), 3, "too little sharing")
            final: Aggregate = app.repository.get(aggregate.id)
            self.assertGreaterEqual(final.version, 25)
            self.assertEqual(len(app.repository._fastforward_locks_inuse), 0)
        finally:
            app.close()

    def test_application_with_cached_aggregates_not_fastforward(self) -> None:
        """Without fast-forward, save() refreshes the cache, and a stale cache conflicts."""
        app = Application[UUID](
            env={"AGGREGATE_CACHE_MAXSIZE": "10", "AGGREGATE_CACHE_FASTFORWARD": "f"}
        )
        cache = app.repository.cache
        assert cache is not None
        first = Aggregate()
        app.save(first)
        self.assertEqual(cache.get(first.id), first)

        # A save of another object with the same id replaces the cached object.
        second = Aggregate()
        second._id = first.id
        second.trigger_event(Aggregate.Event)
        app.save(second)
        self.assertIs(cache.get(first.id), second)

        # Events stored behind the repository's back leave the cache stale...
        third: Aggregate = app.repository.get(first.id)
        third.trigger_event(Aggregate.Event)
        app.events.put(third.collect_events())

        # ...so a command on the cached state conflicts with the stored events.
        fourth: Aggregate = app.repository.get(first.id)
        fourth.trigger_event(Aggregate.Event)
        with self.assertRaises(IntegrityError):
            app.save(fourth)

    def test_application_with_deepcopy_from_cache_arg(self) -> None:
        """get(deepcopy_from_cache=False) hands out the cached object itself."""
        app = Application[UUID](env={"AGGREGATE_CACHE_MAXSIZE": "10"})
        cache = app.repository.cache
        assert cache is not None
        aggregate = Aggregate()
        app.save(aggregate)
        copied: Aggregate = app.repository.get(aggregate.id)
        copied.version = 101
        self.assertEqual(cache.get(aggregate.id).version, 1)
        shared: Aggregate = app.repository.get(aggregate.id, deepcopy_from_cache=False)
        shared.version = 101
        self.assertEqual(cache.get(aggregate.id).version, 101)

    def test_application_with_deepcopy_from_cache_attribute(self) -> None:
        """Setting repository.deepcopy_from_cache to False hands out the cached object."""
        app = Application[UUID](env={"AGGREGATE_CACHE_MAXSIZE": "10"})
        cache = app.repository.cache
        assert cache is not None
        aggregate = Aggregate()
        app.save(aggregate)
        copied: Aggregate = app.repository.get(aggregate.id)
        copied.version = 101
        self.assertEqual(cache.get(aggregate.id).version, 1)
        app.repository.deepcopy_from_cache = False
        shared: Aggregate = app.repository.get(aggregate.id)
        shared.version = 101
        self.assertEqual(cache.get(aggregate.id).version, 101)

    def test_application_log(self) -> None:
        """The deprecated 'log' property warns and returns the notification log."""
        app = Application[UUID]()
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            self.assertIs(app.log, app.notification_log)
        self.assertEqual(len(caught), 1)
        self.assertIs(caught[0].category, DeprecationWarning)
        self.assertEqual(
            str(caught[0].message), "'log' is deprecated, use 'notification_log' instead"
        )


class _CacheContention:
    """Threads that each loop get -> trigger -> save -> get on one cached aggregate.

    Records what the checks need: errors, the ids of the objects seen in the cache (there
    must only ever be one), and the threads that completed a command.
    """

    def __init__(self, app: Application[UUID], aggregate_id: UUID, target_version: int):
        self.app = app
        self.aggregate_id = aggregate_id
        self.target_version = target_version
        self.stopped = threading.Event()
        self.errors: list[BaseException] = []
        self.cached_object_ids: set[int] = set()
        self.successful_threads: set[int] = set()

    def run(self, num_threads: int, timeout: float) -> None:
        threads = [threading.Thread(target=self._loop) for _ in range(num_threads)]
        for thread in threads:
            thread.start()
        self.stopped.wait(timeout=timeout)
        self.stopped.set()
        for thread in threads:
            thread.join()

    def _loop(self) -> None:
        try:
            while not self.stopped.is_set():
                self._command()
        except BaseException as error:
            self.errors.append(error)
            self.stopped.set()

    def _command(self) -> None:
        repository = self.app.repository
        aggregate: Aggregate = repository.get(self.aggregate_id)
        version_before = aggregate.version
        aggregate.trigger_event(Aggregate.Event)
        try:
            self.app.save(aggregate)
        except IntegrityError:
            self.stopped.wait(0.001)  # another thread won the race: try again
            return
        assert repository.cache is not None
        self.cached_object_ids.add(id(repository.cache.get(self.aggregate_id)))
        fastforwarded: Aggregate = repository.get(self.aggregate_id)
        if fastforwarded.version < version_before:
            msg = f"fast-forward went back from {version_before} to {fastforwarded.version}"
            raise AssertionError(msg)
        self.successful_threads.add(threading.get_ident())
        if len(self.successful_threads) >= 3 and aggregate.version >= self.target_version:
            self.stopped.set()
        self.stopped.wait(0.0001)
